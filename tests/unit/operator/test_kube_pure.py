"""The pure parts of kube/: drift detection (no write on an unchanged resync) and the error vocabulary."""

from __future__ import annotations

import copy
from typing import Any

import pytest

from observatory_operator.api.models import ObservatoryCollectorSpec
from observatory_operator.build import Owner, build_collector
from observatory_operator.kube import errors
from observatory_operator.kube.diff import needs_apply
from observatory_operator.settings import Settings


def _desired() -> list[dict[str, Any]]:
    spec = ObservatoryCollectorSpec.model_validate(
        {"collectors": [{"name": "cpu"}], "resources": {"requests": {"cpu": "0.5"}}}
    )
    return build_collector(Owner("nodes", "ns", "uid-1"), spec, Settings()).objects


def _as_served(obj: dict[str, Any]) -> dict[str, Any]:
    """Roughly what the API server returns: defaults added, quantities canonical, empty fields dropped."""
    live = copy.deepcopy(obj)
    live["metadata"].update({"uid": "x", "resourceVersion": "12", "managedFields": []})
    if obj["kind"] == "DaemonSet":
        pod = live["spec"]["template"]["spec"]
        pod["dnsPolicy"] = "ClusterFirst"
        pod["containers"][0]["terminationMessagePath"] = "/dev/termination-log"
        pod["containers"][0]["resources"]["requests"]["cpu"] = "500m"
        live["status"] = {"numberReady": 1}
    return live


def test_unchanged_live_objects_need_no_apply() -> None:
    for obj in _desired():
        assert not needs_apply(obj, _as_served(obj)), obj["kind"]


def test_missing_object_needs_apply() -> None:
    assert needs_apply(_desired()[0], None)


def test_hand_edited_image_needs_apply() -> None:
    ds = next(o for o in _desired() if o["kind"] == "DaemonSet")
    live = _as_served(ds)
    live["spec"]["template"]["spec"]["containers"][0]["image"] = "evil/image:latest"
    assert needs_apply(ds, live)


def test_removed_label_or_volume_needs_apply() -> None:
    ds = next(o for o in _desired() if o["kind"] == "DaemonSet")
    live = _as_served(ds)
    del live["metadata"]["labels"]["app.kubernetes.io/managed-by"]
    assert needs_apply(ds, live)
    live = _as_served(ds)
    live["spec"]["template"]["spec"]["volumes"].pop()
    assert needs_apply(ds, live)


def test_edited_configmap_data_needs_apply() -> None:
    cm = next(o for o in _desired() if o["kind"] == "ConfigMap")
    live = _as_served(cm)
    live["data"]["agent.json"] = "{}"
    assert needs_apply(cm, live)


@pytest.mark.parametrize(
    ("status", "body", "expected"),
    [
        (409, '{"message": "conflict"}', errors.TemporaryError),
        (429, '{"message": "slow down"}', errors.TemporaryError),
        (503, "unavailable", errors.TemporaryError),
        (404, '{"message": "not found"}', errors.NotFound),
        (422, '{"message": "spec.selector: Invalid value: field is immutable"}', errors.ImmutableField),
        (422, '{"message": "spec.template.spec.affinity: Invalid value"}', errors.PermanentError),
        (403, '{"message": "forbidden"}', errors.PermanentError),
    ],
)
def test_api_answers_map_onto_the_error_vocabulary(status: int, body: str, expected: type[errors.KubeError]) -> None:
    err = errors.from_response(status, body, {}, what="PATCH /x")
    assert type(err) is expected
    assert err.status == status
    assert err.message.startswith("PATCH /x: ")


def test_retry_after_sets_the_delay() -> None:
    err = errors.from_response(429, "{}", {"Retry-After": "7"})
    assert isinstance(err, errors.TemporaryError)
    assert err.delay == 7.0
