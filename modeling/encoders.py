"""The two exported graphs: each encoder with its projection, so the device needs no weights or torch."""

from __future__ import annotations

import torch
from torch import nn


class ImageEncoder(nn.Module):
    """pixel_values [1,3,S,S] -> image_embeds [1,projection_dim] (not normalized, as CLIPModel)."""

    def __init__(self, clip: nn.Module) -> None:
        super().__init__()
        self.vision_model = clip.vision_model
        self.visual_projection = clip.visual_projection

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
    """input_ids [1,L] -> text_embeds [1,projection_dim], pooled at the first end-of-text token.

    Pools here instead of using `pooler_output`: transformers compares int32 ids with a Python int,
    which exports a Cast to int64 that the AX650 cannot run. Comparing the int64 ids directly and
    casting the mask to int32 gives the same position (the first EOS; padding is EOS too).
    Swaps in FlatTokenLookup, which shares the original weights, so `clip` stays a valid reference.
    """

    def __init__(self, clip: nn.Module, eos_token_id: int) -> None:
        super().__init__()
        embeddings = clip.text_model.embeddings
        if not isinstance(embeddings.token_embedding, FlatTokenLookup):
            embeddings.token_embedding = FlatTokenLookup(embeddings.token_embedding)
        self.text_model = clip.text_model
        self.text_projection = clip.text_projection
        self.eos_token_id = eos_token_id

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        hidden = self.text_model(input_ids=input_ids).last_hidden_state
        eos_position = (input_ids == self.eos_token_id).to(torch.int32).argmax(dim=-1)
        pooled = hidden[torch.arange(hidden.shape[0]), eos_position]
        return self.text_projection(pooled)
