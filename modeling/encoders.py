"""The two exported graphs: each encoder with its projection or pooling head, so the device needs no
weights or torch. One class per encoder serves every family; the family's facts say how to pool."""

from __future__ import annotations

import torch
from torch import nn

from runtime.model_io import Pooling, TextFacts

MASKED = -100.0  # added to the attention scores of padding (Chinese-CLIP)


class ImageEncoder(nn.Module):
    """pixel_values [1,3,S,S] -> image_embeds [1,dim] (not normalized), as get_image_features: the vision
    tower's pooled output (CLIP's [CLS], SigLIP's attention-pooling head), projected where the family has a
    projection (CLIP, Chinese-CLIP)."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.vision_model = model.vision_model
        self.visual_projection = getattr(model, "visual_projection", None) or nn.Identity()

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        return self.visual_projection(self.vision_model(pixel_values=pixel_values).pooler_output)


class FlatTokenLookup(nn.Module):
    """The token embedding looked up with 1-D indices: same numbers, an AX650-compatible Gather.

    Pulsar2's AX650 table allows Gather only with 1-D indices; `nn.Embedding` on [1, L] ids exports a
    Gather with 2-D indices. Flattening the ids first and restoring the shape after is exact.
    """

    def __init__(self, embedding: nn.Embedding) -> None:
        super().__init__()
        self.embedding = embedding

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        flat = self.embedding(input_ids.reshape(-1))
        return flat.reshape(*input_ids.shape, flat.shape[-1])


class TextEncoder(nn.Module):
    """input_ids [1,L] -> text_embeds [1,dim], as get_text_features, pooled as the family pools.

    Pools here instead of using `pooler_output`: transformers compares int32 ids with a Python int,
    which exports a Cast to int64 that the AX650 cannot run. Comparing the int64 ids directly and
    casting the mask to int32 gives the same position (the first EOS; padding may be EOS too). A family
    that masks padding (Chinese-CLIP) gets its attention mask from the ids here: the graph keeps one
    input, and a pad id never occurs inside a text. The mask is handed over ready-made and additive
    (transformers passes a 4-D mask through): its own 2-D path exports a Cast to BOOL and 4-D Gathers
    the AX650 cannot run, and its finfo.min would stretch the quantization range of every attention
    score; MASKED is already far below any score (exp(-100) is 0 next to 1 in float32).
    Swaps in FlatTokenLookup, which shares the original weights, so `model` stays a valid reference.
    """

    def __init__(self, model: nn.Module, facts: TextFacts) -> None:
        super().__init__()
        text_model = model.text_model
        embeddings = text_model.embeddings
        name = "token_embedding" if hasattr(embeddings, "token_embedding") else "word_embeddings"
        if not isinstance(getattr(embeddings, name), FlatTokenLookup):
            setattr(embeddings, name, FlatTokenLookup(getattr(embeddings, name)))
        self.text_model = text_model
        # CLIP and Chinese-CLIP project the pooled state; SigLIP's text tower ends in its own head.
        self.text_projection = getattr(model, "text_projection", None) or text_model.head
        self.facts = facts

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        extra = {}
        if self.facts.masked:
            padding = (input_ids == self.facts.pad_id).to(torch.float32)
            extra["attention_mask"] = (padding * MASKED)[:, None, None, :]
        hidden = self.text_model(input_ids=input_ids, **extra).last_hidden_state
        if self.facts.pooling is Pooling.FIRST_EOS:
            position = (input_ids == self.facts.eos_id).to(torch.int32).argmax(dim=-1)
            pooled = hidden[torch.arange(hidden.shape[0]), position]
        elif self.facts.pooling is Pooling.LAST:
            pooled = hidden[:, -1]
        else:
            pooled = hidden[:, 0]
        return self.text_projection(pooled)
