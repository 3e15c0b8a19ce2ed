"""The chart's ValidatingAdmissionPolicy on the real API server: only allowed images, only allowed namespaces.

The policy and binding are rendered by ``helm template`` exactly as the chart ships them; only the
binding is narrowed with a namespace selector to this test's namespaces, so the rest of the session's
tests (other namespaces, other images) are not refused while it is in place.
"""

from __future__ import annotations

import contextlib
import secrets
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.env.controlplane import ControlPlane
from tests.env.kube import ApiError, Kube
from tests.env.nodesim import REPO
from tests.env.procs import wait_for
from tests.integration.operator.conftest import STAND_IN_IMAGE, collector_path, stand_in_collector

pytestmark = pytest.mark.integration

CHART = REPO / "helm" / "happy-observatory"
POLICIES = "/apis/admissionregistration.k8s.io/v1/validatingadmissionpolicies"
BINDINGS = "/apis/admissionregistration.k8s.io/v1/validatingadmissionpolicybindings"
ALLOWED_LABEL = "observatory.happypatterns.org/collectors"
IMAGES = f"{STAND_IN_IMAGE.rsplit(':', 1)[0]}:*,registry.example/pinned:1"
"""A prefix (every stand-in tag) and one exact image."""


def _namespace(kube: Kube, name: str, labels: dict[str, str]) -> str:
    kube.create("/api/v1/namespaces", {"metadata": {"name": name, "labels": labels}})
    return name


@pytest.fixture
def guarded(control_plane: ControlPlane, crds: list[str], helm: Path) -> Iterator[dict[str, str]]:
    """Namespaces ``allowed``, ``other`` and ``opted-in`` under the chart's policy (allowed: ``allowed`` only)."""
    kube = control_plane.kube
    token = secrets.token_hex(3)
    scope = {"happy-observatory/vap-test": token}
    names = {
        "allowed": _namespace(kube, f"vap-allowed-{token}", scope),
        "other": _namespace(kube, f"vap-other-{token}", scope),
        "opted-in": _namespace(kube, f"vap-opted-in-{token}", {**scope, ALLOWED_LABEL: "allowed"}),
    }
    rendered = subprocess.run(
        [
            str(helm), "template", "obs", str(CHART), "--namespace", "observatory",
            "--show-only", "templates/admission-policy.yaml",
            "--set", f"admissionPolicy.allowedImages={{{IMAGES}}}",
            "--set", f"admissionPolicy.allowedNamespaces={{{names['allowed']}}}",
        ],
        capture_output=True, text=True, check=True,
    ).stdout  # fmt: skip
    policy, binding = (d for d in yaml.safe_load_all(rendered) if d)
    policy_name = f"{policy['metadata']['name']}-{token}"
    policy["metadata"]["name"] = binding["metadata"]["name"] = binding["spec"]["policyName"] = policy_name
    binding["spec"]["matchResources"] = {"namespaceSelector": {"matchLabels": scope}}
    kube.create(POLICIES, policy)
    kube.create(BINDINGS, binding)
    try:
        yield names
    finally:
        for path in (
            f"{BINDINGS}/{policy_name}",
            f"{POLICIES}/{policy_name}",
            *(f"/api/v1/namespaces/{n}" for n in names.values()),
        ):
            with contextlib.suppress(ApiError):
                kube.delete(path)


def _refusal(kube: Kube, namespace: str, obj: dict[str, Any]) -> ApiError | None:
    try:
        kube.create(collector_path(namespace), obj)
    except ApiError as exc:
        return exc
    return None


def test_only_allowed_images_in_allowed_namespaces_pass_and_refusals_name_the_rule(
    control_plane: ControlPlane, guarded: dict[str, str]
) -> None:
    kube = control_plane.kube
    evil = stand_in_collector("miner", image="evil.example/miner:1")

    # The policy is enforced once the API server has compiled it: until then a create goes through.
    def enforced() -> ApiError | None:
        refused = _refusal(kube, guarded["allowed"], evil)
        if refused is None:
            kube.delete(collector_path(guarded["allowed"], "miner"))
        return refused

    refused = wait_for(enforced, timeout=30, what="the policy enforced")
    assert refused.status in {403, 422}, refused
    assert "rule happy-observatory/allowed-images" in refused.message
    assert "spec.image evil.example/miner:1 is not an allowed agent image" in refused.message
    assert "admissionPolicy.allowedImages" in refused.message

    assert _refusal(kube, guarded["allowed"], stand_in_collector("prefixed")) is None  # the stand-in repository:*
    assert _refusal(kube, guarded["allowed"], stand_in_collector("pinned", image="registry.example/pinned:1")) is None
    assert _refusal(kube, guarded["allowed"], stand_in_collector("pinned-other", image="registry.example/pinned:2"))
    default = stand_in_collector("default")
    del default["spec"]["image"]  # the operator's own image
    assert _refusal(kube, guarded["allowed"], default) is None

    elsewhere = _refusal(kube, guarded["other"], stand_in_collector("nodes"))
    assert elsewhere is not None
    assert "rule happy-observatory/allowed-namespaces" in elsewhere.message
    assert guarded["other"] in elsewhere.message
    assert f"{ALLOWED_LABEL}=allowed" in elsewhere.message
    assert _refusal(kube, guarded["opted-in"], stand_in_collector("nodes")) is None

    # Changing an allowed collector to a forbidden image is refused too; changing its labels is not.
    changed = kube.get(collector_path(guarded["allowed"], "pinned"))
    changed["spec"]["image"] = "evil.example/miner:1"
    with pytest.raises(ApiError, match="allowed-images"):
        kube.request("PUT", collector_path(guarded["allowed"], "pinned"), changed)
    kube.patch(collector_path(guarded["allowed"], "pinned"), {"metadata": {"labels": {"team": "a"}}}, kind="merge")
