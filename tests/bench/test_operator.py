"""The operator as a real subprocess on the bed's control plane: apply latency, cold start, idle resync writes, RSS.

Collectors use an image the node simulator does not run (``STAND_IN_IMAGE``): their pods turn
Running/Ready without a process, so the operator's work is measured, not the agents'. Every
collector selects one zone, ``zone-a`` (node-1) or ``zone-b`` (node-2) in turn, so each DaemonSet
wants one pod: 200 collectors are 100 pods per node, under the 110 a (simulated) node holds.

- **Apply → DaemonSet**: one operator watching a fresh namespace; ``LATENCY_N`` collectors are
  created one at a time (after one warm-up that is not counted), each measured from its POST
  returning to the DaemonSet's ADDED event on a watch opened beforehand, the next created only
  once that one is seen.
- **Cold start**: ``COLD_N`` collectors are created while no operator runs; from the operator's
  ``Popen`` until every collector has ``status.observedGeneration == metadata.generation`` and
  every DaemonSet exists (both lists polled every 0.25 s).
- **Idle resync**: once every collector reports READY ``1/1`` and DataFlowing False (the stand-in
  pods answer no ``/status``; Unknown, its value for two windows after a start, is still
  changing), two snapshots of the operator's request counters (``/healthz``, probe
  ``api-requests``) ``IDLE_SECONDS`` apart (≥ 2 resync periods). kopf caches probe results for
  10 s, so each snapshot is taken ≥ 10 s after any earlier ``/healthz`` call: both are fresh.
  The resourceVersions of the collectors and their children are compared over the same span as
  an independent check (the counters see only the operator's own client, not kopf's).
- **RSS**: the operator's VmRSS (and VmHWM, its peak) from ``/proc/<pid>/status`` after the idle span.

There is no peer operator in this bed to run side by side, so the peer column says "—".
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import threading
import time
import urllib.request
from collections import Counter
from collections.abc import Collection, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.bench.conftest import Report
from tests.env.controlplane import ControlPlane
from tests.env.dev import install_crds
from tests.env.fixtures import Nodes
from tests.env.kube import ApiError, Kube
from tests.env.nodesim import REPO
from tests.env.procs import Process, wait_for
from tests.integration.operator.conftest import operator_argv, stand_in_collector

LATENCY_N = int(os.environ.get("BENCH_OPERATOR_LATENCY_N", "40"))
COLD_N = int(os.environ.get("BENCH_OPERATOR_COLD_N", "200"))
RESYNC_SECONDS = 5.0
PROBE_CACHE_SECONDS = 10.0
"""kopf's liveness endpoint reruns its probes only when the last run is this old (kopf/_core/engines/probing.py)."""
IDLE_SECONDS = max(
    float(os.environ.get("BENCH_OPERATOR_IDLE_SECONDS", 2.5 * RESYNC_SECONDS)), PROBE_CACHE_SECONDS + 0.5
)
STAND_IN_IMAGE = "registry.example/observatory-bench-stand-in:1"
"""Not the project image: the simulator reports its pods Ready and runs nothing."""
GROUP_PATH = "/apis/observatory.happypatterns.org/v1alpha1"
MB = 1024 * 1024
WRITE_VERBS = frozenset({"create", "patch", "update", "delete"})
ZONES = ("zone-a", "zone-b")
"""node-1's and node-2's zones: every collector wants exactly one agent, so a settled collector reads READY 1/1."""


# --- bed helpers --------------------------------------------------------------------------------


def _collector(name: str, index: int) -> dict[str, Any]:
    # One node each, alternating: a simulated node holds 110 pods (the kubelet's default
    # maxPods), so 200 DaemonSets on every node would leave most pods unschedulable.
    return stand_in_collector(
        name, image=STAND_IN_IMAGE, nodeSelector={"topology.kubernetes.io/zone": ZONES[index % len(ZONES)]}
    )


def _collectors(ns: str) -> str:
    return f"{GROUP_PATH}/namespaces/{ns}/observatorycollectors"


def _daemonsets(ns: str) -> str:
    return f"/apis/apps/v1/namespaces/{ns}/daemonsets"


def _ds_name(collector: str) -> str:
    return f"{collector}-agent"


@contextlib.contextmanager
def _bench_namespace(kube: Kube, prefix: str) -> Iterator[str]:
    name = f"{prefix}-{os.urandom(3).hex()}"
    kube.create("/api/v1/namespaces", {"metadata": {"name": name, "labels": {"happy-observatory/test": "true"}}})
    try:
        wait_for(
            lambda: kube.exists(f"/api/v1/namespaces/{name}/serviceaccounts/default"),
            timeout=30,
            what=f"the default ServiceAccount in {name}",
        )
        kube.apply(
            {
                "apiVersion": "v1",
                "kind": "Secret",
                "metadata": {"name": "influxdb-auth"},
                "stringData": {"token": "not-a-real-token"},
            },
            name,
        )
        yield name
    finally:
        with contextlib.suppress(ApiError, OSError):
            kube.delete(f"/api/v1/namespaces/{name}")
        # Waited for (softly): the next benchmark's pods need the nodes' pod slots back.
        with contextlib.suppress(TimeoutError):
            wait_for(lambda: not kube.exists(f"/api/v1/namespaces/{name}"), timeout=120, what=f"{name} deleted")


@dataclass
class _Operator:
    process: Process
    liveness: str
    metrics_url: str

    @property
    def pid(self) -> int:
        assert self.process.pid is not None
        return self.process.pid

    def healthz(self) -> dict[str, Any]:
        with urllib.request.urlopen(self.liveness, timeout=5) as answer:
            data: dict[str, Any] = json.loads(answer.read())
        return data

    def counters(self) -> dict[str, int]:
        """API requests so far by verb, and ``writes`` (create, patch, update, delete), from /metrics."""
        with urllib.request.urlopen(self.metrics_url, timeout=5) as answer:
            text = answer.read().decode()
        out: Counter[str] = Counter()
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                if sample.name == "observatory_operator_api_requests_total":
                    verb = sample.labels["verb"]
                    out["writes" if verb in WRITE_VERBS else verb] += int(sample.value)
        return dict(out)

    def status_kb(self, field: str) -> int:
        for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
            if line.startswith(f"{field}:"):
                return int(line.split()[1])
        raise KeyError(field)


def _operator(control_plane: ControlPlane, ns: str, log: Path) -> _Operator:
    """Not started: the caller starts it (and times from there)."""
    argv, port, metrics_port = operator_argv(ns, resync=RESYNC_SECONDS)
    env = {**os.environ, "KUBECONFIG": str(control_plane.kubeconfig), "PYTHONUNBUFFERED": "1"}
    return _Operator(
        Process("observatory-operator", argv, log=log, env=env, cwd=REPO),
        f"http://127.0.0.1:{port}/healthz",
        f"http://127.0.0.1:{metrics_port}/metrics",
    )


@contextlib.contextmanager
def _running(op: _Operator) -> Iterator[_Operator]:
    try:
        yield op
    finally:
        op.process.stop()


def _percentile(values: list[float], q: float) -> float:
    """Nearest-rank percentile: a value that was actually observed."""
    ordered = sorted(values)
    return ordered[max(0, math.ceil(q / 100 * len(ordered)) - 1)]


@pytest.fixture(scope="module")
def crds(control_plane: ControlPlane) -> list[str]:
    return install_crds(control_plane.kube, REPO / "crds")


# --- 1. apply → DaemonSet ----------------------------------------------------------------------


class _DaemonSetWatch:
    """Records when each DaemonSet in a namespace is first seen on a watch stream."""

    def __init__(self, kube: Kube, ns: str) -> None:
        self.kube, self.ns = kube, ns
        self.seen: dict[str, float] = {}
        self.changed = threading.Condition()
        self.stop = threading.Event()
        _, self.rv = kube.list(_daemonsets(ns))
        self.thread = threading.Thread(target=self._run, name="bench-ds-watch", daemon=True)
        self.thread.start()

    def _run(self) -> None:
        while not self.stop.is_set():
            try:
                for event in self.kube.watch(_daemonsets(self.ns), self.rv, timeout_seconds=5):
                    obj = event.get("object") or {}
                    self.rv = obj.get("metadata", {}).get("resourceVersion", self.rv)
                    if event.get("type") == "ADDED":
                        now = time.monotonic()
                        with self.changed:
                            self.seen.setdefault(obj["metadata"]["name"], now)
                            self.changed.notify_all()
            except OSError:  # a dropped stream: resume from the last version seen
                time.sleep(0.05)
                continue
            except ApiError as exc:
                if exc.status != 410:
                    raise
                items, self.rv = self.kube.list(_daemonsets(self.ns))
                now = time.monotonic()
                with self.changed:
                    for item in items:
                        self.seen.setdefault(item["metadata"]["name"], now)
                    self.changed.notify_all()

    def wait(self, name: str, timeout: float) -> float:
        with self.changed:
            if not self.changed.wait_for(lambda: name in self.seen, timeout=timeout):
                raise TimeoutError(f"DaemonSet {name} not created within {timeout:.0f}s")
            return self.seen[name]

    def close(self) -> None:
        self.stop.set()
        self.thread.join(timeout=10)


@pytest.mark.timeout(180)
def test_apply_to_daemonset_latency(
    control_plane: ControlPlane, nodes: Nodes, crds: list[str], bed_root: Path, report: Report
) -> None:
    kube = control_plane.kube
    with _bench_namespace(kube, "bench-apply") as ns:
        op = _operator(control_plane, ns, bed_root / "logs" / f"operator-{ns}.log")
        op.process.start()
        with _running(op):
            wait_for(op.healthz, timeout=30, what=f"operator liveness (log: {op.process.log})")
            watch = _DaemonSetWatch(kube, ns)
            try:
                latencies = []
                for i in range(LATENCY_N + 1):
                    name = f"apply-{i:03d}"
                    kube.create(_collectors(ns), _collector(name, i))
                    created = time.monotonic()
                    seen = watch.wait(_ds_name(name), timeout=30)
                    if i:  # the first is a warm-up: the operator's first round also discovers APIs
                        latencies.append(seen - created)
            finally:
                watch.close()
            assert op.process.alive(), op.process.tail()

    p50, p95 = _percentile(latencies, 50), _percentile(latencies, 95)
    report.add(
        f"operator: create → DaemonSet exists, {LATENCY_N} collectors one at a time",
        ours=f"p50 {p50 * 1000:.0f} ms, p95 {p95 * 1000:.0f} ms (max {max(latencies) * 1000:.0f} ms)",
        target="p95 ≤ 1 s",
        met=p95 <= 1.0,
    )


# --- 2-4. 200 collectors: cold start, idle resync, RSS ---------------------------------------------


def _reconciled(kube: Kube, ns: str, names: Collection[str]) -> tuple[int, int]:
    """(collectors whose status has caught up with their generation, their DaemonSets that exist)."""
    items, _ = kube.list(_collectors(ns))
    observed = sum(
        1
        for c in items
        if c["metadata"]["name"] in names
        and (c.get("status") or {}).get("observedGeneration") == c["metadata"].get("generation")
    )
    ds_items, _ = kube.list(_daemonsets(ns))
    present = {d["metadata"]["name"] for d in ds_items}
    return observed, sum(1 for n in names if _ds_name(n) in present)


def _steady_counts(kube: Kube, ns: str, names: Collection[str]) -> Counter[str]:
    """READY value and DataFlowing status → how many of ``names`` show them (``stale``: generation not observed).

    DataFlowing stays Unknown for two windows after an agent starts (it may not have written
    yet), then turns False for the stand-in pods, which answer no ``/status``: only after that
    is a collector's status a function of nothing but the cluster.
    """
    items, _ = kube.list(_collectors(ns))
    counts: Counter[str] = Counter()
    for c in items:
        s = c.get("status") or {}
        if c["metadata"]["name"] in names:
            current = s.get("observedGeneration") == c["metadata"].get("generation")
            flowing = next((k["status"] for k in s.get("conditions") or [] if k["type"] == "DataFlowing"), None)
            counts[f"{s.get('ready')} DataFlowing={flowing}" if current else "stale"] += 1
    return counts


def _below(kube: Kube, ns: str) -> str:
    """What the layers under the operator say: DaemonSet status (controller-manager) and pods (simulated nodes)."""
    ds_items, _ = kube.list(_daemonsets(ns))
    ds_ready = sum(1 for d in ds_items if (d.get("status") or {}).get("numberReady", 0) >= 1)
    pods, _ = kube.list(f"/api/v1/namespaces/{ns}/pods")
    pods_ready = sum(
        1
        for p in pods
        if any(c["type"] == "Ready" and c["status"] == "True" for c in (p.get("status") or {}).get("conditions") or [])
    )
    return f"DaemonSets with numberReady ≥ 1: {ds_ready}/{len(ds_items)}; pods Ready: {pods_ready}/{len(pods)}"


def _versions(kube: Kube, ns: str) -> dict[str, str]:
    """kind/name → resourceVersion of every collector and child in the namespace."""
    paths = {
        "collector": _collectors(ns),
        "daemonset": _daemonsets(ns),
        "configmap": f"/api/v1/namespaces/{ns}/configmaps",
        "service": f"/api/v1/namespaces/{ns}/services",
    }
    out: dict[str, str] = {}
    for kind, path in paths.items():
        items, _ = kube.list(path)
        out |= {f"{kind}/{i['metadata']['name']}": i["metadata"]["resourceVersion"] for i in items}
    return out


@pytest.mark.timeout(420)
def test_cold_start_idle_resync_and_rss(
    control_plane: ControlPlane, nodes: Nodes, crds: list[str], bed_root: Path, report: Report
) -> None:
    kube = control_plane.kube
    names = {f"cold-{i:03d}": i for i in range(COLD_N)}
    with _bench_namespace(kube, "bench-cold") as ns:
        with ThreadPoolExecutor(16) as pool:
            list(pool.map(lambda n: kube.create(_collectors(ns), _collector(n, names[n])), names))

        op = _operator(control_plane, ns, bed_root / "logs" / f"operator-{ns}.log")
        started = time.monotonic()
        op.process.start()
        with _running(op):
            # --- 2. cold start
            ds_all_at: float | None = None

            def caught_up() -> bool:
                nonlocal ds_all_at
                observed, present = _reconciled(kube, ns, names)
                if present == len(names) and ds_all_at is None:
                    ds_all_at = time.monotonic() - started
                return observed == len(names) and present == len(names)

            wait_for(
                caught_up, timeout=180, what=f"{COLD_N} collectors reconciled (log: {op.process.log})", interval=0.25
            )
            cold = time.monotonic() - started
            rss_cold = op.status_kb("VmRSS") * 1024
            report.add(
                f"operator: {COLD_N} collectors reconciled from a cold start",
                ours=f"{cold:.1f} s (all DaemonSets by {ds_all_at or cold:.1f} s)",
                target="≤ 60 s",
                met=cold <= 60.0,
            )

            # --- 3. idle resync: settle first (every pod ready, every condition past its grace), then count
            last: Counter[str] = Counter()

            def settled() -> bool:
                nonlocal last
                last = _steady_counts(kube, ns, names)
                return last["1/1 DataFlowing=False"] == len(names)

            try:
                wait_for(settled, timeout=180, what="every collector READY 1/1, DataFlowing=False", interval=1.0)
            except TimeoutError as exc:
                raise TimeoutError(f"{exc}; statuses: {dict(last)}; {_below(kube, ns)}") from None
            settle = time.monotonic() - started
            rss_settled = op.status_kb("VmRSS") * 1024
            time.sleep(RESYNC_SECONDS + 1.0)  # a full round after the last change
            before_versions = _versions(kube, ns)
            before = op.counters()  # the first /healthz call of this operator: fresh
            time.sleep(IDLE_SECONDS)  # ≥ 2 resyncs, and past kopf's probe cache: the next read is fresh too
            after = op.counters()
            after_versions = _versions(kube, ns)
            assert op.process.alive(), op.process.tail()

            # --- 4. RSS with every collector known and reconciled
            rss, hwm = op.status_kb("VmRSS") * 1024, op.status_kb("VmHWM") * 1024

        changed = sorted(k for k, v in after_versions.items() if before_versions.get(k) != v)
        delta = {k: after.get(k, 0) - before.get(k, 0) for k in sorted(set(before) | set(after))}
        writes = delta.pop("writes", 0)
        reads = sum(v for k, v in delta.items() if k in {"get", "list", "watch"})
        which = f" ({', '.join(changed[:5])})" if changed else ""
        by_method = ", ".join(f"{k} {v}" for k, v in delta.items() if k not in {"get", "list", "watch"} and v) or "none"
        report.add(
            f"operator: write requests during an idle {IDLE_SECONDS:.1f} s ({IDLE_SECONDS / RESYNC_SECONDS:.1f} "
            f"resyncs of {RESYNC_SECONDS:.0f} s), {COLD_N} collectors settled (steady at {settle:.0f} s)",
            ours=(
                f"{writes} writes ({by_method}); {reads} reads; "
                f"{len(changed)} of {len(after_versions)} objects changed{which}"
            ),
            target="0 writes",
            met=writes == 0,
        )
        # Each collector's first transitions are announced once, not once per racing round.
        log_text = op.process.log.read_text()
        events = {r: log_text.count(f"event Normal Applied: {r}") for r in ("Reconciled=True",)}
        events["AllAgentsReady"] = log_text.count(": Ready=True")
        report.add(
            f"operator: transition Events during the {COLD_N}-collector cold start",
            ours=", ".join(f"{k} {v}" for k, v in events.items()),
            target=f"{COLD_N} each (no duplicates)",
            met=all(v == COLD_N for v in events.values()),
        )
        report.add(
            f"operator: RSS with {COLD_N} collectors reconciled",
            ours=(
                f"{rss / MB:.1f} MB after the idle span (peak {hwm / MB:.1f} MB; "
                f"{rss_cold / MB:.1f} MB when reconciled, {rss_settled / MB:.1f} MB when steady)"
            ),
            target="≤ 150 MB",
            met=rss <= 150 * MB,
        )
