"""The processor's contract: its config and precedence, and the packed partial columns it validates."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from pydantic import ValidationError

from observatory_agent.contract import (
    ConfigError,
    ProcessorConfig,
    SeriesColumns,
    SharedConfig,
    pack_floats,
    resolve_processor,
    unpack_floats,
)
from observatory_agent.processor import config as pconfig

RULE: dict[str, Any] = {"rule": "cpu-rollup", "metrics": ["system.cpu.usage"], "output": {"measurement": "m"}}


def test_rule_over_shared_config_over_defaults() -> None:
    shared = SharedConfig(
        observatory_aggregation_window=120.0,
        influxdb_url="http://shared:8086",
        influxdb_org="org",
        influxdb_bucket="shared-bucket",
        cluster_name="prod",
    )
    bare = resolve_processor(ProcessorConfig.model_validate(RULE), shared)
    assert (bare.window, bare.late_horizon, bare.restart_grace) == (120.0, 240.0, 120.0)
    assert (bare.cluster, bare.influxdb_url, bare.bucket) == ("prod", "http://shared:8086", "shared-bucket")
    assert bare.fields == ("mean", "max", "p95")
    assert bare.quantiles == (("p95", 95.0),)
    own = ProcessorConfig.model_validate(
        {
            **RULE,
            "window": "30s",
            "late_horizon": "1m",
            "cluster": "mine",
            "output": {"measurement": "m", "bucket": "rollups"},
            "influxdb": {"url": "http://own:8086", "bucket": "ignored-for-output"},
            "functions": ["count", "p99.9"],
        }
    )
    resolved = resolve_processor(own, shared)
    assert (resolved.window, resolved.late_horizon, resolved.cluster) == (30.0, 60.0, "mine")
    assert (resolved.influxdb_url, resolved.influxdb_org, resolved.bucket) == ("http://own:8086", "org", "rollups")
    assert resolved.fields == ("count", "p99.9")
    assert resolved.quantiles == (("p99.9", 99.9),)
    assert resolve_processor(ProcessorConfig.model_validate(RULE), SharedConfig()).window == 60.0


@pytest.mark.parametrize(
    ("change", "words"),
    [
        ({"functions": ["p100"]}, "functions.0"),
        ({"functions": ["p0"]}, "strictly between"),
        ({"functions": ["p95", "p95.0"]}, "listed twice"),
        ({"functions": ["median"]}, "functions.0"),
        ({"group_by": ["zone", "zone"]}, "must not repeat"),
        ({"group_by": ["rule"]}, "cannot be grouped by"),
        ({"window": "10s", "allowed_lateness": "10s"}, "allowed_lateness must be shorter than window"),
        ({"late_horizon": "5s"}, "late_horizon must be at least allowed_lateness"),
        ({"max_series": 0}, "max_series"),
        ({"metrics": []}, "metrics"),
        ({"port": 70000}, "port"),
        ({"unknown": 1}, "unknown"),
    ],
)
def test_a_bad_processor_config_names_the_field_and_rule(tmp_path: Path, change: dict[str, Any], words: str) -> None:
    path = tmp_path / "processor.json"
    path.write_text(json.dumps({**RULE, **change}))
    with pytest.raises(ConfigError) as err:
        pconfig.load(path, None, {})
    assert str(path) in str(err.value)
    assert words in str(err.value)


def test_lateness_checked_against_a_window_from_shared_config(tmp_path: Path) -> None:
    path = tmp_path / "processor.json"
    path.write_text(json.dumps({**RULE, "allowed_lateness": "30s"}))
    shared = tmp_path / "shared"
    shared.mkdir()
    (shared / "observatory_aggregation_window").write_text("20s")
    with pytest.raises(ConfigError, match="allowed_lateness: must be shorter than window"):
        pconfig.load(path, shared, {})


def test_a_changed_config_file_is_noticed_once_and_a_broken_one_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "processor.json"
    path.write_text(json.dumps(RULE))
    watcher = pconfig.Watcher(path, None, pconfig.load(path, None, {}))
    assert watcher.poll() is None
    path.write_text(json.dumps({**RULE, "max_series": 5}))
    changed = watcher.poll()
    assert changed is not None
    assert changed.effective.processor.max_series == 5
    assert watcher.poll() is None
    path.write_text("{")
    assert watcher.poll() is None
    assert watcher.last_error is not None
    assert watcher.current.effective.processor.max_series == 5


def _columns(floats: list[float]) -> dict[str, Any]:
    n = len(floats)
    return {
        "name": ["m"] * n,
        "count": [1] * n,
        "sum": pack_floats(floats),
        "min": pack_floats(floats),
        "max": pack_floats(floats),
        "last": pack_floats(floats),
        "last_timestamp": pack_floats([0.0] * n),
        "values": pack_floats(floats),
    }


@given(st.lists(st.floats(width=64), min_size=1, max_size=40))
def test_packed_columns_refuse_exactly_the_non_finite_floats(floats: list[float]) -> None:
    if all(math.isfinite(x) for x in floats):
        columns = SeriesColumns.model_validate(_columns(floats))
        assert list(unpack_floats(columns.values)) == floats
    else:
        with pytest.raises(ValidationError, match="not a finite number"):
            SeriesColumns.model_validate(_columns(floats))


def test_packed_columns_round_trip_exactly_through_json() -> None:
    floats = [0.1, -0.0, 5e-324, 1.7976931348623157e308, 123456.789012345678]
    columns = SeriesColumns.model_validate(_columns(floats))
    again = SeriesColumns.model_validate_json(columns.model_dump_json())
    assert list(unpack_floats(again.sum)) == floats
    assert [x.hex() for x in unpack_floats(again.values)] == [x.hex() for x in floats]


README = (Path(__file__).resolve().parents[3] / "README.md").read_text()


def test_readme_documents_the_processors_health_fields_and_status() -> None:
    from observatory_agent.processor.service import HEALTH_FIELDS

    health = next(line for line in README.splitlines() if line.startswith("| `observatory.processor` |"))
    assert all(f"`{name}`" in health for name in HEALTH_FIELDS)
    status = next(line for line in README.splitlines() if line.startswith("| `GET /status` |"))
    for key in ("instance", "ready", "watermark", "open_windows", "last_window", "partials", "windows_written",
                "dropped_series", "dropped_groups", "buffered_points", "errors"):  # fmt: skip
        assert f"`{key}`" in status
    assert "## Past one processor" in README
