"""artifacts/reports/index.html: the last run, provenance, checks, quantization, device figures and captions.

One self-contained page (styles inline, charts as inline SVG, thumbnails as data: URIs; no script, no
network), written after every `invoke all` or stage command. It reads what the stages leave in
artifacts/reports/ and the lock file; the captions come from the float models (export) and the label
tables (embed-vocab) on the controller, so they need no device.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, TypeVar

from commands.html_parts import STYLE, escape, html_table, section, thumbnail
from common.contract import JsonFile
from common.errors import ModelFilesError
from common.hashing import sha256_text
from pipeline.files import canonical_json
from pipeline.records import StageRecord, read_records
from pipeline.runner import Outcome, StageOutcome
from pipeline.stage import part_report_file, report_file
from runtime.agreement import PickAgreement
from runtime.label_tables import VocabIndex
from runtime.model_io import CompileReport, ExportInfo
from runtime.smoke_test import Latency, SmokeReport
from stages import WITH_TAGGER
from stages.config import PipelineConfig
from stages.verify import Agreement, VerificationReport
from toolchains.precision_table import describe_layers

T = TypeVar("T", bound=JsonFile)

INDEX = "index.html"
WHY_CAPTIONS_DIFFER = (
    "Why the float model's caption and the device's may differ: the device runs the quantized encoders, whose "
    "image embedding is within compile's cosine of the float one; labels whose cosines with the image differ "
    "by less than that error may swap places, so a category can pick its second-best label: close, not wrong."
)
CAPTIONED_PHOTOS = 6


@dataclass(frozen=True)
class StageRun:
    stage: str
    outcome: str  # ran, up to date, failed
    reasons: tuple[str, ...]
    seconds: float
    summary: str


@dataclass(frozen=True)
class LastRun(JsonFile, file="run.json", made_by="invoke all"):
    """reports/run.json: the outcomes of the last run that did work, kept for the page (and for anyone who
    wants them as JSON); a later run that found everything up to date only notes when it checked."""

    stages: tuple[StageRun, ...]
    finished_at: str = ""
    checked_at: str = ""  # the latest run, when it did nothing; "" when the latest is this one


@dataclass(frozen=True)
class CaptionsCache(JsonFile, file="captions.cache.json", made_by="invoke all"):
    """The report's captions section and the digest of what it was made from (models, tables, photos)."""

    key: str
    html: str


def write_run(reports: Path, outcomes: Sequence[StageOutcome]) -> None:
    now = datetime.now(timezone.utc).isoformat(timespec="seconds")
    runs = tuple(StageRun(o.stage, o.outcome.value, tuple(o.reasons), round(o.seconds, 2), o.summary) for o in outcomes)
    previous = _read(LastRun, reports / LastRun.FILE)
    if previous and previous.stages and all(o.outcome is Outcome.UP_TO_DATE for o in outcomes):
        replace(previous, checked_at=now).write(reports)
    else:
        LastRun(runs, finished_at=now).write(reports)


def write_index(config: PipelineConfig) -> Path:
    """Build the page from whatever the artifacts hold now; sections without data say so."""
    reports = config.artifacts / "reports"
    reports.mkdir(parents=True, exist_ok=True)
    records = read_records(config.artifacts)
    smoke_reports = {
        device.name: _read(SmokeReport, part_report_file(config.artifacts, "smoke-test", device.name))
        for device in config.fleet()
    }
    smoke = next((r for r in smoke_reports.values() if r), None)
    sections = [
        _run_section(_read(LastRun, reports / LastRun.FILE)),
        _provenance_section(records),
        _verify_section(_read(VerificationReport, report_file(config.artifacts, "verify"))),
        _compile_section(_read(CompileReport, report_file(config.artifacts, "compile"))),
        *[_smoke_section(name, r) for name, r in smoke_reports.items()],
        _cached_captions_section(config, records, smoke.agreement.device_captions if smoke and smoke.agreement else {}),
    ]
    page = (
        "<!doctype html><html lang=en><head><meta charset=utf-8><title>clip-axera build report</title>"
        f"<meta name=viewport content='width=device-width'><style>{STYLE}</style></head><body>"
        "<h1>clip-axera build report</h1>" + "".join(sections) + "</body></html>\n"
    )
    path = reports / INDEX
    path.write_text(page, encoding="utf-8")
    return path


def _read(contract: type[T], path: Path) -> T | None:
    """A report through its contract; None when there is none or it is from another version."""
    try:
        return contract.from_json(json.loads(path.read_text(encoding="utf-8")), str(path))
    except (OSError, ValueError, ModelFilesError):
        return None


def _missing(what: str) -> str:
    return f"<p class=note>No {escape(what)} yet.</p>"


def _run_section(run: LastRun | None) -> str:
    if not run or not run.stages:
        return section("Last run", _missing("run recorded"))
    css = {"ran": "ran", "failed": "failed", "up to date": "up"}
    rows = [
        (
            f"<span class={css.get(r.outcome, 'up')}>{escape(r.outcome)}</span>",
            escape(r.stage),
            escape("; ".join(r.reasons) or "-"),
            f"{r.seconds:.1f} s" if r.seconds else "",
            escape(r.summary),
        )
        for r in run.stages
    ]
    when = f"<p class=note>Finished {escape(run.finished_at)}.</p>" if run.finished_at else ""
    if run.checked_at:
        when = (
            f"<p class=note>The latest run ({escape(run.checked_at)}) found every stage up to date; this is the last "
            f"run that did work, finished {escape(run.finished_at)}.</p>"
        )
    table = html_table(("outcome", "stage", "why", "time", "summary"), rows, raw=True, nowrap=(0, 1, 3))
    return section("Last run that did work" if run.checked_at else "Last run", when + table)


def _provenance_section(records: dict[str, StageRecord]) -> str:
    if not records:
        return section("Provenance", _missing("lock file"))
    order = [stage.name for stage in WITH_TAGGER if stage.name in records]  # pipeline order, as it ran
    rows = [(name, records[name].started_at, f"{records[name].seconds:.1f} s", records[name].host) for name in order]
    tools = {tool: version for name in order for tool, version in records[name].tools.items()}  # every stage's
    tool_text = ", ".join(f"{k} {v}" for k, v in sorted(tools.items()))
    model = records["export"].params.get("model", {}) if "export" in records else {}
    made_from = f"model {model.get('id', '?')} at revision {model.get('revision', '?')}; " if model else ""
    content = (
        html_table(("stage", "last ran", "took", "host"), rows, nowrap=(0, 1, 2))
        + f"<p class=note>{escape(made_from)}tools: {escape(tool_text)}</p>"
    )
    return section("Provenance (artifacts/pipeline.lock.json)", content)


def _verify_section(report: VerificationReport | None) -> str:
    if not report:
        return section("verify", _missing("verify report"))
    numerics = [
        (name, f"{n.min_cosine:.10f}", f"{n.max_abs_diff:.2e}", len(n.samples))
        for name, n in report.numerics.items()
        if n.min_cosine is not None and n.max_abs_diff is not None
    ]
    failed = [c for c in report.checks if not c.passed]
    verdict = f"{len(failed)} failed" if failed else "all passed"
    operators = [c for c in report.checks if ": op " in c.name]
    others = [c for c in report.checks if ": op " not in c.name]
    summary = (
        f"<p>{len(report.checks)} checks against {escape(report.target)}, {verdict}: {len(others)} in the first table, "
        f"{len(operators)} operators in the operator table; model {escape(report.model)}.</p>"
    )

    def rows(checks: list[Any]) -> Iterable[tuple[str, str, str]]:
        return ((c.name, "pass" if c.passed else "FAIL", c.detail) for c in checks)

    numbers = html_table(("output", "min cosine onnxruntime vs PyTorch", "max abs diff", "samples"), numerics)
    operator_table = (
        f"<details open><summary>operators vs the {escape(report.target)} operator table ({len(operators)})</summary>"
        + html_table(("operator", "result", "detail"), rows(operators), nowrap=(0, 1))
        + "</details>"
        if operators
        else ""
    )
    checks = html_table(("check", "result", "detail"), rows(others), nowrap=(1,))
    return section("verify", summary + numbers + _fidelity_note(report.fast_preprocessing) + checks + operator_table)


def _fidelity_note(fast: Agreement) -> str:
    if not fast.samples:
        return ""
    return (
        f"<p class=note>fast preprocessing (serve, caption) vs exact: embedding cosine min "
        f"{fast.min_cosine:.6f}, median {fast.median_cosine:.6f} over {len(fast.samples)} photo sizes</p>"
    )


def _compile_section(report: CompileReport | None) -> str:
    if not report:
        return section("compile", _missing("compile report"))
    rows, charts = [], []
    for name, model in report.models.items():
        cosine = model.cosine
        rows.append((name, model.file, "n/a" if cosine is None else f"{cosine:.5f}", model.cosine_source or ""))
        layers = (model.precision or {}).get("layers")
        if layers:
            worst = describe_layers(list(model.worst_layers))
            charts.append(
                f"<h3>{escape(name)}: cosine per layer</h3>{_layer_chart(layers)}"
                f"<p class=note>worst layers: {escape(worst)}</p>"
            )
    if not charts:
        charts.append(
            "<p class=note>Per-layer cosines come from Pulsar2's precision analysis (target pulsar2 with "
            "precision_analysis); the onnxruntime target reports the model's output only.</p>"
        )
    head = f"<p>target {escape(report.target)}, {escape(report.data_type)}, host {escape(report.host)}</p>"
    table = html_table(("encoder", "model", "quantized vs float cosine", "measured by"), rows)
    return section("compile", head + table + "".join(charts))


def _layer_chart(layers: list[dict[str, Any]], width: int = 1000, height: int = 180) -> str:
    """Cosine of every layer, in order, as a polyline over 1 - cosine on a log scale (small errors show)."""
    floor = 1e-6
    values = [max(1.0 - float(layer["cosine"]), floor) for layer in layers]
    top = max(max(values), 1e-3)
    span = math.log10(top) - math.log10(floor)
    step = width / max(len(values) - 1, 1)
    points = " ".join(
        f"{i * step:.1f},{height - (math.log10(v) - math.log10(floor)) / span * height:.1f}"
        for i, v in enumerate(values)
    )
    labels = "".join(
        f'<text x="2" y="{height - (e - math.log10(floor)) / span * height:.0f}" font-size="10" fill="#5b6577">'
        f"cos {1 - 10**e:.6g}</text>"
        for e in range(int(math.log10(floor)), math.ceil(math.log10(top)) + 1, 2)
    )
    return (
        f'<svg role="img" aria-label="cosine per layer" width="{width}" height="{height + 4}" '
        f'viewBox="0 0 {width} {height + 4}" style="background:#fafbfd;border:1px solid #d8dde6">'
        f'{labels}<polyline fill="none" stroke="#2f6fd6" stroke-width="1.5" points="{points}"/></svg>'
    )


def _smoke_section(device: str, report: SmokeReport | None) -> str:
    if not report:
        return section("smoke test", _missing("smoke-test report"))
    title = f"smoke test (on {device})"
    if report.error:
        return section(title, f"<p class=failed>could not run: {escape(report.error)}</p>")
    charts = [
        f"<h3>{escape(part)} encoder latency (ms)</h3>{_latency_chart(encoder.latency_ms)}"
        for part, encoder in report.encoders.items()
    ]
    head = f"<p>peak RSS {report.peak_rss_mb:.0f} MB on {escape(report.machine)}</p>"
    table = html_table(report.ENCODER_COLUMNS, report.encoder_rows())
    agreement = _agreement(report.agreement) if report.agreement else ""
    return section(title, head + table + agreement + "".join(charts))


def _agreement(agreement: PickAgreement) -> str:
    """Whether the device picks the float model's labels: per category, and the captions that changed."""
    table = html_table(agreement.COLUMNS, agreement.rows())
    changed = (
        html_table(
            ("photo", "float model", "device"),
            ((c.photo, c.float_caption, c.device_caption) for c in agreement.changed),
        )
        if agreement.changed
        else f"<p class=note>The device captions all {agreement.photos} photos as the float model does.</p>"
    )
    return (
        f"<h3>Picks: device vs float model, {agreement.photos} photos of verify, the full vocabulary</h3>"
        f"<p class=note>A cosine near 1 can still swap two close labels; this is what a user sees. "
        f"{WHY_CAPTIONS_DIFFER}</p>" + table + changed
    )


CHART_PAD = 8  # px right of the plot
AXIS_PX = 36  # px left of the plot: the count axis
MARKS_BAND = 32  # px above the bars, where the p50 and p95 labels sit
X_TICKS = 5


def _latency_chart(latency: Latency, width: int = 600, height: int = 132) -> str:
    """A histogram of the runs' latencies with the p50 and p95 marked: runs on the left axis (0 and the
    tallest bar's count; each bar's count and range in its tooltip), ms on the bottom one. The mark labels
    sit in a band above the bars, and one near the right edge is drawn leftwards from its line, so each
    stays inside the box."""
    samples = latency.samples or (latency.p50, latency.p95)
    low, high = min(samples), max(max(samples), latency.p95) * 1.05 + 1e-9
    bins = [0] * 20
    for value in samples:
        bins[min(int((value - low) / (high - low) * len(bins)), len(bins) - 1)] += 1
    plot, base = width - AXIS_PX - CHART_PAD, height - 20
    bar, peak, tallest = plot / len(bins), max(bins), base - MARKS_BAND
    grey = 'font-size="11" fill="#5b6577"'

    def at(value: float) -> float:
        return AXIS_PX + (value - low) / (high - low) * plot

    def edge(i: int) -> float:
        return low + (high - low) * i / len(bins)

    bars = "".join(
        f'<rect x="{AXIS_PX + i * bar + 1:.1f}" y="{base - n / peak * tallest:.1f}" width="{bar - 2:.1f}" '
        f'height="{n / peak * tallest:.1f}" fill="#7ea6e6"><title>{n} runs, {edge(i):.2f}-{edge(i + 1):.2f} ms'
        "</title></rect>"
        for i, n in enumerate(bins)
        if n
    )
    marks = "".join(
        f'<line x1="{x:.1f}" x2="{x:.1f}" y1="{y - 10}" y2="{base}" stroke="#b3261e"/>'
        + (
            f'<text x="{x - 3:.1f}" y="{y}" font-size="11" fill="#b3261e" text-anchor="end">{name} {value:.2f}</text>'
            if x > width / 2
            else f'<text x="{x + 3:.1f}" y="{y}" font-size="11" fill="#b3261e">{name} {value:.2f}</text>'
        )
        for name, value, y in (("p50", latency.p50, 12), ("p95", latency.p95, 26))
        for x in [at(value)]
    )
    counts = (
        f'<line x1="{AXIS_PX}" x2="{AXIS_PX}" y1="{base - tallest}" y2="{base}" stroke="#5b6577"/>'
        f'<text x="{AXIS_PX - 4}" y="{base - tallest + 4}" {grey} text-anchor="end">{peak}</text>'
        f'<text x="{AXIS_PX - 4}" y="{base}" {grey} text-anchor="end">0</text>'
        f'<text x="2" y="{base - tallest - 8}" {grey}>runs</text>'
    )
    ticks = ""
    for k in range(X_TICKS):
        value = low + (high - low) * k / (X_TICKS - 1)
        anchor = "start" if k == 0 else "end" if k == X_TICKS - 1 else "middle"
        text = f"{value:.2f} ms" if k == X_TICKS - 1 else f"{value:.2f}"
        x = at(value)
        ticks += (
            f'<line x1="{x:.1f}" x2="{x:.1f}" y1="{base}" y2="{base + 4}" stroke="#5b6577"/>'
            f'<text x="{x:.1f}" y="{height - 4}" {grey} text-anchor="{anchor}">{text}</text>'
        )
    return (
        f'<svg role="img" aria-label="latency histogram" width="{width}" height="{height}" '
        f'viewBox="0 0 {width} {height}" style="background:#fafbfd;border:1px solid #d8dde6">'
        f"{bars}{marks}{counts}{ticks}</svg>"
    )


def _cached_captions_section(
    config: PipelineConfig, records: dict[str, StageRecord], device_captions: dict[str, str]
) -> str:
    """The captions section, made again only when the models, the tables or the photos changed: loading
    the image encoder and captioning would otherwise cost every no-op `invoke all` a second or more."""
    from runtime.preprocess import find_images

    photos = find_images(config.stages.verify.images)[:CAPTIONED_PHOTOS]
    outputs = {
        stage: {name: state.sha256 for name, state in record.outputs.items()}
        for stage, record in records.items()
        if stage in ("export", "embed-vocab")
    }
    photo_states = [(str(p), p.stat().st_size, p.stat().st_mtime_ns) for p in photos]
    key = sha256_text(canonical_json({"outputs": outputs, "photos": photo_states, "device": device_captions}))
    reports = config.artifacts / "reports"
    cached = _read(CaptionsCache, reports / CaptionsCache.FILE)
    if cached and cached.key == key:
        return cached.html
    section = _captions_section(config, photos, device_captions)
    CaptionsCache(key, section).write(reports)
    return section


def _captions_section(config: PipelineConfig, photos: list[Path], device_captions: dict[str, str]) -> str:
    """Sample photos captioned by the float models and the label tables, with their best labels, and
    beside them what the device answered in the smoke test for the photos it captioned."""
    export, tables_dir = config.artifacts / "export", config.artifacts / "embed-vocab"
    if not photos or not (export / ExportInfo.FILE).is_file() or not (tables_dir / VocabIndex.FILE).is_file():
        return section("Captions", _missing("sample photos captioned (needs export and embed-vocab)"))
    from common.errors import UserError
    from runtime.opening import open_interrogator
    from runtime.preprocess import open_image

    try:
        interrogator = open_interrogator(export, tables=tables_dir)
    except UserError as exc:
        return section("Captions", f"<p class=note>{escape(exc)}</p>")
    cards = []
    for path in photos:
        image = open_image(path)
        result = interrogator.interrogate(image)
        best = "".join(
            f"<tr><td>{escape(c.name)}</td><td>{escape(', '.join(f'{p.label} ({p.score:.3f})' for p in c.top[:3]))}"
            "</td></tr>"
            for c in result.categories
        )
        device = device_captions.get(path.name)
        on_device = f"<p class=device><b>device</b>: {escape(device)}</p>" if device is not None else ""
        cards.append(
            f"<div class=photo><img alt='{escape(path.name)}' src='{thumbnail(image)}'>"
            f"<p><b>{escape(path.name)}</b>, float model: {escape(result.caption)}</p>{on_device}"
            f"<table>{best}</table></div>"
        )
    note = (
        "<p class=note>Float model: export's models with embed-vocab's tables. Device: the compiled model on "
        "the device in the smoke test (verify's photos only). Beside each category its three best labels, "
        f"each with its cosine with the image in brackets. {WHY_CAPTIONS_DIFFER}</p>"
    )
    return section("Captions", note + f"<div class=photos>{''.join(cards)}</div>")
