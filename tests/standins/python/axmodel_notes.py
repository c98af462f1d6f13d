"""What the stand-ins record in a stand-in .axmodel (an ONNX copy) and read back: the facts a real
.axmodel carries for the NPU runtime. Shared by tests/standins/pulsar2 (in the stand-in image) and tests."""

from __future__ import annotations

from pathlib import Path

NPU_MODE = "pulsar2.npu_mode"
SRC_DTYPE = "pulsar2.src_dtype."


def mark_axmodel(source: Path, target: Path, npu_mode: str, src_dtypes: dict[str, str]) -> None:
    import onnx

    model = onnx.load(str(source))
    for key, value in {NPU_MODE: npu_mode, **{SRC_DTYPE + name: dt for name, dt in src_dtypes.items()}}.items():
        entry = model.metadata_props.add()
        entry.key, entry.value = key, value
    onnx.save(model, str(target))
