"""Pure: pydantic models → apiextensions.k8s.io/v1 CRDs with structural schemas.

Pydantic emits JSON Schema with ``$ref``s, ``anyOf`` null unions and ``title``s; the API
server wants structural OpenAPI: every node typed, no references, no
``additionalProperties: false``. ``structural()`` rewrites one into the other and
``crd()`` wraps it with names, printer columns and the status subresource.
"""

from __future__ import annotations

import copy
from typing import Any, Final

from pydantic import BaseModel

from observatory_operator.api import models

_DROP: Final = frozenset({"title"})


class SchemaError(ValueError):
    """A model produced a schema the API server would refuse."""


def _deref(node: dict[str, Any], defs: dict[str, Any]) -> dict[str, Any]:
    ref = node.get("$ref")
    if ref is None:
        return node
    name = ref.rsplit("/", 1)[-1]
    merged: dict[str, Any] = copy.deepcopy(defs[name])
    # Keys next to a $ref (description, default) describe this use of the type and win.
    merged.update({k: v for k, v in node.items() if k != "$ref"})
    return merged


def structural(node: dict[str, Any], defs: dict[str, Any], path: str = "") -> dict[str, Any]:  # noqa: PLR0912
    """A structural copy of one JSON-schema node (recursively)."""
    node = _deref(node, defs)
    if "anyOf" in node and not node.get("x-kubernetes-int-or-string"):
        variants = [v for v in node["anyOf"] if v.get("type") != "null"]
        if len(variants) != 1:
            raise SchemaError(f"{path or '<root>'}: unions other than X | None are not structural")
        outer = {k: v for k, v in node.items() if k != "anyOf"}
        inner = _deref(variants[0], defs)
        node = {**inner, **outer}
        if node.get("default", 0) is None:
            del node["default"]
    out: dict[str, Any] = {}
    for key, value in node.items():
        if key in _DROP or (key == "default" and value is None):
            continue
        if key == "properties":
            out[key] = {k: structural(v, defs, f"{path}.{k}") for k, v in value.items()}
        elif key == "items":
            out[key] = structural(value, defs, f"{path}[]")
        elif key == "additionalProperties":
            if value is False:
                continue  # the API server prunes unknown fields; `false` is not allowed
            if isinstance(value, dict):
                out[key] = structural(value, defs, f"{path}.*")
        elif key == "const":
            out["enum"] = [value]
        elif key == "exclusiveMinimum" and not isinstance(value, bool):
            out["minimum"], out["exclusiveMinimum"] = value, True
        elif key == "exclusiveMaximum" and not isinstance(value, bool):
            out["maximum"], out["exclusiveMaximum"] = value, True
        else:
            out[key] = copy.deepcopy(value)
    if "type" not in out and not (
        out.get("x-kubernetes-int-or-string") or out.get("x-kubernetes-preserve-unknown-fields")
    ):
        if "properties" in out:
            out["type"] = "object"
        else:
            raise SchemaError(f"{path or '<root>'}: schema node has no type")
    if out.get("type") == "object" and "properties" not in out and "additionalProperties" not in out:
        out.setdefault("x-kubernetes-preserve-unknown-fields", True)
    if out.get("type") == "number" and "format" not in out:
        out["format"] = "double"
    return out


def model_schema(model: type[BaseModel]) -> dict[str, Any]:
    raw = model.model_json_schema(by_alias=True, mode="validation", ref_template="#/$defs/{model}")
    defs = raw.pop("$defs", {})
    schema = structural(raw, defs)
    schema.pop("description", None)
    return schema


def _top_schema(
    spec: type[BaseModel], status: type[BaseModel], description: str, spec_required: bool
) -> dict[str, Any]:
    spec_schema = model_schema(spec)
    spec_schema["description"] = (spec.__doc__ or "").strip()
    status_schema = model_schema(status)
    status_schema["description"] = (status.__doc__ or "").strip()
    top: dict[str, Any] = {
        "type": "object",
        "description": description,
        "properties": {
            "apiVersion": {
                "type": "string",
                "description": "API version: observatory.happypatterns.org/v1alpha1.",
            },
            "kind": {"type": "string", "description": "Kind of the resource."},
            "metadata": {"type": "object"},
            "spec": spec_schema,
            "status": status_schema,
        },
    }
    if spec_required:
        top["required"] = ["spec"]
    else:
        spec_schema["default"] = {}
    return top


def _column(name: str, type_: str, path: str, description: str, priority: int = 0) -> dict[str, Any]:
    col: dict[str, Any] = {"name": name, "type": type_, "jsonPath": path, "description": description}
    if priority:
        col["priority"] = priority
    return col


AGE: Final = _column("Age", "date", ".metadata.creationTimestamp", "Time since creation.")


def crd(
    *,
    kind: str,
    plural: str,
    short_names: list[str],
    spec: type[BaseModel],
    status: type[BaseModel],
    description: str,
    columns: list[dict[str, Any]],
    spec_required: bool,
) -> dict[str, Any]:
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {
            "name": f"{plural}.{models.GROUP}",
            "labels": {
                "app.kubernetes.io/name": "happy-observatory",
                "app.kubernetes.io/part-of": "happy-observatory",
            },
        },
        "spec": {
            "group": models.GROUP,
            "scope": "Namespaced",
            "names": {
                "kind": kind,
                "listKind": f"{kind}List",
                "plural": plural,
                "singular": kind.lower(),
                "shortNames": short_names,
                "categories": ["observatory"],
            },
            "versions": [
                {
                    "name": models.VERSION,
                    "served": True,
                    "storage": True,
                    "subresources": {"status": {}},
                    "additionalPrinterColumns": columns,
                    "schema": {"openAPIV3Schema": _top_schema(spec, status, description, spec_required)},
                }
            ],
        },
    }


def observatory_collector_crd() -> dict[str, Any]:
    return crd(
        kind="ObservatoryCollector",
        plural="observatorycollectors",
        short_names=["obscol"],
        spec=models.ObservatoryCollectorSpec,
        status=models.ObservatoryCollectorStatus,
        description=(models.ObservatoryCollector.__doc__ or "").strip(),
        spec_required=False,
        columns=[
            _column("Ready", "string", ".status.ready", "Ready agents / desired agents."),
            _column(
                "Reporting",
                "string",
                ".status.reporting",
                "Agents that wrote to InfluxDB in the last two windows.",
            ),
            _column("Last-Write", "date", ".status.lastWrite", "Newest successful write to InfluxDB."),
            _column("Phase", "string", ".status.phase", "Pending, Progressing, Ready, Degraded, Paused or Failed."),
            AGE,
            _column("Bucket", "string", ".spec.influxdb.bucket", "InfluxDB bucket (empty: shared-config).", 1),
            _column("Interval", "string", ".spec.interval", "Sampling interval (empty: shared-config).", 1),
            _column("Window", "string", ".spec.window", "Aggregation window (empty: shared-config).", 1),
        ],
    )


def aggregation_rule_crd() -> dict[str, Any]:
    return crd(
        kind="AggregationRule",
        plural="aggregationrules",
        short_names=["aggrule"],
        spec=models.AggregationRuleSpec,
        status=models.AggregationRuleStatus,
        description=(models.AggregationRule.__doc__ or "").strip(),
        spec_required=True,
        columns=[
            _column("Ready", "string", ".status.ready", "Ready processor replicas / desired."),
            _column("Window", "string", ".spec.window", "Roll-up window."),
            _column("Last-Window", "date", ".status.lastWindow", "End of the newest window written to InfluxDB."),
            _column("Series", "integer", ".status.series", "Series written in the newest window."),
            _column("Phase", "string", ".status.phase", "Pending, Progressing, Ready, Degraded, Paused or Failed."),
            AGE,
            _column("Nodes", "integer", ".status.contributingNodes", "Nodes merged into the newest window.", 1),
            _column("Expected", "integer", ".status.expectedNodes", "Nodes that should contribute.", 1),
            _column("Dropped", "integer", ".status.droppedSeries", "Series dropped by maxSeries, newest window.", 1),
            _column("Late", "integer", ".status.latePartials", "Partials too late to merge.", 1),
            _column("Measurement", "string", ".spec.output.measurement", "Output measurement.", 1),
        ],
    )


def all_crds() -> dict[str, dict[str, Any]]:
    """File name → CRD, in a stable order."""
    return {
        "observatorycollectors.yaml": observatory_collector_crd(),
        "aggregationrules.yaml": aggregation_rule_crd(),
    }
