"""commands/report_page.py: what the build report page shows, checked in its markup."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from commands.report_page import AXIS_PX, MARKS_BAND, LastRun, _latency_chart, _run_section, write_run
from pipeline.runner import Outcome, StageOutcome
from runtime.smoke_test import Latency

CHAR_PX = 7.0  # a generous average width of an 11 px sans-serif character


@pytest.mark.parametrize(
    "latency",
    [
        Latency(p50=0.71, p95=0.93, runs=20, samples=(0.69, 0.7, 0.71, 0.72, 0.9, 0.93)),  # p95 at the right edge
        Latency(p50=1.0, p95=1.0, runs=3, samples=(1.0, 1.0, 1.0)),  # both marks on the first bar
        Latency(p50=5.0, p95=9.0, runs=2, samples=()),
    ],
)
def test_the_latency_chart_keeps_its_labels_inside_the_box_and_off_the_bars(latency: Latency) -> None:
    svg = _latency_chart(latency)
    width, height = (int(v) for v in re.search(r'width="(\d+)" height="(\d+)"', svg).groups())
    for attributes, text in re.findall(r"<text ([^>]*)>([^<]*)<", svg):
        x, y = (float(re.search(rf'{name}="([\d.]+)"', attributes).group(1)) for name in ("x", "y"))
        anchor = re.search(r'text-anchor="(\w+)"', attributes)
        share = {"end": 1.0, "middle": 0.5}.get(anchor.group(1) if anchor else "start", 0.0)  # of it left of x
        left, right = x - share * len(text) * CHAR_PX, x + (1 - share) * len(text) * CHAR_PX
        assert left >= 0 and right <= width, (text, left, right)
        assert 0 < y <= height
    tops = [float(y) for y in re.findall(r'<rect x="[\d.]+" y="([\d.]+)"', svg)]
    assert tops and min(tops) >= MARKS_BAND  # the labels' band (y 12 and 26) stays above every bar
    assert all(float(x) >= AXIS_PX for x in re.findall(r'<rect x="([\d.]+)"', svg))  # right of the count axis
    counts = [int(n) for n in re.findall(r"<title>(\d+) runs, ", svg)]
    assert sum(counts) == len(latency.samples or (latency.p50, latency.p95))  # every run in a bar
    labels = re.findall(r"<text [^>]*>([^<]*)<", svg)
    assert {"runs", "0", str(max(counts))} <= set(labels) and labels[-1].endswith(" ms")
    assert len([label for label in labels if re.fullmatch(r"\d+\.\d+( ms)?", label)]) == 5  # the ms axis's ticks


def test_the_page_s_counts_equal_its_rows_and_it_names_every_tool_and_unit(tiny_pipeline) -> None:
    from commands.report_page import WHY_CAPTIONS_DIFFER, write_index
    from pipeline.records import read_records
    from pipeline.stage import report_file
    from stages.verify import VerificationReport

    config = tiny_pipeline()
    page = write_index(config).read_text()
    verify = page[page.index("<h2>verify</h2>") : page.index("<h2>compile</h2>")]
    path = report_file(config.artifacts, "verify")
    checks = len(VerificationReport.from_json(json.loads(path.read_text()), str(path)).checks)
    first, operators = (int(n) for n in re.search(r"(\d+) in the first table, (\d+) operators", verify).groups())
    assert f"<p>{checks} checks against ax650, all passed" in verify and first + operators == checks
    tables = re.findall(r"<table>(.*?)</table>", verify)
    assert [t.count("<tr>") - 1 for t in tables[1:]] == [first, operators]  # the header row aside
    tools = {tool for record in read_records(config.artifacts).values() for tool in record.tools}
    assert {"torch", "transformers", "onnx", "onnxruntime"} <= tools
    assert all(f"{tool} " in page for tool in tools)
    assert WHY_CAPTIONS_DIFFER in page and "its cosine with the image in brackets" in page
    assert re.search(r"<td class=n>[\d.]+ s</td>", page)  # short cells kept on one line


def test_a_run_that_did_nothing_keeps_the_last_run_that_did_work(tmp_path: Path) -> None:
    write_run(tmp_path, [StageOutcome("export", Outcome.RAN, ("stage code changed",), 10.7, "exported")])
    write_run(tmp_path, [StageOutcome("export", Outcome.UP_TO_DATE, ())])
    run = LastRun.read(tmp_path)
    assert [s.outcome for s in run.stages] == ["ran"] and run.checked_at >= run.finished_at > ""
    html = _run_section(run)
    assert "Last run that did work" in html and "found every stage up to date" in html and "exported" in html
    write_run(tmp_path, [StageOutcome("export", Outcome.FAILED, ("forced",), 1.0, "boom")])
    assert LastRun.read(tmp_path).checked_at == "" and "Last run that did work" not in _run_section(
        LastRun.read(tmp_path)
    )


def test_report_files_are_readable_like_the_page_not_private(tmp_path: Path) -> None:
    """mkstemp's 0600 once made every JSON report unreadable to others while index.html was 0644."""
    import os

    previous = os.umask(0o022)
    try:
        write_run(tmp_path, [StageOutcome("export", Outcome.RAN, (), 1.0, "")])
    finally:
        os.umask(previous)
    assert (tmp_path / LastRun.FILE).stat().st_mode & 0o777 == 0o644
