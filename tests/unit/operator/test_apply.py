"""Pure parts of applying: drift by input hash and digest (no write when nothing changed), API errors."""

from __future__ import annotations

import copy
from typing import Any

import pytest

from observatory_operator.api.models import API_VERSION, ObservatoryCollectorSpec
from observatory_operator.kube import errors
from observatory_operator.kube.apply import Memory, Why, needs_write, trim_child, with_input_hash
from observatory_operator.manifests import build_collector
from observatory_operator.objects import Owner
from observatory_operator.settings import Settings

HASH = "observatory.happypatterns.org/input-hash"
OWNER = Owner("nodes", "ns", "uid-1", "ObservatoryCollector", API_VERSION)


def _desired(**spec: Any) -> dict[str, dict[str, Any]]:
    parsed = ObservatoryCollectorSpec.model_validate(
        {"collectors": [{"name": "cpu"}], "resources": {"requests": {"cpu": "0.5"}}, **spec}
    )
    return {o["kind"]: with_input_hash(o, HASH) for o in build_collector(OWNER, parsed, Settings()).objects}


def _as_served(obj: dict[str, Any]) -> dict[str, Any]:
    """Roughly what the API server returns: defaults added, quantities canonical, a uid and a version."""
    live = copy.deepcopy(obj)
    live["metadata"].update({"uid": "x", "resourceVersion": "12"})
    if obj["kind"] == "DaemonSet":
        pod = live["spec"]["template"]["spec"]
        pod["dnsPolicy"] = "ClusterFirst"
        pod["containers"][0]["terminationMessagePath"] = "/dev/termination-log"
        pod["containers"][0]["resources"]["requests"]["cpu"] = "500m"
        live["spec"]["updateStrategy"] = {"type": "RollingUpdate", "rollingUpdate": {"maxUnavailable": 1}}
        live["status"] = {"numberReady": 1}
    return live


PREFIX = "observatory.happypatterns.org/"


def _after_apply(desired: dict[str, Any]) -> tuple[dict[str, Any], Memory]:
    """What the API server answered our apply (remembered), for the test to edit as someone else would."""
    live, memory = _as_served(desired), Memory(PREFIX)
    memory.remember(live)
    return live, memory


def _cached(live: dict[str, Any]) -> dict[str, Any]:
    """The live object as the watch-fed cache keeps it."""
    return trim_child(live, prefix=PREFIX, keep=[("spec", "template", "spec", "hostNetwork")])


def test_what_the_api_server_answered_needs_no_write_later() -> None:
    for kind, obj in _desired().items():
        live, memory = _after_apply(obj)
        assert needs_write(obj, _cached(live), memory, HASH) is None, kind


def test_after_a_restart_the_first_live_object_is_the_baseline() -> None:
    ds = _desired()["DaemonSet"]
    memory = Memory(PREFIX)
    assert needs_write(ds, _cached(_as_served(ds)), memory, HASH) is None
    edited = _as_served(ds)
    edited["spec"]["template"]["spec"]["containers"][0]["image"] = "evil/image:latest"
    assert needs_write(ds, _cached(edited), memory, HASH) is Why.RESTORED


def test_a_missing_object_is_created_and_one_we_made_before_is_restored() -> None:
    ds = _desired()["DaemonSet"]
    assert needs_write(ds, None, Memory(PREFIX), HASH) is Why.CREATED
    _, memory = _after_apply(ds)
    assert needs_write(ds, None, memory, HASH) is Why.RESTORED


def test_a_hand_edited_image_is_restored() -> None:
    ds = _desired()["DaemonSet"]
    live, memory = _after_apply(ds)
    live["spec"]["template"]["spec"]["containers"][0]["image"] = "evil/image:latest"
    assert needs_write(ds, _cached(live), memory, HASH) is Why.RESTORED


def test_a_removed_label_or_volume_or_an_added_env_var_is_restored() -> None:
    ds = _desired()["DaemonSet"]
    for edit in (
        lambda o: o["metadata"]["labels"].pop("app.kubernetes.io/managed-by"),
        lambda o: o["spec"]["template"]["spec"]["volumes"].pop(),
        lambda o: o["spec"]["template"]["spec"]["containers"][0]["env"].append({"name": "X", "value": "1"}),
    ):
        live, memory = _after_apply(ds)
        edit(live)
        assert needs_write(ds, _cached(live), memory, HASH) is Why.RESTORED


def test_edited_configmap_data_is_restored() -> None:
    cm = _desired()["ConfigMap"]
    live, memory = _after_apply(cm)
    live["data"]["agent.json"] = "{}"
    assert needs_write(cm, _cached(live), memory, HASH) is Why.RESTORED


def test_a_field_removed_from_the_spec_changes_the_input_hash() -> None:
    """Dropping spec.updateStrategy leaves no desired path to compare: only the hash sees it (issue 11, item 5)."""
    before = _desired(updateStrategy={"type": "RollingUpdate", "rollingUpdate": {"maxUnavailable": 3}})["DaemonSet"]
    after = _desired()["DaemonSet"]
    live, memory = _after_apply(before)
    assert needs_write(after, _cached(live), memory, HASH) is Why.UPDATED


def test_the_input_hash_ignores_key_order_and_covers_the_whole_object() -> None:
    ds = _desired()["DaemonSet"]
    reordered = dict(reversed(list(ds.items())))
    assert with_input_hash(reordered, HASH)["metadata"]["annotations"][HASH] == ds["metadata"]["annotations"][HASH]
    other = copy.deepcopy(ds)
    other["metadata"]["labels"]["extra"] = "1"
    assert with_input_hash(other, HASH)["metadata"]["annotations"][HASH] != ds["metadata"]["annotations"][HASH]


@pytest.mark.parametrize(
    ("status", "body", "expected"),
    [
        (409, '{"message": "conflict"}', errors.Conflict),
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


def test_the_cache_keeps_a_digest_not_the_spec() -> None:
    ds = _as_served(_desired(collectors=[{"name": "network"}])["DaemonSet"])
    ds["metadata"]["managedFields"] = [{"manager": "x"}]
    kept = _cached(ds)
    assert kept["spec"] == {"template": {"spec": {"hostNetwork": True}}}  # the one path status reads
    assert kept["status"] == {"numberReady": 1}
    assert HASH in kept["metadata"]["annotations"]
    assert "managedFields" not in kept["metadata"]
    assert len(str(kept)) < len(str(ds)) / 4
