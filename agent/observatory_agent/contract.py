"""The contract between operator, agent and processor: metric types, shared-config, agent config, partials.

This module imports only pydantic and the standard library, so the operator can import it
without pulling in the agent's runtime, and the agent can import it without kopf or the
kubernetes client. Everything that crosses a process boundary is defined here:

- ``MetricType``, ``MetricEvent``, ``AggregatedMetric``: the old service's names, kept.
- ``SharedConfig``: the org-wide defaults from the shared-config ConfigMap (a mounted
  directory, one file per key) or the environment.
- ``AgentConfig``: what the operator renders into an agent's ConfigMap.
- ``resolve``: CR spec > shared-config > built-in defaults, as one pure function.
- ``WindowPartial``: the versioned, mergeable wire format agents send to processors.

Durations are written ``10s``, ``1m``, ``1h30m`` (also ``500ms``) and become seconds.
"""

from __future__ import annotations

import enum
import json
import math
import os
import re
import sys
from array import array
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Annotated, Any, Final, Literal

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    PlainSerializer,
    ValidationError,
    field_validator,
    model_validator,
)

# --- durations ----------------------------------------------------------------------------

DURATION_PATTERN: Final = r"^([0-9]+(ms|s|m|h))+$"
"""The duration grammar shared by the CRD schema, shared-config and the agent config."""

_DURATION_PART = re.compile(r"([0-9]+)(ms|s|m|h)")
_UNIT_SECONDS: Final = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}


class ConfigError(ValueError):
    """A configuration value broke a rule; the message names the key and the rule."""

    def __init__(self, key: str, rule: str, value: object = None) -> None:
        self.key = key
        self.rule = rule
        shown = "" if value is None else f" (got {value!r})"
        super().__init__(f"{key}: {rule}{shown}")


def parse_duration(value: str | float | int, *, key: str = "duration") -> float:
    """Seconds from ``10s``, ``1m``, ``1h30m``, ``500ms`` or a plain number of seconds.

    Raises ``ConfigError`` naming ``key`` and the rule when the value is not a positive duration.
    """
    if isinstance(value, bool):
        raise ConfigError(key, "must be a duration such as 10s, 1m or 1h30m", value)
    if isinstance(value, int | float):
        seconds = float(value)
    else:
        text = value.strip()
        if re.fullmatch(r"[0-9]+(\.[0-9]+)?", text):
            seconds = float(text)
        elif re.fullmatch(DURATION_PATTERN, text):
            seconds = sum(int(n) * _UNIT_SECONDS[u] for n, u in _DURATION_PART.findall(text))
        else:
            raise ConfigError(key, "must be a duration such as 10s, 1m or 1h30m", value)
    if not math.isfinite(seconds) or seconds <= 0:
        raise ConfigError(key, "must be a positive duration", value)
    return seconds


def format_duration(seconds: float) -> str:
    """The shortest ``1h30m``-style spelling of a duration (inverse of ``parse_duration``)."""
    ms = round(seconds * 1000)
    parts: list[str] = []
    for unit, size in (("h", 3_600_000), ("m", 60_000), ("s", 1000), ("ms", 1)):
        n, ms = divmod(ms, size)
        if n:
            parts.append(f"{n}{unit}")
    return "".join(parts) or "0s"


def _duration_validator(value: Any, info: Any) -> float:
    return parse_duration(value, key=getattr(info, "field_name", None) or "duration")


Seconds = Annotated[
    float,
    BeforeValidator(_duration_validator),
    PlainSerializer(format_duration, return_type=str, when_used="json"),
]
"""A positive duration in seconds; accepts ``10s``/``1h30m`` and serialises back to that form."""


def whole_multiple(window: float, interval: float) -> bool:
    """Whether ``window`` is ``interval`` times a whole number (at least once), within float error."""
    ratio = window / interval
    return abs(ratio - round(ratio)) < 1e-9 and round(ratio) >= 1


# --- metrics ------------------------------------------------------------------------------


class MetricType(enum.StrEnum):
    """How a sample's value behaves over time."""

    GAUGE = "gauge"
    """A level (usage %, bytes used): aggregated as is."""
    COUNTER = "counter"
    """A monotonically increasing total (bytes sent): aggregated as a per-second rate."""


class MetricEvent(BaseModel):
    """One sample of one series, as a collector produced it."""

    model_config = ConfigDict(frozen=True)

    name: str = Field(min_length=1, description="Dotted metric name, e.g. system.cpu.usage.")
    value: float = Field(description="The sample's value in the metric's unit.")
    type: MetricType = Field(default=MetricType.GAUGE, description="Gauge or counter.")
    tags: dict[str, str] = Field(default_factory=dict, description="Series tags (host, node, core, ...).")
    timestamp: float = Field(description="Unix time of the sample, seconds.")

    @field_validator("value")
    @classmethod
    def _finite(cls, v: float) -> float:
        if not math.isfinite(v):
            raise ValueError("value must be a finite number")
        return v


class AggregatedMetric(BaseModel):
    """One series' aggregate over one window; ``timestamp`` is the window end."""

    model_config = ConfigDict(frozen=True)

    name: str
    tags: dict[str, str] = Field(default_factory=dict)
    timestamp: float = Field(description="Window end, Unix seconds: replays overwrite themselves.")
    window_start: float
    count: int = Field(ge=0)
    sum: float
    mean: float
    min: float
    max: float
    last: float
    quantiles: dict[str, float] = Field(
        default_factory=dict, description='Configured quantiles keyed "p50", "p95", "p99.9".'
    )

    @property
    def p50(self) -> float | None:
        return self.quantiles.get("p50")

    @property
    def p95(self) -> float | None:
        return self.quantiles.get("p95")

    @property
    def p99(self) -> float | None:
        return self.quantiles.get("p99")


def quantile_key(q: float) -> str:
    """``95 -> "p95"``, ``99.9 -> "p99.9"``: the field name a quantile is written under."""
    return f"p{q:g}"


# --- shared-config ------------------------------------------------------------------------

SHARED_CONFIG_KEYS: Final = (
    "observatory_enabled",
    "observatory_collection_interval",
    "observatory_aggregation_window",
    "influxdb_url",
    "influxdb_org",
    "influxdb_bucket",
    "cluster_name",
    "tags",
)


def _parse_bool(value: Any, info: Any) -> Any:
    if isinstance(value, str):
        text = value.strip().lower()
        if text in {"true", "yes", "on", "1"}:
            return True
        if text in {"false", "no", "off", "0"}:
            return False
        raise ConfigError(info.field_name, "must be true or false", value)
    return value


def _parse_tags(value: Any, info: Any) -> Any:
    """Tags come as JSON (``{"team": "sre"}``) or ``key=value`` pairs split by commas or lines."""
    if not isinstance(value, str):
        return value
    text = value.strip()
    if not text:
        return {}
    if text.startswith("{"):
        try:
            parsed = json.loads(text)
        except json.JSONDecodeError as exc:
            raise ConfigError(info.field_name, f"is not valid JSON: {exc.msg}", value) from exc
        return parsed
    tags: dict[str, str] = {}
    for raw in re.split(r"[,\n]", text):
        item = raw.strip()
        if not item:
            continue
        key, sep, val = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(info.field_name, "entries must be key=value", item)
        tags[key.strip()] = val.strip()
    return tags


def _validate_tags(tags: dict[str, str] | None) -> dict[str, str] | None:
    if tags is None:
        return None
    for key in tags:
        if not key or key in RESERVED_TAGS:
            raise ValueError(f"tag key {key!r} is empty or reserved ({', '.join(sorted(RESERVED_TAGS))})")
    return tags


RESERVED_TAGS: Final = frozenset({"host", "node", "cluster", "_measurement", "_field", "_time"})
"""Tags the agent sets itself; configured tags may not override them."""


class SharedConfig(BaseModel):
    """The org-wide defaults from the shared-config ConfigMap. ``None`` means "not set here"."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    observatory_enabled: Annotated[bool | None, BeforeValidator(_parse_bool)] = Field(
        default=None, description="Master switch: false stops collection on every node."
    )
    observatory_collection_interval: Seconds | None = Field(
        default=None, description="How often collectors sample, e.g. 10s."
    )
    observatory_aggregation_window: Seconds | None = Field(
        default=None, description="Tumbling window length, a whole multiple of the interval, e.g. 1m."
    )
    influxdb_url: str | None = Field(default=None, description="InfluxDB 2 base URL.")
    influxdb_org: str | None = Field(default=None, description="InfluxDB organization.")
    influxdb_bucket: str | None = Field(default=None, description="InfluxDB bucket.")
    cluster_name: str | None = Field(default=None, description="Written as the cluster tag on every point.")
    tags: Annotated[dict[str, str] | None, BeforeValidator(_parse_tags)] = Field(
        default=None, description="Extra tags on every point (JSON or key=value lines)."
    )

    @field_validator("tags")
    @classmethod
    def _tags(cls, v: dict[str, str] | None) -> dict[str, str] | None:
        return _validate_tags(v)

    @field_validator("influxdb_url")
    @classmethod
    def _url(cls, v: str | None) -> str | None:
        if v is not None and not re.match(r"^https?://[^\s/]+", v):
            raise ValueError("must be an http:// or https:// URL")
        return v

    @classmethod
    def from_mapping(cls, data: Mapping[str, str], *, source: str) -> SharedConfig:
        """Validate raw string values; unknown keys and bad values raise ``ConfigError``."""
        unknown = sorted(set(data) - set(SHARED_CONFIG_KEYS))
        if unknown:
            raise ConfigError(
                f"{source}: {unknown[0]}",
                f"is not a shared-config key (known: {', '.join(SHARED_CONFIG_KEYS)})",
            )
        try:
            return cls.model_validate({k: v.strip() if k != "tags" else v for k, v in data.items()})
        except ValidationError as exc:
            raise config_error_from(exc, prefix=source) from exc

    @classmethod
    def from_directory(cls, directory: Path) -> SharedConfig:
        """Read a mounted ConfigMap: one file per key. The kubelet's ``..data`` links are skipped."""
        data: dict[str, str] = {}
        if directory.is_dir():
            for entry in sorted(directory.iterdir()):
                if entry.name.startswith(".") or not entry.is_file():
                    continue
                data[entry.name] = entry.read_text()
        return cls.from_mapping(data, source=str(directory))

    @classmethod
    def from_environ(cls, environ: Mapping[str, str]) -> SharedConfig:
        """Variables named like the keys, upper-cased (``OBSERVATORY_COLLECTION_INTERVAL``)."""
        data = {k: environ[k.upper()] for k in SHARED_CONFIG_KEYS if k.upper() in environ}
        return cls.from_mapping(data, source="environment")

    @classmethod
    def load(cls, directory: Path | None = None, environ: Mapping[str, str] | None = None) -> SharedConfig:
        """The directory's keys, overridden by the environment's."""
        base = cls.from_directory(directory) if directory is not None else cls()
        env = cls.from_environ(os.environ if environ is None else environ)
        return base.overlay(env)

    def overlay(self, other: SharedConfig) -> SharedConfig:
        """Keys set in ``other`` win."""
        merged = self.model_dump(exclude_none=True)
        merged.update(other.model_dump(exclude_none=True))
        return SharedConfig.model_validate(merged)


def config_error_from(exc: ValidationError, *, prefix: str = "") -> ConfigError:
    """The first pydantic error as a ``ConfigError`` that names the field path and the rule."""
    err = exc.errors()[0]
    path = ".".join(str(p) for p in err["loc"]) or "value"
    ctx_error = (err.get("ctx") or {}).get("error")
    rule = str(ctx_error) if isinstance(ctx_error, ConfigError) else err["msg"]
    if isinstance(ctx_error, ConfigError):
        rule = ctx_error.rule
    key = f"{prefix}: {path}" if prefix else path
    return ConfigError(key, rule, err.get("input") if not isinstance(err.get("input"), dict) else None)


# --- agent config (rendered by the operator) ----------------------------------------------

DEFAULT_INTERVAL: Final = 10.0
DEFAULT_WINDOW: Final = 60.0
DEFAULT_QUANTILES: Final = (50.0, 95.0, 99.0)
DEFAULT_EXACT_THRESHOLD: Final = 1024
DEFAULT_METRICS_PORT: Final = 9464
DEFAULT_MAX_SERIES: Final = 10_000

SYSTEM_COLLECTORS: Final = (
    "cpu",
    "cpu_core",
    "memory",
    "swap",
    "load",
    "disk_usage",
    "disk_io",
    "network",
    "filesystem",
    "uptime",
    "processes",
    "cpuinfo",
)
"""Built-in collectors that read the host."""

COLLECTOR_KINDS: Final = (*SYSTEM_COLLECTORS, "application", "custom")


class CollectorConfig(BaseModel):
    """One collector the agent runs."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(min_length=1, description="Unique name; for system collectors, the collector kind.")
    kind: str = Field(description="A system collector, 'application' or 'custom'.")
    enabled: bool = True
    timeout: Seconds = Field(default=5.0, description="A collection that takes longer is abandoned.")
    targets: list[str] = Field(default_factory=list, description="application: Prometheus text URLs.")
    entry_point: str | None = Field(
        default=None, description="custom: entry-point name in the observatory.collectors group."
    )
    options: dict[str, str] = Field(default_factory=dict, description="Collector-specific options.")

    @field_validator("kind")
    @classmethod
    def _kind(cls, v: str) -> str:
        if v not in COLLECTOR_KINDS:
            raise ValueError(f"must be one of {', '.join(COLLECTOR_KINDS)}")
        return v


class InfluxTarget(BaseModel):
    """Where node-level aggregates go; unset fields fall back to shared-config."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    url: str | None = None
    org: str | None = None
    bucket: str | None = None
    token_file: str | None = Field(
        default=None, description="File holding the token (a mounted Secret); never the token itself."
    )
    token_env: str = Field(default="INFLUXDB_TOKEN", description="Environment variable read when no file.")


class ProcessorTarget(BaseModel):
    """An AggregationRule's processor and the series it wants."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    rule: str = Field(min_length=1)
    url: str = Field(description="Processor base URL, e.g. http://name.ns.svc:9465.")
    metrics: list[str] = Field(min_length=1, description="Metric name glob patterns.")
    match_tags: dict[str, str] = Field(default_factory=dict, description="Tag equality matchers.")
    window: Seconds | None = Field(
        default=None,
        description="The rule's window. The agent's window must divide it; the agent logs when it does not "
        "(the processor refuses such partials). None: not checked on the agent.",
    )
    group_by: list[str] | None = Field(
        default=None,
        description="The rule's groupBy tags. Agents then send only these and the match_tags keys, "
        "which is all the processor reads. None: every tag is sent.",
    )


class AgentConfig(BaseModel):
    """What the operator renders into an agent's ConfigMap (``agent.json``)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    version: Literal[1] = 1
    collector: str = Field(default="local", description="The ObservatoryCollector's name.")
    namespace: str = Field(default="default")
    enabled: bool | None = Field(default=None, description="None: follow shared-config's observatory_enabled.")
    interval: Seconds | None = None
    window: Seconds | None = None
    collectors: list[CollectorConfig] = Field(
        default_factory=lambda: [CollectorConfig(name=k, kind=k) for k in SYSTEM_COLLECTORS]
    )
    quantiles: list[float] = Field(default_factory=lambda: list(DEFAULT_QUANTILES))
    exact_quantile_threshold: int = Field(default=DEFAULT_EXACT_THRESHOLD, ge=1)
    tags: dict[str, str] = Field(default_factory=dict)
    influxdb: InfluxTarget = Field(default_factory=InfluxTarget)
    processors: list[ProcessorTarget] = Field(default_factory=list)
    buffer_max_bytes: int = Field(default=64 * 1024 * 1024, ge=4096)
    buffer_dir: str = Field(default="/var/lib/observatory/buffer")
    max_series: int = Field(
        default=DEFAULT_MAX_SERIES, ge=1, description="Series one agent holds per window; more are dropped and counted."
    )
    flush_jitter: Seconds | None = Field(
        default=None,
        description="Random delay before each window's write (Telegraf's flush_jitter); default min(5s, window/5).",
    )
    port: int = Field(default=DEFAULT_METRICS_PORT, ge=1, le=65535)

    @field_validator("quantiles")
    @classmethod
    def _quantiles(cls, v: list[float]) -> list[float]:
        for q in v:
            if not 0 < q < 100:
                raise ValueError(f"quantile {q:g} must be strictly between 0 and 100")
        return sorted(set(v))

    @field_validator("tags")
    @classmethod
    def _tags(cls, v: dict[str, str]) -> dict[str, str]:
        _validate_tags(v)
        return v

    @model_validator(mode="after")
    def _rules(self) -> AgentConfig:
        names = [c.name for c in self.collectors]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(f"collectors: names must be unique, {dupes[0]!r} repeats")
        if self.interval and self.window and not whole_multiple(self.window, self.interval):
            raise ValueError("window must be a whole multiple of interval")
        return self


class EffectiveConfig(BaseModel):
    """An agent's config after precedence: every value concrete."""

    model_config = ConfigDict(frozen=True)

    enabled: bool
    interval: float
    window: float
    cluster: str
    tags: dict[str, str]
    influxdb_url: str | None
    influxdb_org: str | None
    influxdb_bucket: str | None
    agent: AgentConfig


def resolve(agent: AgentConfig, shared: SharedConfig) -> EffectiveConfig:
    """CR spec (``agent``) > shared-config > built-in defaults; raises ``ConfigError`` on conflicts."""
    interval = agent.interval or shared.observatory_collection_interval or DEFAULT_INTERVAL
    window = agent.window or shared.observatory_aggregation_window or DEFAULT_WINDOW
    if not whole_multiple(window, interval):
        raise ConfigError(
            "window",
            f"must be a whole multiple of interval ({format_duration(window)} vs {format_duration(interval)})",
        )
    enabled = agent.enabled if agent.enabled is not None else shared.observatory_enabled
    tags = {**(shared.tags or {}), **agent.tags}
    return EffectiveConfig(
        enabled=True if enabled is None else enabled,
        interval=interval,
        window=window,
        cluster=shared.cluster_name or "default",
        tags=tags,
        influxdb_url=agent.influxdb.url or shared.influxdb_url,
        influxdb_org=agent.influxdb.org or shared.influxdb_org,
        influxdb_bucket=agent.influxdb.bucket or shared.influxdb_bucket,
        agent=agent,
    )


# --- partials: agent → processor ----------------------------------------------------------

PARTIAL_VERSION: Final = 2
"""Version 2 is columnar (``SeriesColumns``). Version 1 (one object per series) was never consumed:
it cost a processor twice the parsing per series, more than the whole merge (see tests/bench)."""

SKETCH_KEY_LIMIT: Final = 1 << 16
"""|bucket index| bound: a 1% sketch spans about ±35,500 buckets over every finite float."""
SKETCH_MAX_BINS: Final = 8192
"""Most buckets one side of a sketch may carry (a 1% sketch spans 230 buckets per decade)."""


class SketchState(BaseModel):
    """A DDSketch's mergeable state: log-gamma buckets of positive and negative values."""

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

    relative_accuracy: float = Field(gt=0, lt=1)
    positive: dict[int, Annotated[float, Field(gt=0)]] = Field(
        default_factory=dict, max_length=SKETCH_MAX_BINS, description="bucket index → count"
    )
    negative: dict[int, Annotated[float, Field(gt=0)]] = Field(default_factory=dict, max_length=SKETCH_MAX_BINS)
    zero_count: float = Field(default=0.0, ge=0)

    @field_validator("positive", "negative")
    @classmethod
    def _keys(cls, v: dict[int, float]) -> dict[int, float]:
        for key in v:
            if abs(key) > SKETCH_KEY_LIMIT:
                raise ValueError(f"bucket index {key} is outside ±{SKETCH_KEY_LIMIT}")
        return v

    @property
    def total(self) -> float:
        return math.fsum(self.positive.values()) + math.fsum(self.negative.values()) + self.zero_count


class SeriesPartial(BaseModel):
    """One series' window state, mergeable with the same series from other nodes (the agent's view)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(min_length=1)
    tags: dict[str, str] = Field(default_factory=dict)
    count: int = Field(ge=1)
    sum: float
    min: float
    max: float
    last: float
    last_timestamp: float
    values: list[float] | None = Field(default=None, description="Every sample while under the exact threshold.")
    sketch: SketchState | None = Field(default=None, description="Past the threshold, a DDSketch.")

    @model_validator(mode="after")
    def _one_of(self) -> SeriesPartial:
        if (self.values is None) == (self.sketch is None):
            raise ValueError("exactly one of values or sketch must be set")
        if self.values is not None and len(self.values) != self.count:
            raise ValueError(f"values has {len(self.values)} entries but count is {self.count}")
        if self.min > self.max:
            raise ValueError("min must not exceed max")
        return self


def _same_length(v: list[Any], info: Any) -> list[Any]:
    names = info.data.get("name")
    if names is not None and len(v) != len(names):
        raise ValueError(f"has {len(v)} entries but name has {len(names)}")
    return v


def pack_floats(values: Iterable[float]) -> bytes:
    """Floats as little-endian IEEE 754 binary64, the form ``SeriesColumns`` carries them in."""
    packed = array("d", values)
    if sys.byteorder != "little":
        packed.byteswap()
    return packed.tobytes()


def unpack_floats(data: bytes) -> array[float]:
    """The inverse of ``pack_floats``."""
    unpacked = array("d")
    unpacked.frombytes(data)
    if sys.byteorder != "little":
        unpacked.byteswap()
    return unpacked


def _float_column(v: bytes, info: Any) -> bytes:
    if len(v) % 8:
        raise ValueError(f"{len(v)} bytes is not a whole number of 8-byte floats")
    names = info.data.get("name")
    if info.field_name != "values" and names is not None and len(v) != 8 * len(names):
        raise ValueError(f"has {len(v) // 8} entries but name has {len(names)}")
    if _has_non_finite(v):
        floats = unpack_floats(v)
        bad = next(i for i, x in enumerate(floats) if not math.isfinite(x))
        raise ValueError(f"entry {bad} is {floats[bad]!r}, not a finite number")
    return v


_TOP_EXPONENT: Final = bytes(0x7F if b & 0x7F == 0x7F else 0 for b in range(256))
_LOW_EXPONENT: Final = bytes(0x7F if b & 0xF0 == 0xF0 else 0 for b in range(256))


def _has_non_finite(packed: bytes) -> bool:
    """Whether little-endian binary64 floats hold a NaN or an infinity, without a Python step per float.

    Exactly those have all eleven exponent bits set: the low seven bits of each float's last byte
    and the high four of the byte before it. Both bytes are mapped to 0x7F when their part is all
    ones, and the two byte strings are ANDed as integers: any nonzero byte left is such a float.
    """
    top = packed[7::8].translate(_TOP_EXPONENT)
    low = packed[6::8].translate(_LOW_EXPONENT)
    return bool(int.from_bytes(top, "little") & int.from_bytes(low, "little"))


Float64s = Annotated[
    bytes,
    Field(description="Little-endian IEEE 754 binary64 floats; base64 (RFC 4648, either alphabet) in JSON."),
]


class SeriesColumns(BaseModel):
    """A window's series column by column: entry ``i`` of every column belongs to series ``i``.

    Columns, not one object per series (nor one tag mapping per series), and numbers as packed
    binary64 (base64 in JSON), because a processor parses every agent's partial of every window:
    parsing a float out of JSON text cost more than merging it. Packed floats are exact. A series
    without a sketch contributes its ``count`` samples to ``values``, in series order; a series
    past the agent's exact threshold has an entry in ``sketches`` instead.
    """

    model_config = ConfigDict(extra="forbid", frozen=True, val_json_bytes="base64", ser_json_bytes="base64")

    name: list[Annotated[str, Field(min_length=1)]] = Field(description="Metric name of each series.")
    tags: dict[Annotated[str, Field(min_length=1)], list[str | None]] = Field(
        default_factory=dict, description="Tag key → each series' value of it (null where a series has none)."
    )
    count: list[Annotated[int, Field(ge=1)]] = Field(description="Samples in the window.")
    sum: Float64s
    min: Float64s
    max: Float64s
    last: Float64s = Field(description="The sample with the newest timestamp.")
    last_timestamp: Float64s
    values: Float64s = Field(default=b"", description="Samples of every series without a sketch.")
    sketches: dict[int, SketchState] = Field(
        default_factory=dict, description="Series index → its DDSketch, for series past the agent's exact threshold."
    )

    _lengths = field_validator("count")(_same_length)
    _floats = field_validator("sum", "min", "max", "last", "last_timestamp", "values")(_float_column)

    @field_validator("tags")
    @classmethod
    def _tag_columns(cls, v: dict[str, list[str | None]], info: Any) -> dict[str, list[str | None]]:
        names = info.data.get("name")
        if names is not None:
            for key, column in v.items():
                if len(column) != len(names):
                    raise ValueError(f"tag {key!r} has {len(column)} entries but name has {len(names)}")
        return v

    @field_validator("max")
    @classmethod
    def _max(cls, v: bytes, info: Any) -> bytes:
        packed = info.data.get("min")
        if packed is None or len(packed) != len(v):
            return v
        lows, highs = unpack_floats(packed), unpack_floats(v)
        if any(map(float.__lt__, highs, lows)):  # the common case stays in C
            i = next(i for i, (lo, hi) in enumerate(zip(lows, highs, strict=True)) if hi < lo)
            raise ValueError(f"entry {i}: max {highs[i]!r} is below min {lows[i]!r}")
        return v

    @model_validator(mode="after")
    def _samples(self) -> SeriesColumns:
        n = len(self.name)
        for i, sketch in self.sketches.items():
            if not 0 <= i < n:
                raise ValueError(f"sketches: series index {i} is out of range (there are {n} series)")
            if abs(sketch.total - self.count[i]) > 1e-6 * self.count[i]:
                raise ValueError(f"sketches: series {i} holds {sketch.total:g} samples but count is {self.count[i]}")
        exact = sum(self.count) - sum(self.count[i] for i in self.sketches)
        if len(self.values) != 8 * exact:
            raise ValueError(
                f"values has {len(self.values) // 8} entries but the series without a sketch count {exact}"
            )
        return self

    def __len__(self) -> int:
        return len(self.name)


class WindowPartial(BaseModel):
    """What an agent sends a processor for one of its windows (``POST /v1/partials``).

    Keyed by ``(rule, node, source, window_start, window_end)``: a re-sent partial replaces its
    earlier copy (so retries are idempotent), while partials of the same node and window from
    different sources (an agent restarted within the window) are both merged.
    """

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

    version: Literal[2] = PARTIAL_VERSION
    rule: str = Field(min_length=1, max_length=253)
    node: str = Field(min_length=1, max_length=253)
    source: str = Field(
        min_length=1,
        max_length=128,
        description="The agent process and window aggregator that built the partial (a new one on restart).",
    )
    window_start: float = Field(description="Unix seconds; a multiple of the agent's window.")
    window_end: float = Field(description="Unix seconds; the agent's window length after window_start.")
    series: SeriesColumns

    @model_validator(mode="after")
    def _window(self) -> WindowPartial:
        if self.window_end <= self.window_start:
            raise ValueError("window_end must be after window_start")
        return self


# --- processor: its config, and its answer to agents --------------------------------------

DEFAULT_PROCESSOR_PORT: Final = 9465
DEFAULT_ROLLUP_FUNCTIONS: Final = ("mean", "max", "p95")
ROLLUP_FUNCTION_PATTERN: Final = r"^(count|sum|mean|min|max|last|p[0-9]{1,2}(\.[0-9]+)?)$"
"""The functions a rule may ask for; ``pNN`` is a quantile in percent (``p95``, ``p99.9``)."""
ROLLUP_OUTPUT_TAGS: Final = ("rule", "namespace", "cluster")
"""Tags the processor sets on every output point besides the groupBy tags."""
UNGROUPABLE_TAGS: Final = ("rule", "namespace")
"""The rule's own name and namespace: a series' tag of that name cannot replace them in ``groupBy``
(``cluster`` may: a rule over several clusters' agents keeps them apart)."""
WATERMARK_MEASUREMENT: Final = "observatory.processor.watermark"
"""The marker point written with each window: the processor's durable flush watermark."""
TELEMETRY_MEASUREMENT: Final = "observatory.processor"
"""The processor's own health, one point per window written."""


class RollupOutput(BaseModel):
    """Where a rule's cluster-level points go."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    measurement: str = Field(min_length=1, max_length=256, description="Measurement of the output points.")
    bucket: str | None = Field(default=None, description="Bucket; None: the influxdb target's bucket.")


def quantile_of(function: str) -> float | None:
    """``"p95" -> 95.0``; None for the other functions."""
    return float(function[1:]) if function.startswith("p") else None


class ProcessorConfig(BaseModel):
    """What the operator renders into a processor's ConfigMap (``processor.json``); one per AggregationRule.

    Unset durations and targets fall back to shared-config, then to built-in defaults
    (``resolve_processor``).
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    version: Literal[1] = 1
    rule: str = Field(min_length=1, max_length=253, description="The AggregationRule's name: the rule tag.")
    namespace: str = Field(default="default", description="The AggregationRule's namespace.")
    metrics: list[Annotated[str, Field(min_length=1)]] = Field(
        min_length=1, description="Metric name glob patterns, re-checked on every partial."
    )
    match_tags: dict[str, str] = Field(default_factory=dict, description="Tag equality matchers, re-checked.")
    group_by: list[str] = Field(default_factory=list, description="Tags kept in the output; all else merged.")
    functions: list[Annotated[str, Field(pattern=ROLLUP_FUNCTION_PATTERN)]] = Field(
        default_factory=lambda: list(DEFAULT_ROLLUP_FUNCTIONS),
        min_length=1,
        description="Output fields: count, sum, mean, min, max, last, pNN.",
    )
    window: Seconds | None = Field(
        default=None, description="Roll-up window; a whole multiple of the agents' window. None: shared-config."
    )
    allowed_lateness: Seconds = Field(
        default=15.0, description="A window is written this long after its end; shorter than window."
    )
    late_horizon: Seconds | None = Field(
        default=None,
        le=86_400,
        description="Until this long after its end (or after a restarted processor's first partial, for a "
        "window that ended before it) a late partial re-merges and re-writes its window; later "
        "ones are counted and dropped. At least allowed_lateness, at most a day (and written windows are "
        "forgotten earlier when max_open_windows needs the room). None: two windows.",
    )
    restart_grace: Seconds | None = Field(
        default=None,
        description="After a start, windows that were already due wait this long for agents to re-send, from "
        "the first partial the processor accepts. None: one window.",
    )
    output: RollupOutput
    max_series: int = Field(default=10_000, ge=1, description="Most output series per window; more are dropped.")
    exact_threshold: int = Field(
        default=DEFAULT_EXACT_THRESHOLD, ge=1, description="Quantiles stay exact up to this many merged samples."
    )
    max_nodes: int = Field(default=10_000, ge=1, description="Most nodes contributing to one window.")
    max_open_windows: int = Field(default=16, ge=2, description="Most windows merging at once (catch-up included).")
    max_body_bytes: int = Field(
        default=32 * 1024 * 1024, ge=1024, description="Largest POST body, also after gzip decoding (413 beyond)."
    )
    cluster: str | None = Field(default=None, description="The cluster tag. None: shared-config's cluster_name.")
    influxdb: InfluxTarget = Field(default_factory=InfluxTarget)
    port: int = Field(default=DEFAULT_PROCESSOR_PORT, ge=1, le=65535)
    buffer_dir: str = Field(default="/var/lib/observatory/processor-buffer")
    buffer_max_bytes: int = Field(default=64 * 1024 * 1024, ge=4096)

    @field_validator("functions")
    @classmethod
    def _functions(cls, v: list[str]) -> list[str]:
        seen: set[str] = set()
        for f in v:
            q = quantile_of(f)
            if q is not None and not 0 < q < 100:
                raise ValueError(f"{f}: a quantile must be strictly between p0 and p100")
            key = f if q is None else quantile_key(q)
            if key in seen:
                raise ValueError(f"{f} is listed twice")
            seen.add(key)
        return v

    @field_validator("group_by")
    @classmethod
    def _group_by(cls, v: list[str]) -> list[str]:
        if len(set(v)) != len(v):
            raise ValueError("tags must not repeat")
        for tag in v:
            if not tag or tag in UNGROUPABLE_TAGS or tag.startswith("_"):
                raise ValueError(
                    f"{tag!r} cannot be grouped by (empty, 'rule' or 'namespace' — the rule's own tags on "
                    "every output point — or reserved by InfluxDB)"
                )
        return v

    @model_validator(mode="after")
    def _durations(self) -> ProcessorConfig:
        if self.window is not None and self.allowed_lateness >= self.window:
            raise ValueError("allowed_lateness must be shorter than window")
        if self.late_horizon is not None and self.late_horizon < self.allowed_lateness:
            raise ValueError("late_horizon must be at least allowed_lateness")
        return self


class EffectiveProcessorConfig(BaseModel):
    """A processor's config after precedence: every value concrete."""

    model_config = ConfigDict(frozen=True)

    window: float
    allowed_lateness: float
    late_horizon: float
    restart_grace: float
    cluster: str
    influxdb_url: str | None
    influxdb_org: str | None
    bucket: str | None
    fields: tuple[str, ...] = Field(description="Output field names in order: base functions and pNN keys.")
    quantiles: tuple[tuple[str, float], ...] = Field(description="(field name, percent) of each quantile.")
    processor: ProcessorConfig


def resolve_processor(config: ProcessorConfig, shared: SharedConfig) -> EffectiveProcessorConfig:
    """Rule (``config``) > shared-config > built-in defaults; raises ``ConfigError`` on conflicts."""
    window = config.window or shared.observatory_aggregation_window or DEFAULT_WINDOW
    if config.allowed_lateness >= window:
        raise ConfigError(
            "allowed_lateness",
            f"must be shorter than window ({format_duration(config.allowed_lateness)} vs {format_duration(window)})",
        )
    horizon = config.late_horizon if config.late_horizon is not None else max(2 * window, config.allowed_lateness)
    quantiles = tuple((quantile_key(q), q) for f in config.functions if (q := quantile_of(f)) is not None)
    fields = tuple(f if quantile_of(f) is None else quantile_key(float(f[1:])) for f in config.functions)
    return EffectiveProcessorConfig(
        window=window,
        allowed_lateness=config.allowed_lateness,
        late_horizon=horizon,
        restart_grace=config.restart_grace if config.restart_grace is not None else window,
        cluster=config.cluster or shared.cluster_name or "default",
        influxdb_url=config.influxdb.url or shared.influxdb_url,
        influxdb_org=config.influxdb.org or shared.influxdb_org,
        bucket=config.output.bucket or config.influxdb.bucket or shared.influxdb_bucket,
        fields=fields,
        quantiles=quantiles,
        processor=config,
    )


class RefusalReason(enum.StrEnum):
    """Why a processor did not merge a partial, and what the agent does about it."""

    WRITTEN = "written"
    """The window is at or below what this processor found written (or is writing): keep the partial
    until the watermark passes it, but do not send it to this processor instance again."""
    TOO_LATE = "too_late"
    """Past the late horizon of a window already written: drop it (the processor counted it)."""
    CONFLICT = "conflict"
    """Same (node, source, window) as a merged partial but different content: drop it."""
    MISMATCH = "mismatch"
    """Not for this rule, or its window does not fit the rule's (misaligned, not dividing, future): drop it."""
    BUSY = "busy"
    """A bound is reached (open windows, nodes per window): keep it and send it again later."""

    @property
    def keep(self) -> bool:
        """Whether the agent keeps the partial (until the watermark passes it)."""
        return self in {RefusalReason.WRITTEN, RefusalReason.BUSY}


class ProcessorState(BaseModel):
    """What ``GET /v1/partials`` answers, and the head of every ``PartialsAck``.

    ``watermark`` is the newest window end such that every window at or before it that this
    processor accepted partials for is in InfluxDB: agents delete their copies up to it. A new
    ``instance`` (a restarted processor) has merged nothing: agents re-send everything above the
    watermark.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    rule: str
    instance: str = Field(min_length=1)
    watermark: float | None = Field(default=None, description="Unix seconds; None before the first write.")


class PartialsAck(ProcessorState):
    """The processor's answer to ``POST /v1/partials``: 202 when accepted, 200 when refused."""

    accepted: bool
    reason: RefusalReason | None = Field(default=None, description="Why not accepted.")
    message: str | None = Field(default=None, description="For people: the rule that refused it.")
    window_end: float | None = Field(default=None, description="End of the rule window the partial belongs to.")
