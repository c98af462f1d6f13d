"""Model directories of each family with random weights and a real tokenizer, made with no network.

"tiny" (small configs) serves the examples and the tests, for every family: CLIP with CLIP's BPE,
SigLIP with a Gemma-style BPE (SigLIP2's tokenizer class), Chinese-CLIP with a BERT WordPiece over Chinese
characters. "vit-b-32" has openai/clip-vit-base-patch32's shapes for benchmarks. All load through the same
`from_pretrained` path as the real checkpoints, so the real loading, export and runtime code runs on them.
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
# Chinese-CLIP's prompts: BERT splits CJK text into single characters, so the characters are the vocabulary.
_CHINESE = (
    "一张的照片猫狗咖啡杯桌子火箭发射台女人男人黑白油画山风景日落数字艺术电影灯光水彩素描城市街道夜晚森林河流海洋天空星"
)


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


def learn_merges(words: Iterable[str], count: int, word_end: str = "</w>") -> list[tuple[str, str]]:
    """Plain BPE: repeatedly merge the most frequent adjacent pair (ties broken by the pair itself). CLIP
    marks a word's last symbol with `</w>`; SentencePiece-style vocabularies (Gemma's) mark nothing."""
    freqs = Counter(words)
    splits = {word: (*word[:-1], word[-1] + word_end) for word in freqs}
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


def write_gemma_style_tokenizer(directory: Path) -> None:
    """A SigLIP2-style tokenizer (Gemma's BPE: `▁` for spaces, byte fallback, lowercased) saved with
    tokenizer.json, as google/siglip2-* ship theirs."""
    from transformers import Siglip2Tokenizer

    specials = ["<pad>", "<eos>", "<bos>", "<unk>", "<mask>"]
    byte_tokens = [f"<0x{b:02X}>" for b in range(256)]
    words = ["▁" + w for w in _CORPUS] + _CORPUS
    merges = learn_merges(words, N_MERGES, word_end="")
    letters = sorted({c for w in words for c in w})
    tokens = specials + byte_tokens + letters + ["".join(m) for m in merges]
    vocab = {token: index for index, token in enumerate(dict.fromkeys(tokens))}
    tokenizer = Siglip2Tokenizer(vocab=vocab, merges=merges)
    tokenizer.model_max_length = 64
    tokenizer.save_pretrained(directory)


def write_sentencepiece_tokenizer(directory: Path) -> None:
    """The original SigLIP checkpoints' tokenizer: SentencePiece (unigram) only, spiece.model, no tokenizer.json.
    The model is trained here on the corpus's words, deterministically."""
    import random

    import sentencepiece
    from transformers import SiglipTokenizer

    chooser = random.Random(SEED)
    lines = [" ".join(chooser.sample(_CORPUS, 6)) for _ in range(400)]
    corpus = directory / "spiece-corpus.txt"
    corpus.write_text("\n".join(lines) + "\n", encoding="utf-8")
    sentencepiece.SentencePieceTrainer.train(
        input=str(corpus),
        model_prefix=str(directory / "spiece"),
        vocab_size=200,
        hard_vocab_limit=False,
        model_type="unigram",
        character_coverage=1.0,
        pad_id=0,
        eos_id=1,
        unk_id=2,
        bos_id=-1,
        num_threads=1,
        minloglevel=2,
    )
    corpus.unlink()
    (directory / "spiece.vocab").unlink()
    tokenizer = SiglipTokenizer(vocab_file=str(directory / "spiece.model"))
    tokenizer.save_pretrained(directory)


def write_wordpiece_tokenizer(directory: Path) -> None:
    """A BERT WordPiece tokenizer (Chinese-CLIP's): specials, Chinese characters, the English words."""
    from transformers import BertTokenizer

    tokens = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *dict.fromkeys(_CHINESE), *dict.fromkeys(_CORPUS)]
    tokens += [chr(c) for c in range(ord("a"), ord("z") + 1)] + ["##" + chr(c) for c in range(ord("a"), ord("z") + 1)]
    tokenizer = BertTokenizer(vocab={token: index for index, token in enumerate(dict.fromkeys(tokens))})
    tokenizer.model_max_length = 52
    tokenizer.save_pretrained(directory)


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


def make_random_model(directory: Path, *, recipe: str = "clip", preset: str = "tiny") -> Path:
    """Write a complete model directory (config, safetensors weights, tokenizer, image processor). `recipe` is
    the family (clip, siglip, chinese_clip), or siglip_sentencepiece: SigLIP with the original checkpoints'
    SentencePiece-only tokenizer."""
    import torch
    import transformers

    directory.mkdir(parents=True, exist_ok=True)
    dims = PRESETS[preset]
    vision = {**dims["vision"], "image_size": IMAGE_SIZE, "patch_size": 32}
    if recipe == "clip":
        config = _clip_config(directory, dims, vision)
        model_class, processor = (
            transformers.CLIPModel,
            _processor("CLIPImageProcessor")(size={"shortest_edge": IMAGE_SIZE}, crop_size=IMAGE_SIZE),
        )
    elif recipe in ("siglip", "siglip_sentencepiece"):
        if recipe == "siglip":
            write_gemma_style_tokenizer(directory)
        else:
            write_sentencepiece_tokenizer(directory)
        tokenizer = transformers.AutoTokenizer.from_pretrained(directory)
        text = {**dims["text"], "vocab_size": len(tokenizer), "max_position_embeddings": 64}
        text |= {"pad_token_id": tokenizer.pad_token_id, "eos_token_id": tokenizer.eos_token_id}
        text |= {"bos_token_id": tokenizer.bos_token_id}
        config = transformers.SiglipConfig(text_config=text, vision_config=vision)
        model_class = transformers.SiglipModel
        processor = _processor("SiglipImageProcessor")(size={"height": IMAGE_SIZE, "width": IMAGE_SIZE})
    elif recipe == "chinese_clip":
        write_wordpiece_tokenizer(directory)
        tokenizer = transformers.AutoTokenizer.from_pretrained(directory)
        text = {**dims["text"], "vocab_size": len(tokenizer), "max_position_embeddings": 64, "pad_token_id": 0}
        config = transformers.ChineseCLIPConfig(
            text_config=text, vision_config=vision, projection_dim=dims["projection_dim"]
        )
        model_class = transformers.ChineseCLIPModel
        processor = _processor("ChineseCLIPImageProcessor")(
            size={"height": IMAGE_SIZE, "width": IMAGE_SIZE}, do_center_crop=False
        )
    else:
        raise ValueError(f"no random model recipe {recipe!r}")
    torch.manual_seed(SEED)
    model = model_class(config).eval()
    if hasattr(model, "logit_bias"):  # a trained SigLIP's scale and bias (probabilities spread as a real one's)
        with torch.no_grad():
            model.logit_scale.fill_(4.7)
            model.logit_bias.fill_(-12.0)
    model.save_pretrained(directory, safe_serialization=True)
    processor.save_pretrained(directory)
    return directory


IMAGE_SIZE = 224


def _processor(name: str) -> type:
    """transformers 5 names the Pillow processor ...Pil (the plain name wants torchvision and warns without it)."""
    import transformers

    return getattr(transformers, f"{name}Pil", None) or getattr(transformers, name)


def _clip_config(directory: Path, dims: dict, vision: dict) -> object:
    from transformers import CLIPConfig, CLIPTokenizer

    vocab = write_tokenizer_files(directory)
    tokenizer = CLIPTokenizer(vocab=str(directory / "vocab.json"), merges=str(directory / "merges.txt"))
    tokenizer.model_max_length = 77
    tokenizer.save_pretrained(directory)
    return CLIPConfig(
        text_config={
            **dims["text"],
            "vocab_size": dims["vocab_size"] or len(vocab),
            "max_position_embeddings": 77,
            "bos_token_id": vocab["<|startoftext|>"],
            "eos_token_id": vocab["<|endoftext|>"],
            "pad_token_id": vocab["<|endoftext|>"],
        },
        vision_config=vision,
        projection_dim=dims["projection_dim"],
    )
