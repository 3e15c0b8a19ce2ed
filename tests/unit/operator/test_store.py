"""The watch-fed store: indexes, listeners, relists that report what vanished, and pins that keep our own writes."""

from __future__ import annotations

from typing import Any

from observatory_operator.kube.client import DAEMONSETS
from observatory_operator.kube.informer import Store


def _ds(name: str, rv: str, owner: str = "c1", **extra: Any) -> dict[str, Any]:
    return {
        "apiVersion": "apps/v1",
        "kind": "DaemonSet",
        "metadata": {
            "name": name,
            "namespace": "ns",
            "resourceVersion": rv,
            "ownerReferences": [{"uid": owner, "controller": True}],
            "managedFields": [{"manager": "x"}],
        },
        **extra,
    }


def _store() -> tuple[Store, list[tuple[str | None, str | None]]]:
    store = Store(DAEMONSETS)
    store.add_index("owner", lambda o: [o["metadata"]["ownerReferences"][0]["uid"]])
    seen: list[tuple[str | None, str | None]] = []
    store.listen(
        lambda old, new: seen.append(
            (old and old["metadata"]["resourceVersion"], new and new["metadata"]["resourceVersion"])
        )
    )
    return store, seen


def test_objects_are_indexed_and_trimmed_of_managed_fields() -> None:
    store, _ = _store()
    store.observe("ADDED", _ds("a", "1"))
    store.observe("ADDED", _ds("b", "2", owner="c2"))
    assert [o["metadata"]["name"] for o in store.by_index("owner", "c1")] == ["a"]
    assert "managedFields" not in store.get("ns", "a")["metadata"]  # type: ignore[index]
    store.observe("DELETED", _ds("a", "3"))
    assert store.by_index("owner", "c1") == []


def test_a_relist_reports_what_vanished_as_deleted() -> None:
    """A DELETED event missed while disconnected must not leave a ghost the rounds keep acting on."""
    store, seen = _store()
    store.observe("ADDED", _ds("a", "1"))
    store.observe("ADDED", _ds("b", "2"))
    seen.clear()
    store.replace([_ds("b", "2")], within=lambda key: key[0] == "ns")
    assert store.get("ns", "a") is None
    assert seen == [("1", None)]


def test_our_own_write_is_not_rolled_back_by_an_older_event_in_flight() -> None:
    store, _ = _store()
    store.observe("ADDED", _ds("a", "1"))
    store.write_through(_ds("a", "5", spec={"ours": True}))
    store.observe("MODIFIED", _ds("a", "4", spec={"ours": False}))  # older than our write
    assert store.get("ns", "a")["spec"] == {"ours": True}  # type: ignore[index]
    store.observe("MODIFIED", _ds("a", "5", spec={"ours": True}))  # the watch catches up: unpinned
    store.observe("MODIFIED", _ds("a", "6", spec={"theirs": True}))
    assert store.get("ns", "a")["spec"] == {"theirs": True}  # type: ignore[index]


def test_an_answer_the_watch_already_delivered_does_not_pin_or_roll_back() -> None:
    """The watch event of our own write may arrive before the write's answer is processed."""
    store, _ = _store()
    store.observe("ADDED", _ds("a", "5", spec={"ours": True}))
    store.observe("MODIFIED", _ds("a", "6", status={"numberReady": 1}))
    store.write_through(_ds("a", "5", spec={"ours": True}))
    assert store.get("ns", "a")["metadata"]["resourceVersion"] == "6"  # type: ignore[index]
    store.observe("MODIFIED", _ds("a", "7", status={"numberReady": 2}))
    assert store.get("ns", "a")["status"] == {"numberReady": 2}  # type: ignore[index]
