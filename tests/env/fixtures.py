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
import re
import secrets
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.env import build
from tests.env.controlplane import ControlPlane
from tests.env.influx import InfluxDB
from tests.env.kube import ApiError
from tests.env.nodesim import NodeSimulator, SimNode
from tests.env.procs import wait_for


@dataclass
class _Bed:
    root: Path | None = None
    timings: dict[str, float] | None = None

    @property
    def logs(self) -> Path | None:
        return self.root / "logs" if self.root else None


_BED = _Bed(timings={})


@dataclass
class Nodes:
    """The simulated nodes of a session."""

    simulator: NodeSimulator

    @property
    def all(self) -> list[SimNode]:
        return list(self.simulator.nodes)

    @property
    def names(self) -> list[str]:
        return [n.name for n in self.simulator.nodes]

    @property
    def tainted(self) -> str:
        return self.simulator.tainted[0].name

    @property
    def untainted(self) -> list[str]:
        return [n.name for n in self.simulator.nodes if not n.tainted]

    @property
    def taint(self) -> tuple[str, str, str]:
        return self.simulator.tainted[0].taints[0]

    @property
    def toleration(self) -> dict[str, str]:
        key, value, effect = self.taint
        return {"key": key, "operator": "Equal", "value": value, "effect": effect}

    def pod_log(self, namespace: str, pod: str, container: str) -> Path:
        return self.simulator.pod_log(namespace, pod, container)


@pytest.fixture(scope="session")
def bed_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("bed")
    _BED.root = root
    return root


@pytest.fixture(scope="session")
def control_plane(bed_root: Path) -> Iterator[ControlPlane]:
    cp = ControlPlane(bed_root / "control-plane", logs_dir=bed_root / "logs")
    cp.start()
    assert _BED.timings is not None
    _BED.timings["control plane"] = cp.startup_seconds
    try:
        yield cp
    finally:
        cp.stop()


@pytest.fixture(scope="session")
def nodes(control_plane: ControlPlane, bed_root: Path) -> Iterator[Nodes]:
    sim = NodeSimulator(control_plane.kube, logs_dir=bed_root / "logs", work_dir=bed_root / "nodes")
    try:
        sim.start()
        assert _BED.timings is not None
        _BED.timings["nodes"] = sim.startup_seconds
        yield Nodes(sim)
    finally:
        sim.stop()


@pytest.fixture(scope="session")
def influxdb(bed_root: Path) -> Iterator[InfluxDB]:
    db = InfluxDB(bed_root / "influxdb", logs_dir=bed_root / "logs")
    db.start()
    assert _BED.timings is not None
    _BED.timings["influxdb"] = db.startup_seconds
    try:
        yield db
    finally:
        db.close()


@pytest.fixture
def namespace(control_plane: ControlPlane, request: pytest.FixtureRequest) -> Iterator[str]:
    kube = control_plane.kube
    slug = re.sub(r"[^a-z0-9-]+", "-", request.node.name.lower()).strip("-")[:40].strip("-")
    name = f"{slug}-{secrets.token_hex(3)}"
    kube.create("/api/v1/namespaces", {"metadata": {"name": name, "labels": {"happy-observatory/test": "true"}}})
    # ServiceAccount admission refuses pods until the controller-manager has made `default`.
    wait_for(
        lambda: kube.exists(f"/api/v1/namespaces/{name}/serviceaccounts/default"),
        timeout=30,
        what=f"the default ServiceAccount in {name}",
    )
    try:
        yield name
    finally:
        # Not waited for: the namespace controller and the simulator finish it in the background.
        with contextlib.suppress(ApiError, OSError):
            kube.delete(f"/api/v1/namespaces/{name}")


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


def pytest_collection_finish(session: pytest.Session) -> None:
    """Build the binaries the selected tests need now: a first build takes longer than a test may."""
    needed: set[str] = set()
    for item in session.items:
        for fixture in getattr(item, "fixturenames", ()):
            needed.update(_NEEDS.get(fixture, ()))
    if not needed or session.config.option.collectonly:
        return
    capture = session.config.pluginmanager.get_plugin("capturemanager")
    with capture.global_and_fixture_disabled() if capture else contextlib.nullcontext():
        build.ensure(sorted(needed))


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
        terminalreporter.write_line(f"happy-observatory test bed ready: {parts}")
    if exitstatus != 0:
        terminalreporter.write_line(f"happy-observatory test bed logs: {_BED.logs}", red=True)


def wait_until(check: Any, timeout: float = 60.0, what: str = "condition", interval: float = 0.25) -> Any:
    """Poll helper for tests: ``check()`` until truthy (exceptions count as not yet)."""
    return wait_for(check, timeout=timeout, what=what, interval=interval)


__all__ = ["Nodes", "control_plane", "helm", "influxdb", "namespace", "nodes", "wait_until"]
