"""`device:` (one device) or `devices:` (a fleet) in pipeline.yaml, and what the stages that work on devices
(fetch, smoke-test) read of them."""

from __future__ import annotations

from typing import Any, Protocol

from pydantic import BaseModel, ConfigDict, Field

from pipeline.config import HostConfig, Strict
from pipeline.stage import Stage
from runtime.preprocess import Fidelity


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
    # serve: the port its server listens on there (`invoke serve --port` overrides; default 7860, as A1111).
    # Devices that share an address (several on one machine) need one each.
    port: int | None = Field(None, ge=1, le=65535)


DEVICE_NAME = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$"  # it names a folder in artifacts/ and on the command line


class NamedDevice(DeviceConfig):
    """One device of `devices:`: its name is what `--host` selects and what artifacts, the lock file and
    captions.jsonl call it."""

    name: str = Field(pattern=DEVICE_NAME)


class WithDevices(Protocol):
    """A config with devices and their hosts (the pipeline's config)."""

    def fleet(self) -> list[NamedDevice]: ...

    def host(self, name: str) -> DeviceHostConfig: ...


class DeviceParams(BaseModel):
    """What a stage working on one device reads: which host, where its models live, and how to reach it.
    Another device or folder means another run; another connect timeout does not."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str
    host: str
    models_dir: str
    address: str | None
    workdir: str
    npu_lock: str | None = Field(exclude=True)  # taken on the device; changes nothing made or measured
    connection: DeviceHostConfig = Field(exclude=True)


class FleetParams(BaseModel):
    """What a stage working on the selected devices reads: each device's params (one for `device:`)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    devices: tuple[DeviceParams, ...]

    @classmethod
    def for_fleet(cls, config: WithDevices, **own: Any) -> Any:
        """The params of the config's selected devices, with a deriving stage's `own` fields."""
        return cls(devices=tuple(_params(device, config.host(device.host)) for device in config.fleet()), **own)


def _params(device: NamedDevice, host: DeviceHostConfig) -> DeviceParams:
    return DeviceParams(
        name=device.name,
        host=device.host,
        models_dir=device.models_dir,
        address=host.address,
        workdir=host.workdir,
        npu_lock=device.npu_lock,
        connection=host,
    )


class DeviceStage(Stage):
    """A stage that works on the devices (fetch, smoke-test): the lock records them, and `--host` on it
    selects devices (or names another host as the one device), for every device stage alike."""

    def host_name(self, config: WithDevices) -> str:
        return ",".join(device.host for device in config.fleet())
