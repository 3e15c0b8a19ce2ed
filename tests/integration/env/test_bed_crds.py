"""The committed CRDs install into the bed's API server and accept every example."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from tests.env.controlplane import ControlPlane
from tests.env.dev import install_crds
from tests.env.nodesim import REPO

pytestmark = pytest.mark.integration

CRD_FILES = sorted((REPO / "crds").glob("*.yaml"))
EXAMPLES = sorted((REPO / "examples").glob("*.yaml"))


@pytest.fixture(scope="module")
def crds(control_plane: ControlPlane) -> list[str]:
    return install_crds(control_plane.kube, REPO / "crds")


def test_crds_install_and_are_served(control_plane: ControlPlane, crds: list[str]) -> None:
    assert CRD_FILES, "no CRD YAML in crds/"
    assert len(crds) == len(CRD_FILES)
    names = control_plane.kubectl("api-resources", "--api-group=observatory.happypatterns.org", "-o", "name").stdout
    for crd in crds:
        assert crd in names


@pytest.mark.parametrize("example", EXAMPLES, ids=[p.name for p in EXAMPLES])
def test_every_example_is_accepted(control_plane: ControlPlane, crds: list[str], namespace: str, example: Path) -> None:
    for doc in yaml.safe_load_all(example.read_text()):
        if not doc:
            continue
        applied = control_plane.kube.apply(doc, namespace)
        assert applied["metadata"]["name"] == doc["metadata"]["name"]
        # Read back through kubectl by kind: short names and printer columns come from the CRDs.
        out = control_plane.kubectl("get", doc["kind"], doc["metadata"]["name"], "-n", namespace).stdout
        assert doc["metadata"]["name"] in out
