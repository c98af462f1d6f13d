"""caption-report.html beside captions.jsonl (`invoke caption --report`): the set as its captions describe it,
in the build report's style. Counts, a histogram of labels per image, the most frequent labels and a
sample of the images with their captions; one self-contained file."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

from commands.html_parts import STYLE, escape, html_table, section, thumbnail
from runtime.captioning import UNREADABLE, CaptionRun, CaptionSummary, CaptionWriter, tag_counts

REPORT_NAME = "caption-report.html"
SAMPLE = 12  # images shown with their captions
TOP = 30  # labels in the frequency table (tags.csv has them all)


def write_caption_report(run: CaptionRun, summary: CaptionSummary) -> Path:
    writer = CaptionWriter(run, None)
    captions = [(image, target.read_text(encoding="utf-8")) for image, target in writer.targets() if target.is_file()]
    per_image = [len(writer.format.labels(text)) for _, text in captions]
    counts = tag_counts(run)
    figures = [
        ("images in the set", len(writer.targets())),
        ("with a caption file", len(captions)),
        ("captioned this run", summary.captioned),
        ("already captioned (skipped)", summary.skipped),
        ("unreadable", len(summary.failed)),
        ("distinct labels", len(counts)),
        ("labels per image (mean)", f"{sum(per_image) / len(per_image):.1f}" if per_image else "-"),
    ]
    top = sorted(counts.items(), key=lambda item: (-item[1], item[0]))[:TOP]
    sections = [
        section("Counts", html_table(("", "value"), figures, nowrap=(1,))),
        section("Labels per image", _histogram(Counter(per_image))),
        section(f"Most frequent labels (all {len(counts):,} in tags.csv)", html_table(("label", "images"), top)),
        section(f"A sample ({min(SAMPLE, len(captions))} of {len(captions)})", _sample(captions[:SAMPLE], run)),
    ]
    page = (
        "<!doctype html><html lang=en><head><meta charset=utf-8><title>caption report</title>"
        f"<meta name=viewport content='width=device-width'><style>{STYLE}</style></head><body>"
        f"<h1>Captions of {escape(run.images_dir)}</h1>" + "".join(sections) + "</body></html>\n"
    )
    path = run.folder / REPORT_NAME
    path.write_text(page, encoding="utf-8")
    return path


def _histogram(images_with: Counter[int], width: int = 600, height: int = 150) -> str:
    """Bars of how many images have 0, 1, 2 ... labels; each bar's count above it, the label counts below."""
    if not images_with:
        return "<p class=note>No caption files yet.</p>"
    most = max(images_with)
    peak = max(images_with.values())
    slot = (width - 20) / (most + 1)
    base, tallest = height - 22, height - 44
    parts = []
    for labels in range(most + 1):
        n = images_with.get(labels, 0)
        x = 10 + labels * slot
        bar = n / peak * tallest
        parts.append(
            f'<rect x="{x + 1:.1f}" y="{base - bar:.1f}" width="{max(slot - 2, 1):.1f}" height="{bar:.1f}" '
            f'fill="#7ea6e6"><title>{n} images with {labels} labels</title></rect>'
            f'<text x="{x + slot / 2:.1f}" y="{height - 6}" font-size="11" fill="#5b6577" text-anchor="middle">'
            f"{labels}</text>"
            + (
                f'<text x="{x + slot / 2:.1f}" y="{base - bar - 4:.1f}" font-size="11" text-anchor="middle">{n}</text>'
                if n
                else ""
            )
        )
    return (
        f'<svg role="img" aria-label="labels per image" width="{width}" height="{height}" '
        f'viewBox="0 0 {width} {height}" style="background:#fafbfd;border:1px solid #d8dde6">{"".join(parts)}</svg>'
        "<p class=note>Images (bar height, the count above) by the number of labels in their caption (below).</p>"
    )


def _sample(captions: list[tuple[Path, str]], run: CaptionRun) -> str:
    from runtime.preprocess import open_image

    cards = []
    for image_path, text in captions:
        name = image_path.relative_to(run.images_dir).as_posix()
        try:
            picture = f"<img alt='{escape(name)}' src='{thumbnail(open_image(image_path))}'>"
        except UNREADABLE as exc:  # an image unreadable since: its caption still shows
            picture = f"<p class=note>({escape(type(exc).__name__)}: not shown)</p>"
        cards.append(f"<div class=photo>{picture}<p><b>{escape(name)}</b>: {escape(text.strip())}</p></div>")
    return f"<div class=photos>{''.join(cards)}</div>"
