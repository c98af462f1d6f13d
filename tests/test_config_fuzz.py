"""Property test: whatever pipeline.yaml holds, loading it either succeeds or fails with ConfigError
lines that each name the file; never another exception, never a traceback."""

from __future__ import annotations

import tempfile
from pathlib import Path

import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pipeline.errors import ConfigError
from stages.config import load_config

KEYS = [
    "model",
    "id",
    "revision",
    "image_size",
    "context_length",
    "artifacts",
    "hosts",
    "stages",
    "kind",
    "address",
    "user",
    "port",
    "key",
    "workdir",
    "retries",
    "export",
    "verify",
    "calibrate",
    "compile",
    "embed-vocab",
    "fetch",
    "smoke-test",
    "host",
    "target",
    "opset",
    "min_cosine",
    "images",
    "pulsar2",
    "data_type",
    "vocabulary",
    "runs",
    "local",
    "mac",
    "pi",
    "ssh",
]
scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**70), 2**70),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=30),
    st.sampled_from(["builtin:tiny-clip", "pulsar2", "onnxruntime", "local", "ssh", "U16", "~/x", "../a b"]),
)
keys = st.one_of(st.sampled_from(KEYS), st.text(max_size=12), st.integers(-5, 5))
documents = st.recursive(
    scalars,
    lambda inner: st.one_of(st.lists(inner, max_size=4), st.dictionaries(keys, inner, max_size=5)),
    max_leaves=25,
)
texts = st.one_of(
    st.text(max_size=200),  # whatever a broken editor leaves behind
    st.binary(max_size=200).map(lambda b: b.decode("latin-1")),
    documents.map(lambda d: yaml.safe_dump(d, allow_unicode=True)),
)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(texts)
def test_any_file_loads_or_fails_with_lines_naming_the_file(text: str) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "pipeline.yaml"
        path.write_text(text, encoding="utf-8", errors="surrogatepass")
        try:
            load_config(path)
        except ConfigError as exc:
            lines = str(exc).splitlines()
            assert lines and all(line.startswith(f"{path}: ") for line in lines), str(exc)
            assert "Traceback" not in str(exc)
