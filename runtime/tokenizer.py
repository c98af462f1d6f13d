"""CLIP tokenization with `tokenizers` from the exported tokenizer.json: fixed length, EOS-padded ids."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from tokenizers import Tokenizer

from common.errors import ModelFilesError


class ClipTokenizer:
    """Encodes a prompt into [1, context_length] ids: BOS, tokens (truncated), EOS, then padding."""

    def __init__(self, path: Path, context_length: int, pad_token: str = "<|endoftext|>") -> None:
        try:
            self._tokenizer = Tokenizer.from_file(str(path))
        except Exception as exc:  # tokenizers raises its own untyped Exception for a missing or broken file
            raise ModelFilesError(f"{path}: not a readable tokenizer.json ({exc}): run `invoke fetch` again") from exc
        self._tokenizer.no_padding()
        self._tokenizer.no_truncation()
        self.context_length = context_length
        pad_id = self._tokenizer.token_to_id(pad_token)
        if pad_id is None:
            raise ModelFilesError(f"{path}: the tokenizer has no {pad_token!r} token: run `invoke export` again")
        self.pad_id = pad_id
        self.eos_id = pad_id

    def decode(self, ids: np.ndarray | list[int]) -> str:
        """Ids back to text, special tokens dropped. transformers' CLIPTokenizer writes a byte-level
        decoder into tokenizer.json and strips the `</w>` word ends afterwards; so does this."""
        text = self._tokenizer.decode([int(i) for i in np.ravel(ids)], skip_special_tokens=True)
        return " ".join(text.replace("</w>", " ").split())

    def encode(self, text: str, dtype: type = np.int64) -> np.ndarray:
        return self.encode_batch([text], dtype)[0][:1]

    def encode_batch(self, texts: list[str], dtype: type = np.int64) -> tuple[np.ndarray, np.ndarray]:
        """[len(texts), context_length] ids, and each text's token count before truncation (with BOS/EOS):
        a count above context_length means the text was cut to fit."""
        out = np.full((len(texts), self.context_length), self.pad_id, dtype=dtype)
        counts = np.empty(len(texts), dtype=np.int64)
        for row, encoding in enumerate(self._tokenizer.encode_batch(texts)):
            ids = encoding.ids
            counts[row] = len(ids)
            if len(ids) > self.context_length:
                ids = [*ids[: self.context_length - 1], self.eos_id]
            out[row, : len(ids)] = ids
        return out, counts
