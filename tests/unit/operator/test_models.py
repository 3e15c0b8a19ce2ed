"""API model defaults and the Python mirrors of the CEL rules, with messages that name the field."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from observatory_agent import contract
from observatory_operator.api import models


def test_empty_collector_spec_runs_every_system_collector() -> None:
    spec = models.ObservatoryCollectorSpec()
    assert [c.name for c in spec.collectors] == list(contract.SYSTEM_COLLECTORS)
    assert spec.aggregations.quantiles == [50.0, 95.0, 99.0]
    assert spec.shared_config.name == "observatory-shared-config"
    assert spec.interval is None
    assert spec.window is None
    assert spec.paused is False


def test_rule_defaults() -> None:
    spec = models.AggregationRuleSpec.model_validate(
        {"collectors": ["nodes"], "metrics": ["system.cpu.usage"], "output": {"measurement": "cluster.cpu"}}
    )
    assert spec.window == "1m"
    assert spec.allowed_lateness == "15s"
    assert spec.functions == ["mean", "max", "p95"]
    assert spec.max_series == 10000


def _error(model: type[models._Model], data: dict[str, object]) -> str:
    with pytest.raises(ValidationError) as err:
        model.model_validate(data)
    return str(err.value)


def test_malformed_interval_names_the_field() -> None:
    message = _error(models.ObservatoryCollectorSpec, {"interval": "ten"})
    assert "interval" in message
    assert "pattern" in message


def test_window_not_a_multiple_of_interval_is_refused() -> None:
    message = _error(models.ObservatoryCollectorSpec, {"interval": "10s", "window": "25s"})
    assert "window must be a whole multiple of interval" in message


def test_duplicate_collector_names_are_refused() -> None:
    message = _error(models.ObservatoryCollectorSpec, {"collectors": [{"name": "cpu"}, {"name": "cpu"}]})
    assert "collector names must be unique" in message


def test_quantile_out_of_range_names_the_rule() -> None:
    message = _error(models.ObservatoryCollectorSpec, {"aggregations": {"quantiles": [50, 100]}})
    assert "aggregations.quantiles" in message
    assert "strictly between 0 and 100" in message


def test_application_collector_needs_targets() -> None:
    message = _error(models.ObservatoryCollectorSpec, {"collectors": [{"name": "app", "kind": "application"}]})
    assert "needs at least one target URL" in message


def test_unknown_collector_name_needs_a_kind() -> None:
    message = _error(models.ObservatoryCollectorSpec, {"collectors": [{"name": "gpu"}]})
    assert "kind is required" in message


def test_unknown_spec_field_is_refused_by_name() -> None:
    message = _error(models.ObservatoryCollectorSpec, {"intervall": "10s"})
    assert "intervall" in message


@pytest.mark.parametrize(
    ("patch", "expected"),
    [
        ({"allowedLateness": "1m"}, "allowedLateness must be shorter than window"),
        ({"maxSeries": 0}, "maxSeries must be at least 1"),
        ({"metrics": []}, "metrics must list at least one"),
        ({"metrics": [""]}, "metrics must list at least one"),
        ({"functions": ["median"]}, "functions.0"),
    ],
)
def test_rule_rules(patch: dict[str, object], expected: str) -> None:
    data: dict[str, object] = {
        "collectors": ["nodes"],
        "metrics": ["system.cpu.usage"],
        "output": {"measurement": "cluster.cpu"},
        "window": "1m",
        **patch,
    }
    assert expected in _error(models.AggregationRuleSpec, data)
