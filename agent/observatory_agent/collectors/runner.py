"""Build the configured collectors from the registry, each under its guard, and tag their samples."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import structlog

from observatory_agent.collectors import registry
from observatory_agent.collectors.guard import CycleResult, Guard, run_cycle
from observatory_agent.collectors.host import HostPaths
from observatory_agent.contract import CollectorConfig

log = structlog.get_logger("observatory_agent.collectors")

__all__ = ["BuildResult", "CycleResult", "build_collectors", "run_cycle", "series_tags"]


@dataclass
class BuildResult:
    collectors: list[Guard]
    errors: dict[str, str]
    """Collectors that could not be built (a bad option, a plugin that fails to import), by name."""


def build_collectors(configs: Sequence[CollectorConfig], paths: HostPaths, *, max_timeout: float) -> BuildResult:
    """One guarded collector per enabled config; failures are reported, never raised, so the rest run."""
    built: list[Guard] = []
    errors: dict[str, str] = {}
    shared: dict[object, object] = {}
    for cfg in configs:
        if not cfg.enabled:
            continue
        # Never longer than a cycle: a slow collector must not overlap the next one.
        timeout = min(cfg.timeout, max_timeout)
        kind = registry.get(cfg.kind)
        try:
            if kind is None:
                raise registry.OptionError(f"collectors[{cfg.name}].kind: {cfg.kind!r} is not a registered collector")
            registry.check_options(kind, cfg)
            collector = kind.factory(registry.BuildContext(cfg, paths, timeout, shared))
        except Exception as exc:  # one bad collector is skipped; the others must still run
            errors[cfg.name] = f"{type(exc).__name__}: {exc}"
            log.error("collector_build_failed", collector=cfg.name, kind=cfg.kind, error=errors[cfg.name])
            continue
        built.append(Guard(collector, timeout, trusted=kind.trusted, inline=kind.inline))
    return BuildResult(built, errors)


def series_tags(
    sample_tags: Mapping[str, str], base: Mapping[str, str], identity: Mapping[str, str]
) -> tuple[tuple[str, str], ...]:
    """Configured tags < the collector's own tags < host/node/cluster (which nothing overrides)."""
    merged = {**base, **sample_tags, **identity}
    return tuple(sorted(merged.items()))
