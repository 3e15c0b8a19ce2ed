"""The status funnel's merge patch: only what changed, and a map's removed keys removed."""

from __future__ import annotations

from observatory_operator.controller.machinery import merge_patch


def test_unchanged_fields_are_not_sent() -> None:
    assert merge_patch({"phase": "Ready", "ready": "3/3"}, {"phase": "Ready", "ready": "3/3"}) == {}


def test_a_key_gone_from_a_map_is_sent_as_null() -> None:
    """A merge patch keeps map keys it does not mention: {PodPending: 2} would never go away."""
    before = {"uncoveredNodeCounts": {"PodPending": 2, "SelectorMismatch": 101}}
    after = {"uncoveredNodeCounts": {"SelectorMismatch": 101}}
    assert merge_patch(before, after) == {"uncoveredNodeCounts": {"PodPending": None}}


def test_an_empty_map_is_null_so_the_same_patch_is_not_sent_forever() -> None:
    assert merge_patch({}, {"uncoveredNodeCounts": {}}) == {}
    assert merge_patch({"uncoveredNodeCounts": {"PodPending": 1}}, {"uncoveredNodeCounts": {}}) == {
        "uncoveredNodeCounts": None
    }


def test_lists_and_values_are_replaced_whole() -> None:
    before = {"conditions": [{"type": "Ready", "status": "False"}], "lastWrite": "x"}
    after = {"conditions": [{"type": "Ready", "status": "True"}], "lastWrite": None}
    assert merge_patch(before, after) == after
