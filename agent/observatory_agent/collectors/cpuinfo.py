"""``system.cpu.info``: py-cpuinfo read once at start, in a thread, then repeated every cycle."""

from __future__ import annotations

import asyncio
import os
from collections.abc import Sequence
from typing import Any

from observatory_agent.collectors import registry
from observatory_agent.collectors.base import GAUGE, Sample


def _read_cpuinfo() -> dict[str, Any]:
    import cpuinfo  # noqa: PLC0415 - lazy: read once, in a worker thread

    # get_cpu_info() runs a short-lived subprocess; it takes ~1 s, hence once and off the loop.
    info: dict[str, Any] = cpuinfo.get_cpu_info()
    return info


def info_samples(info: dict[str, Any], logical_cpus: int) -> list[Sample]:
    tags = {
        "model": str(info.get("brand_raw") or "unknown"),
        "vendor": str(info.get("vendor_id_raw") or "unknown"),
        "arch": str(info.get("arch") or "unknown"),
    }
    out = [Sample("system.cpu.info", 1.0, GAUGE, tags), Sample("system.cpu.count", float(logical_cpus))]
    hz = info.get("hz_advertised")
    if isinstance(hz, list | tuple) and hz and isinstance(hz[0], int | float):
        out.append(Sample("system.cpu.frequency.advertised", float(hz[0])))
    return out


class CpuInfoCollector:
    """Starts the one read at construction; cycles before it finishes yield nothing."""

    def __init__(self, name: str = "cpuinfo") -> None:
        self._name = name
        self._samples: list[Sample] | None = None
        self._task: asyncio.Future[dict[str, Any]] | None = None

    @property
    def name(self) -> str:
        return self._name

    async def collect(self) -> Sequence[Sample]:
        if self._samples is not None:
            return self._samples
        if self._task is None:
            self._task = asyncio.get_running_loop().run_in_executor(None, _read_cpuinfo)
        if not self._task.done():
            return []
        self._samples = info_samples(self._task.result(), os.cpu_count() or 0)
        return self._samples


registry.register(
    registry.Kind(
        "cpuinfo",
        lambda ctx: CpuInfoCollector(ctx.config.name),
        tuple(
            registry.MetricInfo(name, unit, "G", tags, "cpuinfo", text)
            for name, unit, tags, text in (
                ("system.cpu.info", "1", ("model", "vendor", "arch"), "Always 1; the CPU in tags"),
                ("system.cpu.count", "cpus", (), "Logical CPUs"),
                ("system.cpu.frequency.advertised", "Hz", (), "Advertised CPU frequency"),
            )
        ),
        trusted=True,
        inline=True,  # after its one read in a thread, a cached list: no task per cycle
    )
)
