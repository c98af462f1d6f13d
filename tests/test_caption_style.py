"""Captioning a training set as kohya's tagger does: trigger words, existing caption files, exclusions,
replacements, underscores, escapes, order, extension, separator, thresholds, a dry run, tag counts and
the report; one formatter for the server, a folder and a fleet."""

from __future__ import annotations

import csv
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from runtime.caption_style import CaptionStyle
from runtime.captioning import CaptionRun, caption_folder
from runtime.interrogator import Interrogator
from runtime.label_format import Existing, LabelFormat, TagOrder, exclusions
from tests.helpers import IMAGES, REPO, tiny_config_dict
from tests.once import hardlinked_copy

PICKS = [("long hair", 0.31), ("smile", 0.35), ("holding (cup)", 0.22), ("^_^", 0.2), ("Blue Sky", 0.25)]


def test_prefix_and_suffix_come_first_and_last_and_never_twice() -> None:
    label_format = LabelFormat(prefix=("sks person", "solo"), suffix=("smile",))
    assert label_format.format(PICKS) == "sks person, solo, long hair, holding (cup), ^_^, Blue Sky, smile"
    assert LabelFormat(prefix=("Long_Hair",)).words(PICKS)[:2] == ["Long_Hair", "smile"]  # same label: once


def test_exclusions_match_labels_as_a_reader_does_and_patterns_whole_labels() -> None:
    plain, patterns = exclusions(["blue sky", "re:.*hair", "re:smi"], patterns=True)
    assert LabelFormat(exclude=plain, exclude_patterns=patterns).words(PICKS) == ["smile", "holding (cup)", "^_^"]
    assert exclusions(["re:.*"])[0] == frozenset({"re:.*"})  # the server's options: a plain label, no regex


def test_underscores_escapes_replacements_and_order() -> None:
    underscored = LabelFormat(underscores=True, escape=True, replace=(("smile", "grin"),))
    assert underscored.words(PICKS) == ["long_hair", "grin", r"holding_\(cup\)", "^_^", "Blue_Sky"]  # kaomoji kept
    assert LabelFormat(underscores=False).spell("long_hair") == "long hair"
    assert LabelFormat(underscores=False).spell("^_^") == "^_^"
    by_score = LabelFormat(order=TagOrder.SCORE, ranks=True, separator=" | ").format(PICKS)
    assert by_score == "(smile:0.350) | (long hair:0.310) | (Blue Sky:0.250) | (holding (cup):0.220) | (^_^:0.200)"
    assert LabelFormat(order=TagOrder.ALPHA).words(PICKS) == ["Blue Sky", "^_^", "holding (cup)", "long hair", "smile"]


def test_append_twice_adds_nothing_twice_and_keeps_the_user_s_text_in_place() -> None:
    label_format = LabelFormat(prefix=("sks",), underscores=True)
    caption = label_format.format(PICKS)
    mine = "my own words, Long Hair, more of mine"
    once = label_format.merge(mine, caption, Existing.APPEND)
    assert once == "sks, my own words, Long Hair, more of mine, smile, holding_(cup), ^_^, Blue_Sky"
    assert label_format.merge(once, caption, Existing.APPEND) == once
    prepended = label_format.merge(mine, caption, Existing.PREPEND)
    assert prepended == "sks, smile, holding_(cup), ^_^, Blue_Sky, my own words, Long Hair, more of mine"
    assert label_format.merge(mine, caption, Existing.OVERWRITE) == caption


def test_flags_over_the_config_s_style_and_their_mistakes_in_words(tmp_path: Path) -> None:
    undesired = tmp_path / "undesired.txt"
    undesired.write_text("# one a line\nblurry\nre:^(bad|worse), .*$\n")
    style = CaptionStyle(prefix=("from config",), escape=True).with_flags(
        prefix="sks, solo", exclude=f"@{undesired}", replace="a,b;c,d", existing="append", sort=None, underscores=False
    )
    assert style.prefix == ("sks", "solo") and style.escape and style.existing is Existing.APPEND
    assert style.exclude == ("blurry", "re:^(bad|worse), .*$") and style.replace == {"a": "b", "c": "d"}
    with pytest.raises(ValueError, match="each replacement is `label,new label`"):
        CaptionStyle().with_flags(replace="a;b")
    with pytest.raises(ValueError, match="is not a file extension"):
        CaptionStyle().with_flags(extension="txt/../x")
    with pytest.raises(ValueError, match="is not a regular expression"):
        CaptionStyle().with_flags(exclude="re:(")


def _photos(folder: Path) -> Path:
    folder.mkdir(parents=True)
    for photo in sorted(IMAGES.glob("*.jpg"))[:3]:
        shutil.copy(photo, folder / photo.name)
    return folder


def test_a_folder_in_a_style_appended_twice_and_counted(interrogator: Interrogator, tmp_path: Path) -> None:
    photos = _photos(tmp_path / "set")
    (photos / f"{sorted(photos.glob('*.jpg'))[0].stem}.caption").write_text("my cat, indoors\n")
    style = CaptionStyle(prefix=("sks",), existing=Existing.APPEND, extension=".caption", max_tags=2, threshold=-1)
    first = caption_folder(interrogator, CaptionRun(photos, style=style))
    assert first.captioned == 3
    texts = {p.name: p.read_text() for p in photos.glob("*.caption")}
    assert len(texts) == 3 and not list(photos.glob("*.txt"))
    mine = texts[f"{sorted(photos.glob('*.jpg'))[0].stem}.caption"]
    assert mine.startswith("sks, my cat, indoors, ")  # the user's text kept, in place, after the trigger word
    second = caption_folder(interrogator, CaptionRun(photos, style=style))
    assert second.captioned == 3 and {p.name: p.read_text() for p in photos.glob("*.caption")} == texts
    records = [json.loads(line) for line in (photos / "captions.jsonl").read_text().splitlines()]
    tag_picks = [len(next(c for c in r["categories"] if c["name"] == "tags")["picks"]) for r in records]
    assert tag_picks == [2] * 6  # every tag passes threshold -1; --max-tags keeps the best 2


def test_invoke_caption_dry_run_report_tag_counts_and_the_config_s_caption_section(
    built_artifacts: Path, tmp_path: Path
) -> None:
    hardlinked_copy(built_artifacts.parent / "device", tmp_path / "device")
    data = tiny_config_dict(tmp_path / "artifacts")
    data["caption"] = {"prefix": ["from the config"], "underscores": True, "exclude": ["re:.*light.*"]}
    config = tmp_path / "pipeline.yaml"
    config.write_text(yaml.safe_dump(data))
    photos = _photos(tmp_path / "set")

    def caption(*args: str) -> subprocess.CompletedProcess:
        command = [sys.executable, "-m", "invoke", "caption", "--config", str(config), "--images", str(photos)]
        return subprocess.run([*command, *args], cwd=REPO, capture_output=True, text=True, check=False, timeout=300)

    dry = caption("--dry-run", "2", "--prefix", "sks")
    assert dry.returncode == 0, dry.stderr
    assert "dry run: 2 captioned, nothing written" in dry.stdout and dry.stdout.count(": sks, ") == 2
    assert not list(photos.glob("*.txt")) and not (photos / "captions.jsonl").exists()

    done = caption("--report", "--escape")
    assert done.returncode == 0, done.stderr
    texts = [p.read_text().strip() for p in sorted(photos.glob("*.txt"))]
    assert len(texts) == 3 and all(t.startswith("from the config, ") and "light" not in t for t in texts)
    assert all(" " not in label for t in texts for label in t.split(", ")[1:])  # the config's underscores
    rows = list(csv.reader((photos / "tags.csv").open(encoding="utf-8")))
    assert rows[0] == ["tag", "images"] and ["from the config", "3"] in rows[1:]
    assert "the set's most frequent tags" in done.stdout
    page = (photos / "caption-report.html").read_text()
    assert 'aria-label="labels per image"' in page and page.count("data:image/jpeg;base64,") == 3
    assert re.search(r"with a caption file</td><td class=n>3<", page)

    wrong = caption("--existing", "sometimes")
    assert wrong.returncode == 1 and "caption options: existing" in wrong.stderr.strip().splitlines()[-1]
