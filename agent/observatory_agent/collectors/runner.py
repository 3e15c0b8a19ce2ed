"""Build collectors from config and run one cycle of them concurrently, each under its timeout."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import structlog

from observatory_agent.collectors import application, cpuinfo, custom, system
from observatory_agent.collectors.base import COUNTER, Collector, CollectorBusyError, Sample, ThreadedCollector
from observatory_agent.collectors.host import HostPaths
from observatory_agent.contract import SYSTEM_COLLECTORS, CollectorConfig

log = structlog.get_logger("observatory_agent.collectors")


@dataclass
class CycleResult:
    """What one cycle produced: samples, and per collector either a duration or an error."""

    samples: list[Sample] = field(default_factory=list)
    errors: dict[str, str] = field(default_factory=dict)
    durations: dict[str, float] = field(default_factory=dict)


@dataclass
class BuildResult:
    collectors: list[Collector]
    errors: dict[str, str]
    """Collectors that could not be built (a custom plugin that fails to import), by name."""


def build_collectors(configs: Sequence[CollectorConfig], paths: HostPaths, *, max_timeout: float) -> BuildResult:
    """One collector per enabled config; failures are reported, never raised, so the rest run."""
    built: list[Collector] = []
    errors: dict[str, str] = {}
    for cfg in configs:
        if not cfg.enabled:
            continue
        # Never longer than a cycle: a slow collector must not overlap the next one.
        timeout = min(cfg.timeout, max_timeout)
        try:
            if cfg.kind == "cpuinfo":
                built.append(cpuinfo.CpuInfoCollector(cfg.name, timeout))
            elif cfg.kind in SYSTEM_COLLECTORS:
                built.append(ThreadedCollector(cfg.name, system.reader_for(cfg.kind, paths), timeout))
            elif cfg.kind == "application":
                if not cfg.targets:
                    raise ValueError("application collectors need at least one target URL")
                prefix = cfg.options.get("prefix", "app.")
                built.append(application.ApplicationCollector(cfg.name, cfg.targets, timeout, prefix))
            elif cfg.kind == "custom":
                func = custom.load_entry_point(cfg.entry_point or cfg.name)
                built.append(custom.CustomCollector(cfg.name, func, cfg.options, timeout))
        except Exception as exc:  # one bad collector is skipped; the others must still run
            errors[cfg.name] = f"{type(exc).__name__}: {exc}"
            log.error("collector_build_failed", collector=cfg.name, kind=cfg.kind, error=errors[cfg.name])
    return BuildResult(built, errors)


async def _run_one(collector: Collector) -> tuple[Sequence[Sample] | None, str | None, float]:
    started = time.perf_counter()
    try:
        samples = await asyncio.wait_for(collector.collect(), collector.timeout)
    except TimeoutError:
        return None, "timeout", time.perf_counter() - started
    except CollectorBusyError:
        return None, "busy", time.perf_counter() - started
    except Exception as exc:  # a plugin's bug is its collector's error, not the agent's
        log.warning("collector_failed", collector=collector.name, error=f"{type(exc).__name__}: {exc}")
        return None, "error", time.perf_counter() - started
    return samples, None, time.perf_counter() - started


async def run_cycle(collectors: Sequence[Collector]) -> CycleResult:
    """Every collector at once; the cycle takes as long as the slowest timeout at most."""
    results = await asyncio.gather(*(_run_one(c) for c in collectors))
    cycle = CycleResult()
    for collector, (samples, error, took) in zip(collectors, results, strict=True):
        cycle.durations[collector.name] = took
        if error is not None:
            cycle.errors[collector.name] = error
        elif samples:
            cycle.samples.extend(samples)
    return cycle


def series_tags(
    sample_tags: Mapping[str, str], base: Mapping[str, str], identity: Mapping[str, str]
) -> tuple[tuple[str, str], ...]:
    """Configured tags < the collector's own tags < host/node/cluster (which nothing overrides)."""
    merged = {**base, **sample_tags, **identity}
    return tuple(sorted(merged.items()))


def is_counter(sample: Sample) -> bool:
    return sample.type is COUNTER
