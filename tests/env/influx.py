"""A real InfluxDB 2.7 (influxd built from source) on a loopback port, set up through /api/v2/setup.

``stop()`` and ``start()`` keep the port and the data, so tests can simulate an outage and
a recovery of the same database.
"""

from __future__ import annotations

import json
import secrets
import shutil
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

from tests.env import build
from tests.env.procs import Process, free_port, wait_for


class InfluxDB:
    """One influxd with one org, bucket and all-access operator token."""

    def __init__(
        self,
        root: Path | None = None,
        logs_dir: Path | None = None,
        *,
        port: int | None = None,
        host: str = "127.0.0.1",
        org: str = "happy",
        bucket: str = "observatory",
        username: str = "admin",
        password: str | None = None,
        token: str | None = None,
    ) -> None:
        self._own_root = root is None
        self.root = Path(tempfile.mkdtemp(prefix="happy-observatory-influx-")) if root is None else root
        self.logs_dir = logs_dir or self.root / "logs"
        self.host = host
        self.port = port or free_port(host)
        self.url = f"http://{host}:{self.port}"
        self.org = org
        self.bucket = bucket
        self.username = username
        self.password = password or secrets.token_hex(12)
        self.token = token or secrets.token_hex(24)
        self.process: Process | None = None
        self.startup_seconds = 0.0
        self._launched = 0.0

    def start(self, timeout: float = 60.0) -> None:
        """Start influxd (again, on the same port and data) and set it up on first start."""
        self.launch()
        self.wait_ready(timeout)

    def launch(self) -> None:
        """Spawn influxd without waiting, so a caller can start other things meanwhile."""
        self._launched = time.monotonic()
        build.ensure(["influxdb"])
        data = self.root / "data"
        data.mkdir(parents=True, exist_ok=True)
        self.process = Process(
            "influxd",
            [
                build.binary("influxdb", "influxd"),
                f"--http-bind-address={self.host}:{self.port}",
                f"--bolt-path={data / 'influxd.bolt'}",
                f"--engine-path={data / 'engine'}",
                f"--sqlite-path={data / 'influxd.sqlite'}",
                "--reporting-disabled",
                "--log-level=info",
            ],
            log=self.logs_dir / "influxd.log",
            # influxd reads config.{toml,yaml,json} from its working directory: give it an empty one.
            cwd=data,
        )
        self.process.start()

    def wait_ready(self, timeout: float = 60.0) -> None:
        """Wait for /health, then run the initial setup if the database has none yet."""
        assert self.process is not None, "launch() first"
        try:
            wait_for(self._healthy, timeout=timeout, what=f"influxd /health (log: {self.process.log})")
            if self.call("GET", "/api/v2/setup").get("allowed"):
                self.call(
                    "POST",
                    "/api/v2/setup",
                    {
                        "username": self.username,
                        "password": self.password,
                        "org": self.org,
                        "bucket": self.bucket,
                        "token": self.token,
                    },
                )
        except BaseException:
            self.stop()
            raise
        self.startup_seconds = time.monotonic() - self._launched

    def _healthy(self) -> bool:
        if self.process is not None and not self.process.alive():
            raise RuntimeError(f"influxd exited with {self.process.returncode()}:\n{self.process.tail()}")
        return self.call("GET", "/health").get("status") == "pass"

    def call(self, method: str, path: str, body: dict[str, Any] | None = None) -> dict[str, Any]:
        req = urllib.request.Request(
            self.url + path,
            method=method,
            data=json.dumps(body).encode() if body is not None else None,
            headers={"Content-Type": "application/json", "Authorization": f"Token {self.token}"},
        )
        try:
            with urllib.request.urlopen(req, timeout=5) as resp:
                raw = resp.read()
        except urllib.error.HTTPError as exc:
            raise RuntimeError(f"{method} {path}: {exc.code} {exc.read().decode(errors='replace')}") from exc
        return dict(json.loads(raw)) if raw else {}

    def stop(self) -> None:
        if self.process is not None:
            self.process.stop(grace=10.0)
            self.process = None

    def running(self) -> bool:
        return self.process is not None and self.process.alive()

    def close(self) -> None:
        """Stop and, if the data dir was ours, remove it."""
        self.stop()
        if self._own_root:
            shutil.rmtree(self.root, ignore_errors=True)

    def client(self) -> Any:
        """An ``influxdb_client.InfluxDBClient`` for this database (the caller closes it)."""
        from influxdb_client.client.influxdb_client import InfluxDBClient

        return InfluxDBClient(url=self.url, token=self.token, org=self.org)

    def __enter__(self) -> InfluxDB:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


# --- what a given token may do (the agents' write-only token) -----------------------------------


def request_as(
    influx: InfluxDB, token: str, method: str, path: str, body: bytes | None = None, content: str = "application/json"
) -> tuple[int, bytes]:
    """One API request with ``token`` instead of the admin's: (HTTP status, body), refusals included."""
    req = urllib.request.Request(
        influx.url + path,
        method=method,
        data=body,
        headers={"Authorization": f"Token {token}", "Content-Type": content, "Accept": "application/json"},
    )
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:
            return int(resp.status), resp.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def write_as(influx: InfluxDB, token: str, bucket: str, line: str) -> int:
    """Write one line-protocol line (seconds) to ``bucket`` with ``token``: the HTTP status (204 written)."""
    query = urllib.parse.urlencode({"org": influx.org, "bucket": bucket, "precision": "s"})
    return request_as(influx, token, "POST", f"/api/v2/write?{query}", line.encode(), "text/plain")[0]


def query_as(influx: InfluxDB, token: str, bucket: str) -> tuple[int, bytes]:
    """A Flux query of ``bucket``'s last hour with ``token``: (HTTP status, body)."""
    flux = f"from(bucket: {json.dumps(bucket)}) |> range(start: -1h) |> limit(n: 1)"
    body = json.dumps({"query": flux, "type": "flux"}).encode()
    return request_as(influx, token, "POST", "/api/v2/query?" + urllib.parse.urlencode({"org": influx.org}), body)
