"""In-cluster credentials: a project pod's process reaches the API server as its own ServiceAccount."""

from __future__ import annotations

import base64
import json
import textwrap
from pathlib import Path

import pytest

from tests.env.controlplane import ControlPlane
from tests.env.fixtures import Nodes, wait_until
from tests.env.kube import Obj
from tests.env.nodesim import PROJECT_IMAGE

pytestmark = pytest.mark.integration

ACCOUNT = "reader"

# What an in-cluster program does: the kubernetes client's load_incluster_config() reads the
# hard-coded /var/run/secrets/kubernetes.io/serviceaccount/{token,ca.crt} and the
# KUBERNETES_SERVICE_* env, verifies the API server's certificate against that ca.crt, and
# presents the token. Prints who it is, then whether it may list pods, every half second.
PROBE = textwrap.dedent(
    """
    import json, time
    from kubernetes import client, config
    config.load_incluster_config()
    ns = open("/var/run/secrets/kubernetes.io/serviceaccount/namespace").read()
    api = client.ApiClient()
    review = client.AuthenticationV1Api(api).create_self_subject_review(
        {"apiVersion": "authentication.k8s.io/v1", "kind": "SelfSubjectReview"}
    )
    print("whoami " + json.dumps({"user": review.status.user_info.username, "ns": ns}), flush=True)
    while True:
        try:
            client.CoreV1Api(api).list_namespaced_pod(ns)
            print("pods allowed", flush=True)
        except client.ApiException as exc:
            print(f"pods denied {exc.status}", flush=True)
        time.sleep(0.5)
    """
)


def _pod() -> Obj:
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "probe"},
        "spec": {
            "serviceAccountName": ACCOUNT,
            "terminationGracePeriodSeconds": 1,
            "containers": [
                {
                    "name": "probe",
                    "image": f"{PROJECT_IMAGE}:test",
                    "command": ["/app/.venv/bin/python", "-c", PROBE],
                }
            ],
        },
    }


def _lines(path: Path) -> list[str]:
    return path.read_text().splitlines() if path.exists() else []


def _claims(token: bytes) -> Obj:
    payload = token.split(b".")[1]
    claims: Obj = json.loads(base64.urlsafe_b64decode(payload + b"=" * (-len(payload) % 4)))
    return claims


def test_pod_process_calls_the_api_server_as_its_service_account(
    control_plane: ControlPlane, nodes: Nodes, namespace: str
) -> None:
    kube = control_plane.kube
    kube.create(f"/api/v1/namespaces/{namespace}/serviceaccounts", {"metadata": {"name": ACCOUNT}})
    pod = kube.create(f"/api/v1/namespaces/{namespace}/pods", _pod())
    # ServiceAccount admission added the projected volume a kubelet must materialise.
    access = next(v for v in pod["spec"]["volumes"] if v["name"].startswith("kube-api-access-"))
    kinds = {next(iter(src)) for src in access["projected"]["sources"]}
    assert kinds == {"serviceAccountToken", "configMap", "downwardAPI"}

    log = nodes.pod_log(namespace, "probe", "probe")
    whoami = wait_until(
        lambda: next((line for line in _lines(log) if line.startswith("whoami ")), None),
        timeout=60,
        what=f"the pod's process to authenticate (log {log})",
    )
    assert json.loads(whoami.removeprefix("whoami ")) == {
        "user": f"system:serviceaccount:{namespace}:{ACCOUNT}",
        "ns": namespace,
    }
    wait_until(lambda: "pods denied 403" in _lines(log), timeout=30, what="403 without a Role")
    assert "pods allowed" not in _lines(log)

    rbac = "/apis/rbac.authorization.k8s.io/v1/namespaces/" + namespace
    kube.create(
        f"{rbac}/roles",
        {"metadata": {"name": "pod-reader"}, "rules": [{"apiGroups": [""], "resources": ["pods"], "verbs": ["list"]}]},
    )
    kube.create(
        f"{rbac}/rolebindings",
        {
            "metadata": {"name": "pod-reader"},
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "pod-reader"},
            "subjects": [{"kind": "ServiceAccount", "name": ACCOUNT, "namespace": namespace}],
        },
    )
    wait_until(lambda: "pods allowed" in _lines(log), timeout=30, what="list allowed once the Role is bound")

    # The token is bound to this pod, for the API server's own audience.
    worker = nodes.simulator.worker(namespace, "probe")
    assert worker is not None
    token_file = worker.dir / "volumes" / access["name"] / "token"
    token = token_file.read_bytes()
    claims = _claims(token)
    assert claims["sub"] == f"system:serviceaccount:{namespace}:{ACCOUNT}"
    assert claims["kubernetes.io"]["pod"] == {"name": "probe", "uid": pod["metadata"]["uid"]}
    assert (worker.dir / "volumes" / access["name"] / "ca.crt").read_bytes() == (
        control_plane.pki / "ca.crt"
    ).read_bytes()

    # Renewal: once a token is due, a fresh one replaces it atomically and the process keeps working.
    for key, (value, _) in list(worker.tokens.items()):
        worker.tokens[key] = (value, 0.0)
    wait_until(lambda: token_file.read_bytes() != token, timeout=30, what="a renewed token in the volume")
    seen = len(_lines(log))
    wait_until(lambda: "pods allowed" in _lines(log)[seen:], timeout=30, what="calls still allowed after renewal")


def test_no_token_when_automount_is_off(control_plane: ControlPlane, nodes: Nodes, namespace: str) -> None:
    kube = control_plane.kube
    kube.create(f"/api/v1/namespaces/{namespace}/serviceaccounts", {"metadata": {"name": ACCOUNT}})
    body = _pod()
    body["spec"]["automountServiceAccountToken"] = False
    body["spec"]["containers"][0]["command"] = [
        "/app/.venv/bin/python",
        "-c",
        "import os, time; print('token present' if os.path.exists("
        "'/var/run/secrets/kubernetes.io/serviceaccount/token') else 'no token', flush=True); time.sleep(60)",
    ]
    pod = kube.create(f"/api/v1/namespaces/{namespace}/pods", body)
    assert not any(v["name"].startswith("kube-api-access-") for v in pod["spec"].get("volumes") or [])
    log = nodes.pod_log(namespace, "probe", "probe")
    wait_until(lambda: "no token" in _lines(log), timeout=60, what=f"the process to look for a token (log {log})")
