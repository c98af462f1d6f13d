"""CLIP tokenization with `tokenizers` from the exported tokenizer.json: fixed length, EOS-padded ids."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from tokenizers import Tokenizer


class ClipTokenizer:
    """Encodes a prompt into [1, context_length] ids: BOS, tokens (truncated), EOS, then padding."""

    def __init__(self, path: Path, context_length: int, pad_token: str = "<|endoftext|>") -> None:
        self._tokenizer = Tokenizer.from_file(str(path))
        self._tokenizer.no_padding()
        self._tokenizer.no_truncation()
        self.context_length = context_length
        pad_id = self._tokenizer.token_to_id(pad_token)
        if pad_id is None:
            raise ValueError(f"{path}: the tokenizer has no {pad_token!r} token")
        self.pad_id = pad_id
        self.eos_id = pad_id

    def decode(self, ids: np.ndarray | list[int]) -> str:
        """Ids back to text, special tokens dropped. transformers' CLIPTokenizer writes a byte-level
        decoder into tokenizer.json and strips the `</w>` word ends afterwards; so does this."""
        text = self._tokenizer.decode([int(i) for i in np.ravel(ids)], skip_special_tokens=True)
        return " ".join(text.replace("</w>", " ").split())

    def encode(self, text: str, dtype: type = np.int64) -> np.ndarray:
        ids = self._tokenizer.encode(text).ids
        if len(ids) > self.context_length:
            ids = [*ids[: self.context_length - 1], self.eos_id]
        ids = ids + [self.pad_id] * (self.context_length - len(ids))
        return np.asarray([ids], dtype=dtype)
