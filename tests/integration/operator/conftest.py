"""The operator as a real subprocess (``.venv/bin/observatory-operator``) against the bed's API server."""

from __future__ import annotations

import contextlib
import os
import urllib.request
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from observatory_operator import rbac
from tests.env.controlplane import ControlPlane, write_kubeconfig
from tests.env.dev import install_crds
from tests.env.kube import ApiError, Kube
from tests.env.nodesim import REPO, VENV_BIN
from tests.env.procs import Process, free_port, wait_for

RESYNC_SECONDS = 2.0
"""Short, so restores and status refreshes are seen in seconds rather than tens of seconds."""
STAND_IN_IMAGE = "registry.example/observatory-stand-in:1"
"""An image the node simulator does not run: pods turn Running/Ready without a process. Operator
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
    metrics_url: str

    def restart(self) -> None:
        self.process.stop()
        self.process = Process("observatory-operator", self.argv, log=self.process.log, env=self.env, cwd=REPO)
        self.process.start()

    def log(self) -> str:
        return self.process.tail(400)

    def metrics(self) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
        """The operator's /metrics: (name, sorted labels) → value."""
        with urllib.request.urlopen(self.metrics_url, timeout=5) as answer:
            text = answer.read().decode()
        samples = {}
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
        return samples

    def requests(self, *verbs: str) -> int:
        """API requests this operator sent with these verbs (all verbs when none given), any code."""
        return int(
            sum(
                v
                for (name, labels), v in self.metrics().items()
                if name == "observatory_operator_api_requests_total" and (not verbs or dict(labels)["verb"] in verbs)
            )
        )


def operator_argv(
    namespace: str, *, resync: float = RESYNC_SECONDS, extra: Sequence[str] = ()
) -> tuple[list[str], int, int]:
    """The operator's command line for one namespace on free loopback ports: (argv, liveness port, metrics port)."""
    port, metrics_port = free_port(), free_port()
    argv = [
        str(VENV_BIN / "observatory-operator"),
        "--namespace",
        namespace,
        "--resync-seconds",
        str(resync),
        "--liveness",
        f"http://127.0.0.1:{port}/healthz",
        "--metrics",
        f"127.0.0.1:{metrics_port}",
        "--log-format",
        "plain",
        *(["--verbose"] if os.environ.get("OBSERVATORY_OPERATOR_VERBOSE") else []),
        *extra,
    ]
    return argv, port, metrics_port


def start_operator(
    kubeconfig: Path, namespace: str, log: Path, resync: float = RESYNC_SECONDS, extra: Sequence[str] = ()
) -> Operator:
    argv, port, metrics_port = operator_argv(namespace, resync=resync, extra=extra)
    env = {**os.environ, "KUBECONFIG": str(kubeconfig), "PYTHONUNBUFFERED": "1"}
    proc = Process("observatory-operator", argv, log=log, env=env, cwd=REPO)
    proc.start()
    return Operator(proc, argv, env, f"http://127.0.0.1:{port}/healthz", f"http://127.0.0.1:{metrics_port}/metrics")


@pytest.fixture
def operator(control_plane: ControlPlane, crds: list[str], namespace: str, bed_root: Path) -> Iterator[Operator]:
    """The operator with the bed's admin credentials."""
    op = start_operator(control_plane.kubeconfig, namespace, bed_root / "logs" / f"operator-{namespace}.log")
    try:
        yield op
    finally:
        op.process.stop()


@pytest.fixture
def slow_resync_operator(
    control_plane: ControlPlane, crds: list[str], namespace: str, bed_root: Path
) -> Iterator[Operator]:
    """The operator with a 10-minute resync: whatever happens quickly happens because of watch events."""
    op = start_operator(
        control_plane.kubeconfig, namespace, bed_root / "logs" / f"operator-{namespace}.log", resync=600
    )
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
    op = start_operator(kubeconfig, namespace, bed_root / "logs" / f"operator-{namespace}.log")
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
    """A small collector whose pods the simulator marks Ready without running them (no InfluxDB needed)."""
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
