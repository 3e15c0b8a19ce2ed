"""Collectors read the host and applications; each kind registers itself in ``registry``.

Every series also carries ``host``, ``node`` and ``cluster`` plus the configured tags. Counters
(C) are written as per-second rates of the running total; gauges (G) as read. Each metric is
written as one InfluxDB measurement with fields count, sum, mean, min, max, last and the
configured quantiles (p50, p95, p99 by default), timestamped at the window end.
"""

from __future__ import annotations

from typing import Final

from observatory_agent.collectors import application, cpuinfo, custom, registry, system
from observatory_agent.collectors.registry import MetricInfo

__all__ = ["METRICS", "MetricInfo", "application", "cpuinfo", "custom", "registry", "system"]

METRICS: Final[tuple[MetricInfo, ...]] = tuple(m for kind in registry.kinds() for m in kind.metrics)
"""Every built-in metric: name, unit, gauge/counter, tags beyond host/node/cluster, source."""
