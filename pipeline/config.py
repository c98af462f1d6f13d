"""The engine's part of pipeline.yaml (artifacts, hosts), loading any schema built on it, and errors that name
the file and the key path. The product's sections (model, device, each stage's settings) are declared above
the engine: stages/config.py assembles the whole schema from the registered stages.

Every model is frozen and rejects unknown keys, so a typo is an error instead of a silently ignored
setting. Relative paths are resolved against the config file's directory at load time, so the rest of
the code only ever sees absolute paths.
"""

from __future__ import annotations

import difflib
import ipaddress
import re
from pathlib import Path
from typing import Annotated, Any, Literal, TypeVar, get_args

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

from pipeline.errors import ConfigError
from pipeline.user_files import read_yaml


def _resolve_path(value: Path, info: ValidationInfo) -> Path:
    base = Path((info.context or {}).get("base_dir", "."))
    return (base / value.expanduser()).resolve()


def _as_path(value: Any) -> Any:
    return Path(value) if isinstance(value, str) else value


ConfigPath = Annotated[Path, BeforeValidator(_as_path), AfterValidator(_resolve_path)]


_HOST_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,252}")  # a DNS name, or an ssh_config Host alias


def is_host_address(text: str) -> bool:
    """A host name (or ssh_config alias) or an IP address (IPv6 bracketed or not): what may reach an SSH
    client, a URL or the nginx config we write, where a space, `;` or `}` would be syntax."""
    bare = text[1:-1] if text.startswith("[") and text.endswith("]") else text
    try:
        ipaddress.ip_address(bare)
    except ValueError:
        return _HOST_NAME.fullmatch(text) is not None
    return True


class Strict(BaseModel):
    """Unknown keys are errors, and so are values of another type: `runs: true` or `runs: '20'` is not 20."""

    model_config = ConfigDict(extra="forbid", frozen=True, strict=True, allow_inf_nan=False)


class HostConfig(Strict):
    """Where a stage runs: this machine, or an SSH host (address or ssh_config alias): how to reach it.
    What stages use there (a build host's Docker, a device's Python) is declared by those who read it, in
    subclasses the product's schema combines.

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

    @field_validator("address")
    @classmethod
    def _address(cls, value: str | None) -> str | None:
        if value is not None and not is_host_address(value):
            raise ValueError(
                f"{value[:100]!r} is not a host name, IP address or ssh_config alias (letters, digits, '.', '-', "
                "'_'; or an IP address)"
            )
        return value

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


class EngineConfig(Strict):
    """What the engine itself reads: where artifacts go and the hosts stages may run on."""

    artifacts: ConfigPath = Path("artifacts")
    hosts: dict[str, HostConfig] = Field(default_factory=lambda: {"local": HostConfig(kind="local")})

    @classmethod
    def host_type(cls) -> type[HostConfig]:
        """The type of this schema's host entries: HostConfig, or a product's subclass of it."""
        return get_args(cls.model_fields["hosts"].annotation)[1]

    def host(self, name: str) -> HostConfig:
        if name == "local" and name not in self.hosts:
            return self.host_type()(kind="local")
        if name not in self.hosts:
            known = ", ".join(sorted(self.hosts)) or "none"
            raise ConfigError(f"unknown host {name!r}", hint=f"hosts in the config: {known}")
        return self.hosts[name]


C = TypeVar("C", bound=EngineConfig)


def load_config(path: Path | str, schema: type[C]) -> C:
    """Read and validate a pipeline file against `schema`; every problem is a ConfigError naming file and key."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: config file not found", hint="pass an existing file with --config")
    raw = read_yaml(path, "config file")
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: the top level must be a mapping of keys (model, hosts, stages ...)")
    try:
        return schema.model_validate(raw, context={"base_dir": str(path.parent.resolve())})
    except ValidationError as exc:
        lines = [f"{path}: {describe_error(err, schema)}" for err in exc.errors()]
        raise ConfigError("\n".join(lines)) from None


def describe_error(err: Any, schema: type[BaseModel] | None = None) -> str:
    """One pydantic error as `key.path: what is wrong (got value)`; an unknown key of `schema` gets the
    closest known one as a suggestion."""
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
        return f"{key}: unknown key{_did_you_mean(err['loc'], schema)}"
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


def _did_you_mean(loc: tuple[Any, ...], schema: type[BaseModel] | None) -> str:
    allowed = _keys_at(loc[:-1], schema) if schema else []
    if not allowed:
        return ""
    close = difflib.get_close_matches(str(loc[-1]), allowed, n=1)
    return f"; did you mean {close[0]!r}?" if close else f"; expected one of: {', '.join(sorted(allowed))}"


def _keys_at(loc: tuple[Any, ...], schema: type[BaseModel]) -> list[str]:
    model = schema
    host_type = schema.host_type() if issubclass(schema, EngineConfig) else HostConfig
    for part in loc:
        if model is schema and part == "hosts":
            model = host_type
            continue
        if model is host_type and part not in host_type.model_fields:
            continue  # the host's own name
        fields = {f.alias or name: f for name, f in model.model_fields.items()}
        annotation = _optional_model(getattr(fields.get(str(part)), "annotation", None))
        if not (isinstance(annotation, type) and issubclass(annotation, BaseModel)):
            return []
        model = annotation
    return [f.alias or name for name, f in model.model_fields.items()]


def _optional_model(annotation: Any) -> Any:
    """`Model | None` as `Model` (an optional section, such as `tagger:`); any other annotation as it is."""
    models = [arg for arg in get_args(annotation) if isinstance(arg, type) and issubclass(arg, BaseModel)]
    return models[0] if len(models) == 1 and type(None) in get_args(annotation) else annotation
