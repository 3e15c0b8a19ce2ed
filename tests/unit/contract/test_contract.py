"""The operator↔agent contract: durations, shared-config parsing and precedence, partial validation."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st
from pydantic import ValidationError

from observatory_agent import contract
from observatory_agent.contract import AgentConfig, ConfigError, SharedConfig


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("10s", 10.0), ("1m", 60.0), ("1h30m", 5400.0), ("500ms", 0.5), ("2h", 7200.0), ("15", 15.0)],
)
def test_durations_parse_to_seconds(text: str, seconds: float) -> None:
    assert contract.parse_duration(text) == seconds


@pytest.mark.parametrize("bad", ["", "ten", "-5s", "0s", "1.5m", "10 s", "1d"])
def test_bad_duration_names_the_key_and_the_rule(bad: str) -> None:
    with pytest.raises(ConfigError) as err:
        contract.parse_duration(bad, key="observatory_collection_interval")
    assert str(err.value).startswith("observatory_collection_interval: must be a")


@given(st.integers(min_value=1, max_value=10 * 24 * 3600 * 1000))
def test_format_duration_round_trips(ms: int) -> None:
    text = contract.format_duration(ms / 1000)
    assert contract.parse_duration(text) == pytest.approx(ms / 1000)


def _write_configmap(directory: Path, data: dict[str, str]) -> None:
    """Lay out a directory the way the kubelet mounts a ConfigMap: ..data → timestamped dir."""
    stamp = directory / "..2026_11_30_10_00_00.000000001"
    stamp.mkdir(parents=True)
    for key, value in data.items():
        (stamp / key).write_text(value)
    (directory / "..data").symlink_to(stamp.name)
    for key in data:
        (directory / key).symlink_to(Path("..data") / key)


def test_shared_config_reads_a_mounted_configmap(tmp_path: Path) -> None:
    _write_configmap(
        tmp_path,
        {
            "observatory_enabled": "true\n",
            "observatory_collection_interval": "5s",
            "observatory_aggregation_window": "30s",
            "influxdb_url": "http://influx:8086",
            "cluster_name": "prod-eu",
            "tags": '{"team": "sre"}',
        },
    )
    shared = SharedConfig.from_directory(tmp_path)
    assert shared.observatory_enabled is True
    assert shared.observatory_collection_interval == 5.0
    assert shared.observatory_aggregation_window == 30.0
    assert shared.cluster_name == "prod-eu"
    assert shared.tags == {"team": "sre"}


def test_environment_overrides_the_directory(tmp_path: Path) -> None:
    _write_configmap(tmp_path, {"influxdb_bucket": "from-file", "cluster_name": "a"})
    shared = SharedConfig.load(tmp_path, {"INFLUXDB_BUCKET": "from-env", "UNRELATED": "x"})
    assert shared.influxdb_bucket == "from-env"
    assert shared.cluster_name == "a"


def test_unknown_shared_config_key_is_named(tmp_path: Path) -> None:
    _write_configmap(tmp_path, {"observatory_colection_interval": "5s"})
    with pytest.raises(ConfigError) as err:
        SharedConfig.from_directory(tmp_path)
    assert "observatory_colection_interval" in str(err.value)
    assert "is not a shared-config key" in str(err.value)


@pytest.mark.parametrize(
    ("key", "value", "rule"),
    [
        ("observatory_enabled", "maybe", "must be true or false"),
        ("observatory_aggregation_window", "1 minute", "must be a duration"),
        ("influxdb_url", "influx:8086", "http:// or https://"),
        ("tags", "team", "entries must be key=value"),
        ("tags", "host=x", "reserved"),
    ],
)
def test_bad_shared_config_value_names_the_key_and_rule(key: str, value: str, rule: str) -> None:
    with pytest.raises(ConfigError) as err:
        SharedConfig.from_mapping({key: value}, source="cm")
    assert key in str(err.value)
    assert rule in str(err.value)


def test_precedence_spec_over_shared_config_over_defaults() -> None:
    shared = SharedConfig.from_mapping(
        {
            "observatory_collection_interval": "5s",
            "observatory_aggregation_window": "30s",
            "influxdb_bucket": "shared-bucket",
            "influxdb_org": "shared-org",
            "tags": "team=sre,env=prod",
        },
        source="cm",
    )
    agent = AgentConfig.model_validate(
        {"interval": "20s", "tags": {"env": "staging"}, "influxdb": {"bucket": "spec-bucket"}}
    )
    with pytest.raises(ConfigError, match="window: must be a whole multiple of interval"):
        contract.resolve(agent, shared)  # 30s from shared-config is not a multiple of the spec's 20s
    agent = agent.model_copy(update={"window": 40.0})
    eff = contract.resolve(agent, shared)
    assert eff.interval == 20.0
    assert eff.window == 40.0
    assert eff.influxdb_bucket == "spec-bucket"
    assert eff.influxdb_org == "shared-org"
    assert eff.tags == {"team": "sre", "env": "staging"}
    assert eff.cluster == "default"
    defaults = contract.resolve(AgentConfig(), SharedConfig())
    assert (defaults.interval, defaults.window, defaults.enabled) == (10.0, 60.0, True)


def test_shared_config_can_switch_collection_off() -> None:
    shared = SharedConfig.from_mapping({"observatory_enabled": "false"}, source="cm")
    assert contract.resolve(AgentConfig(), shared).enabled is False
    assert contract.resolve(AgentConfig(enabled=True), shared).enabled is True


def test_agent_config_round_trips_through_json() -> None:
    cfg = AgentConfig.model_validate({"interval": "10s", "window": "1m", "quantiles": [99, 50, 95]})
    again = AgentConfig.model_validate_json(cfg.model_dump_json())
    assert again == cfg
    assert again.quantiles == [50.0, 95.0, 99.0]


def test_agent_config_refuses_duplicate_collectors() -> None:
    with pytest.raises(ValidationError, match="names must be unique"):
        AgentConfig.model_validate({"collectors": [{"name": "cpu", "kind": "cpu"}, {"name": "cpu", "kind": "cpu"}]})


def test_partial_needs_exactly_one_of_values_or_sketch() -> None:
    base = {"name": "m", "count": 2, "sum": 3.0, "min": 1.0, "max": 2.0, "last": 2.0, "last_timestamp": 1.0}
    contract.SeriesPartial.model_validate({**base, "values": [1.0, 2.0]})
    with pytest.raises(ValidationError, match="exactly one of values or sketch"):
        contract.SeriesPartial.model_validate(base)
    with pytest.raises(ValidationError, match="values has 1 entries but count is 2"):
        contract.SeriesPartial.model_validate({**base, "values": [1.0]})


def test_metric_event_refuses_nan() -> None:
    with pytest.raises(ValidationError, match="finite"):
        contract.MetricEvent(name="m", value=float("nan"), timestamp=0)


def test_aggregated_metric_exposes_the_old_quantile_names() -> None:
    agg = contract.AggregatedMetric(
        name="m", timestamp=60, window_start=0, count=1, sum=1, mean=1, min=1, max=1, last=1,
        quantiles={contract.quantile_key(50): 1.0, contract.quantile_key(99.9): 1.0},
    )  # fmt: skip
    assert agg.p50 == 1.0
    assert agg.p95 is None
    assert set(agg.quantiles) == {"p50", "p99.9"}
