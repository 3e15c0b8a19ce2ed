"""Parsing a collector body: a spec the models refuse becomes an InvalidSpec outcome naming the field."""

from __future__ import annotations

from observatory_operator.handlers.collector import _owner_key, _parse


def _body(spec: dict[str, object]) -> dict[str, object]:
    return {
        "apiVersion": "observatory.happypatterns.org/v1alpha1",
        "kind": "ObservatoryCollector",
        "metadata": {"name": "nodes", "namespace": "ns", "uid": "u"},
        "spec": spec,
        "status": {"phase": "Ready"},
    }


def test_a_valid_body_parses_and_status_is_ignored() -> None:
    collector, problem = _parse(_body({"interval": "10s", "window": "1m"}))
    assert problem is None
    assert collector is not None
    assert collector.spec.window == "1m"


def test_an_invalid_spec_names_the_field() -> None:
    collector, problem = _parse(_body({"interval": "7s", "window": "1m"}))
    assert collector is None
    assert problem is not None
    assert problem.reason == "InvalidSpec"
    assert "whole multiple of interval" in problem.message


def test_only_our_controller_reference_maps_a_child_to_its_collector() -> None:
    child = {
        "metadata": {
            "namespace": "ns",
            "ownerReferences": [
                {"apiVersion": "v1", "kind": "ConfigMap", "name": "x", "controller": False},
                {
                    "apiVersion": "observatory.happypatterns.org/v1alpha1",
                    "kind": "ObservatoryCollector",
                    "name": "nodes",
                    "controller": True,
                },
            ],
        }
    }
    assert _owner_key(child) == ("ns", "nodes")
    assert _owner_key({"metadata": {"namespace": "ns"}}) is None
