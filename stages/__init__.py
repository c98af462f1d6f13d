"""One module per pipeline stage. ALL_STAGES is the graph of the CLIP model; with a `tagger:` in the
config, `stages_for` adds the tagger's own chain (tagger-export -> tagger-verify, tagger-calibrate ->
tagger-compile) and fetch and smoke-test carry and test the tagger beside the encoders."""

from __future__ import annotations

from typing import Any

from pipeline.stage import Stage
from stages.calibrate import CalibrateStage
from stages.compile import CompileStage
from stages.embed_vocab import EmbedVocabStage
from stages.export import ExportStage
from stages.fetch import FetchStage
from stages.smoke_test import SmokeTestStage
from stages.tagger_calibrate import TaggerCalibrateStage
from stages.tagger_compile import TaggerCompileStage
from stages.tagger_export import TaggerExportStage
from stages.tagger_verify import TaggerVerifyStage
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

TAGGER_STAGES: tuple[Stage, ...] = (
    TaggerExportStage(),
    TaggerVerifyStage(),
    TaggerCalibrateStage(),
    TaggerCompileStage(),
)

WITH_TAGGER: tuple[Stage, ...] = (
    *(stage for stage in ALL_STAGES if not isinstance(stage, (FetchStage, SmokeTestStage))),
    *TAGGER_STAGES,
    FetchStage(tagger=True),
    SmokeTestStage(tagger=True),
)


def stages_for(config: Any) -> tuple[Stage, ...]:
    """The stages a config builds: the CLIP model's, and the tagger's when it names one (`tagger:`)."""
    return WITH_TAGGER if getattr(config, "tagger", None) is not None else ALL_STAGES


def known_stage(name: str) -> Stage | None:
    """A stage of either graph by its name (what `--host` and the tasks look up)."""
    return next((stage for stage in WITH_TAGGER if stage.name == name), None)
