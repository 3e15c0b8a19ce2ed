"""Collectors: cycles survive failing and slow collectors; host files are parsed right."""

from __future__ import annotations

import asyncio
import os
import threading
import time
from collections.abc import Mapping
from pathlib import Path

import pytest

from observatory_agent.collectors import METRICS, registry, runner, system
from observatory_agent.collectors.application import ApplicationCollector, ScrapeLimitError, parse_exposition
from observatory_agent.collectors.base import COUNTER, GAUGE, FunctionCollector, Sample
from observatory_agent.collectors.custom import CustomCollector
from observatory_agent.collectors.guard import Guard, run_cycle
from observatory_agent.collectors.host import HostPaths
from observatory_agent.contract import COLLECTOR_KINDS, CollectorConfig, MetricEvent, MetricType
from tests.env.procs import free_port
from tests.unit.agent import peers


def _good(options: Mapping[str, str]) -> list[MetricEvent]:
    return [MetricEvent(name="custom.queue.depth", value=float(options.get("depth", "3")), timestamp=0.0)]


def _broken(options: Mapping[str, str]) -> list[MetricEvent]:
    raise RuntimeError("plugin bug")


def _slow(options: Mapping[str, str]) -> list[Sample]:
    time.sleep(0.5)
    return [Sample("custom.slow", 1.0)]


def _guard(collector: object, timeout: float = 1.0, *, trusted: bool = False) -> Guard:
    return Guard(collector, timeout, trusted=trusted)  # type: ignore[arg-type]


def _memory() -> Guard:
    return _guard(FunctionCollector("memory", system.read_memory), trusted=True)


async def test_failing_custom_collector_does_not_stop_the_others() -> None:
    guards = [
        _guard(CustomCollector("broken", _broken, {})),
        _guard(CustomCollector("good", _good, {"depth": "7"})),
        _memory(),
    ]
    cycle = await run_cycle(guards)
    assert cycle.errors == {"broken": "error"}
    assert "plugin bug" in (cycle.outcomes["broken"].message or "")
    names = {s.name for s in cycle.samples}
    assert "custom.queue.depth" in names
    assert "system.memory.used" in names
    assert [s.value for s in cycle.samples if s.name == "custom.queue.depth"] == [7.0]


async def test_slow_collector_times_out_without_delaying_the_cycle() -> None:
    guards = [_guard(CustomCollector("slow", _slow, {}), timeout=0.1), _guard(CustomCollector("good", _good, {}))]
    started = time.perf_counter()
    cycle = await run_cycle(guards)
    assert time.perf_counter() - started < 0.4
    assert cycle.errors == {"slow": "timeout"}
    assert [s.name for s in cycle.samples] == ["custom.queue.depth"]


async def test_stuck_blocking_collector_is_reported_busy_instead_of_stacking_threads() -> None:
    stuck = _guard(FunctionCollector("stuck", lambda: _slow({})), timeout=0.05)
    first = await run_cycle([stuck])
    second = await run_cycle([stuck])
    assert first.errors == {"stuck": "timeout"}
    assert second.errors == {"stuck": "busy"}
    await asyncio.sleep(0.6)
    third = await run_cycle([stuck])
    assert third.errors == {"stuck": "timeout"}  # the earlier call returned: a fresh one started


async def test_hung_sync_plugins_hold_only_their_own_threads_and_are_busy_not_restarted() -> None:
    """Issue 10, defect 5: with a shared pool of four threads, four hung plugins starved every collector."""
    release = threading.Event()
    calls: list[str] = []

    def hang(options: Mapping[str, str]) -> list[Sample]:
        calls.append(options["n"])
        release.wait(10)
        return []

    hung = [_guard(CustomCollector(f"hung{i}", hang, {"n": str(i)}), timeout=0.1) for i in range(6)]
    try:
        for cycle_no in range(3):
            cycle = await run_cycle([*hung, _memory()])
            assert "system.memory.used" in {s.name for s in cycle.samples}, f"cycle {cycle_no} starved"
            reason = "timeout" if cycle_no == 0 else "busy"
            assert cycle.errors == {f"hung{i}": reason for i in range(6)}
        assert sorted(calls) == [str(i) for i in range(6)]  # each plugin entered once, never stacked
    finally:
        release.set()


async def test_async_custom_collector_is_awaited() -> None:
    async def collect(options: Mapping[str, str]) -> list[Sample]:
        return [Sample("custom.async", 2.0, COUNTER, {"queue": "a"})]

    cycle = await run_cycle([_guard(CustomCollector("a", collect, {}))])
    assert cycle.samples == [Sample("custom.async", 2.0, COUNTER, {"queue": "a"})]


async def test_bad_plugin_samples_are_rejected_at_the_boundary_by_reason_and_the_rest_kept() -> None:
    """Issue 10, defect 2: a None value killed the agent; a non-string tag broke every flush."""

    def sloppy(options: Mapping[str, str]) -> list[object]:
        return [
            Sample("custom.ok", 1.0, GAUGE, {"queue": "a"}),
            Sample("custom.none", None),  # type: ignore[arg-type]
            Sample("custom.nan", float("nan")),
            Sample("custom.text", "12"),  # type: ignore[arg-type]
            Sample("custom.tag", 1.0, GAUGE, {"port": 8080}),  # type: ignore[dict-item]
            Sample("", 1.0),
            Sample("custom.kind", 1.0, "histogram"),  # type: ignore[arg-type]
            {"name": "custom.dict", "value": 1.0},
            Sample("custom.int", 3, "counter", {"empty": ""}),  # type: ignore[arg-type]
        ]

    cycle = await run_cycle([_guard(CustomCollector("sloppy", sloppy, {})), _memory()])
    outcome = cycle.outcomes["sloppy"]
    assert outcome.error is None
    assert outcome.rejected == {"value": 3, "tags": 1, "name": 1, "type": 1, "not_a_sample": 1}
    assert [s for s in outcome.samples if s.name.startswith("custom.")] == [
        Sample("custom.ok", 1.0, GAUGE, {"queue": "a"}),
        Sample("custom.int", 3.0, COUNTER, {}),
    ]
    assert all(type(s.value) is float for s in outcome.samples)
    assert "system.memory.used" in {s.name for s in cycle.samples}


async def test_a_plugin_returning_no_iterable_is_an_error_not_a_crash() -> None:
    cycle = await run_cycle([_guard(CustomCollector("none", lambda _o: None, {})), _memory()])
    assert cycle.errors == {"none": "error"}
    assert "NoneType" in (cycle.outcomes["none"].message or "")


def test_unknown_custom_entry_point_is_reported_and_the_rest_are_built() -> None:
    configs = [
        CollectorConfig(name="memory", kind="memory"),
        CollectorConfig(name="mine", kind="custom", entry_point="does-not-exist"),
        CollectorConfig(name="load", kind="load", enabled=False),
    ]
    built = runner.build_collectors(configs, HostPaths(), max_timeout=5.0)
    assert [c.name for c in built.collectors] == ["memory"]
    assert "does-not-exist" in built.errors["mine"]


def test_every_collector_kind_of_the_contract_is_registered_with_its_metrics() -> None:
    kinds = {k.name: k for k in registry.kinds()}
    assert set(kinds) == set(COLLECTOR_KINDS)
    assert {m.collector for m in METRICS} == set(COLLECTOR_KINDS) - {"custom"}
    assert all(m.collector == k.name for k in kinds.values() for m in k.metrics)


def test_a_system_collectors_options_are_checked_and_named_in_the_error() -> None:
    configs = [
        CollectorConfig(name="network", kind="network", options={"exclude_interface": "eth.*"}),
        CollectorConfig(name="disk_io", kind="disk_io", options={"exclude_devices": "(unclosed"}),
        CollectorConfig(name="disk_usage", kind="disk_usage", options={"mount_timeout": "soon"}),
        CollectorConfig(name="memory", kind="memory"),
    ]
    built = runner.build_collectors(configs, HostPaths(), max_timeout=5.0)
    assert [c.name for c in built.collectors] == ["memory"]
    assert "collectors[network].options.exclude_interface: unknown option" in built.errors["network"]
    assert "exclude_interfaces" in built.errors["network"]  # the known ones are listed
    assert "collectors[disk_io].options.exclude_devices: not a valid regex" in built.errors["disk_io"]
    assert "collectors[disk_usage].options.mount_timeout: must be a number" in built.errors["disk_usage"]


def test_network_exclusions_come_from_the_collectors_options(tmp_path: Path) -> None:
    (tmp_path / "net").mkdir()
    (tmp_path / "net" / "dev").write_text(
        "h1\nh2\n    lo: 1 1 0 0 0 0 0 0 1 1 0 0 0 0 0 0\n  eth0: 5 4 0 0 0 0 0 0 7 5 0 0 0 0 0 0\n"
        "  eth1: 5 4 0 0 0 0 0 0 7 5 0 0 0 0 0 0\n"
    )
    config = CollectorConfig(name="network", kind="network", options={"exclude_interfaces": "eth1"})
    (guard,) = runner.build_collectors([config], HostPaths(proc=tmp_path), max_timeout=1.0).collectors
    samples = guard.collector.collect()
    assert {s.tags["interface"] for s in samples} == {"lo", "eth0"}


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


def _mounts(tmp_path: Path, *mountpoints: str) -> HostPaths:
    """A mount table; ``/nfs...`` mounts are NFS, the rest ext4."""
    (tmp_path / "1").mkdir(exist_ok=True)
    (tmp_path / "1" / "mounts").write_text(
        "".join(
            f"/dev/x{i} {m} {'nfs4' if m.startswith('/nfs') else 'ext4'} rw 0 0\n" for i, m in enumerate(mountpoints)
        )
    )
    for m in mountpoints:
        (tmp_path / "host" / m.lstrip("/")).mkdir(parents=True, exist_ok=True)
    return HostPaths(proc=tmp_path, root=tmp_path / "host", in_container=True)


async def test_disk_usage_and_filesystem_share_one_walk_of_the_mounts(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    paths = _mounts(tmp_path, "/", "/data")
    stats: list[str] = []
    real = os.statvfs

    def counting(path: os.PathLike[str] | str) -> os.statvfs_result:
        stats.append(str(path))
        return real(path)

    monkeypatch.setattr(system.os, "statvfs", counting)
    configs = [
        CollectorConfig(name="disk_usage", kind="disk_usage"),
        CollectorConfig(name="filesystem", kind="filesystem"),
    ]
    built = runner.build_collectors(configs, paths, max_timeout=1.0)
    disk, fs = (g.collector for g in built.collectors)
    assert disk.walker is fs.walker  # type: ignore[attr-defined]
    cycle = await run_cycle(built.collectors)
    disk_samples, fs_samples = cycle.outcomes["disk_usage"].samples, cycle.outcomes["filesystem"].samples
    assert len(stats) == 2  # one statvfs per mount for both collectors
    assert {s.tags["mountpoint"] for s in disk_samples} == {"/", "/data"}
    assert {s.name for s in fs_samples} >= {"system.filesystem.inodes.total"}


async def test_a_stuck_mount_is_skipped_and_counted_and_the_others_still_reported(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Issue 10: both filesystem collectors hung on a dead NFS mount."""
    paths = _mounts(tmp_path, "/", "/nfs", "/data")
    release = threading.Event()
    real = os.statvfs

    def nfs_hangs(path: os.PathLike[str] | str) -> os.statvfs_result:
        if str(path).endswith("nfs"):
            release.wait(10)
        return real(path)

    monkeypatch.setattr(system.os, "statvfs", nfs_hangs)
    walker = system.MountWalker(paths, timeout=0.1, max_age=0.0)
    try:
        started = time.monotonic()
        first = {tags["mountpoint"] for tags, _ in await walker.stats()}
        assert time.monotonic() - started < 1.0
        second = {tags["mountpoint"] for tags, _ in await walker.stats()}
        assert first == second == {"/", "/data"}
        assert walker.stuck == ["/nfs"]
        assert walker.skipped == 2  # timed out once, then skipped without another stuck thread
        release.set()
        await asyncio.sleep(0.1)
        assert {tags["mountpoint"] for tags, _ in await walker.stats()} == {"/", "/nfs", "/data"}
        assert walker.stuck == []
    finally:
        release.set()


async def test_disk_free_is_f_bfree_and_available_is_f_bavail(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    paths = _mounts(tmp_path, "/")
    # 1000 blocks of 4 KiB: 300 free, of which 250 available to non-root (50 reserved).
    fake = os.statvfs_result((4096, 4096, 1000, 300, 250, 100, 40, 40, 0, 255))
    monkeypatch.setattr(system.os, "statvfs", lambda _p: fake)
    collector = system.DiskUsageCollector("d", system.MountWalker(paths))
    samples = {s.name: s.value for s in await collector.collect()}
    assert samples["system.disk.free"] == 300 * 4096
    assert samples["system.disk.available"] == 250 * 4096
    assert samples["system.disk.used"] == 700 * 4096
    assert samples["system.disk.usage"] == pytest.approx(100 * 700 / 950)


def test_a_scrape_over_its_sample_limit_fails_the_target_instead_of_growing_memory() -> None:
    text = "".join(f'm{{i="{i}"}} {i}\n' for i in range(101))
    with pytest.raises(ScrapeLimitError, match="sample_limit=100"):
        parse_exposition(text, sample_limit=100)
    assert len(parse_exposition(text, sample_limit=101)) == 101


async def test_a_scrape_that_reached_the_wrong_peer_does_not_keep_its_connection() -> None:
    """A target's Service address scraped before it was routed answered 404 on a kept-alive connection:
    the next scrape connects afresh and reaches the target."""
    port = free_port()
    wrong = peers.serve(port, 404)
    target = f"http://127.0.0.1:{port}/metrics"
    collector = ApplicationCollector("apps", [target], 2.0)
    try:
        await run_cycle([_guard(collector, 2.0)])
        assert (collector.up[target], wrong.requests) == (0, 1)
        wrong.stop_listening()
        right = peers.serve(port, 200, b"# TYPE q gauge\nq 3\n")
        try:
            cycle = await run_cycle([_guard(collector, 2.0)])
        finally:
            right.stop_listening()
            right.server_close()
        assert [(s.name, s.value) for s in cycle.samples] == [("app.q", 3.0)]
        assert (collector.up[target], wrong.requests, right.requests) == (1, 1, 1)
    finally:
        await collector.close()
        wrong.server_close()


async def test_application_targets_report_up_per_target() -> None:
    from aiohttp import web

    async def metrics(_request: web.Request) -> web.Response:
        return web.Response(text="# TYPE q gauge\nq 3\n")

    async def huge(_request: web.Request) -> web.Response:
        return web.Response(text="q 1\n" * 1000)

    app = web.Application()
    app.router.add_get("/metrics", metrics)
    app.router.add_get("/huge", huge)
    web_runner = web.AppRunner(app)
    await web_runner.setup()
    site = web.TCPSite(web_runner, "127.0.0.1", 0)
    await site.start()
    port = web_runner.addresses[0][1]
    targets = [f"http://127.0.0.1:{port}/metrics", f"http://127.0.0.1:{port}/huge", "http://127.0.0.1:9/metrics"]
    collector = ApplicationCollector("apps", targets, 2.0, max_body_bytes=1000)
    try:
        cycle = await run_cycle([_guard(collector, 2.0)])
    finally:
        await collector.close()
        await web_runner.cleanup()
    assert cycle.errors == {}
    assert [(s.name, s.value) for s in cycle.samples] == [("app.q", 3.0)]
    assert collector.up == {targets[0]: 1, targets[1]: 0, targets[2]: 0}
