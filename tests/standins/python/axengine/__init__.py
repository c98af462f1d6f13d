"""Test stand-in for Axera's pyaxengine: its documented API on top of onnxruntime.

Follows AXERA-TECH/pyaxengine:
- `axengine/__init__.py`: at import, `get_available_providers()`; with none it raises
  `ImportError("No providers found. Please make sure you have installed one of the following: [...]")`.
- `axengine/_session.py`: `InferenceSession(path, sess_options=None, providers=None, provider_options=None)`;
  providers as a name, or a list of names and (name, options) tuples, the first available one chosen.
  Which argument carries the options differs between releases: AXENGINE_STANDIN_RELEASE=tuple (the
  tuple's dict wins, else provider_options[0]) or provider_options (only provider_options[0] is read).
- `axengine/_axclrt.py`: AXCLRTSession reads `device_id` from its options and raises
  RuntimeError("Device index N is out of range, total M device.") past the cards present
  (AXENGINE_STANDIN_DEVICES, default 1).
- `axengine/_axe.py`: on an AX650 board with vNPU ENABLED only single-core (NPU1) models load, with
  BIG_LITTLE or LITTLE_BIG no triple-core (NPU3) one: ValueError("Model type '...' is not allowed when vnpu
  is inited as ..."). The vNPU mode comes from AXENGINE_STANDIN_VNPU (default DISABLED); the model's
  core count from the npu_mode the docker stand-in recorded in the .axmodel.
- `run(output_names, input_feed)` asserts exact shape and dtype. Inputs built with `src_dtype: S32`
  are declared int32 (widened to int64 for onnxruntime, which runs the copied ONNX model), with `src_dtype:
  U8` uint8 (converted to the ONNX model's float32, as the NPU converts them).
"""

from __future__ import annotations

import os

import numpy as np
import onnxruntime as ort
from axmodel_notes import NPU_MODE, SRC_DTYPE

axengine_provider_name = "AxEngineExecutionProvider"
axclrt_provider_name = "AXCLRTExecutionProvider"
_ALL = [axclrt_provider_name, axengine_provider_name]
_DTYPES = {"tensor(float)": "float32", "tensor(int64)": "int64", "tensor(int32)": "int32"}
# An input built with `src_dtype: S32` or `U8` takes that type on the NPU; the copied ONNX model's own type
# (int64 ids, float32 pixels) is what onnxruntime is fed.
_SOURCE_DTYPES = {"S32": "int32", "U8": "uint8"}
_ONNX_DTYPES = {"int32": np.int64, "uint8": np.float32}
_CORES = {"NPU1": "SINGLE", "NPU2": "DUAL", "NPU3": "TRIPLE"}
_VNPU_ALLOWS = {
    "DISABLED": {"SINGLE", "DUAL", "TRIPLE"},
    "ENABLED": {"SINGLE"},
    "BIG_LITTLE": {"SINGLE", "DUAL"},
    "LITTLE_BIG": {"SINGLE", "DUAL"},
}


def get_all_providers() -> list[str]:
    return list(_ALL)


def get_available_providers() -> list[str]:
    names = os.environ.get("AXENGINE_STANDIN_PROVIDERS", ",".join(reversed(_ALL)))
    return [p for p in names.split(",") if p]


if not get_available_providers():
    raise ImportError(f"No providers found. Please make sure you have installed one of the following: {_ALL}")


class NodeArg:
    def __init__(self, name: str, dtype: str, shape: tuple[int, ...]) -> None:
        self.name = name
        self.dtype = dtype
        self.shape = shape


class InferenceSession:
    def __init__(self, path_or_bytes, sess_options=None, providers=None, provider_options=None, **kwargs) -> None:
        available = get_available_providers()
        self._provider, tuple_options = _choose(providers, available)
        release = os.environ.get("AXENGINE_STANDIN_RELEASE", "tuple")
        from_list = provider_options[0] if provider_options else None
        self.provider_options = from_list if release == "provider_options" else (tuple_options or from_list)
        self._session = ort.InferenceSession(str(path_or_bytes), providers=["CPUExecutionProvider"])
        notes = self._session.get_modelmeta().custom_metadata_map  # see axmodel_notes
        if self._provider == axclrt_provider_name:
            self.device_id = int((self.provider_options or {}).get("device_id", 0))
            cards = int(os.environ.get("AXENGINE_STANDIN_DEVICES", "1"))
            if self.device_id >= cards:
                raise RuntimeError(f"Device index {self.device_id} is out of range, total {cards} device.")
        else:
            vnpu = os.environ.get("AXENGINE_STANDIN_VNPU", "DISABLED")
            model_type = _CORES[notes.get(NPU_MODE, "NPU1")]
            if model_type not in _VNPU_ALLOWS[vnpu]:
                raise ValueError(f"Model type '{model_type}' is not allowed when vnpu is inited as {vnpu}.")
        sources = {key.removeprefix(SRC_DTYPE): notes[key] for key in notes if key.startswith(SRC_DTYPE)}
        self._inputs = [
            NodeArg(i.name, _SOURCE_DTYPES.get(sources.get(i.name, ""), _DTYPES[i.type]), tuple(i.shape))
            for i in self._session.get_inputs()
        ]
        self._outputs = [NodeArg(o.name, "float32", tuple(o.shape)) for o in self._session.get_outputs()]

    def get_providers(self) -> str:
        return self._provider

    def get_inputs(self, shape_group: int = 0) -> list[NodeArg]:
        return self._inputs

    def get_outputs(self, shape_group: int = 0) -> list[NodeArg]:
        return self._outputs

    def run(self, output_names, input_feed, run_options=None, shape_group: int = 0) -> list[np.ndarray]:
        feed = {}
        for info in self._inputs:
            array = input_feed[info.name]
            assert list(info.shape) == list(array.shape) and info.dtype == array.dtype, (
                f"model inputs({info.name}) expect shape {info.shape} and dtype {info.dtype}, "
                f"however gets input with shape {array.shape} and dtype {array.dtype}"
            )
            feed[info.name] = array.astype(_ONNX_DTYPES[info.dtype]) if info.dtype in _ONNX_DTYPES else array
        names = output_names or [o.name for o in self._outputs]
        return self._session.run(names, feed)


def _choose(providers, available: list[str]) -> tuple[str, dict | None]:
    if providers is None:
        return available[0], None
    if isinstance(providers, str):
        if providers not in available:
            raise ValueError(f"Selected provider: '{providers}' is not available.")
        return providers, None
    unavailable = []
    for item in providers:
        name, options = item if isinstance(item, tuple) else (item, None)
        if name in available:
            return name, options
        unavailable.append(name)
    raise ValueError(f"Selected provider(s): {unavailable} is(are) not available.")
