"""CLIP model directories with random weights and a real BPE tokenizer, made with no network.

"tiny" (small CLIPConfig) serves the example config and the tests; "vit-b-32" has the real model's
shapes for benchmarks. Both load through the same `from_pretrained` path as
openai/clip-vit-base-patch32, so the real loading, export and runtime code runs on them.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterable
from itertools import pairwise
from pathlib import Path

SEED = 0
N_MERGES = 300
# Words the tokenizer learns merges from: enough for prompts to tokenize into realistic subwords.
_CORPUS = """
a photo of an astronaut cat dog cup coffee table rocket launch pad portrait woman man uniform black and
white photograph oil painting mountain landscape at sunset highly detailed digital art cinematic lighting
studio watercolor sketch illustration anime style render unreal engine trending on artstation city street
night forest river ocean beach sky clouds galaxy stars space bricks wall texture close up macro shot of the
in with by on a an old young smiling red green blue yellow orange purple bright dark soft light shadow
""".split()


def bytes_to_unicode() -> dict[int, str]:
    """GPT-2/CLIP's reversible byte -> printable character table."""
    keep = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1))
    keep += list(range(ord("®"), ord("ÿ") + 1))
    chars = keep[:]
    extra = 0
    for byte in range(256):
        if byte not in keep:
            keep.append(byte)
            chars.append(256 + extra)
            extra += 1
    return dict(zip(keep, (chr(c) for c in chars), strict=True))


def learn_merges(words: Iterable[str], count: int) -> list[tuple[str, str]]:
    """Plain BPE: repeatedly merge the most frequent adjacent pair (ties broken by the pair itself)."""
    freqs = Counter(words)
    splits = {word: (*word[:-1], word[-1] + "</w>") for word in freqs}
    merges: list[tuple[str, str]] = []
    for _ in range(count):
        pairs: Counter[tuple[str, str]] = Counter()
        for word, symbols in splits.items():
            for pair in pairwise(symbols):
                pairs[pair] += freqs[word]
        if not pairs:
            break
        best = max(pairs.items(), key=lambda item: (item[1], item[0]))[0]
        merges.append(best)
        splits = {word: _merge(symbols, best) for word, symbols in splits.items()}
    return merges


def _merge(symbols: tuple[str, ...], pair: tuple[str, str]) -> tuple[str, ...]:
    out: list[str] = []
    i = 0
    while i < len(symbols):
        if i + 1 < len(symbols) and (symbols[i], symbols[i + 1]) == pair:
            out.append(symbols[i] + symbols[i + 1])
            i += 2
        else:
            out.append(symbols[i])
            i += 1
    return tuple(out)


def write_tokenizer_files(directory: Path) -> dict[str, int]:
    """vocab.json and merges.txt in CLIP's layout: bytes, bytes+</w>, merges, then the two specials."""
    byte_chars = list(bytes_to_unicode().values())
    merges = learn_merges(_CORPUS, N_MERGES)
    tokens = byte_chars + [c + "</w>" for c in byte_chars] + ["".join(m) for m in merges]
    tokens += ["<|startoftext|>", "<|endoftext|>"]
    vocab = {token: index for index, token in enumerate(dict.fromkeys(tokens))}
    (directory / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False), encoding="utf-8")
    lines = ["#version: 0.2"] + [f"{a} {b}" for a, b in merges]
    (directory / "merges.txt").write_text("\n".join(lines) + "\n", encoding="utf-8")
    return vocab


# Model sizes: "tiny" for tests; "vit-b-32" has openai/clip-vit-base-patch32's shapes for benchmarks
# (speed does not depend on weight values). Token ids stay below the small tokenizer's vocabulary.
PRESETS = {
    "tiny": {
        "text": {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2, "num_attention_heads": 2},
        "vision": {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2, "num_attention_heads": 2},
        "projection_dim": 64,
        "vocab_size": None,
    },
    "vit-b-32": {
        "text": {"hidden_size": 512, "intermediate_size": 2048, "num_hidden_layers": 12, "num_attention_heads": 8},
        "vision": {"hidden_size": 768, "intermediate_size": 3072, "num_hidden_layers": 12, "num_attention_heads": 12},
        "projection_dim": 512,
        "vocab_size": 49408,
    },
}


def make_random_clip(directory: Path, *, image_size: int = 224, context_length: int = 77, preset: str = "tiny") -> Path:
    """Write a complete CLIP model directory (config, safetensors weights, tokenizer, preprocessor)."""
    import torch
    import transformers
    from transformers import CLIPConfig, CLIPModel, CLIPTokenizer

    # transformers 5 names the Pillow processor ...Pil (the plain name wants torchvision and warns without it).
    processor_class = getattr(transformers, "CLIPImageProcessorPil", None) or transformers.CLIPImageProcessor

    directory.mkdir(parents=True, exist_ok=True)
    vocab = write_tokenizer_files(directory)
    tokenizer = CLIPTokenizer(vocab=str(directory / "vocab.json"), merges=str(directory / "merges.txt"))
    tokenizer.model_max_length = context_length
    dims = PRESETS[preset]
    config = CLIPConfig(
        text_config={
            **dims["text"],
            "vocab_size": dims["vocab_size"] or len(vocab),
            "max_position_embeddings": context_length,
            "bos_token_id": vocab["<|startoftext|>"],
            "eos_token_id": vocab["<|endoftext|>"],
            "pad_token_id": vocab["<|endoftext|>"],
        },
        vision_config={**dims["vision"], "image_size": image_size, "patch_size": 32},
        projection_dim=dims["projection_dim"],
    )
    torch.manual_seed(SEED)
    model = CLIPModel(config).eval()
    model.save_pretrained(directory, safe_serialization=True)
    tokenizer.save_pretrained(directory)
    processor_class(size={"shortest_edge": image_size}, crop_size=image_size).save_pretrained(directory)
    return directory
