"""A real ``observatory-processor run`` process and real ``observatory-agent run`` processes feeding it.

Each test gets its own id: the agents carry it as the ``itest`` tag, the rule matches on it and
writes its own output measurement, so tests sharing the session's InfluxDB read only their own
points. Every agent scrapes its own endpoint of a small exposition server that answers each
scrape with a fresh random value, so nodes and samples differ (one host's /proc would not).
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import random
import secrets
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from tests.env.influx import InfluxDB
from tests.env.nodesim import VENV_BIN
from tests.env.procs import Process, free_port, wait_for
from tests.integration.agent.conftest import AgentProcess, flux_string, influx_restored, query

__all__ = ["influx_restored"]  # the agent tests' fixture: InfluxDB running again after a test stops it

AGENT_WINDOW = 2.0
RULE_WINDOW = 4.0
"""Two agent windows fold into each rule window."""
METRIC = "app.itest_latency_seconds"


class Exposition:
    """``GET /<node>`` answers ``itest_latency_seconds <random>``: a new value at every scrape."""

    def __init__(self) -> None:
        rng = random.Random(11)
        lock = threading.Lock()

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                with lock:
                    value = rng.lognormvariate(2.0, 0.8)
                body = f"# TYPE itest_latency_seconds gauge\nitest_latency_seconds {value!r}\n".encode()
                self.send_response(200)
                self.send_header("Content-Type", "text/plain; version=0.0.4")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.httpd.server_address[1]
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def url(self, node: str) -> str:
        return f"http://127.0.0.1:{self.port}/{node}"

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@dataclass
class ProcessorProcess(AgentProcess):
    """One processor: the agent's process handling (HTTP reads, stop, SIGKILL), its own config and command."""

    rule: str = ""
    spec: dict[str, Any] = field(default_factory=dict)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def log(self) -> Path:
        return self.directory / "processor.log"

    def write_config(self) -> Path:
        token = self.directory / "influx-token"
        token.write_text(self.influx.token)
        config = {
            "rule": self.rule,
            "namespace": "itest",
            "window": f"{RULE_WINDOW:g}s",
            "allowed_lateness": "1s",
            "cluster": "bed",
            "port": self.port,
            "buffer_dir": str(self.directory / "buffer"),
            "influxdb": {
                "url": self.influx.url,
                "org": self.influx.org,
                "bucket": self.influx.bucket,
                "token_file": str(token),
            },
            **self.spec,
        }
        path = self.directory / "processor.json"
        path.write_text(json.dumps(config))
        return path

    def start(self, *, ready: bool = True) -> None:
        """Start the process; wait for /readyz unless ``ready`` is False (InfluxDB is away)."""
        env = {k: v for k, v in os.environ.items() if not k.startswith(("OTEL_", "OBSERVATORY_", "INFLUXDB_"))}
        env["PYTHONUNBUFFERED"] = "1"
        self.directory.mkdir(parents=True, exist_ok=True)
        self.process = Process(
            f"processor-{self.rule}",
            [VENV_BIN / "observatory-processor", "run", "--config", self.write_config()],
            log=self.log,
            env=env,
        )
        self.process.start()
        if ready:
            wait_for(self.ready, timeout=30, what=f"processor /readyz (log: {self.log})")
        else:
            wait_for(self.status, timeout=30, what=f"processor /status (log: {self.log})")

    def ready(self) -> bool:
        return self._ready()


class RollupAgent(AgentProcess):
    """An agent scraping its own exposition endpoint and feeding the test's processors."""

    targets: list[dict[str, Any]]
    exposition_url: str

    def write_config(self) -> Path:
        path = super().write_config()
        config = json.loads(path.read_text())
        config["collectors"] = [{"name": "app", "kind": "application", "targets": [self.exposition_url]}]
        config["processors"] = self.targets
        path.write_text(json.dumps(config))
        return path


@dataclass
class Bed:
    """The test's id, exposition server, processors and agents."""

    influx: InfluxDB
    root: Path
    exposition: Exposition
    id: str = field(default_factory=lambda: secrets.token_hex(4))
    processors: list[ProcessorProcess] = field(default_factory=list)
    agents: list[RollupAgent] = field(default_factory=list)

    def processor(self, name: str, **spec: Any) -> ProcessorProcess:
        rule = f"{name}-{self.id}"
        spec = {
            "metrics": ["app.itest_*"],
            "match_tags": {"itest": self.id},
            "group_by": ["zone"],
            "functions": ["count", "sum", "mean", "min", "max", "last", "p50", "p95", "p99"],
            "output": {"measurement": f"itest.rollup.{rule}"},
            **spec,
        }
        processor = ProcessorProcess(self.root / rule, rule, self.id, free_port(), self.influx, rule=rule, spec=spec)
        self.processors.append(processor)
        return processor

    def agent(self, name: str, zone: str, feeds: list[ProcessorProcess]) -> RollupAgent:
        run = secrets.token_hex(4)
        directory = self.root / f"agent-{name}"
        directory.mkdir(parents=True, exist_ok=True)
        node = f"itest-{name}-{run}"
        agent = RollupAgent(directory, node, run, free_port(), self.influx, {"itest": self.id, "zone": zone})
        agent.exposition_url = self.exposition.url(node)
        agent.targets = [
            {
                "rule": p.rule,
                "url": p.url,
                "metrics": p.spec["metrics"],
                "match_tags": p.spec["match_tags"],
                "group_by": p.spec["group_by"],
                "window": f"{RULE_WINDOW:g}s",
            }
            for p in feeds
        ]
        self.agents.append(agent)
        return agent

    # --- reading InfluxDB -------------------------------------------------------------------

    def rollups(self, processor: ProcessorProcess, start: float, stop: float) -> list[dict[str, Any]]:
        """Every output point of the processor, as a dict of tags and fields, oldest first."""
        flux = f"""
from(bucket: {flux_string(self.influx.bucket)})
  |> range(start: {int(start) - 60}, stop: {int(stop) + 60})
  |> filter(fn: (r) => r._measurement == {flux_string(processor.spec["output"]["measurement"])})
  |> pivot(rowKey: ["_time"], columnKey: ["_field"], valueColumn: "_value")
  |> group()
  |> sort(columns: ["_time"])
"""
        return query(self.influx, flux)

    def node_points(self, start: float, stop: float) -> list[dict[str, Any]]:
        """The agents' own node-level points of the metric, one per node and agent window."""
        flux = f"""
from(bucket: {flux_string(self.influx.bucket)})
  |> range(start: {int(start) - 60}, stop: {int(stop) + 60})
  |> filter(fn: (r) => r._measurement == {flux_string(METRIC)} and r.itest == {flux_string(self.id)})
  |> pivot(rowKey: ["_time"], columnKey: ["_field"], valueColumn: "_value")
  |> group()
"""
        return query(self.influx, flux)

    def health(self, processor: ProcessorProcess, start: float, stop: float) -> list[dict[str, Any]]:
        flux = f"""
from(bucket: {flux_string(self.influx.bucket)})
  |> range(start: {int(start) - 60}, stop: {int(stop) + 60})
  |> filter(fn: (r) => r._measurement == "observatory.processor" and r.rule == {flux_string(processor.rule)})
  |> pivot(rowKey: ["_time"], columnKey: ["_field"], valueColumn: "_value")
  |> group()
  |> sort(columns: ["_time"])
"""
        return query(self.influx, flux)


@pytest.fixture
def bed(influxdb: InfluxDB, tmp_path: Path) -> Iterator[Bed]:
    exposition = Exposition()
    state = Bed(influxdb, tmp_path, exposition)
    try:
        yield state
    finally:
        for agent in state.agents:
            with contextlib.suppress(Exception):
                agent.stop()
        for processor in state.processors:
            with contextlib.suppress(Exception):
                processor.stop()
        exposition.close()


# --- the independent computation --------------------------------------------------------


def rule_window_end(agent_window_end: float) -> float:
    return math.ceil(agent_window_end / RULE_WINDOW - 1e-9) * RULE_WINDOW


def samples_of(point: dict[str, Any]) -> list[float]:
    """A node-level point's raw samples: at two or three samples per window, min, max and sum give them all."""
    count = int(point["count"])
    assert 1 <= count <= 3, point
    if count == 1:
        return [point["min"]]
    if count == 2:
        return [point["min"], point["max"]]
    return [point["min"], point["sum"] - point["min"] - point["max"], point["max"]]


@dataclass
class Expected:
    """One rule window of one zone, computed from the agents' node-level points alone."""

    counts: list[int] = field(default_factory=list)
    sums: list[float] = field(default_factory=list)
    mins: list[float] = field(default_factory=list)
    maxes: list[float] = field(default_factory=list)
    samples: list[float] = field(default_factory=list)
    nodes: set[str] = field(default_factory=set)

    @property
    def count(self) -> int:
        return sum(self.counts)

    def quantile(self, q: float, method: str = "linear") -> float:
        return float(np.percentile(np.array(self.samples), q, method=method))  # type: ignore[call-overload]


def expected_windows(points: list[dict[str, Any]]) -> dict[tuple[float, str], Expected]:
    """(rule window end, zone) → what its roll-up must say."""
    out: dict[tuple[float, str], Expected] = {}
    for p in points:
        key = (rule_window_end(p["_time"].timestamp()), p["zone"])
        e = out.setdefault(key, Expected())
        e.counts.append(int(p["count"]))
        e.sums.append(p["sum"])
        e.mins.append(p["min"])
        e.maxes.append(p["max"])
        e.samples.extend(samples_of(p))
        e.nodes.add(p["node"])
    return out


def assert_rollup_matches(rollup: dict[str, Any], want: Expected, *, exact: bool) -> None:
    """The roll-up against the independent computation: Σ counts, Σ sums, pooled mean, min of mins, ..."""
    where = f"window {rollup['_time']} zone {rollup.get('zone')}"
    assert rollup["count"] == want.count, where
    assert rollup["sum"] == pytest.approx(math.fsum(want.sums), rel=1e-12), where
    assert rollup["mean"] == pytest.approx(math.fsum(want.sums) / want.count, rel=1e-12), where
    assert rollup["min"] == min(want.mins), where
    assert rollup["max"] == max(want.maxes), where
    assert rollup["nodes"] == len(want.nodes), where
    assert rollup["last"] in want.samples, where
    if exact:
        assert rollup["quantile_method"] == "exact", where
        for q in (50, 95, 99):
            assert rollup[f"p{q}"] == pytest.approx(want.quantile(q), rel=1e-12), (where, q)
    else:
        assert rollup["quantile_method"] == "sketch", where
        for q in (50, 95, 99):
            assert rollup[f"p{q}"] == pytest.approx(want.quantile(q, "lower"), rel=0.01), (where, q)


def sleep_until(t: float) -> None:
    time.sleep(max(0.0, t - time.time()))


def next_boundary(after: float, window: float = RULE_WINDOW) -> float:
    return math.floor(after / window) * window + window


def wait_written(processor: ProcessorProcess, through: float, timeout: float = 60.0) -> dict[str, Any]:
    """Until the processor's watermark (InfluxDB acknowledged) reaches ``through``."""

    def done() -> dict[str, Any] | None:
        status = processor.status()
        mark = status["watermark"]
        return status if mark is not None and mark >= through else None

    result: dict[str, Any] = wait_for(done, timeout=timeout, what=f"{processor.rule} to write through {through}")
    return result
