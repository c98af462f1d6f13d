"""One module per pipeline stage; ALL_STAGES is the graph the engine runs."""

from __future__ import annotations

from pipeline.stage import Stage
from stages.calibrate import CalibrateStage
from stages.compile import CompileStage
from stages.embed_vocab import EmbedVocabStage
from stages.export import ExportStage
from stages.fetch import FetchStage
from stages.smoke_test import SmokeTestStage
from stages.verify import VerifyStage

ALL_STAGES: tuple[Stage, ...] = (
    ExportStage(),
    VerifyStage(),
    CalibrateStage(),
    CompileStage(),
    EmbedVocabStage(),
    FetchStage(),
    SmokeTestStage(),
)
