"""Races, deletion and removed fields on the real API server (issue 11, items 1, 3, 4 and 5)."""

from __future__ import annotations

import json
import time
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from typing import Any

import pytest

from tests.env.controlplane import ControlPlane
from tests.env.fixtures import SIMULATED, Nodes
from tests.integration.operator.conftest import (
    RESYNC_SECONDS,
    FakeAgents,
    Operator,
    Recorder,
    collector_path,
    eventually,
    get_or_none,
    reply,
    stand_in_collector,
    start_operator,
    status_of,
)
from tests.integration.operator.faults import LossyProxy

pytestmark = pytest.mark.integration

CONFIG_HASH = "observatory.happypatterns.org/config-hash"


def _secret(control_plane: ControlPlane, namespace: str) -> None:
    control_plane.kube.apply(
        {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "influxdb-auth"}, "stringData": {"token": "x"}},
        namespace,
    )


def _children(namespace: str) -> dict[str, str]:
    return {
        "DaemonSet": f"/apis/apps/v1/namespaces/{namespace}/daemonsets",
        "ConfigMap": f"/api/v1/namespaces/{namespace}/configmaps",
        "Service": f"/api/v1/namespaces/{namespace}/services",
    }


def _template_hash(ds: dict[str, Any]) -> str:
    return str(ds["spec"]["template"]["metadata"]["annotations"][CONFIG_HASH])


def test_a_spec_change_during_slow_rounds_is_never_undone(
    control_plane: ControlPlane,
    nodes: Nodes,
    namespace: str,
    operator: Operator,
    fake_agents: list[FakeAgents],
    recorders: list[Recorder],
) -> None:
    """24 collectors whose agents answer /status slowly keep every round busy for seconds; a collector's spec,
    changed four times meanwhile, rolls forward only: no old spec re-applied, observedGeneration never back."""
    kube = control_plane.kube
    _secret(control_plane, namespace)
    names = [f"slow-{i:02d}" for i in range(24)]
    for name in names:
        # OnDelete: a changed template replaces no pod, so the slow agents stay where they are.
        kube.apply(
            stand_in_collector(
                name,
                nodeSelector={"topology.kubernetes.io/zone": "zone-a"},
                updateStrategy={"type": "OnDelete"},
                tags={"standin": "slow"},  # on real nodes the stand-in itself answers slowly
            ),
            namespace,
        )

    def pods_with_ips() -> list[dict[str, Any]] | None:
        pods = kube.list(f"/api/v1/namespaces/{namespace}/pods")[0]
        ready = [p for p in pods if (p.get("status") or {}).get("podIP")]
        return ready if len(ready) == len(names) else None

    pods = eventually(pods_with_ips, timeout=120, what=f"{len(names)} agent pods with IPs")

    def slow(_pod: str, handler: BaseHTTPRequestHandler) -> None:
        time.sleep(1.5)  # under the operator's 2 s probe timeout: a round waits for it
        reply(handler, json.dumps({"last_successful_write": time.time(), "ready": True}).encode())

    if nodes.mode == SIMULATED:  # nothing runs in a simulated stand-in pod: play the slow agent on its IP
        agents = FakeAgents(slow)
        fake_agents.append(agents)
        agents.serve(pods)
    target = names[0]
    daemonsets = Recorder(kube, f"/apis/apps/v1/namespaces/{namespace}/daemonsets")
    collectors = Recorder(kube, collector_path(namespace))
    recorders.extend([daemonsets, collectors])
    time.sleep(2 * RESYNC_SECONDS)  # resyncs are queued up behind slow rounds now

    for i in range(4):
        spec = {"nodeSelector": {"topology.kubernetes.io/zone": "zone-a"}, "updateStrategy": {"type": "OnDelete"}}
        kube.apply(stand_in_collector(target, tags={"standin": "slow", "change": str(i)}, **spec), namespace)
        time.sleep(0.7)
    final = kube.get(collector_path(namespace, target))

    def caught_up() -> dict[str, Any] | None:
        status = status_of(kube, namespace, target)
        ds = kube.get(f"/apis/apps/v1/namespaces/{namespace}/daemonsets/{target}-agent")
        done = status.get("observedGeneration") == final["metadata"]["generation"]
        return status if done and _template_hash(ds) == status.get("configHash") else None

    eventually(caught_up, timeout=90, what="the last spec applied and observed")
    time.sleep(3 * RESYNC_SECONDS)  # later resyncs must not bring an older spec back

    hashes = [_template_hash(ds) for ds in daemonsets.of(f"{target}-agent", "ADDED", "MODIFIED")]
    sequence = [h for i, h in enumerate(hashes) if i == 0 or h != hashes[i - 1]]
    assert len(sequence) == len(set(sequence)), f"an older template came back: {sequence}"
    assert len(sequence) <= 4, sequence
    generations = [(c.get("status") or {}).get("observedGeneration") for c in collectors.of(target, "MODIFIED")]
    seen = [g for g in generations if g is not None]
    assert seen == sorted(seen), f"observedGeneration went back: {seen}"
    events = kube.list(f"/api/v1/namespaces/{namespace}/events")[0]
    restored = [e for e in events if e["involvedObject"].get("name") == target and e["reason"] == "Restored"]
    assert not restored, [e["message"] for e in restored]


def test_a_foreground_deletion_is_left_to_the_garbage_collector(
    control_plane: ControlPlane, nodes: Nodes, namespace: str, operator: Operator, recorders: list[Recorder]
) -> None:
    """Argo CD prunes with foreground deletion: the owner lingers, terminating, while its children go. The
    operator must not re-create them meanwhile (a finalizer of the test's keeps the owner for several rounds)."""
    kube = control_plane.kube
    _secret(control_plane, namespace)
    kube.apply(stand_in_collector("doomed", tolerations=[nodes.toleration]), namespace)
    path = collector_path(namespace, "doomed")
    eventually(lambda: status_of(kube, namespace, "doomed").get("ready") == "3/3", timeout=90, what="READY 3/3")
    kube.patch(path, {"metadata": {"finalizers": ["test.happypatterns.org/hold"]}}, kind="merge")
    watched = {kind: Recorder(kube, p) for kind, p in _children(namespace).items()}
    recorders.extend(watched.values())

    kube.delete(path, {"kind": "DeleteOptions", "apiVersion": "v1", "propagationPolicy": "Foreground"})
    for kind, p in _children(namespace).items():
        eventually(
            lambda p=p: not [o for o in kube.list(p)[0] if o["metadata"]["name"].startswith("doomed-")],
            timeout=60,
            what=f"the {kind} collected",
        )
    time.sleep(4 * RESYNC_SECONDS)  # resyncs and child-deletion events have had every chance to act
    assert kube.get(path)["metadata"].get("deletionTimestamp"), "the owner is still terminating"
    recreated = {kind: [o["metadata"]["name"] for o in r.of_type("ADDED")] for kind, r in watched.items()}
    assert recreated == {kind: [] for kind in watched}, f"children re-created during deletion: {recreated}"
    assert "Traceback" not in operator.log()

    kube.patch(path, {"metadata": {"finalizers": None}}, kind="merge")
    eventually(lambda: get_or_none(kube, path) is None, timeout=30, what="the collector gone")


def test_a_missed_deleted_event_does_not_re_create_children_forever(
    control_plane: ControlPlane,
    crds: list[str],
    nodes: Nodes,
    namespace: str,
    bed_root: Path,
    recorders: list[Recorder],
) -> None:
    """The operator never sees the collector's DELETED event (the network loses it): it must notice the owner
    is gone (NotFound) and forget it, not create children under a dangling owner again and again."""
    kube = control_plane.kube
    _secret(control_plane, namespace)

    def lost(event: dict[str, Any]) -> bool:
        obj = event.get("object") or {}
        return event.get("type") == "DELETED" and obj.get("kind") == "ObservatoryCollector"

    proxy = LossyProxy(control_plane, bed_root / "lossy-proxy" / namespace, lost)
    proxy.start()
    operator = start_operator(
        proxy.kubeconfig(bed_root / f"kubeconfig-lossy-{namespace}", control_plane.token),
        namespace,
        bed_root / "logs" / f"operator-{namespace}.log",
    )
    try:
        kube.apply(stand_in_collector("ghost", tolerations=[nodes.toleration]), namespace)
        eventually(lambda: status_of(kube, namespace, "ghost").get("ready") == "3/3", timeout=90, what="READY")
        watched = {kind: Recorder(kube, p) for kind, p in _children(namespace).items()}
        recorders.extend(watched.values())
        kube.delete(collector_path(namespace, "ghost"))
        for kind, p in _children(namespace).items():
            eventually(
                lambda p=p: not [o for o in kube.list(p)[0] if o["metadata"]["name"].startswith("ghost-")],
                timeout=60,
                what=f"the {kind} collected",
            )
        eventually(lambda: proxy.dropped, timeout=10, what="the DELETED event lost on its way")
        time.sleep(5 * RESYNC_SECONDS)
        recreated = {kind: [o["metadata"]["name"] for o in r.of_type("ADDED")] for kind, r in watched.items()}
        assert recreated == {kind: [] for kind in watched}, f"children re-created for a deleted owner: {recreated}"
        assert "no longer exists; forgetting it" in operator.log() or "gone (status write answered NotFound)" in (
            operator.log()
        )
    finally:
        operator.process.stop()
        proxy.stop()


def test_a_field_removed_from_the_spec_leaves_the_daemonset(
    control_plane: ControlPlane, nodes: Nodes, namespace: str, operator: Operator
) -> None:
    kube = control_plane.kube
    _secret(control_plane, namespace)
    strategy = {"type": "RollingUpdate", "rollingUpdate": {"maxUnavailable": 3}}
    kube.apply(stand_in_collector("nodes", updateStrategy=strategy), namespace)
    ds_path = f"/apis/apps/v1/namespaces/{namespace}/daemonsets/nodes-agent"

    def max_unavailable() -> Any:
        return kube.get(ds_path)["spec"]["updateStrategy"]["rollingUpdate"]["maxUnavailable"]

    eventually(lambda: max_unavailable() == 3, timeout=60, what="maxUnavailable 3 on the DaemonSet")
    kube.apply(stand_in_collector("nodes"), namespace)  # the same spec without updateStrategy
    eventually(lambda: max_unavailable() == 1, timeout=30, what="maxUnavailable back to the default 1")
