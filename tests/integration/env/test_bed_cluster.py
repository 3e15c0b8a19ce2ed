"""The test bed's control plane and nodes, whichever kind: TLS, RBAC, Ready nodes with leases, scheduling, GC."""

from __future__ import annotations

import ipaddress
import ssl
import urllib.error
import urllib.request

import pytest
from kubernetes import client

from tests.env import images
from tests.env.controlplane import ControlPlane
from tests.env.fixtures import REAL, Nodes, wait_until
from tests.env.influx import InfluxDB
from tests.env.kube import Obj
from tests.env.realnodes import POOL_LABEL, ZONE_LABEL

pytestmark = pytest.mark.integration

PAUSE = images.PAUSE_REF
"""Built from Kubernetes' own pause.c and loaded into every real node; the simulator just reports it running."""


def daemonset(name: str, tolerations: list[dict[str, str]] | None = None) -> Obj:
    labels = {"app": name}
    return {
        "apiVersion": "apps/v1",
        "kind": "DaemonSet",
        "metadata": {"name": name},
        "spec": {
            "selector": {"matchLabels": labels},
            "template": {
                "metadata": {"labels": labels},
                "spec": {"containers": [{"name": "pause", "image": PAUSE}], "tolerations": tolerations or []},
            },
        },
    }


def test_api_server_has_real_tls_and_authentication(control_plane: ControlPlane) -> None:
    version = client.VersionApi(control_plane.api_client).get_code()
    assert version.git_version == "v1.34.4"
    # The serving certificate verifies against the bed's CA, and anonymous requests are refused.
    ctx = ssl.create_default_context(cafile=str(control_plane.pki / "ca.crt"))
    with pytest.raises(urllib.error.HTTPError) as err:
        urllib.request.urlopen(f"{control_plane.server}/api/v1/namespaces", context=ctx, timeout=5)
    assert err.value.code in (401, 403)
    assert "default" in control_plane.kubectl("get", "namespaces", "-o", "name").stdout


def test_rbac_is_enforced_for_service_accounts(control_plane: ControlPlane, namespace: str) -> None:
    review = control_plane.kube.create(
        "/apis/authorization.k8s.io/v1/subjectaccessreviews",
        {
            "spec": {
                "user": f"system:serviceaccount:{namespace}:default",
                "resourceAttributes": {"verb": "list", "resource": "secrets", "namespace": namespace},
            }
        },
    )
    assert review["status"]["allowed"] is False


def test_nodes_are_ready_labelled_and_leased(control_plane: ControlPlane, nodes: Nodes) -> None:
    kube = control_plane.kube
    assert len(nodes.names) == 3
    seen_zones = set()
    for info in nodes.all:
        node = kube.get(f"/api/v1/nodes/{info.name}")
        ready = next(c for c in node["status"]["conditions"] if c["type"] == "Ready")
        assert ready["status"] == "True"
        labels = node["metadata"]["labels"]
        seen_zones.add(labels[ZONE_LABEL])
        assert labels[POOL_LABEL] == info.pool
        assert {"type": "InternalIP", "address": info.ip} in node["status"]["addresses"]
        taints = {(t["key"], t.get("value"), t["effect"]) for t in node["spec"].get("taints") or []}
        assert (nodes.taint in taints) == (info.name == nodes.tainted)
        # A kubelet creates its lease just after registering its Node.
        lease_path = f"/apis/coordination.k8s.io/v1/namespaces/kube-node-lease/leases/{info.name}"
        lease = wait_until(lambda path=lease_path: kube.get(path), timeout=30, what=f"{info.name}'s lease")
        assert lease["spec"]["holderIdentity"] == info.name
    assert len(seen_zones) == 3


def test_daemonset_lands_on_tolerated_nodes_and_number_ready_follows(
    control_plane: ControlPlane, nodes: Nodes, namespace: str
) -> None:
    kube = control_plane.kube
    ds_path = f"/apis/apps/v1/namespaces/{namespace}/daemonsets"
    kube.create(ds_path, daemonset("everywhere", [nodes.toleration]))
    kube.create(ds_path, daemonset("general"))

    def number_ready(name: str, want: int) -> bool:
        status = kube.get(f"{ds_path}/{name}").get("status", {})
        return status.get("numberReady") == want and status.get("desiredNumberScheduled") == want

    wait_until(lambda: number_ready("everywhere", 3), what="numberReady 3 with the toleration")
    wait_until(lambda: number_ready("general", 2), what="numberReady 2 without it")

    pods, _ = kube.list(f"/api/v1/namespaces/{namespace}/pods", labelSelector="app=everywhere")
    assert sorted(p["spec"]["nodeName"] for p in pods) == sorted(nodes.names)
    by_node = {n.name: n for n in nodes.all}
    for pod in pods:
        status = pod["status"]
        assert status["phase"] == "Running"
        conds = {c["type"]: c["status"] for c in status["conditions"]}
        assert conds["Initialized"] == conds["Ready"] == conds["ContainersReady"] == "True"
        host_ip = by_node[pod["spec"]["nodeName"]].ip
        assert status["hostIP"] == host_ip
        if nodes.mode == REAL:
            # Each node's pods get addresses from its own bridge's subnet.
            assert ipaddress.ip_address(status["podIP"]) in ipaddress.ip_network(f"{host_ip}/24", strict=False)
        else:
            assert status["podIP"].startswith("127.0.")
        assert status["podIPs"] == [{"ip": status["podIP"]}]
        assert status["startTime"]
        (cs,) = status["containerStatuses"]
        assert cs["ready"] is True
        assert "running" in cs["state"]
        assert cs["restartCount"] == 0
    assert len({p["status"]["podIP"] for p in pods}) == 3

    general, _ = kube.list(f"/api/v1/namespaces/{namespace}/pods", labelSelector="app=general")
    assert nodes.tainted not in {p["spec"]["nodeName"] for p in general}

    # Tolerating the taint afterwards brings the third node in: numberReady follows.
    kube.patch(f"{ds_path}/general", {"spec": {"template": {"spec": {"tolerations": [nodes.toleration]}}}})
    wait_until(lambda: number_ready("general", 3), what="numberReady 3 after adding the toleration")


def test_deleting_an_owner_garbage_collects_its_children(
    control_plane: ControlPlane, nodes: Nodes, namespace: str
) -> None:
    kube = control_plane.kube
    labels = {"app": "owned"}
    kube.create(
        f"/apis/apps/v1/namespaces/{namespace}/deployments",
        {
            "metadata": {"name": "owned"},
            "spec": {
                "replicas": 2,
                "selector": {"matchLabels": labels},
                "template": {
                    "metadata": {"labels": labels},
                    "spec": {"containers": [{"name": "pause", "image": PAUSE}]},
                },
            },
        },
    )
    pods_path = f"/api/v1/namespaces/{namespace}/pods"
    wait_until(
        lambda: kube.get(f"/apis/apps/v1/namespaces/{namespace}/deployments/owned")["status"].get("readyReplicas") == 2,
        what="2 ready replicas",
    )
    rs, _ = kube.list(f"/apis/apps/v1/namespaces/{namespace}/replicasets", labelSelector="app=owned")
    assert len(rs) == 1
    assert rs[0]["metadata"]["ownerReferences"][0]["kind"] == "Deployment"
    # Background propagation: the garbage collector, not the client, deletes the children.
    kube.delete(f"/apis/apps/v1/namespaces/{namespace}/deployments/owned", propagationPolicy="Background")
    wait_until(
        lambda: not kube.list(f"/apis/apps/v1/namespaces/{namespace}/replicasets", labelSelector="app=owned")[0],
        what="the ReplicaSet collected",
    )
    wait_until(lambda: not kube.list(pods_path, labelSelector="app=owned")[0], what="the pods collected")


def test_bed_is_ready_within_sixty_seconds(control_plane: ControlPlane, nodes: Nodes, influxdb: InfluxDB) -> None:
    # Measured by the fixtures themselves; they start one after another, so this is the worst case.
    total = control_plane.startup_seconds + nodes.startup_seconds + influxdb.startup_seconds
    assert total <= 60, f"bed ready in {total:.1f}s ({nodes.mode} nodes)"
