"""Tokenization with `tokenizers` from the exported tokenizer.json, for every family: fixed-length ids
padded and truncated exactly as the model's transformers tokenizer does (`padding="max_length",
truncation=True`), from the facts in export.json (pad id and side)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from tokenizers import Tokenizer

from common.errors import ModelFilesError
from runtime import model_io

ENCODE_CHUNK = 4096  # texts tokenized at once (see encode_batch)


class TextTokenizer:
    """Encodes prompts into [n, context_length] ids: the tokenizer's own specials (CLIP's BOS/EOS,
    BERT's [CLS]/[SEP]), truncated to fit with them, then padded on the model's side with its pad id.

    transformers' fast tokenizers run this same Rust tokenizer with these truncation and padding
    settings, so the ids are the reference's by construction (and tests hold them to it)."""

    def __init__(self, path: Path, facts: model_io.TextFacts, context_length: int) -> None:
        try:
            self._tokenizer = Tokenizer.from_file(str(path))
        except Exception as exc:  # tokenizers raises its own untyped Exception for a missing or broken file
            raise ModelFilesError(f"{path}: not a readable tokenizer.json ({exc}): run `invoke fetch` again") from exc
        pad_token = self._tokenizer.id_to_token(facts.pad_id)
        if pad_token is None:
            raise ModelFilesError(f"{path}: the tokenizer has no pad id {facts.pad_id}: run `invoke export` again")
        self._tokenizer.enable_truncation(max_length=context_length)
        self._tokenizer.enable_padding(
            direction=facts.pad_side, pad_id=facts.pad_id, pad_token=pad_token, length=context_length
        )
        self.context_length = context_length
        self.facts = facts

    @classmethod
    def of_export(cls, directory: Path, info: model_io.ExportInfo) -> TextTokenizer:
        """The tokenizer of an export folder or a device's model set."""
        return cls(Path(directory) / model_io.TOKENIZER_FILE, info.facts.text, info.context_length)

    def decode(self, ids: np.ndarray | list[int]) -> str:
        """Ids back to text, special tokens dropped. transformers' CLIPTokenizer writes a byte-level
        decoder into tokenizer.json and strips the `</w>` word ends afterwards; so does this."""
        text = self._tokenizer.decode([int(i) for i in np.ravel(ids)], skip_special_tokens=True)
        return " ".join(text.replace("</w>", " ").split())

    def encode(self, text: str, dtype: type = np.int64) -> np.ndarray:
        return self.encode_batch([text], dtype)[0]

    def encode_batch(self, texts: list[str], dtype: type = np.int64) -> tuple[np.ndarray, np.ndarray]:
        """[len(texts), context_length] ids, and for each text whether it was cut to fit. Tokenized
        ENCODE_CHUNK texts at a time: each text's Encoding (ids, tokens, offsets, masks) costs kilobytes,
        a million of them gigabytes."""
        ids = np.empty((len(texts), self.context_length), dtype=dtype)
        truncated = np.empty(len(texts), dtype=bool)
        for start in range(0, len(texts), ENCODE_CHUNK):
            encodings = self._tokenizer.encode_batch(texts[start : start + ENCODE_CHUNK])
            ids[start : start + len(encodings)] = [encoding.ids for encoding in encodings]
            truncated[start : start + len(encodings)] = [bool(encoding.overflowing) for encoding in encodings]
        return ids, truncated

    def fills_context(self, texts: list[str]) -> np.ndarray:
        """Whether each text's tokens (with the specials) take every position: clip-interrogator's
        `_prompt_at_max_len`, which stops a prompt growing."""
        full = np.empty(len(texts), dtype=bool)
        for start in range(0, len(texts), ENCODE_CHUNK):
            encodings = self._tokenizer.encode_batch(texts[start : start + ENCODE_CHUNK])
            full[start : start + len(encodings)] = [sum(e.attention_mask) >= self.context_length for e in encodings]
        return full
