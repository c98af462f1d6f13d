"""clip-interrogator 0.6.0's prompt modes transcribed as written (clip_interrogator/clip_interrogator.py:
`interrogate_fast`, `interrogate_classic`, `interrogate_negative`, `interrogate`, `chain`, `rank_top`,
`similarity(ies)`, `LabelTable.rank` below its 2048-label chunk, `_merge_tables`, `_truncate_to_fit`), with
its torch calls replaced by numpy over the same model: the float ONNX text encoder and the label rows
embed-vocab stored (its LabelTable keeps float16 embeddings too). The caption is the tests' stand-in for
BLIP, given by the caller. Written independently of runtime/prompt_modes.py, to hold it to the algorithm.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from runtime.label_tables import CategoryTable


class ReferenceInterrogator:
    def __init__(
        self,
        image_features: np.ndarray,
        tables: dict[str, CategoryTable],
        encode: Callable[[list[str]], np.ndarray],
        at_max_len: Callable[[str], bool],
        flavor_intermediate_count: int = 2048,
    ) -> None:
        self.image_features = image_features / np.linalg.norm(image_features)
        self.encode = encode
        self.at_max_len = at_max_len
        self.flavor_intermediate_count = flavor_intermediate_count

        def table(name: str) -> tuple[list[str], np.ndarray]:
            return list(tables[name].labels), np.asarray(tables[name].rows, dtype=np.float32)

        self.artists, self.flavors = table("artist"), table("flavor")
        self.mediums, self.movements = table("medium"), table("movement")
        self.trendings, self.negative = table("trending"), table("negative")

    def rank(self, table: tuple[list[str], np.ndarray], top_count: int = 1, reverse: bool = False) -> list[str]:
        labels, embeds = table
        assert len(labels) <= 2048, "the reference covers LabelTable.rank below one chunk"
        top_count = min(top_count, len(labels))
        similarity = embeds @ self.image_features
        if reverse:
            similarity = -similarity
        order = np.argsort(-similarity, kind="stable")[:top_count]
        return [labels[i] for i in order]

    def merged(self) -> tuple[list[str], np.ndarray]:
        parts = [self.artists, self.flavors, self.mediums, self.movements, self.trendings]
        return [label for p in parts for label in p[0]], np.concatenate([p[1] for p in parts])

    def similarities(self, texts: list[str]) -> list[float]:
        features = self.encode(texts)
        features = features / np.linalg.norm(features, axis=1, keepdims=True)
        return (features @ self.image_features).tolist()

    def similarity(self, text: str) -> float:
        return self.similarities([text])[0]

    def rank_top(self, texts: list[str], reverse: bool = False) -> str:
        similarity = np.asarray(self.similarities(texts))
        if reverse:
            similarity = -similarity
        return texts[int(similarity.argmax())]

    def chain(self, phrases, best_prompt="", best_sim=0.0, min_count=8, max_count=32, reverse=False) -> str:
        phrases = list(dict.fromkeys(phrases))
        if not best_prompt:
            best_prompt = self.rank_top(list(phrases), reverse=reverse)
            best_sim = self.similarity(best_prompt)
            phrases.remove(best_prompt)
        curr_prompt, curr_sim = best_prompt, best_sim

        def check(addition: str, idx: int) -> bool:
            nonlocal best_prompt, best_sim, curr_prompt, curr_sim
            prompt = curr_prompt + ", " + addition
            sim = self.similarity(prompt)
            if reverse:
                sim = -sim
            if sim > best_sim:
                best_prompt, best_sim = prompt, sim
            if sim > curr_sim or idx < min_count:
                curr_prompt, curr_sim = prompt, sim
                return True
            return False

        for idx in range(max_count):
            best = self.rank_top([f"{curr_prompt}, {f}" for f in phrases], reverse=reverse)
            flave = best[len(curr_prompt) + 2 :]
            if not check(flave, idx):
                break
            if self.at_max_len(curr_prompt):
                break
            phrases.remove(flave)
        return best_prompt

    def truncate_to_fit(self, text: str) -> str:
        parts = text.split(", ")
        new_text = parts[0]
        for part in parts[1:]:
            if self.at_max_len(new_text + part):
                break
            new_text += ", " + part
        return new_text

    def interrogate_classic(self, caption: str, max_flavors: int = 3) -> str:
        medium = self.rank(self.mediums, 1)[0]
        artist = self.rank(self.artists, 1)[0]
        trending = self.rank(self.trendings, 1)[0]
        movement = self.rank(self.movements, 1)[0]
        flaves = ", ".join(self.rank(self.flavors, max_flavors))
        if caption.startswith(medium):
            prompt = f"{caption} {artist}, {trending}, {movement}, {flaves}"
        else:
            prompt = f"{caption}, {medium} {artist}, {trending}, {movement}, {flaves}"
        return self.truncate_to_fit(prompt)

    def interrogate_fast(self, caption: str, max_flavors: int = 32) -> str:
        tops = self.rank(self.merged(), max_flavors)
        return self.truncate_to_fit(caption + ", " + ", ".join(tops))

    def interrogate_negative(self, max_flavors: int = 32) -> str:
        flaves = self.rank(self.flavors, self.flavor_intermediate_count, reverse=True)
        flaves = flaves + self.negative[0]
        return self.chain(flaves, max_count=max_flavors, reverse=True)

    def interrogate(self, caption: str, min_flavors: int = 8, max_flavors: int = 32) -> str:
        flaves = self.rank(self.merged(), self.flavor_intermediate_count)
        best_prompt, best_sim = caption, self.similarity(caption)
        best_prompt = self.chain(flaves, best_prompt, best_sim, min_count=min_flavors, max_count=max_flavors)
        fast_prompt = self.interrogate_fast(caption, max_flavors)
        classic_prompt = self.interrogate_classic(caption, max_flavors)
        candidates = [caption, classic_prompt, fast_prompt, best_prompt]
        return candidates[int(np.argmax(self.similarities(candidates)))]
