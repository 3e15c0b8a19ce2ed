"""The generated CRDs installed into the session's real API server."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.env.controlplane import ControlPlane
from tests.env.dev import install_crds

ROOT = Path(__file__).resolve().parents[3]


@pytest.fixture(scope="session")
def crds(control_plane: ControlPlane) -> list[str]:
    return install_crds(control_plane.kube, ROOT / "crds")
