"""The generated CRDs: fresh, structural, described, and the examples valid against them."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

from observatory_agent import contract
from observatory_operator.api import generate, models, schema

ROOT = Path(__file__).resolve().parents[3]
EXAMPLES = ROOT / "examples"


def _crd_schema(kind: str) -> dict[str, Any]:
    crds = {c["spec"]["names"]["kind"]: c for c in schema.all_crds().values()}
    result: dict[str, Any] = crds[kind]["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    return result


def _nodes(node: dict[str, Any], path: str = "") -> Iterator[tuple[str, dict[str, Any]]]:
    yield path, node
    for name, child in node.get("properties", {}).items():
        yield from _nodes(child, f"{path}.{name}")
    if isinstance(node.get("items"), dict):
        yield from _nodes(node["items"], f"{path}[]")
    if isinstance(node.get("additionalProperties"), dict):
        yield from _nodes(node["additionalProperties"], f"{path}.*")


@pytest.mark.parametrize("kind", ["ObservatoryCollector", "AggregationRule"])
def test_every_schema_node_is_structural(kind: str) -> None:
    for path, node in _nodes(_crd_schema(kind)):
        if path == ".metadata":
            assert node == {"type": "object"}  # the API server supplies ObjectMeta's schema
            continue
        assert "$ref" not in node, path
        assert node.get("additionalProperties") is not False, path
        if node.get("x-kubernetes-int-or-string"):
            assert "type" not in node, path
            assert [v["type"] for v in node["anyOf"]] == ["integer", "string"], path
            continue
        assert not {"anyOf", "oneOf", "allOf"} & node.keys(), path
        assert node.get("type") in {"object", "array", "string", "integer", "number", "boolean"}, path
        if node.get("x-kubernetes-preserve-unknown-fields"):
            assert node["type"] == "object", path
        if node["type"] == "array":
            assert "items" in node, path
        if node["type"] == "object" and not node.get("x-kubernetes-preserve-unknown-fields"):
            assert "properties" in node or "additionalProperties" in node, path


@pytest.mark.parametrize("kind", ["ObservatoryCollector", "AggregationRule"])
def test_every_spec_and_status_field_is_described(kind: str) -> None:
    top = _crd_schema(kind)
    for part in ("spec", "status"):
        for path, node in _nodes(top["properties"][part], part):
            for name, child in node.get("properties", {}).items():
                assert child.get("description"), f"{path}.{name} has no description"


def test_preserve_unknown_fields_only_where_a_core_type_passes_through() -> None:
    spec = _crd_schema("ObservatoryCollector")["properties"]["spec"]
    preserved = [p for p, n in _nodes(spec, "spec") if n.get("x-kubernetes-preserve-unknown-fields")]
    assert preserved == ["spec.affinity"]


def test_resource_quantities_are_int_or_string() -> None:
    spec = _crd_schema("ObservatoryCollector")["properties"]["spec"]
    limits = spec["properties"]["resources"]["properties"]["limits"]["additionalProperties"]
    assert limits["x-kubernetes-int-or-string"] is True


def test_committed_crds_match_the_models() -> None:
    assert generate.stale(ROOT) == [], "run `make crds` and commit the result"


def test_crd_names_columns_and_subresources() -> None:
    crds = schema.all_crds()
    col = crds["observatorycollectors.yaml"]["spec"]
    assert col["names"]["shortNames"] == ["obscol"]
    assert col["names"]["categories"] == ["observatory"]
    version = col["versions"][0]
    assert version["subresources"] == {"status": {}}
    normal = [c["name"] for c in version["additionalPrinterColumns"] if not c.get("priority")]
    wide = [c["name"] for c in version["additionalPrinterColumns"] if c.get("priority")]
    assert normal == ["Ready", "Reporting", "Last-Write", "Phase", "Age"]
    assert wide == ["Bucket", "Interval", "Window"]
    rule = crds["aggregationrules.yaml"]["spec"]
    assert rule["names"]["shortNames"] == ["aggrule"]
    cols = [c["name"] for c in rule["versions"][0]["additionalPrinterColumns"]]
    assert cols == [
        "Ready",
        "Window",
        "Last-Window",
        "Series",
        "Phase",
        "Age",
        "Nodes",
        "Expected",
        "Dropped",
        "Late",
        "Measurement",
    ]


def test_cel_rules_cover_what_the_schema_cannot_say() -> None:
    messages = [
        rule["message"]
        for kind in ("ObservatoryCollector", "AggregationRule")
        for _, node in _nodes(_crd_schema(kind))
        for rule in node.get("x-kubernetes-validations", [])
    ]
    for expected in (
        "window must be a whole multiple of interval",
        "allowedLateness must be shorter than window",
        "every quantile must be strictly between 0 and 100",
        "collector names must be unique",
        "metrics must list at least one non-empty metric name pattern",
        "maxSeries must be at least 1",
    ):
        assert any(m.startswith(expected) for m in messages), expected


def test_conditions_are_a_map_keyed_by_type() -> None:
    status = _crd_schema("ObservatoryCollector")["properties"]["status"]
    conditions = status["properties"]["conditions"]
    assert conditions["x-kubernetes-list-type"] == "map"
    assert conditions["x-kubernetes-list-map-keys"] == ["type"]


def test_collector_kinds_match_the_agent_contract() -> None:
    assert models.CollectorKind.__args__ == contract.COLLECTOR_KINDS


def _example(name: str) -> dict[str, Any]:
    loaded: dict[str, Any] = yaml.safe_load((EXAMPLES / name).read_text())
    return loaded


@pytest.mark.parametrize(
    ("name", "kind"), [("collector.yaml", "ObservatoryCollector"), ("cpu-rollup.yaml", "AggregationRule")]
)
def test_example_is_valid_against_the_generated_schema(name: str, kind: str) -> None:
    obj = _example(name)
    assert obj["kind"] == kind
    jsonschema.Draft4Validator(_crd_schema(kind)).validate(obj)
    model = models.ObservatoryCollector if kind == "ObservatoryCollector" else models.AggregationRule
    model.model_validate(obj)


def test_shared_config_example_parses_as_shared_config() -> None:
    obj = _example("shared-config.yaml")
    shared = contract.SharedConfig.from_mapping(obj["data"], source="examples/shared-config.yaml")
    assert shared.observatory_collection_interval == 10.0
    assert shared.observatory_aggregation_window == 60.0
    assert shared.tags == {"team": "platform", "env": "dev"}


def test_schema_refuses_a_malformed_duration_naming_the_field() -> None:
    obj = _example("collector.yaml")
    obj["spec"]["interval"] = "ten seconds"
    with pytest.raises(jsonschema.ValidationError) as err:
        jsonschema.Draft4Validator(_crd_schema("ObservatoryCollector")).validate(obj)
    assert list(err.value.absolute_path) == ["spec", "interval"]
