"""`device:` in pipeline.yaml, and what the stages that work on the device (fetch, smoke-test) read of it."""

from __future__ import annotations

from typing import Any, Protocol, TypeVar

from pydantic import BaseModel, ConfigDict, Field

from pipeline.config import HostConfig, Strict
from pipeline.stage import Stage
from runtime.preprocess import Fidelity

D = TypeVar("D", bound="DeviceParams")


def moved_to_device(data: Any) -> Any:
    """The device was once set per stage; one `device:` section now serves fetch, smoke-test, serve and
    caption, so that `--host` on any of them means the same device."""
    moved = sorted(set(data) & {"host", "models_dir"}) if isinstance(data, dict) else []
    if moved:
        targets = ", ".join(f"device.{key}" for key in moved)
        raise ValueError(
            f"{' and '.join(moved)}: set in the `device:` section now (one device for fetch, smoke-test, serve "
            f"and caption): move to {targets}"
        )
    return data


class DeviceHostConfig(HostConfig):
    """A host as a device: the Python the runtime's virtualenv is made with."""

    python: str = "python3"


class DeviceConfig(Strict):
    """The device: where fetch puts the models, where the smoke test, serve and caption find them, and
    how its NPU is shared. `--host` on fetch, smoke-test or serve names another host as the device."""

    host: str = "local"  # a host of `hosts`, or local
    models_dir: str = Field("models", min_length=1)  # relative to the host's workdir, or absolute; may be shared

    # A file on the device: every NPU call holds an exclusive flock on it, so a Stable Diffusion server that
    # locks the same file around its own NPU work never overlaps with ours (README: sharing the NPU).
    npu_lock: str | None = None
    # serve: idle seconds before the image encoder leaves the NPU
    unload_after: float | None = Field(None, gt=0, le=7 * 24 * 3600)
    # serve and caption: `fast` decodes a JPEG at a reduced DCT scale and box-reduces before the bicubic
    # resize (embedding cosine >= 0.999 of `exact`, which verify measures); `exact` is transformers' own.
    fidelity: Fidelity = Fidelity.FAST


class WithDevice(Protocol):
    """A config with a `device:` section and its hosts (the pipeline's config)."""

    device: DeviceConfig

    def host(self, name: str) -> DeviceHostConfig: ...


class DeviceParams(BaseModel):
    """What a stage working on the device reads: which host, where its models live, and how to reach it.
    Another device or folder means another run; another connect timeout does not."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    host: str
    models_dir: str
    address: str | None
    workdir: str
    connection: DeviceHostConfig = Field(exclude=True)

    @classmethod
    def for_device(cls: type[D], config: WithDevice, **own: Any) -> D:
        """The params of the config's device, with a deriving stage's `own` fields."""
        host = config.host(config.device.host)
        return cls(
            host=config.device.host,
            models_dir=config.device.models_dir,
            address=host.address,
            workdir=host.workdir,
            connection=host,
            **own,
        )


class DeviceStage(Stage):
    """A stage that works on `device:` (fetch, smoke-test): the lock records the device, and `--host` on it
    names another host as the device, for every device stage alike."""

    def host_name(self, config: WithDevice) -> str:
        return config.device.host
