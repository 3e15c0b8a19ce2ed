"""The operator as a real subprocess (``.venv/bin/observatory-operator``) against the bed's API server."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from observatory_operator import rbac
from tests.env import images
from tests.env.controlplane import ControlPlane, write_kubeconfig
from tests.env.dev import install_crds
from tests.env.kube import ApiError, Kube
from tests.env.nodesim import REPO, VENV_BIN
from tests.env.procs import Process, free_port, wait_for

RESYNC_SECONDS = 2.0
"""Short, so restores and status refreshes are seen in seconds rather than tens of seconds."""
STAND_IN_IMAGE = images.STAND_IN_REF
"""A stand-in for the agent (tests/env/standin): on real nodes a container that answers the kubelet's
probes and nothing else; the simulator marks its pods Ready without running anything. Operator
behaviour (children, coverage, READY, restores) is tested independently of the agent's progress."""

GROUP_PATH = "/apis/observatory.happypatterns.org/v1alpha1"


@pytest.fixture(scope="session")
def crds(control_plane: ControlPlane) -> list[str]:
    return install_crds(control_plane.kube, REPO / "crds")


@dataclass
class Operator:
    """A running operator process watching one namespace."""

    process: Process
    argv: list[str]
    env: dict[str, str]
    liveness: str

    def restart(self) -> None:
        self.process.stop()
        self.process = Process("observatory-operator", self.argv, log=self.process.log, env=self.env, cwd=REPO)
        self.process.start()

    def log(self) -> str:
        return self.process.tail(400)


def _start(kubeconfig: Path, namespace: str, log: Path, resync: float = RESYNC_SECONDS) -> Operator:
    port = free_port()
    argv = [
        str(VENV_BIN / "observatory-operator"),
        "--namespace",
        namespace,
        "--resync-seconds",
        str(resync),
        "--liveness",
        f"http://127.0.0.1:{port}/healthz",
        "--log-format",
        "plain",
    ]
    env = {**os.environ, "KUBECONFIG": str(kubeconfig), "PYTHONUNBUFFERED": "1"}
    proc = Process("observatory-operator", argv, log=log, env=env, cwd=REPO)
    proc.start()
    return Operator(proc, argv, env, f"http://127.0.0.1:{port}/healthz")


@pytest.fixture
def operator(control_plane: ControlPlane, crds: list[str], namespace: str, bed_root: Path) -> Iterator[Operator]:
    """The operator with the bed's admin credentials."""
    op = _start(control_plane.kubeconfig, namespace, bed_root / "logs" / f"operator-{namespace}.log")
    try:
        yield op
    finally:
        op.process.stop()


@pytest.fixture
def slow_resync_operator(
    control_plane: ControlPlane, crds: list[str], namespace: str, bed_root: Path
) -> Iterator[Operator]:
    """The operator with a 10-minute resync: whatever happens quickly happens because of watch events."""
    op = _start(control_plane.kubeconfig, namespace, bed_root / "logs" / f"operator-{namespace}.log", resync=600)
    try:
        yield op
    finally:
        op.process.stop()


@pytest.fixture
def rbac_operator(control_plane: ControlPlane, crds: list[str], namespace: str, bed_root: Path) -> Iterator[Operator]:
    """The operator as a ServiceAccount holding exactly ``observatory_operator.rbac``'s rules, nothing more."""
    kube = control_plane.kube
    name = f"observatory-operator-{namespace}"
    account = "observatory-operator"
    kube.create(f"/api/v1/namespaces/{namespace}/serviceaccounts", {"metadata": {"name": account}})
    subject = [{"kind": "ServiceAccount", "name": account, "namespace": namespace}]
    kube.apply(rbac.cluster_role(name, all_namespaces=False))
    kube.apply(
        {
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "ClusterRoleBinding",
            "metadata": {"name": name},
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": name},
            "subjects": subject,
        }
    )
    kube.apply(rbac.role(name, namespace), namespace)
    kube.apply(
        {
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "RoleBinding",
            "metadata": {"name": name},
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": name},
            "subjects": subject,
        },
        namespace,
    )
    token = kube.create(
        f"/api/v1/namespaces/{namespace}/serviceaccounts/{account}/token",
        {"apiVersion": "authentication.k8s.io/v1", "kind": "TokenRequest", "spec": {"expirationSeconds": 3600}},
    )["status"]["token"]
    kubeconfig = bed_root / f"kubeconfig-{namespace}"
    write_kubeconfig(kubeconfig, control_plane.server, control_plane.pki / "ca.crt", token, user=account)
    op = _start(kubeconfig, namespace, bed_root / "logs" / f"operator-{namespace}.log")
    try:
        yield op
    finally:
        op.process.stop()
        for path in (
            f"/apis/rbac.authorization.k8s.io/v1/clusterrolebindings/{name}",
            f"/apis/rbac.authorization.k8s.io/v1/clusterroles/{name}",
        ):
            with contextlib.suppress(ApiError):
                kube.delete(path)


# --- helpers for the tests ----------------------------------------------------------------


def stand_in_collector(name: str, image: str = STAND_IN_IMAGE, **spec: Any) -> dict[str, Any]:
    """A small collector of stand-in agents: pods that turn Ready and report nothing (no InfluxDB needed)."""
    return {
        "apiVersion": "observatory.happypatterns.org/v1alpha1",
        "kind": "ObservatoryCollector",
        "metadata": {"name": name},
        "spec": {
            "image": image,
            "interval": "5s",
            "window": "10s",
            "collectors": [{"name": "cpu"}, {"name": "memory"}],
            "sharedConfig": {"name": "observatory-shared-config", "optional": True},
            "influxdb": {"tokenSecretRef": {"name": "influxdb-auth", "key": "token"}},
            **spec,
        },
    }


def collector_path(namespace: str, name: str | None = None) -> str:
    base = f"{GROUP_PATH}/namespaces/{namespace}/observatorycollectors"
    return f"{base}/{name}" if name else base


def get_or_none(kube: Kube, path: str) -> dict[str, Any] | None:
    try:
        return kube.get(path)
    except ApiError as exc:
        if exc.status == 404:
            return None
        raise


def eventually(check: Callable[[], Any], *, timeout: float = 60.0, what: str) -> Any:
    """Poll until ``check()`` is truthy; exceptions count as "not yet"."""

    def attempt() -> Any:
        try:
            return check()
        except (ApiError, KeyError, TypeError, IndexError):
            return None

    return wait_for(attempt, timeout=timeout, what=what, interval=0.25)


def status_of(kube: Kube, namespace: str, name: str) -> dict[str, Any]:
    status: dict[str, Any] = kube.get(collector_path(namespace, name)).get("status") or {}
    return status


def condition(status: dict[str, Any], type_: str) -> dict[str, Any]:
    for cond in status.get("conditions") or []:
        if cond["type"] == type_:
            return dict(cond)
    return {}
