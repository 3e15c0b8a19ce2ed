"""The node simulator's own tests, on a simulated bed of their own.

The simulator stays in the project for what real containers cannot carry (the 200-collector
and many-node benchmarks) and for machines where real nodes cannot run (not root). Its tests
get their own control plane on loopback and simulated nodes, whatever the session's nodes are,
by overriding the bed's fixtures for this package only (``namespace`` follows: it asks for
``control_plane`` by name).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.env.controlplane import ControlPlane
from tests.env.fixtures import SIMULATED, Nodes
from tests.env.nodesim import NodeSimulator


@pytest.fixture(scope="package")
def bed_mode() -> str:
    return SIMULATED


@pytest.fixture(scope="package")
def sim_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("simbed")


@pytest.fixture(scope="package")
def control_plane(sim_root: Path) -> Iterator[ControlPlane]:
    cp = ControlPlane(sim_root / "control-plane", logs_dir=sim_root / "logs")
    cp.start()
    try:
        yield cp
    finally:
        cp.stop()


@pytest.fixture(scope="package")
def nodes(control_plane: ControlPlane, sim_root: Path) -> Iterator[Nodes]:
    sim = NodeSimulator(control_plane.kube, logs_dir=sim_root / "logs", work_dir=sim_root / "nodes")
    try:
        sim.start()
        yield Nodes(control_plane.kube, control_plane.kubectl, simulator=sim)
    finally:
        sim.stop()
