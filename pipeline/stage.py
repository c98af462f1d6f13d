"""What a stage is: declared data (name, upstream stages, inputs, outputs, params) plus one action."""

from __future__ import annotations

import importlib.util
import inspect
import logging
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

from pipeline.config import DEVICE_STAGES, PipelineConfig
from pipeline.files import sha256_file


@dataclass(frozen=True)
class StageContext:
    """What `run` gets: the config, where to write, and where upstream outputs are."""

    config: PipelineConfig
    out_dir: Path
    log: logging.Logger

    def upstream(self, stage: str) -> Path:
        return self.config.artifacts / stage

    @property
    def reports_dir(self) -> Path:
        """Human-readable reports of every attempt, kept even when the stage fails (not tracked)."""
        return self.config.artifacts / "reports"

    @property
    def cache_dir(self) -> Path:
        """Shared, stage-independent cache (for example the materialized built-in tiny CLIP)."""
        return self.config.artifacts / "cache"


@dataclass(frozen=True)
class StageResult:
    """A one-line summary for the terminal and figures kept in the lock file."""

    summary: str
    figures: dict[str, Any] = field(default_factory=dict)


class Stage(ABC):
    """Subclasses declare the class attributes and implement `params` and `run`."""

    name: ClassVar[str]
    help: ClassVar[str]
    after: ClassVar[tuple[str, ...]] = ()
    outputs: ClassVar[tuple[str, ...]] = ()
    code_modules: ClassVar[tuple[str, ...]] = ()

    @abstractmethod
    def params(self, config: PipelineConfig) -> dict[str, Any]:
        """Every setting that changes this stage's outputs, as plain data (digested into the lock)."""

    def host_name(self, config: PipelineConfig) -> str:
        """The host this stage works on: the device for fetch and smoke-test, else its `host` param."""
        if self.name in DEVICE_STAGES:
            return config.device.host
        return str(getattr(config.stages.of(self.name), "host", "local"))

    def external_inputs(self, config: PipelineConfig) -> list[Path]:
        """Files outside artifacts/ that this stage reads (images, local model weights)."""
        return []

    def device_changes(self, config: PipelineConfig) -> list[str]:
        """For a stage whose work lives on another machine too (fetch): what is no longer there as it
        was left, each a reason to run again. Asked only when nothing else makes the stage stale."""
        return []

    @abstractmethod
    def run(self, ctx: StageContext) -> StageResult:
        """Do the work, writing only below `ctx.out_dir`."""

    def code_version(self) -> str:
        """Hash of this stage's module and the helper modules it declares: changed code reruns it.

        Modules are located, not imported, so a no-op run never pays for importing torch.
        """
        files = [Path(inspect.getfile(type(self)))]
        files += [Path(_module_origin(name)) for name in self.code_modules]
        return ":".join(sha256_file(path)[:16] for path in files)


def device_params(config: PipelineConfig, params: Any) -> dict[str, Any]:
    """A device stage's params plus the device and where its files live: another device means another run."""
    host = config.host(config.device.host)
    device = {"host": config.device.host, "models_dir": config.device.models_dir}
    return {**params.model_dump(mode="json"), **device, "address": host.address, "workdir": host.workdir}


def _module_origin(name: str) -> str:
    spec = importlib.util.find_spec(name)
    if spec is None or spec.origin is None:
        raise ModuleNotFoundError(f"stage code module {name!r} not found")
    return spec.origin
