"""One module per pipeline stage; ALL_STAGES is the graph the engine runs."""

from __future__ import annotations

from pipeline.stage import Stage
from stages.export import ExportStage
from stages.verify import VerifyStage

ALL_STAGES: tuple[Stage, ...] = (ExportStage(), VerifyStage())
