"""Collectors: cycles survive failing and slow collectors; host files are parsed right."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Mapping
from pathlib import Path

from observatory_agent.collectors import METRICS, runner, system
from observatory_agent.collectors.application import parse_exposition
from observatory_agent.collectors.base import COUNTER, GAUGE, Sample, ThreadedCollector
from observatory_agent.collectors.custom import CustomCollector
from observatory_agent.collectors.host import HostPaths
from observatory_agent.contract import CollectorConfig, MetricEvent, MetricType


def _good(options: Mapping[str, str]) -> list[MetricEvent]:
    return [MetricEvent(name="custom.queue.depth", value=float(options.get("depth", "3")), timestamp=0.0)]


def _broken(options: Mapping[str, str]) -> list[MetricEvent]:
    raise RuntimeError("plugin bug")


def _slow(options: Mapping[str, str]) -> list[Sample]:
    time.sleep(0.5)
    return [Sample("custom.slow", 1.0)]


async def test_failing_custom_collector_does_not_stop_the_others() -> None:
    collectors = [
        CustomCollector("broken", _broken, {}, timeout=1.0),
        CustomCollector("good", _good, {"depth": "7"}, timeout=1.0),
        ThreadedCollector("memory", system.read_memory, timeout=1.0),
    ]
    cycle = await runner.run_cycle(collectors)
    assert cycle.errors == {"broken": "error"}
    names = {s.name for s in cycle.samples}
    assert "custom.queue.depth" in names
    assert "system.memory.used" in names
    assert [s.value for s in cycle.samples if s.name == "custom.queue.depth"] == [7.0]


async def test_slow_collector_times_out_without_delaying_the_cycle() -> None:
    collectors = [
        CustomCollector("slow", _slow, {}, timeout=0.1),
        CustomCollector("good", _good, {}, timeout=1.0),
    ]
    started = time.perf_counter()
    cycle = await runner.run_cycle(collectors)
    assert time.perf_counter() - started < 0.4
    assert cycle.errors == {"slow": "timeout"}
    assert [s.name for s in cycle.samples] == ["custom.queue.depth"]


async def test_stuck_blocking_collector_is_reported_busy_instead_of_stacking_threads() -> None:
    stuck = ThreadedCollector("stuck", lambda: _slow({}), timeout=0.05)
    first = await runner.run_cycle([stuck])
    second = await runner.run_cycle([stuck])
    assert first.errors == {"stuck": "timeout"}
    assert second.errors == {"stuck": "busy"}
    await asyncio.sleep(0.6)
    third = await runner.run_cycle([ThreadedCollector("ok", lambda: [Sample("x", 1.0)], 1.0)])
    assert third.errors == {}


async def test_async_custom_collector_is_awaited() -> None:
    async def collect(options: Mapping[str, str]) -> list[Sample]:
        return [Sample("custom.async", 2.0, COUNTER, {"queue": "a"})]

    cycle = await runner.run_cycle([CustomCollector("a", collect, {}, timeout=1.0)])
    assert cycle.samples == [Sample("custom.async", 2.0, COUNTER, {"queue": "a"})]


def test_unknown_custom_entry_point_is_reported_and_the_rest_are_built() -> None:
    configs = [
        CollectorConfig(name="memory", kind="memory"),
        CollectorConfig(name="mine", kind="custom", entry_point="does-not-exist"),
        CollectorConfig(name="load", kind="load", enabled=False),
    ]
    built = runner.build_collectors(configs, HostPaths(), max_timeout=5.0)
    assert [c.name for c in built.collectors] == ["memory"]
    assert "does-not-exist" in built.errors["mine"]


def test_collector_timeout_is_capped_by_the_cycle() -> None:
    built = runner.build_collectors(
        [CollectorConfig(name="memory", kind="memory", timeout=30)], HostPaths(), max_timeout=2.0
    )
    assert built.collectors[0].timeout == 2.0


def test_cpu_usage_comes_from_deltas_so_the_first_reading_is_empty() -> None:
    read = system.CpuReader()
    assert read() == []
    deadline = time.monotonic() + 0.1
    while time.monotonic() < deadline:  # burn CPU for a few clock ticks so the delta is non-zero
        pass
    samples = {s.name: s.value for s in read()}
    assert 0.0 <= samples["system.cpu.usage"] <= 100.0


def test_real_mounts_skip_pseudo_filesystems_and_bind_repeats(tmp_path: Path) -> None:
    (tmp_path / "1").mkdir()
    (tmp_path / "1" / "mounts").write_text(
        "/dev/sda1 / ext4 rw 0 0\n"
        "proc /proc proc rw 0 0\n"
        "sysfs /sys sysfs rw 0 0\n"
        "overlay /var/lib/docker/overlay2/x/merged overlay rw 0 0\n"
        "/dev/sdb1 /data\\040disk xfs rw 0 0\n"
        "/dev/sda1 /var/lib/kubelet ext4 rw 0 0\n"
        "tmpfs /run tmpfs rw 0 0\n"
        "cgroup2 /sys/fs/cgroup cgroup2 rw 0 0\n"
    )
    paths = HostPaths(proc=tmp_path, root=tmp_path / "host", in_container=True)
    assert system.real_mounts(paths) == [
        ("/dev/sda1", "/", "ext4"),
        ("/dev/sdb1", "/data disk", "xfs"),
        ("tmpfs", "/run", "tmpfs"),
    ]
    assert paths.host_path("/data disk") == tmp_path / "host" / "data disk"


def test_network_counters_per_interface_from_the_hosts_namespace(tmp_path: Path) -> None:
    (tmp_path / "1" / "net").mkdir(parents=True)
    (tmp_path / "1" / "net" / "dev").write_text(
        "Inter-|   Receive                                                |  Transmit\n"
        " face |bytes packets errs drop fifo frame compressed multicast|bytes packets errs drop fifo colls\n"
        "    lo: 100 1 0 0 0 0 0 0 100 1 0 0 0 0 0 0\n"
        "  eth0: 5000 40 1 2 0 0 0 0 7000 50 3 4 0 0 0 0\n"
        "vethabc: 1 1 0 0 0 0 0 0 1 1 0 0 0 0 0 0\n"
    )
    samples = system.make_network_reader(HostPaths(proc=tmp_path, in_container=True))()
    got = {s.name: s.value for s in samples}
    assert {s.tags["interface"] for s in samples} == {"eth0"}
    assert got["system.network.bytes_recv"] == 5000
    assert got["system.network.bytes_sent"] == 7000
    assert got["system.network.drops_out"] == 4
    assert all(s.type is COUNTER for s in samples)


def test_process_states_are_counted_even_with_parentheses_in_the_command(tmp_path: Path) -> None:
    for pid, stat in {"1": "1 (init) S 0", "2": "2 (a) b) R 1", "3": "3 (zzz) Z 1", "4": "4 (x) D 1"}.items():
        (tmp_path / pid).mkdir()
        (tmp_path / pid / "stat").write_text(stat)
    (tmp_path / "self").mkdir()
    got = {s.name: s.value for s in system.make_processes_reader(HostPaths(proc=tmp_path))()}
    assert got["system.processes.total"] == 4
    assert got["system.processes.running"] == 1
    assert got["system.processes.sleeping"] == 1
    assert got["system.processes.zombie"] == 1
    assert got["system.processes.blocked"] == 1


def test_prometheus_exposition_becomes_typed_samples_with_safe_tags() -> None:
    text = (
        "# TYPE http_requests_total counter\n"
        'http_requests_total{code="200",host="pod-a"} 1027\n'
        'http_requests_created{code="200",host="pod-a"} 1.7e9\n'
        "# TYPE queue_depth gauge\n"
        "queue_depth 3\n"
        "# TYPE latency_seconds histogram\n"
        'latency_seconds_bucket{le="0.1"} 5\n'
        'latency_seconds_bucket{le="+Inf"} 7\n'
        "latency_seconds_count 7\n"
        "latency_seconds_sum 1.5\n"
    )
    samples = parse_exposition(text, extra_tags={"target": "http://x/metrics"})
    by_name = {(s.name, s.tags.get("le")): s for s in samples}
    total = by_name[("app.http_requests_total", None)]
    assert total.type is MetricType.COUNTER
    assert total.tags == {"code": "200", "label_host": "pod-a", "target": "http://x/metrics"}
    assert by_name[("app.queue_depth", None)].type is GAUGE
    assert by_name[("app.latency_seconds_bucket", "0.1")].type is COUNTER
    assert not any(s.name.endswith("_created") for s in samples)


def test_series_tags_never_let_collectors_override_identity() -> None:
    key = runner.series_tags({"host": "evil", "core": "1"}, {"team": "sre", "core": "x"}, {"host": "n1"})
    assert key == (("core", "1"), ("host", "n1"), ("team", "sre"))


def test_every_metric_name_is_dotted_and_listed_once() -> None:
    names = [m.name for m in METRICS]
    assert len(names) == len(set(names))
    assert all(n.startswith(("system.", "app.")) for n in names)


def test_host_paths_come_from_the_environment_and_reach_psutil() -> None:
    import psutil

    paths = HostPaths.from_environ({"HOST_PROC": "/host/proc", "HOST_SYS": "/host/sys", "HOST_ROOT": "/host"})
    assert (paths.proc, paths.sys, paths.root) == (Path("/host/proc"), Path("/host/sys"), Path("/host"))
    assert paths.in_container
    assert paths.mounts_file() == Path("/host/proc/1/mounts")
    assert paths.proc_net("dev") == Path("/host/proc/1/net/dev")
    assert paths.host_path("/var/lib") == Path("/host/var/lib")
    before = psutil.PROCFS_PATH
    try:
        paths.apply_to_psutil()
        assert psutil.PROCFS_PATH == "/host/proc"
    finally:
        psutil.PROCFS_PATH = before


def test_local_host_paths_read_this_machine() -> None:
    paths = HostPaths.from_environ({})
    assert not paths.in_container
    assert paths.mounts_file() == Path("/proc/self/mounts")
    got = {s.name for s in system.make_load_reader(paths)()} | {s.name for s in system.make_uptime_reader(paths)()}
    assert got == {"system.load.1", "system.load.5", "system.load.15", "system.uptime"}
