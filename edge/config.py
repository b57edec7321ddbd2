"""The device agent's configuration: one small dataclass, read from ``STATE/agent.toml``.

Found through ``--config``, ``$BENTOEDGE_AGENT_CONFIG``, or the default state folder
(``$BENTOEDGE_HOME/agent``).  Environment variables ``BENTOEDGE_AGENT_<FIELD>`` (e.g.
``BENTOEDGE_AGENT_PORT``, ``BENTOEDGE_AGENT_CLOUD``, ``BENTOEDGE_AGENT_MODE``) override
the file, for containers and systemd drop-ins.

Pure apart from ``load``/``dump``: everything else takes and returns values.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any, Literal, get_args

from bentoedge.bentos.errors import ConfigError
from bentoedge.bentos.keystore import default_home, write_private

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

#: Where the router (``edge.router.decide``) sends requests; the one spelling of the modes.
Mode = Literal["prefer_edge", "edge_only", "cloud_only", "prefer_cloud"]
#: The modes in the order the config's error message lists them.
MODES: tuple[Mode, ...] = get_args(Mode)
CONFIG_FILE = "agent.toml"


# Not BentoML's 3000: the agent and 'bentoedge serve' (the cloud side) often share a laptop.
DEFAULT_PORT = 3100


@dataclass(frozen=True)
class Limits:
    """What this device handles itself; anything beyond goes to the cloud."""

    max_batch: int = 8
    max_payload_bytes: int = 1 << 20
    max_inflight: int = 4
    latency_budget_ms: float = 250.0
    min_free_memory_mb: int = 64

    def __post_init__(self) -> None:
        _check_numbers(self, minimum={}, section="[limits] ")  # 0 means: always forward


@dataclass(frozen=True)
class AgentConfig:
    device_id: str
    channel: str
    cloud: str
    state: str
    port: int = DEFAULT_PORT
    host: str = "127.0.0.1"
    mode: Mode = "prefer_edge"
    poll_seconds: float = 300.0
    report_seconds: float = 900.0  # a fleet report at least this often while idle (and after every sync)
    device_class: str = "default"
    agent_version: str = "0.1.0"
    model: str = ""  # which model name to follow on the channel; "" means the only one published
    threads: int = 0  # interpreter threads; 0 lets the runtime decide
    workers: int = 1  # interpreters in the pool
    cloud_timeout_s: float = 5.0
    cloud_aws: str = "auto"  # SigV4 for a cloud behind AWS IAM: auto (by host), off, or SERVICE:REGION
    trusted_signers: tuple[str, ...] = ()  # hex Ed25519 public keys of model signers
    limits: Limits = field(default_factory=Limits)

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise ConfigError(f"mode must be one of {', '.join(MODES)}, not {self.mode!r}")
        _check_numbers(self, minimum={"workers": 1, "poll_seconds": 0.01, "report_seconds": 0.01,
                                      "cloud_timeout_s": 0.01})
        from bentoedge.edge.aws_sign import check_setting

        check_setting(self.cloud_aws)
        if not 0 <= self.port < 65536:  # 0: the server picks a free port
            raise ConfigError(f"port must be 0..65535, not {self.port}")
        for name in ("device_id", "channel", "cloud", "state", "host", "device_class", "model"):
            if not isinstance(getattr(self, name), str):
                raise ConfigError(f"{name} must be a string, not {getattr(self, name)!r}")
        if self.cloud and not self.cloud.startswith(("http://", "https://")):
            raise ConfigError(f"cloud must be an http:// or https:// URL, not {self.cloud!r}")

    @property
    def state_dir(self) -> Path:
        return Path(self.state)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["trusted_signers"] = list(self.trusted_signers)
        return d


def _check_numbers(obj: Any, minimum: Mapping[str, float], section: str = "") -> None:
    """Every int/float field holds a number of its kind, not below its minimum (or 0)."""
    for f in fields(obj):
        kind = str(f.type)
        if kind not in ("int", "float"):
            continue
        value = getattr(obj, f.name)
        ok = isinstance(value, int | float) and not isinstance(value, bool) and (kind == "float" or isinstance(value, int))
        if not ok or value < minimum.get(f.name, 0):
            noun = "an integer" if kind == "int" else "a number"
            raise ConfigError(f"{section}{f.name} must be {noun} of at least {minimum.get(f.name, 0)}, not {value!r}")


def default_state(env: Mapping[str, str] = os.environ) -> Path:
    return default_home(env) / "agent"


def find_config(path: str | Path | None, env: Mapping[str, str] = os.environ) -> Path:
    if path:
        return Path(path)
    if env.get("BENTOEDGE_AGENT_CONFIG"):
        return Path(env["BENTOEDGE_AGENT_CONFIG"])
    return default_state(env) / CONFIG_FILE


def from_mapping(data: Mapping[str, Any], env: Mapping[str, str] = os.environ) -> AgentConfig:
    known = {f.name: f for f in fields(AgentConfig)}
    unknown = sorted(set(data) - set(known))
    if unknown:
        raise ConfigError(f"unknown setting {unknown[0]!r} in the agent config; known: {', '.join(sorted(known))}")
    values = dict(data)
    try:
        limits = Limits(**values.pop("limits", {}))
    except TypeError as exc:
        raise ConfigError(f"bad [limits] section: {exc}") from None
    for name, f in known.items():
        key = f"BENTOEDGE_AGENT_{name.upper()}"
        if key in env and name != "limits":
            values[name] = _coerce(env[key], f.type, name)
    if "trusted_signers" in values:
        values["trusted_signers"] = tuple(values["trusted_signers"])
    missing = [n for n in ("device_id", "channel", "cloud", "state") if n not in values]
    if missing:
        raise ConfigError(f"the agent config lacks {', '.join(missing)}; run 'bentoedge agent init'")
    try:
        return AgentConfig(**values, limits=limits)
    except TypeError as exc:
        raise ConfigError(f"bad agent config: {exc}") from None


def _coerce(raw: str, kind: Any, name: str) -> Any:
    kind = str(kind)
    try:
        if "int" in kind and "str" not in kind:
            return int(raw)
        if "float" in kind:
            return float(raw)
        if "tuple" in kind:
            return tuple(x for x in raw.split(",") if x)
    except ValueError:
        raise ConfigError(f"BENTOEDGE_AGENT_{name.upper()}={raw!r} is not a valid {kind}") from None
    return raw


def load(path: str | Path | None = None, env: Mapping[str, str] = os.environ) -> AgentConfig:
    file = find_config(path, env)
    try:
        data = tomllib.loads(file.read_text())
    except FileNotFoundError:
        raise ConfigError(f"no agent config at {file}; run 'bentoedge agent init' or pass --config") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{file} is not valid TOML: {exc}") from None
    return from_mapping(data, env)


def dumps(config: AgentConfig) -> str:
    """TOML text for ``config`` (flat values and one [limits] table: no library needed)."""
    lines = []
    for key, value in config.to_dict().items():
        if key != "limits":
            lines.append(f"{key} = {_toml(value)}")
    lines.append("")
    lines.append("[limits]")
    lines.extend(f"{k} = {_toml(v)}" for k, v in asdict(config.limits).items())
    return "\n".join(lines) + "\n"


def _toml(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, list | tuple):
        return "[" + ", ".join(_toml(v) for v in value) + "]"
    escaped = str(value).replace("\\", "\\\\").replace('"', '\\"')
    return f'"{escaped}"'


def save(config: AgentConfig, path: Path | None = None) -> Path:
    file = path or config.state_dir / CONFIG_FILE
    write_private(file, dumps(config).encode(), mode=0o640)
    return file


def with_overrides(config: AgentConfig, **changes: Any) -> AgentConfig:
    return replace(config, **{k: v for k, v in changes.items() if v is not None})
