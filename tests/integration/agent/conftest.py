"""A real ``observatory-agent run`` process pointed at the bed's InfluxDB, and Flux helpers.

Every agent gets its own ``NODE_NAME`` and ``run`` tag, so tests sharing the session's
InfluxDB (and bucket) only ever read their own points.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import signal
import time
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from tests.env.influx import InfluxDB
from tests.env.nodesim import VENV_BIN
from tests.env.procs import Process, free_port, wait_for

INTERVAL = 1.0
WINDOW = 2.0
COLLECTORS = ("uptime", "load", "memory")
"""Cheap collectors that always yield a sample per cycle (cpu's first cycle is empty)."""


@dataclass
class AgentProcess:
    """One agent: its config, buffer directory, HTTP port and log."""

    directory: Path
    node: str
    run: str
    port: int
    influx: InfluxDB
    tags: dict[str, str] = field(default_factory=dict)
    collectors: tuple[str, ...] = COLLECTORS
    env: dict[str, str] = field(default_factory=dict)
    """Extra environment, e.g. shared-config keys (``CLUSTER_NAME``)."""
    influx_url: str | None = None
    """InfluxDB URL the agent uses, when not the bed's own (a fault proxy in front of it)."""
    bucket: str | None = None
    token: str | None = None
    """The token written to the agent's token file at start (default: the bed's)."""
    extra: dict[str, Any] = field(default_factory=dict)
    process: Process | None = None
    started_at: float = 0.0

    @property
    def buffer_dir(self) -> Path:
        return self.directory / "buffer"

    @property
    def log(self) -> Path:
        return self.directory / "agent.log"

    @property
    def token_file(self) -> Path:
        return self.directory / "influx-token"

    def rotate_token(self, token: str) -> None:
        """Replace the token file as the kubelet updates a mounted Secret: a new file, renamed over."""
        fresh = self.directory / "influx-token.new"
        fresh.write_text(token)
        fresh.chmod(0o600)
        fresh.replace(self.token_file)

    def write_config(self) -> Path:
        token = self.token_file
        if not token.exists():
            token.write_text(self.token if self.token is not None else self.influx.token)
            token.chmod(0o600)
        config = {
            "interval": f"{INTERVAL:g}s",
            "window": f"{WINDOW:g}s",
            "collectors": [{"name": c, "kind": c} for c in self.collectors],
            "tags": {"run": self.run, **self.tags},
            "influxdb": {
                "url": self.influx_url or self.influx.url,
                "org": self.influx.org,
                "bucket": self.bucket or self.influx.bucket,
                "token_file": str(token),
            },
            "buffer_dir": str(self.buffer_dir),
            "port": self.port,
            **self.extra,
        }
        path = self.directory / "agent.json"
        path.write_text(json.dumps(config))
        return path

    def start(self) -> None:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("OTEL_", "OBSERVATORY_", "INFLUXDB_"))}
        env.update({"NODE_NAME": self.node, "PYTHONUNBUFFERED": "1", **self.env})
        self.process = Process(
            f"agent-{self.node}",
            [VENV_BIN / "observatory-agent", "run", "--config", self.write_config()],
            log=self.log,
            env=env,
        )
        self.started_at = time.time()
        self.process.start()
        wait_for(self._ready, timeout=30, what=f"agent /readyz (log: {self.log})")

    def _ready(self) -> bool:
        if self.process is not None and not self.process.alive():
            raise RuntimeError(f"agent exited with {self.process.returncode()}:\n{self.process.tail()}")
        with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/readyz", timeout=2) as resp:
            return bool(resp.status == 200)

    def get(self, path: str) -> bytes:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.port}{path}", timeout=5) as resp:
            body: bytes = resp.read()
            return body

    def status(self) -> dict[str, Any]:
        data: dict[str, Any] = json.loads(self.get("/status"))
        return data

    def metric(self, name: str, default: float | None = None) -> float:
        """A sample of ``/metrics`` by its exact name with labels (``x_total{kind="config"}``)."""
        for line in self.get("/metrics").decode().splitlines():
            if line.startswith(name + " "):
                return float(line.split()[-1])
        if default is not None:
            return default
        raise KeyError(name)

    def log_text(self) -> str:
        return self.log.read_text() if self.log.exists() else ""

    def stop(self) -> int | None:
        """SIGTERM: the agent closes its window early, flushes and exits."""
        if self.process is None:
            return None
        code = self.process.stop(grace=15.0)
        self.process = None
        return code

    def kill(self) -> None:
        """SIGKILL, as the OOM killer or a node failure would."""
        assert self.process is not None
        assert self.process.popen is not None
        os.kill(self.process.popen.pid, signal.SIGKILL)
        self.process.popen.wait(timeout=10)
        self.process.stop(grace=0)  # reaps anything left in its group
        self.process = None


@pytest.fixture
def make_agent(influxdb: InfluxDB, tmp_path: Path) -> Iterator[Callable[..., AgentProcess]]:
    agents: list[AgentProcess] = []

    def make(name: str = "agent", tags: dict[str, str] | None = None, **options: Any) -> AgentProcess:
        run = secrets.token_hex(4)
        directory = tmp_path / name
        directory.mkdir(exist_ok=True)
        agent = AgentProcess(directory, f"itest-{name}-{run}", run, free_port(), influxdb, tags or {}, **options)
        agents.append(agent)
        return agent

    yield make
    for agent in agents:
        with contextlib.suppress(Exception):
            agent.stop()


@pytest.fixture
def influx_restored(influxdb: InfluxDB) -> Iterator[InfluxDB]:
    """The session's InfluxDB, which a test may stop: it is running again afterwards, whatever happens."""
    try:
        yield influxdb
    finally:
        if not influxdb.running():
            influxdb.start()


def flux_string(value: str) -> str:
    """A Flux string literal."""
    return json.dumps(value)


def query(influx: InfluxDB, flux: str) -> list[dict[str, Any]]:
    """Every record of a Flux query's tables, as plain dicts."""
    client = influx.client()
    try:
        tables = client.query_api().query(flux, org=influx.org)
        return [dict(record.values) for table in tables for record in table.records]
    finally:
        client.close()


def window_times(
    influx: InfluxDB, *, run: str, measurement: str, start: float, stop: float, bucket: str | None = None
) -> list[float]:
    """Window ends (Unix seconds) of one agent's points of ``measurement``, in order, one per point."""
    flux = f"""
from(bucket: {flux_string(bucket or influx.bucket)})
  |> range(start: {int(start) - 60}, stop: {int(stop) + 60})
  |> filter(fn: (r) => r._measurement == {flux_string(measurement)} and r.run == {flux_string(run)})
  |> filter(fn: (r) => r._field == "count")
  |> group()
  |> sort(columns: ["_time"])
"""
    return [r["_time"].timestamp() for r in query(influx, flux)]
