"""pytest plugin: a session's control plane, simulated nodes and InfluxDB, and a fresh namespace per test.

Loaded from ``tests/conftest.py``. Fixtures:

* ``control_plane`` (session): a started ``ControlPlane`` — ``.kubeconfig`` (Path), ``.server``,
  ``.api_client`` (kubernetes.client.ApiClient), ``.kube`` (plain-dict client, tests/env/kube.py),
  ``.kubectl(...)``, ``.logs_dir``.
* ``nodes`` (session): a ``Nodes`` — ``.names``, ``.tainted`` (its name), ``.taint`` (key, value,
  effect), ``.toleration`` (a toleration dict for it), ``.simulator``, ``.pod_log(ns, pod, container)``.
* ``influxdb`` (session): a started ``InfluxDB`` — ``.url .org .bucket .token``, ``.stop() .start()``
  (same port and data), ``.client()``.
* ``namespace`` (function): the name of a fresh namespace, deleted after the test.
* ``helm`` (session): the built Helm binary's path.
* ``bed_root`` (session): the session's bed directory (``logs/`` in it is where to put extra logs).

Binaries the selected tests need are built (if missing) right after collection, outside any
test's timeout; ``make env`` / ``python3 tests/env/build.py`` does the same up front.

Everything lives under one directory per session (pytest's basetemp, kept for the last three
runs); its ``logs/`` holds every component's log and ``logs/pods/`` the pods' output. The path
is printed with any failure and at the end of the session.
"""

from __future__ import annotations

import contextlib
import os
import re
import secrets
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.env import build, images, realnodes
from tests.env.controlplane import ControlPlane
from tests.env.influx import InfluxDB
from tests.env.kube import ApiError, Kube
from tests.env.nodesim import NodeSimulator
from tests.env.procs import wait_for


@dataclass
class _Bed:
    root: Path | None = None
    timings: dict[str, float] | None = None
    mode: str = ""
    host: realnodes.HostNetwork | None = None
    """The machine's real-node lock, taken right after collection (see ``pytest_collection_finish``)."""

    @property
    def logs(self) -> Path | None:
        return self.root / "logs" if self.root else None


_BED = _Bed(timings={})

REAL, SIMULATED = "real", "simulated"
NODES_ENV = "HAPPY_OBSERVATORY_NODES"
"""``real`` or ``simulated`` forces the kind of nodes; unset, real nodes when this machine can run them."""


def nodes_mode() -> str:
    """``real`` (kubelets, containerd, the built image) when root with the tools, else ``simulated``."""
    forced = os.environ.get(NODES_ENV, "").strip().lower()
    if forced in {REAL, SIMULATED}:
        if forced == REAL and (why := realnodes.unavailable_reason()):
            raise realnodes.BedError(f"{NODES_ENV}=real but real nodes cannot run here: {why}")
        return forced
    if forced:
        raise ValueError(f"{NODES_ENV} must be 'real' or 'simulated', got {forced!r}")
    return REAL if realnodes.unavailable_reason() is None else SIMULATED


@dataclass(frozen=True)
class NodeInfo:
    """One node as tests see it, whichever kind runs it."""

    name: str
    ip: str
    zone: str
    pool: str
    taints: tuple[tuple[str, str, str], ...]


@dataclass
class Nodes:
    """The session's nodes: real kubelets (``real``) or the simulator's, behind one interface."""

    kube: Kube
    kubectl: Any
    real: realnodes.RealNodes | None = None
    simulator: NodeSimulator | None = None

    @property
    def mode(self) -> str:
        return REAL if self.real is not None else SIMULATED

    @property
    def all(self) -> list[NodeInfo]:
        if self.real is not None:
            return [NodeInfo(n.name, n.spec.ip, n.spec.zone, n.spec.pool, n.spec.taints) for n in self.real.nodes]
        assert self.simulator is not None
        return [NodeInfo(n.name, n.ip, n.zone, n.pool, n.taints) for n in self.simulator.nodes]

    @property
    def names(self) -> list[str]:
        return [n.name for n in self.all]

    @property
    def startup_seconds(self) -> float:
        return self.real.startup_seconds if self.real is not None else self.simulator.startup_seconds  # type: ignore[union-attr]

    @property
    def tainted(self) -> str:
        return next(n.name for n in self.all if n.taints)

    @property
    def untainted(self) -> list[str]:
        return [n.name for n in self.all if not n.taints]

    @property
    def taint(self) -> tuple[str, str, str]:
        return next(n.taints[0] for n in self.all if n.taints)

    @property
    def toleration(self) -> dict[str, str]:
        key, value, effect = self.taint
        return {"key": key, "operator": "Equal", "value": value, "effect": effect}

    def logs(self, namespace: str, pod: str, container: str, *, previous: bool = False) -> str:
        """A container's output as ``kubectl logs`` shows it (through the API server and the node)."""
        query = {"container": container, **({"previous": "true"} if previous else {})}
        return self.kube.text(f"/api/v1/namespaces/{namespace}/pods/{pod}/log", **query)

    def pod_log(self, namespace: str, pod: str, container: str) -> Path:
        """Simulated nodes only: the file a project container's process writes (``logs()`` works for both)."""
        if self.simulator is None:
            raise TypeError("pod_log() is the simulator's; use logs() on real nodes")
        return self.simulator.pod_log(namespace, pod, container)

    def exec(self, namespace: str, pod: str, container: str, *command: str, check: bool = False) -> Any:
        """``kubectl exec`` (real nodes only: the simulator's kubelets do not serve exec)."""
        return self.kubectl("exec", "-n", namespace, pod, "-c", container, "--", *command, check=check)


@pytest.fixture(scope="session")
def bed_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("bed")
    _BED.root = root
    return root


@pytest.fixture(scope="session")
def bed_mode() -> str:
    """``real`` or ``simulated`` (see ``nodes_mode``)."""
    _BED.mode = nodes_mode()
    return _BED.mode


@pytest.fixture(scope="session")
def host_network(bed_mode: str, bed_root: Path) -> Iterator[realnodes.HostNetwork | None]:
    """With real nodes: the bed's lock, address, forwarding and egress guard; audited on the way out."""
    if bed_mode != REAL:
        yield None
        return
    host = realnodes.open_host(bed_root, realnodes.default_specs(), _BED.host)
    _BED.host = None
    left: list[str] = []
    try:
        yield host
    finally:
        left = realnodes.close_host(host)
    if left:
        raise realnodes.BedError("the bed left things behind:\n  " + "\n  ".join(left))


@pytest.fixture(scope="session")
def control_plane(bed_root: Path, host_network: realnodes.HostNetwork | None) -> Iterator[ControlPlane]:
    address = realnodes.BED_IP if host_network is not None else "127.0.0.1"
    cp = ControlPlane(bed_root / "control-plane", logs_dir=bed_root / "logs", address=address)
    cp.start()
    assert _BED.timings is not None
    _BED.timings["control plane"] = cp.startup_seconds
    try:
        yield cp
    finally:
        cp.stop()


@pytest.fixture(scope="session")
def nodes(control_plane: ControlPlane, bed_root: Path, host_network: realnodes.HostNetwork | None) -> Iterator[Nodes]:
    if host_network is not None:
        real = realnodes.RealNodes(control_plane, host_network, bed_root / "nodes", bed_root / "logs")
        try:
            real.start_runtimes()
            real.load_images()
            real.start()
            assert _BED.timings is not None
            _BED.timings["real nodes"] = real.startup_seconds
            yield Nodes(control_plane.kube, control_plane.kubectl, real=real)
        finally:
            problems = real.stop()
            if problems:
                raise realnodes.BedError("nodes did not stop cleanly:\n  " + "\n  ".join(problems))
        return
    sim = NodeSimulator(control_plane.kube, logs_dir=bed_root / "logs", work_dir=bed_root / "nodes")
    try:
        sim.start()
        assert _BED.timings is not None
        _BED.timings["simulated nodes"] = sim.startup_seconds
        yield Nodes(control_plane.kube, control_plane.kubectl, simulator=sim)
    finally:
        sim.stop()


@pytest.fixture(scope="session")
def influxdb(bed_root: Path, host_network: realnodes.HostNetwork | None) -> Iterator[InfluxDB]:
    # With real nodes InfluxDB listens on the bed address: a pod's 127.0.0.1 is its own.
    host = realnodes.BED_IP if host_network is not None else "127.0.0.1"
    db = InfluxDB(bed_root / "influxdb", logs_dir=bed_root / "logs", host=host)
    db.start()
    assert _BED.timings is not None
    _BED.timings["influxdb"] = db.startup_seconds
    try:
        yield db
    finally:
        db.close()


def _slug(text: str) -> str:
    return re.sub(r"[^a-z0-9-]+", "-", text.lower()).strip("-")[:40].strip("-")


def create_namespace(kube: Kube, name: str, labels: dict[str, str] | None = None) -> str:
    """A namespace ready for pods (ServiceAccount admission refuses them until `default` exists)."""
    kube.create(
        "/api/v1/namespaces",
        {"metadata": {"name": name, "labels": {"happy-observatory/test": "true", **(labels or {})}}},
    )
    wait_for(
        lambda: kube.exists(f"/api/v1/namespaces/{name}/serviceaccounts/default"),
        timeout=30,
        what=f"the default ServiceAccount in {name}",
    )
    return name


def _delete_namespaces(kube: Kube, names: list[str]) -> None:
    # Not waited for: the namespace controller and the nodes finish it in the background.
    for name in names:
        with contextlib.suppress(ApiError, OSError):
            kube.delete(f"/api/v1/namespaces/{name}")


@pytest.fixture
def namespace(control_plane: ControlPlane, request: pytest.FixtureRequest) -> Iterator[str]:
    name = create_namespace(control_plane.kube, f"{_slug(request.node.name)}-{secrets.token_hex(3)}")
    try:
        yield name
    finally:
        _delete_namespaces(control_plane.kube, [name])


@pytest.fixture
def namespaces(control_plane: ControlPlane, request: pytest.FixtureRequest) -> Iterator[Any]:
    """A factory of extra fresh namespaces: ``namespaces("agents", labels)`` → name; all deleted afterwards."""
    made: list[str] = []

    def make(purpose: str, labels: dict[str, str] | None = None) -> str:
        name = f"{_slug(request.node.name)[:30].strip('-')}-{purpose}-{secrets.token_hex(3)}"
        made.append(create_namespace(control_plane.kube, name, labels))
        return name

    try:
        yield make
    finally:
        _delete_namespaces(control_plane.kube, made)


@pytest.fixture(scope="session")
def helm() -> Path:
    """The built Helm binary (same pinned version in CI and locally)."""
    return build.binary("helm")


# --- building what is missing, before any test's timeout starts ---------------------------

_NEEDS = {
    "control_plane": ("etcd", "kubernetes"),
    "nodes": ("etcd", "kubernetes"),
    "namespace": ("etcd", "kubernetes"),
    "influxdb": ("influxdb",),
    "helm": ("helm",),
}
_REAL_NODES_NEED = ("coredns", "cri-tools")


def pytest_collection_modifyitems(session: pytest.Session, config: pytest.Config, items: list[pytest.Item]) -> None:
    """Tests of a whole bed of their own (``whole_bed``) run first, before the session's bed holds the machine."""
    items.sort(key=lambda item: 0 if item.get_closest_marker("whole_bed") else 1)


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "whole_bed: starts and tears down a bed of its own (runs first, before the session's bed)"
    )


def pytest_collection_finish(session: pytest.Session) -> None:
    """Build the binaries and images the selected tests need now: a first build takes longer than a test may."""
    needed: set[str] = set()
    for item in session.items:
        for fixture in getattr(item, "fixturenames", ()):
            needed.update(_NEEDS.get(fixture, ()))
        if item.get_closest_marker("whole_bed"):
            needed.update(("etcd", "kubernetes", "influxdb"))
    if not needed or session.config.option.collectonly:
        return
    real = nodes_mode() == REAL
    if real and "kubernetes" in needed:
        needed.update(_REAL_NODES_NEED)
    capture = session.config.pluginmanager.get_plugin("capturemanager")
    with capture.global_and_fixture_disabled() if capture else contextlib.nullcontext():
        build.ensure(sorted(needed))
        if real and "kubernetes" in needed:
            images.ensure(images.NODE_IMAGES)
            own_beds = any(item.get_closest_marker("whole_bed") for item in session.items)
            if not own_beds and any("host_network" in getattr(item, "fixturenames", ()) for item in session.items):
                # Another bed may hold the machine: wait for it here, where no test's timeout runs (not when a
                # whole_bed test will run first: it needs the machine free for a bed of its own).
                _BED.host = realnodes.HostNetwork()
                _BED.host.acquire(timeout=3600.0)


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    if _BED.host is not None:  # taken but never used (no test needed the bed after all)
        _BED.host.release()
        _BED.host = None


# --- reporting --------------------------------------------------------------------------


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[Any]) -> Iterator[Any]:
    outcome: Any = yield
    report = outcome.get_result()
    if report.failed and _BED.logs is not None:
        report.sections.append(
            ("happy-observatory test bed", f"component logs: {_BED.logs}\npod logs: {_BED.logs / 'pods'}")
        )


def pytest_terminal_summary(terminalreporter: Any, exitstatus: int) -> None:
    if _BED.logs is None:
        return
    if _BED.timings:
        parts = ", ".join(f"{k} {v:.1f}s" for k, v in _BED.timings.items())
        terminalreporter.write_line(f"happy-observatory test bed ({_BED.mode or 'no'} nodes) ready: {parts}")
    if exitstatus != 0:
        terminalreporter.write_line(f"happy-observatory test bed logs: {_BED.logs}", red=True)


def wait_until(check: Any, timeout: float = 60.0, what: str = "condition", interval: float = 0.25) -> Any:
    """Poll helper for tests: ``check()`` until truthy (exceptions count as not yet)."""
    return wait_for(check, timeout=timeout, what=what, interval=interval)


__all__ = [
    "Nodes",
    "bed_mode",
    "control_plane",
    "create_namespace",
    "helm",
    "host_network",
    "influxdb",
    "namespace",
    "namespaces",
    "nodes",
    "wait_until",
]


def require_real_nodes(mode: str, why: str) -> None:
    """Fail (never skip) a test that needs real nodes when the bed runs simulated ones: `make test` runs as root."""
    if mode != REAL:
        pytest.fail(f"needs real nodes ({why}); this bed runs {mode} nodes: run `make test` as root, as CI does")
