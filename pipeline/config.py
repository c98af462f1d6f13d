"""pipeline.yaml: the schema, loading, and errors that name the file and the key path.

Every model is frozen and rejects unknown keys, so a typo is an error instead of a silently ignored
setting. Relative paths are resolved against the config file's directory at load time, so the rest of
the code only ever sees absolute paths.
"""

from __future__ import annotations

import difflib
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    model_validator,
)

from pipeline.errors import ConfigError
from pipeline.user_files import read_yaml

BUILTIN_TINY_CLIP = "builtin:tiny-clip"
# Built-in models made on the fly with random weights: id -> size preset (see modeling/random_clip.py).
BUILTIN_MODELS = {BUILTIN_TINY_CLIP: "tiny", "builtin:random-vit-b-32": "vit-b-32"}
DEFAULT_MODEL_ID = "openai/clip-vit-base-patch32"
# Pulsar2 prefers opset 14 (Axera's CLIP examples use it; optimum's CLIPOnnxConfig defaults to it too).
DEFAULT_OPSET = 14
SUPPORTED_TARGETS = ("ax650",)
DEFAULT_PROMPTS = (
    "a photo of an astronaut",
    "a photo of a cat",
    "a cup of coffee on a table",
    "a rocket on the launch pad",
    "a portrait of a woman in uniform, black and white photograph",
    "an oil painting of a mountain landscape at sunset, highly detailed",
)


def _resolve_path(value: Path, info: ValidationInfo) -> Path:
    base = Path((info.context or {}).get("base_dir", "."))
    return (base / value.expanduser()).resolve()


def _as_path(value: Any) -> Any:
    return Path(value) if isinstance(value, str) else value


ConfigPath = Annotated[Path, BeforeValidator(_as_path), AfterValidator(_resolve_path)]


class Strict(BaseModel):
    """Unknown keys are errors, and so are values of another type: `runs: true` or `runs: '20'` is not 20."""

    model_config = ConfigDict(extra="forbid", frozen=True, strict=True, allow_inf_nan=False)


class ModelConfig(Strict):
    """Which CLIP to build: a Hugging Face id, a local directory, or the built-in tiny CLIP."""

    id: str = DEFAULT_MODEL_ID
    revision: str = "main"
    image_size: int = Field(224, ge=32, le=1024)
    context_length: int = Field(77, ge=8, le=512)

    @model_validator(mode="after")
    def _resolve_local_dir(self, info: ValidationInfo) -> ModelConfig:
        if self.id.startswith("builtin:"):
            if self.id not in BUILTIN_MODELS:
                raise ValueError(f"unknown built-in model {self.id!r}; built-in: {', '.join(BUILTIN_MODELS)}")
            return self
        base = Path((info.context or {}).get("base_dir", "."))
        candidate = (base / Path(self.id).expanduser()).resolve()
        looks_local = self.id.startswith((".", "/", "~")) or candidate.exists()
        if looks_local:
            object.__setattr__(self, "id", str(candidate))
        return self

    @property
    def is_local_dir(self) -> bool:
        return Path(self.id).is_absolute()


class HostConfig(Strict):
    """Where a stage runs: this machine, or an SSH host (address or ssh_config alias).

    A local host's relative workdir is resolved against the config file, like every other path.
    """

    kind: Literal["local", "ssh"] = "ssh"
    address: str | None = None
    user: str | None = None
    port: int | None = Field(None, ge=1, le=65535)  # None: ssh_config's Port, else 22
    key: str | None = None
    known_hosts: str | None = None  # extra known_hosts file, besides ~/.ssh/known_hosts
    trust_new_host_key: bool = False  # accept (and remember) an unknown host key: explicit, never silent
    workdir: str = "~/clip-axera"
    connect_timeout: float = Field(15.0, gt=0, le=300)
    command_timeout: float = Field(3 * 3600.0, gt=0, le=7 * 24 * 3600)
    retries: int = Field(3, ge=0, le=10)  # reconnect attempts on connection errors (never on auth errors)
    docker: str | None = None  # docker binary; found on PATH or in the usual macOS places when unset
    min_free_gb: float = Field(5.0, ge=0, le=1_000_000)
    python: str = "python3"

    @model_validator(mode="after")
    def _check(self, info: ValidationInfo) -> HostConfig:
        if self.kind == "ssh" and not self.address:
            raise ValueError("an ssh host needs 'address' (a hostname, IP or ssh_config alias)")
        if self.kind == "local" and not self.workdir.startswith(("/", "~")):
            base = Path((info.context or {}).get("base_dir", "."))
            object.__setattr__(self, "workdir", str((base / self.workdir).resolve()))
        return self

    def describe(self) -> str:
        if self.kind == "local":
            return "this machine"
        user = f"{self.user}@" if self.user else ""
        port = f":{self.port}" if self.port else ""
        return f"{user}{self.address}{port}"


# The photos, prompts and vocabulary that ship with the project: defaults name them wherever the config
# file lies and whatever the working directory (a path written in the config is relative to the config).
SHIPPED = Path(__file__).resolve().parent.parent


class ExportParams(Strict):
    opset: int = Field(DEFAULT_OPSET, ge=11, le=21)
    simplify: bool = True


class VerifyParams(Strict):
    target: Literal[SUPPORTED_TARGETS] = "ax650"  # type: ignore[valid-type]
    images: ConfigPath = SHIPPED / "data/images"
    max_images: int = Field(4, ge=1, le=64)
    prompts: tuple[str, ...] = Field(DEFAULT_PROMPTS, min_length=1, strict=False)  # a YAML list
    min_cosine: float = Field(0.9999, ge=0, le=1)
    max_abs_diff: float = Field(1e-3, gt=0, le=10)


class CalibrateParams(Strict):
    images: ConfigPath = SHIPPED / "data/images"
    image_count: int = Field(32, ge=1, le=10000)
    prompts: ConfigPath = SHIPPED / "data/calibration_prompts.txt"  # one prompt a line
    text_count: int = Field(32, ge=1, le=10000)
    seed: int = 0  # which files and prompts are chosen when there are more than the counts


class Pulsar2Params(Strict):
    """Keys of the `pulsar2 build` JSON config, spelled as Axera's pulsar2 docs spell them."""

    image: str = "pulsar2:5.1"  # the docker image loaded on the build host (`docker load -i ...`)
    target_hardware: Literal["AX650", "AX620E", "AX615", "M76H", "M57"] = "AX650"
    # NPU3: all three AX650 cores, as Axera's CLIP builds and the hand-run plan use; NPU1 leaves two cores to
    # a Stable Diffusion model on the same NPU and loads when it runs in vNPU mode (README: npu_mode).
    npu_mode: Literal["NPU1", "NPU2", "NPU3"] = "NPU3"
    precision_analysis: bool = True
    # EndToEnd simulates the whole quantized model: its last row is the model's output, the figure that
    # Axera's precision guide holds to > 0.98. PerLayer's last row measures the output layer alone.
    precision_analysis_method: Literal["PerLayer", "EndToEnd"] = "EndToEnd"
    precision_analysis_mode: Literal["Reference", "NPUBackend"] = "Reference"
    conv_bias_data_type: Literal["S32", "FP32"] = "S32"
    transformer_opt_level: int = Field(0, ge=0, le=2)
    enable_smooth_quant: bool = False
    compiler_check: int = Field(0, ge=0, le=3)
    npu_perf: bool = False
    platform: str | None = None  # e.g. linux/amd64; set automatically on an arm64 build host

    @model_validator(mode="after")
    def _npu_mode_fits(self) -> Pulsar2Params:
        if self.target_hardware != "AX650" and self.npu_mode == "NPU3":
            raise ValueError(f"npu_mode NPU3 exists only on AX650, not {self.target_hardware}")
        return self


class CompileParams(Strict):
    target: Literal["pulsar2", "onnxruntime"] = "pulsar2"
    host: str = "local"  # the build host (pulsar2 target); `invoke compile --host NAME` overrides
    data_type: Literal["U16", "U8"] = "U16"  # activation precision
    # QuantMethod in the proto of pulsar2-docs' config.md (its help text also names KL; the proto does not).
    calibration_method: Literal["MinMax", "Percentile", "MSE"] = "MinMax"
    calibration_size: int = Field(32, ge=1, le=10000)
    min_cosine: float = Field(0.98, ge=0, le=1)  # quantized vs float (Axera's documented bar is 0.98)
    pulsar2: Pulsar2Params = Pulsar2Params()


class EmbedVocabParams(Strict):
    vocabulary: ConfigPath = SHIPPED / "vocab/default.yaml"


def _moved_to_device(data: Any) -> Any:
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


class SmokeTestParams(Strict):
    runs: int = Field(20, ge=1, le=10000)  # latency samples per encoder
    min_cosine: float = Field(0.98, ge=0, le=1)  # device output vs the float reference, per encoder
    provider: str | None = None  # axengine provider; None: the first available
    device_id: int = Field(0, ge=0)  # AXCLRTExecutionProvider: which card


class FetchParams(Strict):
    """fetch has no settings of its own: where it puts the models is `device:`."""


class StagesConfig(Strict):
    export: ExportParams = ExportParams()
    verify: VerifyParams = VerifyParams()
    calibrate: CalibrateParams = CalibrateParams()
    compile: CompileParams = CompileParams()
    embed_vocab: EmbedVocabParams = Field(EmbedVocabParams(), alias="embed-vocab")
    fetch: Annotated[FetchParams, BeforeValidator(_moved_to_device)] = FetchParams()
    smoke_test: Annotated[SmokeTestParams, BeforeValidator(_moved_to_device)] = Field(
        SmokeTestParams(), alias="smoke-test"
    )

    model_config = ConfigDict(extra="forbid", frozen=True, strict=True, allow_inf_nan=False, populate_by_name=True)

    def of(self, stage: str) -> BaseModel | None:
        """The params of a stage by its name, or None for a stage without settings."""
        return getattr(self, params_field(stage), None)


DEVICE_STAGES = ("fetch", "smoke-test")  # they work on `device:`


def params_field(stage: str) -> str:
    """The one mapping from a stage's name to its field under `stages` (`embed-vocab` -> embed_vocab)."""
    return stage.replace("-", "_")


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
    fidelity: Literal["fast", "exact"] = "fast"


class PipelineConfig(Strict):
    """The whole pipeline.yaml."""

    model: ModelConfig = ModelConfig()
    artifacts: ConfigPath = Path("artifacts")
    hosts: dict[str, HostConfig] = Field(default_factory=lambda: {"local": HostConfig(kind="local")})
    device: DeviceConfig = DeviceConfig()
    stages: StagesConfig = StagesConfig()

    @model_validator(mode="after")
    def _hosts_exist(self) -> PipelineConfig:
        for key, name in (("stages.compile.host", self.stages.compile.host), ("device.host", self.device.host)):
            if name != "local" and name not in self.hosts:
                known = ", ".join(sorted(self.hosts)) or "none"
                raise ValueError(f"{key} {name!r} is not in hosts (hosts: {known})")
        return self

    def with_host(self, stage: str, host: str) -> PipelineConfig:
        """This config with the stage's host replaced (what `--host` does): the device for the stages
        that work on it (every one of them, then), the build host for compile."""
        self.host(host)
        if stage in DEVICE_STAGES:
            return self.model_copy(update={"device": self.device.model_copy(update={"host": host})})
        params = self.stages.of(stage)
        if params is None or "host" not in type(params).model_fields:
            raise ConfigError(f"stage {stage!r} does not run on a host; drop --host")
        stages = self.stages.model_copy(update={params_field(stage): params.model_copy(update={"host": host})})
        return self.model_copy(update={"stages": stages})

    def host(self, name: str) -> HostConfig:
        if name == "local" and name not in self.hosts:
            return HostConfig(kind="local")
        if name not in self.hosts:
            known = ", ".join(sorted(self.hosts)) or "none"
            raise ConfigError(f"unknown host {name!r}", hint=f"hosts in the config: {known}")
        return self.hosts[name]


def load_config(path: Path | str) -> PipelineConfig:
    """Read and validate a pipeline file; every problem becomes a ConfigError naming file and key."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: config file not found", hint="pass an existing file with --config")
    raw = read_yaml(path, "config file")
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: the top level must be a mapping of keys (model, hosts, stages ...)")
    try:
        return PipelineConfig.model_validate(raw, context={"base_dir": str(path.parent.resolve())})
    except ValidationError as exc:
        lines = [f"{path}: {describe_error(err)}" for err in exc.errors()]
        raise ConfigError("\n".join(lines)) from None


def describe_error(err: Any) -> str:
    """One pydantic error as `key.path: what is wrong (got value)`."""
    loc = [_key_part(part) for part in err["loc"]]
    key = ".".join(loc) or "(top level)"
    kind, ctx, got = err["type"], err.get("ctx", {}), err.get("input")
    bounds = {"less_than_equal": "<=", "less_than": "<", "greater_than_equal": ">=", "greater_than": ">"}
    if kind in bounds:
        bound = next(iter(ctx.values()))
        shown = f"{bound:g}" if isinstance(bound, (int, float)) else bound
        return f"{key}: must be {bounds[kind]} {shown} (got {_short(got)})"
    if kind == "missing":
        return f"{key}: required key is missing"
    if kind == "extra_forbidden":
        return f"{key}: unknown key{_did_you_mean(err['loc'])}"
    message = " ".join(str(err["msg"]).removeprefix("Value error, ").split())
    shown = "" if isinstance(got, dict) else f" (got {_short(got)})"
    return f"{key}: {message[:1].lower()}{message[1:]}{shown}"


def _key_part(part: Any) -> str:
    """A key as typed, or quoted when it would not read as one (empty, spaces, line breaks)."""
    text = str(part)
    return text if text and text.isprintable() and " " not in text else repr(text)


def _short(value: Any, limit: int = 60) -> str:
    shown = repr(value)
    return shown if len(shown) <= limit else f"{shown[: limit - 3]}..."


def _did_you_mean(loc: tuple[Any, ...]) -> str:
    allowed = _keys_at(loc[:-1])
    if not allowed:
        return ""
    close = difflib.get_close_matches(str(loc[-1]), allowed, n=1)
    return f"; did you mean {close[0]!r}?" if close else f"; expected one of: {', '.join(sorted(allowed))}"


def _keys_at(loc: tuple[Any, ...]) -> list[str]:
    model: type[BaseModel] = PipelineConfig
    for part in loc:
        if model is PipelineConfig and part == "hosts":
            model = HostConfig
            continue
        if model is HostConfig and part not in HostConfig.model_fields:
            continue  # the host's own name
        fields = {f.alias or name: f for name, f in model.model_fields.items()}
        annotation = getattr(fields.get(str(part)), "annotation", None)
        if not (isinstance(annotation, type) and issubclass(annotation, BaseModel)):
            return []
        model = annotation
    return [f.alias or name for name, f in model.model_fields.items()]
