"""The operator as a real subprocess (``.venv/bin/observatory-operator``) against the bed's API server."""

from __future__ import annotations

import contextlib
import json
import os
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Final

import pytest
from prometheus_client.parser import text_string_to_metric_families

from observatory_agent.contract import DEFAULT_METRICS_PORT
from observatory_operator import rbac
from tests.env import images
from tests.env.controlplane import ControlPlane, write_kubeconfig
from tests.env.dev import install_crds
from tests.env.influx import InfluxDB
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


LAST: Final = "test_least_privilege.py::test_every_granted_verb_is_one_the_operator_sends"
"""Replays the audit log of the whole run: it goes last, after every other test's operator has worked."""


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    items.sort(key=lambda item: item.nodeid.endswith(LAST))  # stable: everything else keeps its order


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
    namespace: str, *, resync: float = RESYNC_SECONDS, extra: Sequence[str] = (), buffer_root: Path | None = None
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
        # Agents' buffers in the bed's directory, not the machine's /var/lib/observatory.
        *([f"--agent-buffer-root={buffer_root}"] if buffer_root else []),
        *extra,
    ]
    return argv, port, metrics_port


def start_operator(
    kubeconfig: Path,
    namespace: str,
    log: Path,
    resync: float = RESYNC_SECONDS,
    extra: Sequence[str] = (),
    *,
    start: bool = True,
) -> Operator:
    """The operator watching ``namespace`` as ``kubeconfig``'s user; ``start=False`` leaves starting to the caller.

    ``log`` is ``<bed>/logs/<file>`` for every caller; agents' buffers go to ``agent_buffer_root(<bed>)``.
    """
    buffer_root = agent_buffer_root(log.parent.parent)
    argv, port, metrics_port = operator_argv(namespace, resync=resync, extra=extra, buffer_root=buffer_root)
    env = {**os.environ, "KUBECONFIG": str(kubeconfig), "PYTHONUNBUFFERED": "1"}
    proc = Process("observatory-operator", argv, log=log, env=env, cwd=REPO)
    if start:
        proc.start()
    return Operator(proc, argv, env, f"http://127.0.0.1:{port}/healthz", f"http://127.0.0.1:{metrics_port}/metrics")


def apply_influxdb_settings(kube: Kube, namespace: str, influxdb: InfluxDB, *, url: str | None = None) -> None:
    """The Secret ``influxdb-auth`` (key ``token``) and the shared-config ConfigMap real agents write with;
    ``url`` replaces InfluxDB's own (a fault proxy in front of it)."""
    kube.apply(
        {
            "apiVersion": "v1",
            "kind": "Secret",
            "metadata": {"name": "influxdb-auth"},
            "stringData": {"token": influxdb.token},
        },
        namespace,
    )
    kube.apply(
        {
            "apiVersion": "v1",
            "kind": "ConfigMap",
            "metadata": {"name": "observatory-shared-config"},
            "data": {
                "influxdb_url": url or influxdb.url,
                "influxdb_org": influxdb.org,
                "influxdb_bucket": influxdb.bucket,
                "cluster_name": "bed",
            },
        },
        namespace,
    )


def agent_buffer_root(bed_root: Path) -> Path:
    """Where the operator puts agents' buffer directories (hostPath) in tests: inside the bed, not in the
    machine's /var/lib/observatory, so no test leaves a directory on the host."""
    return bed_root / "agent-buffers"


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


class Accounts:
    """ServiceAccounts holding exactly ``observatory_operator.rbac``'s rules, and kubeconfigs with their tokens."""

    def __init__(self, control_plane: ControlPlane, bed_root: Path) -> None:
        self.control_plane, self.bed_root = control_plane, bed_root
        self.cluster_scoped: list[str] = []

    def kubeconfig(self, namespace: str, account: str, *, lease: str | None = None) -> Path:
        """An account in ``namespace`` that may run the operator there (and hold Lease ``lease`` in it)."""
        kube = self.control_plane.kube
        name = f"{account}-{namespace}"
        kube.create(f"/api/v1/namespaces/{namespace}/serviceaccounts", {"metadata": {"name": account}})
        subject = [{"kind": "ServiceAccount", "name": account, "namespace": namespace}]
        roles = [rbac.cluster_role(name, all_namespaces=False), rbac.role(name, namespace)]
        if lease:
            roles.append(rbac.role(f"{name}-leader", namespace, rbac.LEADER_RULES, lease=lease))
        for role in roles:
            kind = role["kind"]
            role_ns = role["metadata"].get("namespace")
            binding = {
                "apiVersion": "rbac.authorization.k8s.io/v1",
                "kind": f"{kind}Binding",
                "metadata": {"name": role["metadata"]["name"], **({"namespace": role_ns} if role_ns else {})},
                "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": kind, "name": role["metadata"]["name"]},
                "subjects": subject,
            }
            kube.apply(role, role_ns)
            kube.apply(binding, role_ns)
            if kind == "ClusterRole":
                self.cluster_scoped += [
                    f"/apis/rbac.authorization.k8s.io/v1/clusterrolebindings/{name}",
                    f"/apis/rbac.authorization.k8s.io/v1/clusterroles/{name}",
                ]
        token = kube.create(
            f"/api/v1/namespaces/{namespace}/serviceaccounts/{account}/token",
            {"apiVersion": "authentication.k8s.io/v1", "kind": "TokenRequest", "spec": {"expirationSeconds": 3600}},
        )["status"]["token"]
        path = self.bed_root / f"kubeconfig-{name}"
        write_kubeconfig(path, self.control_plane.server, self.control_plane.pki / "ca.crt", token, user=account)
        return path

    def cleanup(self) -> None:
        for path in self.cluster_scoped:
            with contextlib.suppress(ApiError):
                self.control_plane.kube.delete(path)


@pytest.fixture
def accounts(control_plane: ControlPlane, bed_root: Path) -> Iterator[Accounts]:
    made = Accounts(control_plane, bed_root)
    try:
        yield made
    finally:
        made.cleanup()


@pytest.fixture
def rbac_operator(
    control_plane: ControlPlane, crds: list[str], namespace: str, bed_root: Path, accounts: Accounts
) -> Iterator[Operator]:
    """The operator as a ServiceAccount holding exactly ``observatory_operator.rbac``'s rules, nothing more."""
    kubeconfig = accounts.kubeconfig(namespace, OPERATOR_ACCOUNT)
    op = start_operator(kubeconfig, namespace, bed_root / "logs" / f"operator-{namespace}.log")
    try:
        yield op
    finally:
        op.process.stop()


OPERATOR_ACCOUNT = "observatory-operator"


# --- the API server's audit log --------------------------------------------------------------


def audit_events(control_plane: ControlPlane) -> list[dict[str, Any]]:
    """Every request of a non-admin user so far, one entry per request (its last stage), in arrival order.

    Requests that failed authentication (401: no user; a pod whose ServiceAccount `helm uninstall` deleted
    while it was still shutting down) are nobody's and left out."""
    latest: dict[str, dict[str, Any]] = {}
    with control_plane.audit_log.open() as lines:
        for line in lines:
            event = json.loads(line)
            if (event.get("user") or {}).get("username"):
                latest[event["auditID"]] = event  # ResponseComplete after ResponseStarted (watches)
    return sorted(latest.values(), key=lambda e: e["requestReceivedTimestamp"])


# --- agents that answer /status as the test decides --------------------------------------------


class FakeAgents:
    """HTTP servers on the stand-in pods' IPs, answering ``/status`` with ``answer(pod name)``.

    The node simulator runs nothing for the stand-in image, so a stand-in pod's IP and port are
    free: the test plays the agent there (a slow one, a hostile one) and the operator probes it.
    """

    def __init__(self, answer: Callable[[str, BaseHTTPRequestHandler], None]) -> None:
        self.answer = answer
        self.servers: list[ThreadingHTTPServer] = []

    def serve(self, pods: Sequence[dict[str, Any]], port: int = DEFAULT_METRICS_PORT) -> None:
        for pod in pods:
            name = pod["metadata"]["name"]
            server = ThreadingHTTPServer((pod["status"]["podIP"], port), self._handler(name))
            server.daemon_threads = True
            threading.Thread(target=server.serve_forever, name=f"fake-agent {name}", daemon=True).start()
            self.servers.append(server)

    def _handler(self, name: str) -> type[BaseHTTPRequestHandler]:
        answer = self.answer

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                answer(name, self)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        return Handler

    def close(self) -> None:
        for server in self.servers:
            server.shutdown()
            server.server_close()


def reply(handler: BaseHTTPRequestHandler, body: bytes, *, status: int = 200) -> None:
    handler.send_response(status)
    handler.send_header("Content-Type", "application/json")
    handler.send_header("Content-Length", str(len(body)))
    handler.end_headers()
    with contextlib.suppress(OSError):  # the operator may hang up on a body it refuses
        handler.wfile.write(body)


@pytest.fixture
def fake_agents() -> Iterator[list[FakeAgents]]:
    made: list[FakeAgents] = []
    try:
        yield made
    finally:
        for agents in made:
            agents.close()


# --- watching what happens ------------------------------------------------------------------


class Recorder:
    """Every watch event of one collection from now on, with the time it was seen."""

    def __init__(self, kube: Kube, path: str) -> None:
        self.kube, self.path = kube, path
        self.events: list[tuple[float, str, dict[str, Any]]] = []
        self._stop = threading.Event()
        _, self._rv = kube.list(path)
        self._thread = threading.Thread(target=self._run, name=f"recorder {path}", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            with contextlib.suppress(ApiError, OSError):
                for event in self.kube.watch(self.path, self._rv, timeout_seconds=5):
                    obj = event.get("object") or {}
                    self._rv = obj.get("metadata", {}).get("resourceVersion", self._rv)
                    if event["type"] != "BOOKMARK":
                        self.events.append((time.monotonic(), event["type"], obj))

    def of_type(self, *types: str) -> list[dict[str, Any]]:
        return [o for _, t, o in self.events if t in types]

    def of(self, name: str, *types: str) -> list[dict[str, Any]]:
        return [o for _, t, o in self.events if o["metadata"]["name"] == name and (not types or t in types)]

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=10)


@pytest.fixture
def recorders() -> Iterator[list[Recorder]]:
    made: list[Recorder] = []
    try:
        yield made
    finally:
        for recorder in made:
            recorder.close()


SERVICE_MONITOR_CRD = {
    "apiVersion": "apiextensions.k8s.io/v1",
    "kind": "CustomResourceDefinition",
    "metadata": {"name": "servicemonitors.monitoring.coreos.com"},
    "spec": {
        "group": "monitoring.coreos.com",
        "names": {"kind": "ServiceMonitor", "plural": "servicemonitors", "singular": "servicemonitor"},
        "scope": "Namespaced",
        "versions": [
            {
                "name": "v1",
                "served": True,
                "storage": True,
                "schema": {"openAPIV3Schema": {"type": "object", "x-kubernetes-preserve-unknown-fields": True}},
            }
        ],
    },
}
"""A permissive stand-in for prometheus-operator's CRD: enough for the operator to own ServiceMonitors."""


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
