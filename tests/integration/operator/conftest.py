"""The operator as a real subprocess (``.venv/bin/observatory-operator``) against the bed's API server."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.env.controlplane import ControlPlane
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

    def restart(self) -> None:
        self.process.stop()
        self.process = Process("observatory-operator", self.argv, log=self.process.log, env=self.env, cwd=REPO)
        self.process.start()

    def log(self) -> str:
        return self.process.tail(400)


@pytest.fixture
def operator(control_plane: ControlPlane, crds: list[str], namespace: str, bed_root: Path) -> Iterator[Operator]:
    port = free_port()
    argv = [
        str(VENV_BIN / "observatory-operator"),
        "--namespace",
        namespace,
        "--resync-seconds",
        str(RESYNC_SECONDS),
        "--liveness",
        f"http://127.0.0.1:{port}/healthz",
        "--log-format",
        "plain",
    ]
    env = {**os.environ, "KUBECONFIG": str(control_plane.kubeconfig), "PYTHONUNBUFFERED": "1"}
    log = bed_root / "logs" / f"operator-{namespace}.log"
    proc = Process("observatory-operator", argv, log=log, env=env, cwd=REPO)
    proc.start()
    op = Operator(proc, argv, env, f"http://127.0.0.1:{port}/healthz")
    try:
        yield op
    finally:
        op.process.stop()


# --- helpers for the tests ----------------------------------------------------------------


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
