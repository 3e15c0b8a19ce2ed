"""The one registry of collector kinds: name, factory taking options, and the metrics each writes.

A kind registers itself where it is defined (``registry.register(Kind(...))``), as node_exporter's
``registerCollector`` and Telegraf's ``inputs.Add`` do, so a new collector is one file: the
runner builds whatever is registered, ``/status`` and the CLI read the metric docs from here,
and a README test checks every registered metric is documented.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Final, NamedTuple

if TYPE_CHECKING:
    from observatory_agent.collectors.base import Collector
    from observatory_agent.collectors.host import HostPaths
    from observatory_agent.contract import CollectorConfig


class MetricInfo(NamedTuple):
    name: str
    unit: str
    kind: str
    """G: gauge, written as read; C: counter, written as a per-second rate."""
    tags: tuple[str, ...]
    collector: str
    help: str


class OptionError(ValueError):
    """A collector option is unknown or malformed; the message names the collector, option and rule."""


@dataclass(frozen=True)
class BuildContext:
    """What a factory may use: the collector's config, where the host is, and objects shared per build."""

    config: CollectorConfig
    paths: HostPaths
    timeout: float
    """Seconds a collection may take (the config's, capped by the interval)."""
    shared: dict[object, object] = field(default_factory=dict)
    """Objects collectors of one build share (the mount walk of disk_usage and filesystem)."""

    def option(self, name: str, default: str) -> str:
        return self.config.options.get(name, default)

    def regex_option(self, name: str, default: re.Pattern[str]) -> re.Pattern[str]:
        text = self.config.options.get(name)
        if text is None:
            return default
        try:
            return re.compile(text)
        except re.error as exc:
            raise OptionError(f"collectors[{self.config.name}].options.{name}: not a valid regex: {exc}") from exc

    def float_option(self, name: str, default: float, *, minimum: float = 0.0) -> float:
        text = self.config.options.get(name)
        if text is None:
            return default
        try:
            value = float(text)
        except ValueError:
            value = float("nan")
        if not value >= minimum:
            raise OptionError(f"collectors[{self.config.name}].options.{name}: must be a number ≥ {minimum:g}")
        return value


Factory = Callable[[BuildContext], "Collector"]


@dataclass(frozen=True)
class Kind:
    """One kind of collector."""

    name: str
    factory: Factory
    metrics: tuple[MetricInfo, ...]
    options: Mapping[str, str] = field(default_factory=dict)
    """Option name → what it does; any other option is refused (``free_options`` lifts that)."""
    trusted: bool = False
    """Built-in host readers produce well-formed samples; others are validated sample by sample."""
    free_options: bool = False
    """Options pass through unchecked (custom plugins define their own)."""
    inline: bool = False
    """Reads only procfs (kernel memory, never a device): runs on the loop instead of a thread."""


_KINDS: Final[dict[str, Kind]] = {}


def register(kind: Kind) -> Kind:
    if kind.name in _KINDS:
        raise ValueError(f"collector kind {kind.name!r} is registered twice")
    _KINDS[kind.name] = kind
    return kind


def get(name: str) -> Kind | None:
    return _KINDS.get(name)


def kinds() -> tuple[Kind, ...]:
    return tuple(_KINDS.values())


def check_options(kind: Kind, config: CollectorConfig) -> None:
    if kind.free_options:
        return
    unknown = sorted(set(config.options) - set(kind.options))
    if unknown:
        known = ", ".join(sorted(kind.options)) or "none"
        raise OptionError(f"collectors[{config.name}].options.{unknown[0]}: unknown option (known: {known})")
