"""Upgrading the CRDs as the chart README says keeps objects created under the previous CRDs valid.

Helm installs ``crds/`` once and never upgrades them, so an upgrade is ``kubectl apply
--server-side`` of the chart's ``crds/``. This test installs the CRDs of the newest earlier commit
whose CRDs differ from these (from git history), creates that commit's examples and a collector
with every default, applies these CRDs exactly as documented, and then reads, updates and
re-validates every object. It runs on a control plane of its own: swapping CRDs under the
session's would change them under other tests.
"""

from __future__ import annotations

import re
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.env.controlplane import ControlPlane
from tests.env.fixtures import wait_until
from tests.env.kube import Kube

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[3]
CHART_CRDS = "helm/happy-observatory/crds"
GROUP = "observatory.happypatterns.org"
PLURALS = {"ObservatoryCollector": "observatorycollectors", "AggregationRule": "aggregationrules"}


def git(*args: str) -> str:
    return subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True, check=True).stdout


def _tree(commit: str, directory: str) -> dict[str, str]:
    names = git("ls-tree", "--name-only", f"{commit}:{directory}").split()
    return {n: git("show", f"{commit}:{directory}/{n}") for n in names if n.endswith(".yaml")}


def previous_crd_commit() -> str:
    """The newest commit whose chart CRDs differ from the working tree's (the release users upgrade from)."""
    assert git("rev-parse", "--is-shallow-repository").strip() == "false", (
        "a shallow clone has no previous CRDs: fetch the history (actions/checkout fetch-depth: 0)"
    )
    current = {p.name: p.read_text() for p in (ROOT / CHART_CRDS).glob("*.yaml")}
    for commit in git("log", "--format=%H", "--", CHART_CRDS).split():
        if _tree(commit, CHART_CRDS) != current:
            return commit
    raise AssertionError(f"no commit has CRDs different from {CHART_CRDS}: nothing to upgrade from")


def documented_upgrade_command() -> list[str]:
    """The command the chart README gives, so the test runs what users are told to run."""
    readme = (ROOT / "helm" / "happy-observatory" / "README.md").read_text()
    match = re.search(r"^(kubectl apply --server-side [^\n]+ -f helm/happy-observatory/crds/)$", readme, re.M)
    assert match, "the chart README no longer documents the CRD upgrade command"
    args = match.group(1).split()[1:]
    return [*args[:-1], str(ROOT / CHART_CRDS)]  # the same directory, wherever pytest runs from


@pytest.fixture(scope="module")
def cluster(bed_root: Path) -> Iterator[ControlPlane]:
    cp = ControlPlane(bed_root / "crd-upgrade", logs_dir=bed_root / "logs" / "crd-upgrade")
    cp.start()
    try:
        yield cp
    finally:
        cp.stop()


def _established(kube: Kube, name: str) -> bool:
    crd = kube.get(f"/apis/apiextensions.k8s.io/v1/customresourcedefinitions/{name}")
    return any(
        c["type"] == "Established" and c["status"] == "True" for c in crd.get("status", {}).get("conditions", [])
    )


def _added(old: Any, new: Any, path: tuple[str, ...] = ()) -> list[tuple[str, ...]]:
    """Paths ``new`` has beyond ``old``; fails when a value ``old`` had changed."""
    if isinstance(old, dict) and isinstance(new, dict):
        assert old.keys() <= new.keys(), f"spec.{'.'.join(path)}: {sorted(old.keys() - new.keys())} disappeared"
        extra = [(*path, k) for k in new.keys() - old.keys()]
        return extra + [p for k in old for p in _added(old[k], new[k], (*path, k))]
    if isinstance(old, list) and isinstance(new, list) and len(old) == len(new):
        return [p for i, (o, n) in enumerate(zip(old, new, strict=True)) for p in _added(o, n, (*path, str(i)))]
    assert old == new, f"spec.{'.'.join(path)}: {old!r} became {new!r}"
    return []


def _schema_default(crd: dict[str, Any], path: tuple[str, ...]) -> bool:
    node = crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]
    for key in path:
        node = node["items"] if key.isdigit() else node["properties"][key]
    return "default" in node


def _path(obj: dict[str, Any], namespace: str, name: str | None = None) -> str:
    version = obj["apiVersion"].split("/")[1]
    base = f"/apis/{GROUP}/{version}/namespaces/{namespace}/{PLURALS[obj['kind']]}"
    return f"{base}/{name}" if name else base


def test_objects_from_the_previous_crds_stay_valid_after_the_documented_upgrade(cluster: ControlPlane) -> None:
    kube = cluster.kube
    previous = previous_crd_commit()
    old_crds = [doc for text in _tree(previous, CHART_CRDS).values() for doc in yaml.safe_load_all(text) if doc]
    for crd in old_crds:
        kube.create("/apis/apiextensions.k8s.io/v1/customresourcedefinitions", crd)
    for crd in old_crds:
        wait_until(lambda crd=crd: _established(kube, crd["metadata"]["name"]), timeout=30, what="CRD established")

    namespace = "upgrade"
    kube.create("/api/v1/namespaces", {"metadata": {"name": namespace}})
    objects = [
        doc
        for name in ("examples/collector.yaml", "examples/cpu-rollup.yaml")
        for doc in yaml.safe_load_all(git("show", f"{previous}:{name}"))
        if doc and doc.get("kind") in PLURALS
    ]
    objects.append(
        {
            "apiVersion": f"{GROUP}/v1alpha1",
            "kind": "ObservatoryCollector",
            "metadata": {"name": "defaults"},
            "spec": {"collectors": [{"name": "cpu"}]},
        }
    )
    assert {o["kind"] for o in objects} == set(PLURALS), "the previous commit's examples lack a kind"
    created = {o["metadata"]["name"]: kube.create(_path(o, namespace), o) for o in objects}

    result = cluster.kubectl(*documented_upgrade_command(), check=False)
    assert result.returncode == 0, result.stdout + result.stderr
    current = [doc for p in (ROOT / CHART_CRDS).glob("*.yaml") for doc in yaml.safe_load_all(p.read_text()) if doc]
    for crd in current:
        served = kube.get(f"/apis/apiextensions.k8s.io/v1/customresourcedefinitions/{crd['metadata']['name']}")
        assert served["spec"]["versions"] == crd["spec"]["versions"], "the server does not serve the new schema"

    for obj in objects:
        name = obj["metadata"]["name"]
        path = _path(obj, namespace, name)
        read = kube.get(path)
        # Nothing the user wrote changes; the new schema may only add its defaults (applied on read).
        for added in _added(created[name]["spec"], read["spec"]):
            crd = next(c for c in current if c["spec"]["names"]["kind"] == obj["kind"])
            assert _schema_default(crd, added), f"{name}: spec.{'.'.join(added)} appeared without a default"
        # An update is validated against the new schema (and its CEL rules).
        kube.patch(path, {"metadata": {"labels": {"upgraded": "true"}}}, kind="merge")
        # Validation ratchets on updates; a dry-run create validates every field from scratch.
        fresh = {
            "apiVersion": read["apiVersion"],
            "kind": read["kind"],
            "metadata": {"name": f"{name}-revalidated"},
            "spec": read["spec"],
        }
        kube.request("POST", _path(obj, namespace), fresh, query={"dryRun": "All"})
