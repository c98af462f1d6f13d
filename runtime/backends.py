"""Inference backends behind one small interface: load a model file, run named inputs.

`.onnx` runs on onnxruntime; `.axmodel` on the NPU through Axera's pyaxengine (AxEngineExecutionProvider
on the board, AXCLRTExecutionProvider with a device_id on a PCIe/M.2 card). pyaxengine asserts exact
dtypes and shapes, so inputs are cast to what the model declares: int32 token ids for a model built with
`src_dtype: S32`, int64 for the ONNX one.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from common.errors import ModelFilesError
from runtime import axera_libraries
from runtime.errors import BackendUnavailable

AXENGINE_PROVIDER = "AxEngineExecutionProvider"
AXCLRT_PROVIDER = "AXCLRTExecutionProvider"
NO_PROVIDERS = "No providers found"  # pyaxengine's axengine/__init__.py, raised at import without a driver
# pyaxengine refuses a model whose core count the NPU's vNPU mode does not allow (axengine/_axe.py).
LOAD_HINT = (
    "a likely cause is stages.compile.pulsar2.npu_mode: a model built for NPU3 or NPU2 does not load while the "
    "NPU runs in vNPU mode, as another program such as a Stable Diffusion server may have set it up; compile "
    "with npu_mode NPU1 for a shared NPU"
)
AXENGINE_INSTALL = (
    "install Axera's pyaxengine wheel on the device: download axengine-*.whl from "
    "https://github.com/AXERA-TECH/pyaxengine/releases and `pip install` it (it is not on PyPI); on a "
    "PCIe/M.2 card the AXCL driver and runtime must be installed too"
)


ANY_SIZE = -1  # a dimension the model leaves open (a published ONNX's batch)


@dataclass(frozen=True)
class TensorInfo:
    name: str
    shape: tuple[int, ...]
    dtype: np.dtype


class Backend(Protocol):
    name: str
    provider: str

    @property
    def inputs(self) -> list[TensorInfo]: ...

    def run(self, feed: dict[str, np.ndarray]) -> dict[str, np.ndarray]: ...


_ORT_TYPES = {
    "tensor(float)": np.float32,
    "tensor(float16)": np.float16,
    "tensor(int64)": np.int64,
    "tensor(int32)": np.int32,
    "tensor(uint8)": np.uint8,
    "tensor(int8)": np.int8,
}


class _SessionBackend:
    """What both backends share once their session and tensor lists are set up."""

    _session: Any
    _inputs: list[TensorInfo]
    _outputs: list[str]

    @property
    def inputs(self) -> list[TensorInfo]:
        return self._inputs

    def run(self, feed: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        return dict(zip(self._outputs, self._session.run(None, conform(feed, self._inputs)), strict=True))


class OnnxRuntimeBackend(_SessionBackend):
    name = "onnxruntime"

    def __init__(self, path: Path, threads: int = 0) -> None:

        self._session = onnx_session(path, threads)
        self.provider = self._session.get_providers()[0]
        self._inputs = [
            TensorInfo(
                i.name, tuple(d if isinstance(d, int) else ANY_SIZE for d in i.shape), np.dtype(_ORT_TYPES[i.type])
            )
            for i in self._session.get_inputs()
        ]
        self._outputs = [o.name for o in self._session.get_outputs()]


class AxEngineBackend(_SessionBackend):
    name = "axengine"

    def __init__(self, path: Path, provider: str | None = None, device_id: int = 0) -> None:
        axengine = _import_axengine(path)
        available = list(axengine.get_available_providers())
        chosen = provider or available[0]
        if chosen not in available:
            raise BackendUnavailable(f"provider {chosen} is not available here; available: {', '.join(available)}")
        options = {"device_id": device_id}
        # Releases differ in which argument carries a card's options (the tuple's dict, or provider_options):
        # pass them in both, so a second card never silently runs on card 0.
        providers = [(chosen, options)] if chosen == AXCLRT_PROVIDER else [chosen]
        provider_options = [options] if chosen == AXCLRT_PROVIDER else None
        try:
            self._session = axengine.InferenceSession(str(path), providers=providers, provider_options=provider_options)
        except (RuntimeError, ValueError) as exc:
            raise BackendUnavailable(f"axengine could not load {path.name} with {chosen}: {exc} ({LOAD_HINT})") from exc
        self.provider = chosen
        self._inputs = [TensorInfo(i.name, tuple(i.shape), np.dtype(i.dtype)) for i in self._session.get_inputs()]
        self._outputs = [o.name for o in self._session.get_outputs()]


def _import_axengine(path: Path) -> Any:
    """pyaxengine, or why it cannot run: it raises ImportError at import when it finds no driver."""
    try:
        import axengine
    except ImportError as exc:
        if NO_PROVIDERS in str(exc):
            found = axera_libraries.diagnose() or "check the driver install and `axcl-smi` or /dev/ax_* on the device"
            raise BackendUnavailable(
                f"cannot run {path.name}: pyaxengine is installed but found no AX driver/runtime (AXCL on a "
                f"PCIe/M.2 card, libax_engine on the board): {found}. pyaxengine said: {exc}"
            ) from exc
        raise BackendUnavailable(f"cannot run {path.name}: axengine is not installed ({AXENGINE_INSTALL})") from exc
    return axengine


def conform(feed: dict[str, np.ndarray], inputs: list[TensorInfo]) -> dict[str, np.ndarray]:
    """Cast each input to the dtype the model declares (ids int64 -> int32 for an S32 axmodel)."""
    out = {}
    for info in inputs:
        if info.name not in feed:
            raise ModelFilesError(f"the model takes {[i.name for i in inputs]}, not {sorted(feed)}: run `invoke fetch`")
        array = np.ascontiguousarray(feed[info.name], dtype=info.dtype)
        fits = len(array.shape) == len(info.shape) and all(
            want in (ANY_SIZE, got) for got, want in zip(array.shape, info.shape, strict=True)
        )
        if not fits:
            raise ModelFilesError(
                f"input {info.name!r} has shape {array.shape}, the model takes {info.shape}: the "
                "model files and export.json disagree; run `invoke fetch`"
            )
        out[info.name] = array
    return out


DAMAGED_HINT = "the file is damaged: `invoke fetch --force` puts the set back (serve --verify-models checks every byte)"


def onnx_session(path: Path, threads: int = 0) -> Any:
    """An onnxruntime CPU session that does not spin between runs (spinning threads would compete with the
    ranking and preprocessing that follow); a file onnxruntime cannot parse is one ModelFilesError."""
    import onnxruntime as ort
    from onnxruntime.capi import onnxruntime_pybind11_state as ort_errors

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    try:
        return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    except (ort_errors.Fail, ort_errors.InvalidProtobuf, ort_errors.InvalidGraph, ort_errors.InvalidArgument) as exc:
        reason = str(exc).split(" failed:")[-1].strip()
        raise ModelFilesError(f"{path}: onnxruntime cannot load it ({reason}); {DAMAGED_HINT}") from exc


def open_backend(path: Path, provider: str | None = None, device_id: int = 0) -> Backend:
    """The backend for a model file, chosen by its extension."""
    if not path.is_file():
        raise BackendUnavailable(f"model file {path} not found")
    if path.suffix == ".axmodel":
        return AxEngineBackend(path, provider, device_id)
    if path.suffix == ".onnx":
        return OnnxRuntimeBackend(path)
    raise BackendUnavailable(f"{path.name}: unknown model type (expected .onnx or .axmodel)")
