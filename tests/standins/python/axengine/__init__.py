"""Test stand-in for Axera's pyaxengine: its documented API on top of onnxruntime.

No NPU exists here. The stand-in docker "compiles" by copying the ONNX model into the .axmodel, so this
module runs that file with onnxruntime, while behaving as pyaxengine does: `InferenceSession(path,
providers=...)`, `get_inputs()` / `get_outputs()` returning NodeArg(name, dtype, shape), `run(None or
names, feed)` asserting exact shape and dtype. Token-id inputs are declared int32, as a model built
with `src_dtype: S32` declares them, and widened to int64 for onnxruntime.
"""

from __future__ import annotations

import os

import numpy as np
import onnxruntime as ort

_PROVIDERS = os.environ.get("AXENGINE_STANDIN_PROVIDERS", "AxEngineExecutionProvider,AXCLRTExecutionProvider")
_DTYPES = {"tensor(float)": "float32", "tensor(int64)": "int32", "tensor(int32)": "int32"}


def get_available_providers() -> list[str]:
    return [p for p in _PROVIDERS.split(",") if p]


class NodeArg:
    def __init__(self, name: str, dtype: str, shape: tuple[int, ...]) -> None:
        self.name = name
        self.dtype = dtype
        self.shape = shape


class InferenceSession:
    def __init__(self, path_or_bytes, sess_options=None, providers=None, provider_options=None, **kwargs) -> None:
        available = get_available_providers()
        if not available:
            raise ValueError("No available providers")
        chosen = providers if isinstance(providers, str) else None
        for item in providers or []:
            name = item[0] if isinstance(item, tuple) else item
            if name in available:
                chosen = name
                break
        if chosen is None and providers:
            raise ValueError(f"Selected provider(s): {providers} is(are) not available.")
        self._provider = chosen or available[0]
        self._session = ort.InferenceSession(str(path_or_bytes), providers=["CPUExecutionProvider"])
        self._inputs = [NodeArg(i.name, _DTYPES[i.type], tuple(i.shape)) for i in self._session.get_inputs()]
        self._outputs = [NodeArg(o.name, "float32", tuple(o.shape)) for o in self._session.get_outputs()]

    def get_providers(self) -> str:
        return self._provider

    def get_inputs(self, shape_group: int = 0) -> list[NodeArg]:
        return self._inputs

    def get_outputs(self, shape_group: int = 0) -> list[NodeArg]:
        return self._outputs

    def run(self, output_names, input_feed, run_options=None, shape_group: int = 0) -> list[np.ndarray]:
        missing = [i.name for i in self._inputs if i.name not in input_feed]
        if missing:
            raise ValueError(f"Required inputs ({missing}) are missing from input feed ({list(input_feed)}).")
        feed = {}
        for info in self._inputs:
            array = input_feed[info.name]
            assert list(info.shape) == list(array.shape) and info.dtype == array.dtype, (
                f"model inputs({info.name}) expect shape {info.shape} and dtype {info.dtype}, "
                f"however gets input with shape {array.shape} and dtype {array.dtype}"
            )
            feed[info.name] = array.astype(np.int64) if info.dtype == "int32" else array
        names = output_names or [o.name for o in self._outputs]
        return self._session.run(names, feed)
