"""commands/report_page.py: what the build report page shows, checked in its markup."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from commands.report_page import CHART_PAD, MARKS_BAND, LastRun, _latency_chart, _run_section, write_run
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
        anchor = 'text-anchor="end"' in attributes
        left = x - len(text) * CHAR_PX if anchor else x
        right = x if anchor else x + len(text) * CHAR_PX
        assert left >= 0 and right <= width, (text, left, right)
        assert 0 < y <= height
    tops = [float(y) for y in re.findall(r'<rect x="[\d.]+" y="([\d.]+)"', svg)]
    assert tops and min(tops) >= MARKS_BAND  # the labels' band (y 12 and 26) stays above every bar
    assert all(float(x) >= CHART_PAD for x in re.findall(r'<rect x="([\d.]+)"', svg))


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
