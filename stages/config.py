"""The whole pipeline.yaml: the engine's part (artifacts, hosts), the model, the device(s), and `stages:`, whose
sections are assembled from the registered stages. A stage's settings are declared in its own module
(`settings = ExportParams`): adding one touches that module only.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, cast

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, create_model, model_validator

from deploy.device_config import DEVICE_NAME, DeviceConfig, DeviceHostConfig, DeviceStage, NamedDevice
from modeling.model_config import ModelConfig
from modeling.tagger_config import TaggerConfig
from pipeline.config import EngineConfig
from pipeline.config import load_config as load_schema
from pipeline.errors import ConfigError
from runtime.caption_style import CaptionStyle
from stages import ALL_STAGES, known_stage
from toolchains.docker_engine import BuildHostConfig


def params_field(stage: str) -> str:
    """The one mapping from a stage's name to its field under `stages` (`embed-vocab` -> embed_vocab)."""
    return stage.replace("-", "_")


class _Stages(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, strict=True, allow_inf_nan=False, populate_by_name=True)

    def of(self, stage: str) -> Any:
        """The settings of a stage by its name, or None for a stage without settings."""
        return getattr(self, params_field(stage), None)


def _section(settings: Any, name: str) -> tuple[Any, Any]:
    """A stage's section under `stages:`, its key spelled as the stage's name, its defaults when absent."""
    return settings, Field(TypeAdapter(settings).validate_python({}), alias=name)


StagesConfig = create_model(
    "StagesConfig",
    __base__=_Stages,
    **{params_field(s.name): _section(s.settings, s.name) for s in ALL_STAGES if s.settings is not None},
)


class Host(BuildHostConfig, DeviceHostConfig):
    """A host of pipeline.yaml: any of them may be the build host or the device."""


class PipelineConfig(EngineConfig):
    """The whole pipeline.yaml."""

    hosts: dict[str, Host] = Field(default_factory=lambda: {"local": Host(kind="local")})

    model: ModelConfig = ModelConfig()
    tagger: TaggerConfig | None = None  # a WD booru tagger built for the same device(s)
    device: DeviceConfig = DeviceConfig()  # one device; or
    devices: list[NamedDevice] = Field(default_factory=list, max_length=256)  # a fleet
    stages: StagesConfig = StagesConfig()  # type: ignore[valid-type]
    caption: CaptionStyle = CaptionStyle()  # `invoke caption`'s style for this dataset; its flags override it

    @model_validator(mode="after")
    def _hosts_exist(self) -> PipelineConfig:
        if self.devices and "device" in self.model_fields_set:
            raise ValueError("set `device:` (one device) or `devices:` (a list of named devices), not both")
        seen: dict[str, str] = {}
        for index, device in enumerate(self.devices):
            if device.name in seen.values():
                raise ValueError(f"devices[{index}]: the name {device.name!r} is taken by another device")
            if device.host in seen:
                raise ValueError(
                    f"devices[{index}] ({device.name}): host {device.host!r} is already device {seen[device.host]!r}; "
                    "one device per host (its workdir holds the runtime, the server and the worker)"
                )
            seen[device.host] = device.name
        if not self.devices:
            _check_device_name("device.host", self.device.host)
        keys = [("stages.compile.host", self.stages.compile.host), ("device.host", self.device.host)]
        keys += [(f"devices[{i}].host", device.host) for i, device in enumerate(self.devices)]
        for key, name in keys:
            if name != "local" and name not in self.hosts:
                known = ", ".join(sorted(self.hosts)) or "none"
                raise ValueError(f"{key} {name!r} is not in hosts (hosts: {known})")
        return self

    def host(self, name: str) -> Host:
        return cast(Host, super().host(name))

    def fleet(self) -> list[NamedDevice]:
        """The devices the device stages, serve and caption work on: `devices:` as selected, or `device:`
        named after its host."""
        if self.devices:
            return list(self.devices)
        return [NamedDevice(name=self.device.host, **dict(self.device))]

    def with_devices(self, selection: str) -> PipelineConfig:
        """`--host` on a device stage, serve or caption: a device name, a comma list of them, or `all`. With
        one `device:`, a host name (or list) makes those hosts the device(s), with its settings."""
        names = list(dict.fromkeys(name.strip() for name in selection.split(",") if name.strip()))
        if not names:
            raise ConfigError("--host is empty", hint="pass a device name, a comma list of them, or all")
        if names == ["all"]:
            return self
        if not self.devices:
            for name in names:
                self.host(name)
                _check_device_name("--host", name, ConfigError)
            if len(names) == 1:
                return self.model_copy(update={"device": self.device.model_copy(update={"host": names[0]})})
            return self.model_copy(
                update={"devices": [NamedDevice(name=name, **{**dict(self.device), "host": name}) for name in names]}
            )
        by_name = {device.name: device for device in self.devices}
        unknown = [name for name in names if name not in by_name]
        if unknown:
            raise ConfigError(
                f"--host {', '.join(unknown)}: no such device", hint=f"devices in the config: {', '.join(by_name)}, all"
            )
        return self.model_copy(update={"devices": [by_name[name] for name in names]})

    def with_host(self, stage: str, host: str) -> PipelineConfig:
        """This config with the stage's host replaced (what `--host` does): the device(s) for the stages
        that work on them (every one of them, then), the build host for compile."""
        known = known_stage(stage)
        if isinstance(known, DeviceStage):
            return self.with_devices(host)
        self.host(host)
        section = (known.settings_of if known else None) or stage
        params = self.stages.of(section)
        if params is None or "host" not in type(params).model_fields:
            raise ConfigError(f"stage {stage!r} does not run on a host; drop --host")
        stages = self.stages.model_copy(update={params_field(section): params.model_copy(update={"host": host})})
        return self.model_copy(update={"stages": stages})


def _check_device_name(key: str, host: str, error: type[Exception] = ValueError) -> None:
    """With one `device:`, the device is named after its host: a name that can be a folder's."""
    if not re.fullmatch(DEVICE_NAME, host):
        raise error(
            f"{key} {host!r}: the device is named after its host, so the host's name must be letters, digits, "
            "'.', '_' or '-' (rename the host, or use `devices:` with a `name`)"
        )


def load_config(path: Path | str) -> PipelineConfig:
    """Read and validate a pipeline file; every problem is a ConfigError naming the file and the key."""
    return load_schema(path, PipelineConfig)
