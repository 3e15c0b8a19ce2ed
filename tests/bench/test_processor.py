"""One ``observatory-processor`` process taking 1,000 agents × 500 series over HTTP at a 10 s window.

Each agent's partial is built the way agents build it (a ``WindowAggregator`` window of 500
series × 10 samples — a 1 s interval — through ``partials.build``), then re-stamped for each real
window and POSTed by a load generator in this process, as 1,000 agents would after each window
close. The processor is the installed one (``uv sync --no-dev``) writing to the bed's influxd.
Measured on the processor's process: CPU seconds per window (``/proc/<pid>/stat``, over
``MEASURED`` windows after ``WARMUP``), peak RSS, and each group's merged p99 against numpy's
exact p99 of the same raw samples (10,000 per group: past the exact threshold, so sketched).

Peer: the old service's approach on identical input — parse every agent's body, concatenate
the raw samples into one pandas DataFrame, group, aggregate, quantile — timed in this process
per window. Its count, sum, mean, min and max must equal ours (those are exact on both sides).
"""

from __future__ import annotations

import base64
import concurrent.futures
import http.client
import json
import math
import os
import random
import subprocess
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest

from observatory_agent.aggregation.series import tags_key
from observatory_agent.aggregation.windows import WindowAggregator
from observatory_agent.contract import ProcessorTarget, unpack_floats
from observatory_agent.sinks import partials
from tests.bench.conftest import ROOT, Report
from tests.bench.peers import cpu_seconds, rss_bytes
from tests.env.influx import InfluxDB
from tests.env.procs import free_port, wait_for

AGENTS = int(os.environ.get("BENCH_PROCESSOR_AGENTS", "1000"))
SERIES = int(os.environ.get("BENCH_PROCESSOR_SERIES", "500"))
WINDOW = 10.0
SAMPLES = 10
"""Samples per series and window: a 1 s interval."""
WARMUP = 2
MEASURED = int(os.environ.get("BENCH_PROCESSOR_WINDOWS", "5"))
SENDERS = 8
CPU_TARGET = 2.0
RSS_TARGET = 200 * 1024 * 1024
P99_TOLERANCE = 0.01
T_TEMPLATE = 1_000_000_000.0
"""Bodies are built for this window once and re-stamped for each real window (same digit count)."""


def _stamp(start: float, end: float) -> bytes:
    return f'"window_start":{start!r},"window_end":{end!r}'.encode()


TEMPLATE = _stamp(T_TEMPLATE, T_TEMPLATE + WINDOW)


def _bodies() -> tuple[list[bytes], dict[str, np.ndarray[Any, Any]]]:
    """Every agent's partial (JSON) for the template window, and each group's raw samples."""
    rng = random.Random(5)
    target = ProcessorTarget(rule="bench", url="http://p", metrics=["bench.*"], group_by=["series"])
    raw: dict[str, list[float]] = {f"s{s:03d}": [] for s in range(SERIES)}
    bodies = []
    for a in range(AGENTS):
        node = f"node-{a:04d}"
        agg = WindowAggregator(WINDOW, exact_threshold=1024)
        scale = rng.uniform(0.5, 2.0)  # nodes differ, as hosts do
        for s in range(SERIES):
            key = tags_key({"series": f"s{s:03d}", "node": node, "host": node, "cluster": "bench"})
            values = [scale * rng.lognormvariate(3.0, 1.0) for _ in range(SAMPLES)]
            raw[f"s{s:03d}"] += values
            for k, v in enumerate(values):
                agg.add("bench.latency", key, v, T_TEMPLATE + k)
        (window,) = agg.close(T_TEMPLATE + WINDOW)
        built = partials.build(window, target, node, "bench.0")
        assert built is not None
        body = built.model_dump_json().encode()
        assert TEMPLATE in body
        bodies.append(body)
    return bodies, {k: np.array(v) for k, v in raw.items()}


def _post(port: int, body: bytes) -> int:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        conn.request("POST", "/v1/partials", body=body, headers={"Content-Type": "application/json"})
        resp = conn.getresponse()
        resp.read()
        return resp.status
    finally:
        conn.close()


def _config(tmp_path: Path, influx: InfluxDB, port: int, measurement: str) -> Path:
    token = tmp_path / "token"
    token.write_text(influx.token)
    config = {
        "rule": "bench",
        "namespace": "bench",
        "metrics": ["bench.*"],
        "group_by": ["series"],
        "functions": ["count", "sum", "mean", "min", "max", "last", "p50", "p95", "p99"],
        "window": f"{WINDOW:g}s",
        "allowed_lateness": "5s",
        "output": {"measurement": measurement},
        "cluster": "bench",
        "port": port,
        "buffer_dir": str(tmp_path / "buffer"),
        "influxdb": {"url": influx.url, "org": influx.org, "bucket": influx.bucket, "token_file": str(token)},
    }
    path = tmp_path / "processor.json"
    path.write_text(json.dumps(config))
    return path


def _pandas_window(bodies: list[bytes]) -> tuple[float, pd.DataFrame]:
    """The old service's way, on the same bodies: raw samples of every agent in one DataFrame.

    Given the same head start as ours: the packed samples are decoded in C, not parsed as text.
    """
    start = time.process_time()
    groups: list[str] = []
    values: list[float] = []
    for body in bodies:
        partial = json.loads(body)
        cols = partial["series"]
        samples = unpack_floats(base64.urlsafe_b64decode(cols["values"]))
        offset = 0
        for series, count in zip(cols["tags"]["series"], cols["count"], strict=True):
            groups += [series] * count
            values += samples[offset : offset + count]
            offset += count
    frame = pd.DataFrame({"series": groups, "value": values})
    grouped = frame.groupby("series")["value"]
    result = grouped.agg(["count", "sum", "mean", "min", "max"])
    result["p99"] = grouped.quantile(0.99)
    return time.process_time() - start, result


def _rollups(influx: InfluxDB, measurement: str, ends: list[float]) -> dict[float, dict[str, dict[str, Any]]]:
    flux = f"""
from(bucket: {json.dumps(influx.bucket)})
  |> range(start: {int(min(ends)) - 60}, stop: {int(max(ends)) + 60})
  |> filter(fn: (r) => r._measurement == {json.dumps(measurement)})
  |> pivot(rowKey: ["_time"], columnKey: ["_field"], valueColumn: "_value")
  |> group()
"""
    client = influx.client()
    try:
        tables = client.query_api().query(flux, org=influx.org)
        records = [dict(r.values) for t in tables for r in t.records]
    finally:
        client.close()
    out: dict[float, dict[str, dict[str, Any]]] = {}
    for r in records:
        out.setdefault(r["_time"].timestamp(), {})[r["series"]] = r
    return out


def test_processor_thousand_agents_five_hundred_series(
    report: Report, influxdb: InfluxDB, agent_bin: Path, tmp_path: Path
) -> None:
    generated = time.monotonic()
    bodies, raw = _bodies()
    generated = time.monotonic() - generated
    port = free_port()
    measurement = f"bench.processor.{os.getpid()}.{int(time.time())}"
    processor_bin = agent_bin.parent / "observatory-processor"
    log = tmp_path / "processor.log"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OTEL_", "OBSERVATORY_", "INFLUXDB_"))}
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [str(processor_bin), "run", "--config", str(_config(tmp_path, influxdb, port, measurement))],
            stdout=out,
            stderr=subprocess.STDOUT,
            env=env,
            cwd=ROOT,
        )
    peak = [0]
    sampling = threading.Event()

    def sample_rss() -> None:
        while not sampling.wait(0.25):
            try:
                peak[0] = max(peak[0], rss_bytes(proc.pid))
            except (OSError, RuntimeError):
                return

    try:
        wait_for(lambda: _get(port, "/readyz") == 200, timeout=60, what=f"the processor to be ready (log: {log})")
        threading.Thread(target=sample_rss, daemon=True).start()
        sends: list[float] = []
        statuses: dict[int, int] = {}
        cpu_at: list[float] = []
        ends: list[float] = []
        with concurrent.futures.ThreadPoolExecutor(SENDERS) as pool:
            first = math.floor(time.time() / WINDOW) * WINDOW + WINDOW
            for w in range(WARMUP + MEASURED + 1):
                end = first + w * WINDOW
                time.sleep(max(0.0, end - time.time()))
                if w >= WARMUP:
                    cpu_at.append(cpu_seconds(proc.pid))
                if w == WARMUP + MEASURED:
                    break
                stamp = _stamp(end - WINDOW, end)
                started = time.monotonic()
                results = pool.map(lambda b, s=stamp: _post(port, b.replace(TEMPLATE, s, 1)), bodies)
                for status in results:
                    statuses[status] = statuses.get(status, 0) + 1
                sends.append(time.monotonic() - started)
                if w >= WARMUP:
                    ends.append(end)
        status = json.loads(_body(port, "/status"))
        wait_for(
            lambda: (json.loads(_body(port, "/status"))["watermark"] or 0) >= ends[-1],
            timeout=60,
            what="the last measured window written",
        )
    finally:
        sampling.set()
        proc.terminate()
        proc.wait(timeout=30)
    cpu_per_window = (cpu_at[-1] - cpu_at[0]) / MEASURED
    assert statuses == {202: AGENTS * (WARMUP + MEASURED)}, statuses

    peer_cpu, peer = _pandas_window(bodies)
    written = _rollups(influxdb, measurement, ends)
    p99_errors = []
    for end in ends:
        groups = written[end]
        assert len(groups) == SERIES
        for series, row in groups.items():
            theirs = peer.loc[series]
            assert row["count"] == theirs["count"] == AGENTS * SAMPLES
            assert row["nodes"] == AGENTS
            assert (row["min"], row["max"]) == (theirs["min"], theirs["max"])
            assert row["sum"] == pytest.approx(theirs["sum"], rel=1e-9)
            assert row["mean"] == pytest.approx(theirs["mean"], rel=1e-9)
            assert row["quantile_method"] == ("sketch" if AGENTS * SAMPLES > 1024 else "exact")
            exact = float(np.percentile(raw[series], 99))
            assert exact == pytest.approx(theirs["p99"], rel=1e-12)
            p99_errors.append(abs(row["p99"] - exact) / exact)
    worst = max(p99_errors)
    ratio = peer_cpu / cpu_per_window
    rate = AGENTS * SERIES / cpu_per_window
    met = cpu_per_window <= CPU_TARGET and peak[0] <= RSS_TARGET and worst <= P99_TOLERANCE
    results = {
        "agents": AGENTS,
        "series_per_agent": SERIES,
        "samples_per_series": SAMPLES,
        "window_seconds": WINDOW,
        "windows_measured": MEASURED,
        "cpu_seconds_per_window": round(cpu_per_window, 3),
        "series_partials_per_cpu_second": round(rate),
        "peak_rss_bytes": peak[0],
        "p99_worst_relative_error": worst,
        "pandas_cpu_seconds_per_window": round(peer_cpu, 3),
        "pandas_over_ours": round(ratio, 2),
        "send_seconds_per_window": [round(s, 2) for s in sends],
        "body_bytes": len(bodies[0]),
        "generation_seconds": round(generated, 1),
        "partials": status["partials"],
        "targets": {"cpu_seconds_per_window": CPU_TARGET, "peak_rss_bytes": RSS_TARGET, "p99": P99_TOLERANCE},
        "met": met,
    }
    out = ROOT / ".bench"
    out.mkdir(exist_ok=True)
    (out / "processor.json").write_text(json.dumps(results, indent=2) + "\n")
    print(f"\nprocessor bench: {json.dumps(results)}")
    report.add(
        f"processor: {AGENTS:,} agents × {SERIES} series over HTTP, 10 s window (CPU per window)",
        ours=f"{cpu_per_window:.2f} s ({rate / 1e3:,.0f}k series partials per CPU-second)",
        peer=f"pandas DataFrame per window {peer_cpu:.2f} s",
        ratio=f"{ratio:.1f}×",
        target=f"≤ {CPU_TARGET:g} s",
        met=cpu_per_window <= CPU_TARGET,
    )
    report.add(
        "processor: peak RSS during that run",
        ours=f"{peak[0] / 2**20:.1f} MB",
        target=f"≤ {RSS_TARGET / 2**20:.0f} MB",
        met=peak[0] <= RSS_TARGET,
    )
    report.add(
        f"processor: merged p99 vs numpy's exact p99 ({SERIES} groups × {MEASURED} windows, sketched)",
        ours=f"worst {worst * 100:.3f}%",
        peer="pandas exact p99 (count/sum/mean/min/max identical)",
        target="≤ 1%",
        met=worst <= P99_TOLERANCE,
    )
    assert cpu_per_window <= CPU_TARGET, f"CPU per window {cpu_per_window:.2f} s > {CPU_TARGET} s"
    assert peak[0] <= RSS_TARGET, f"peak RSS {peak[0] / 2**20:.1f} MB > 200 MB"
    assert worst <= P99_TOLERANCE, f"p99 off by {worst:.2%}"


def _get(port: int, path: str) -> int:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    try:
        conn.request("GET", path)
        resp = conn.getresponse()
        resp.read()
        return resp.status
    finally:
        conn.close()


def _body(port: int, path: str) -> bytes:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    try:
        conn.request("GET", path)
        return conn.getresponse().read()
    finally:
        conn.close()
