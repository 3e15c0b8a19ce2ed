"""Config precedence, reloads on the kubelet's ..data swap, and keeping the last good config."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from observatory_agent import config
from observatory_agent.contract import ConfigError


def _configmap(directory: Path, version: str, data: dict[str, str]) -> None:
    """Lay files out the way the kubelet does: key -> ..data/key, ..data -> ..<version>."""
    directory.mkdir(exist_ok=True)
    real = directory / f"..{version}"
    real.mkdir()
    for key, value in data.items():
        (real / key).write_text(value)
    tmp_link = directory / "..data_tmp"
    tmp_link.symlink_to(real.name)
    tmp_link.rename(directory / "..data")  # atomic swap, as the kubelet does
    for key in data:
        link = directory / key
        if not link.is_symlink():
            link.symlink_to(f"..data/{key}")


def _agent_file(path: Path, **fields: object) -> Path:
    path.write_text(json.dumps(fields))
    return path


def test_cr_spec_beats_shared_config_beats_defaults(tmp_path: Path) -> None:
    shared = tmp_path / "shared"
    _configmap(
        shared,
        "v1",
        {
            "observatory_collection_interval": "5s",
            "observatory_aggregation_window": "30s",
            "influxdb_url": "http://influx:8086",
            "cluster_name": "prod-eu",
            "tags": "team=sre,env=prod",
        },
    )
    agent = _agent_file(tmp_path / "agent.json", window="1m", tags={"env": "staging"})
    loaded = config.load(agent, shared, environ={})
    eff = loaded.effective
    assert eff.window == 60.0  # CR spec
    assert eff.interval == 5.0  # shared-config
    assert eff.cluster == "prod-eu"
    assert eff.tags == {"team": "sre", "env": "staging"}
    assert eff.influxdb_url == "http://influx:8086"
    assert eff.agent.exact_quantile_threshold == 1024  # built-in default


def test_environment_overrides_the_shared_config_directory(tmp_path: Path) -> None:
    shared = tmp_path / "shared"
    _configmap(shared, "v1", {"cluster_name": "from-dir"})
    loaded = config.load(None, shared, environ={"CLUSTER_NAME": "from-env"})
    assert loaded.effective.cluster == "from-env"


def test_defaults_without_any_source() -> None:
    eff = config.load(None, None, environ={}).effective
    assert (eff.interval, eff.window, eff.cluster) == (10.0, 60.0, "default")


def test_invalid_agent_file_names_the_file_and_the_field(tmp_path: Path) -> None:
    agent = _agent_file(tmp_path / "agent.json", quantiles=[50, 100])
    with pytest.raises(ConfigError, match=r"agent\.json: quantiles"):
        config.load(agent, None, environ={})


def test_kubelet_data_swap_is_picked_up_without_restart(tmp_path: Path) -> None:
    shared = tmp_path / "shared"
    _configmap(shared, "v1", {"observatory_collection_interval": "10s"})
    watcher = config.ConfigWatcher(None, shared, environ={})
    first = watcher.start()
    assert first.effective.interval == 10.0
    assert watcher.poll() is None  # nothing changed
    _configmap(shared, "v2", {"observatory_collection_interval": "20s", "observatory_aggregation_window": "1m"})
    reloaded = watcher.poll()
    assert reloaded is not None
    assert reloaded.effective.interval == 20.0
    assert reloaded.hash != first.hash
    assert watcher.reloads == {"success": 1, "failure": 0}


def test_invalid_new_config_keeps_the_last_good_one_and_counts(tmp_path: Path) -> None:
    agent = _agent_file(tmp_path / "agent.json", interval="10s", window="1m")
    watcher = config.ConfigWatcher(agent, None, environ={})
    good = watcher.start()
    _agent_file(tmp_path / "agent.json", interval="7s", window="1m")  # not a multiple
    os.utime(agent, ns=(1, 1))  # make sure the fingerprint moves even on coarse mtimes
    assert watcher.poll() is None
    assert watcher.current == good
    assert watcher.reloads["failure"] == 1
    assert watcher.last_error is not None
    assert "multiple" in watcher.last_error


def test_first_config_invalid_runs_on_defaults_and_is_not_valid(tmp_path: Path) -> None:
    agent = tmp_path / "agent.json"
    agent.write_text("{not json")
    watcher = config.ConfigWatcher(agent, None, environ={})
    loaded = watcher.start()
    assert not watcher.valid
    assert loaded.effective.window == 60.0
    _agent_file(agent, window="2m")
    os.utime(agent, ns=(2, 2))
    fixed = watcher.poll()
    assert fixed is not None
    assert watcher.valid
    assert fixed.effective.window == 120.0
