"""Two operator replicas on a Lease: one writer at a time, counted from the API server's audit log (issue 11, item 2).

Each replica runs under its own ServiceAccount (with exactly the operator's RBAC), so the audit
log tells their requests apart; both hold the same Lease in the test's namespace.
"""

from __future__ import annotations

import itertools
import os
import signal
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest

from tests.env.controlplane import ControlPlane
from tests.env.fixtures import Nodes
from tests.integration.operator.conftest import (
    Accounts,
    Operator,
    audit_events,
    collector_path,
    eventually,
    stand_in_collector,
    start_operator,
)

pytestmark = pytest.mark.integration

LEASE = "observatory-operator"
WRITES = frozenset({"create", "patch", "update", "delete"})
COLLECTORS = 40


def _replica(accounts: Accounts, namespace: str, identity: str, bed_root: Path) -> Operator:
    kubeconfig = accounts.kubeconfig(namespace, identity, lease=LEASE)
    election = ["--leader-election", LEASE, "--leader-election-namespace", namespace, "--identity", identity]
    return start_operator(
        kubeconfig, namespace, bed_root / "logs" / f"operator-{namespace}-{identity}.log", extra=election
    )


def _holder(control_plane: ControlPlane, namespace: str) -> str | None:
    lease = control_plane.kube.get(f"/apis/coordination.k8s.io/v1/namespaces/{namespace}/leases/{LEASE}")
    return (lease.get("spec") or {}).get("holderIdentity") or None


def _when(event: dict[str, Any]) -> datetime:
    return datetime.fromisoformat(event["requestReceivedTimestamp"].replace("Z", "+00:00"))


def _writes(control_plane: ControlPlane, namespace: str) -> list[tuple[datetime, str, dict[str, Any]]]:
    """(time, replica, audit event) of every write the replicas sent to the namespace, the Lease's aside."""
    prefix = f"system:serviceaccount:{namespace}:"
    out = []
    for event in audit_events(control_plane):
        user = event["user"]["username"]
        ref = event.get("objectRef") or {}
        if user.startswith(prefix) and event["verb"] in WRITES and ref.get("resource") != "leases":
            out.append((_when(event), user.removeprefix(prefix), event))
    return out


def test_a_killed_leader_mid_rollout_hands_over_to_the_standby_with_one_writer_at_a_time(
    control_plane: ControlPlane, crds: list[str], nodes: Nodes, namespace: str, bed_root: Path, accounts: Accounts
) -> None:
    kube = control_plane.kube
    kube.apply(
        {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "influxdb-auth"}, "stringData": {"token": "x"}},
        namespace,
    )
    first = _replica(accounts, namespace, "op-a", bed_root)
    second: Operator | None = None
    try:
        eventually(lambda: _holder(control_plane, namespace) == "op-a", timeout=30, what="op-a holds the Lease")
        second = _replica(accounts, namespace, "op-b", bed_root)
        time.sleep(3)  # op-b has seen op-a's Lease and waits

        names = [f"c-{i:02d}" for i in range(COLLECTORS)]
        with ThreadPoolExecutor(8) as pool:
            list(
                pool.map(
                    lambda n: kube.apply(
                        stand_in_collector(n, nodeSelector={"topology.kubernetes.io/zone": "zone-b"}), namespace
                    ),
                    names,
                )
            )

        def started() -> bool:
            items = kube.list(f"/apis/apps/v1/namespaces/{namespace}/daemonsets")[0]
            return 3 <= len(items) < COLLECTORS

        eventually(started, timeout=60, what="the leader part-way through the rollout")
        os.killpg(first.process.pid or 0, signal.SIGKILL)  # no goodbye: the Lease is not released
        killed = time.monotonic()

        def all_reconciled() -> bool:
            items = kube.list(collector_path(namespace))[0]
            observed = [c for c in items if (c.get("status") or {}).get("observedGeneration")]
            daemonsets = kube.list(f"/apis/apps/v1/namespaces/{namespace}/daemonsets")[0]
            return len(observed) == COLLECTORS and len(daemonsets) == COLLECTORS

        eventually(all_reconciled, timeout=120, what=f"all {COLLECTORS} collectors reconciled after the failover")
        takeover = time.monotonic() - killed
        assert _holder(control_plane, namespace) == "op-b"
        assert second.process.alive(), second.log()
    finally:
        first.process.stop()
        if second is not None:
            second.process.stop()

    writes = _writes(control_plane, namespace)
    writers = [who for _, who, _ in writes]
    assert {"op-a", "op-b"} == set(writers), f"both replicas wrote in turn: {Counter(writers)}"
    switches = sum(1 for before, after in itertools.pairwise(writers) if before != after)
    assert writers[0] == "op-a"
    assert switches == 1, f"writers interleaved: {switches} switches"
    last_a = max(when for when, who, _ in writes if who == "op-a")
    first_b = min(when for when, who, _ in writes if who == "op-b")
    assert first_b > last_a, "the standby wrote before the leader's last write"
    assert takeover < 60, f"takeover took {takeover:.0f}s"

    created = Counter(
        f"{e['objectRef']['resource']}/{e['objectRef'].get('name')}"
        for _, _, e in writes
        if (e.get("responseStatus") or {}).get("code") == 201
        and e["objectRef"]["resource"] != "events"
        and "dryRun=" not in e["requestURI"]  # a dry run that would create answers 201 too
    )
    duplicated = {ref: n for ref, n in created.items() if n > 1}
    assert not duplicated, f"children created more than once: {duplicated}"
    # The request op-a had in flight when it was killed may have created its object all the same:
    # the API server logs it with the code of a request whose client went away (504), not 201.
    cut_short = {
        f"{e['objectRef']['resource']}/{e['objectRef'].get('name')}"
        for _, who, e in writes
        if who == "op-a" and (e.get("responseStatus") or {}).get("code", 0) >= 500 and "dryRun=" not in e["requestURI"]
    }
    assert len(cut_short) <= 8, f"only the requests in flight at the kill are cut short: {sorted(cut_short)}"
    for kind in ("daemonsets", "configmaps", "services"):
        made = {ref for ref in created if ref.startswith(f"{kind}/")}
        maybe = {ref for ref in cut_short if ref.startswith(f"{kind}/")} - made
        assert len(made) <= COLLECTORS <= len(made) + len(maybe), (kind, len(made), sorted(maybe))


def test_a_stopped_leader_releases_the_lease_and_the_standby_takes_over_at_once(
    control_plane: ControlPlane, crds: list[str], nodes: Nodes, namespace: str, bed_root: Path, accounts: Accounts
) -> None:
    """What a rolling update (helm upgrade) does: the old pod gets SIGTERM while the new one waits."""
    first = _replica(accounts, namespace, "op-a", bed_root)
    eventually(lambda: _holder(control_plane, namespace) == "op-a", timeout=30, what="op-a holds the Lease")
    second = _replica(accounts, namespace, "op-b", bed_root)
    try:
        time.sleep(3)
        first.process.stop()
        stopped = time.monotonic()
        eventually(lambda: _holder(control_plane, namespace) == "op-b", timeout=30, what="op-b holds the Lease")
        assert time.monotonic() - stopped < 8, "the standby had to wait out the lease: it was not released"
        assert "released Lease" in first.log()
    finally:
        first.process.stop()
        second.process.stop()
