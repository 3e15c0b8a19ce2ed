"""Aggregation throughput on one core, against the old service's pandas approach on identical input.

The old service buffered ``MetricEvent`` objects and, per window, built a DataFrame from their
dicts, grouped by name and tags and asked pandas for each statistic. Both sides here start
from the same list of ``MetricEvent`` samples and must produce identical aggregates (below
the exact threshold, so both are exact).

Two shapes: the agent's real one (interval 10s, window 1m: six samples per series per window,
many windows) and a stress shape (one window, 500 samples per series) where pandas'
per-window overhead is amortised best.

Each side is timed up to its natural output (ours: the ``AggregatedMetric`` objects the agent
hands its writer; pandas: a row of statistics per group); putting ours into the pandas side's
shape for the comparison is not timed.
"""

from __future__ import annotations

import gc
import random
import time
from collections.abc import Callable
from typing import Any

import pandas as pd
import pytest

from observatory_agent.aggregation.windows import WindowAggregator
from observatory_agent.contract import AggregatedMetric, MetricEvent, quantile_key
from tests.bench.conftest import Report

WINDOW = 60.0
QUANTILES = (50.0, 95.0, 99.0)
T0 = 1_800_000_000.0
Key = tuple[str, tuple[tuple[str, str], ...], float]


def _input(series: int, windows: int, per_window: int) -> list[list[MetricEvent]]:
    """Samples grouped by window, in arrival order."""
    rng = random.Random(42)
    names = [
        (f"system.metric.{i % 40}", {"core": str(i // 40), "host": "node-1", "node": "node-1"}) for i in range(series)
    ]
    out = []
    for w in range(windows):
        batch = []
        for j in range(per_window):
            ts = T0 + w * WINDOW + j * (WINDOW / per_window)
            batch += [MetricEvent(name=n, tags=t, value=rng.lognormvariate(3.0, 1.0), timestamp=ts) for n, t in names]
        out.append(batch)
    return out


QUANTILE_KEYS = tuple(quantile_key(q) for q in QUANTILES)


def _row(m: Any) -> tuple[float, ...]:
    quantiles = m.quantiles
    return (m.count, m.sum, m.mean, m.min, m.max, *[quantiles[k] for k in QUANTILE_KEYS])


def _ours(windows: list[list[MetricEvent]], threshold: int) -> list[AggregatedMetric]:
    """What the agent hands its writer: every window's ``AggregatedMetric`` objects, as they close."""
    agg = WindowAggregator(WINDOW, exact_threshold=threshold)
    add = agg.add_event
    out: list[AggregatedMetric] = []
    for w, batch in enumerate(windows):
        for event in batch:
            add(event)
        for closed in agg.close(T0 + (w + 1) * WINDOW):
            out.extend(closed.aggregates(QUANTILES))
    return out


def _keyed(metrics: list[AggregatedMetric]) -> dict[Key, tuple[float, ...]]:
    """Our aggregates in the pandas side's shape, for the comparison (outside the timing)."""
    return {(m.name, tuple(sorted(m.tags.items())), m.timestamp): _row(m) for m in metrics}


def _pandas(windows: list[list[MetricEvent]]) -> dict[Key, tuple[float, ...]]:
    # The old MetricAggregator.aggregate(), once per window. Tags become a sorted tuple because
    # a dict column cannot be grouped on (the old code would have raised there).
    out: dict[Key, tuple[float, ...]] = {}
    for w, batch in enumerate(windows):
        rows = [m.model_dump() for m in batch]
        for row in rows:
            row["tags"] = tuple(sorted(row["tags"].items()))
        df = pd.DataFrame(rows)
        end = T0 + (w + 1) * WINDOW
        for (name, tags), group in df.groupby(["name", "tags"], sort=False):
            values = group["value"]
            out[(name, tags, end)] = (
                len(group),
                values.sum(),
                values.mean(),
                values.min(),
                values.max(),
                *(values.quantile(q / 100) for q in QUANTILES),
            )
    return out


def _cpu(fn: Callable[[], Any], repeat: int) -> tuple[float, Any]:
    best, result = float("inf"), None
    for _ in range(repeat):
        result = None
        # The input (and the previous result) are long-lived: freeze them so the collector's
        # full passes during timing walk only what the measured code allocates.
        gc.collect()
        gc.freeze()
        try:
            start = time.process_time()
            result = fn()
            best = min(best, time.process_time() - start)
        finally:
            gc.unfreeze()
    return best, result


@pytest.mark.parametrize(
    ("label", "series", "windows", "per_window", "min_ratio"),
    [
        # The 20× is against the old approach on the agent's workload: a DataFrame per window.
        ("agent shape: 1k series, 10s/1m, 30 windows", 1_000, 30, 6, 20.0),
        # Shown for honesty, not as a target: one huge window is where pandas amortises its cost best.
        ("stress shape: 2k series × 500 in one window", 2_000, 1, 500, None),
    ],
)
def test_aggregation_throughput_vs_pandas(
    report: Report, label: str, series: int, windows: int, per_window: int, min_ratio: float | None
) -> None:
    data = _input(series, windows, per_window)
    n = sum(len(b) for b in data)
    ours_s, metrics = _cpu(lambda: _ours(data, threshold=max(per_window, 1024)), repeat=3)
    pandas_s, theirs = _cpu(lambda: _pandas(data), repeat=1)
    ours = _keyed(metrics)
    assert len(ours) == len(metrics), "one aggregate per series and window"
    assert ours.keys() == theirs.keys()
    for key, values in ours.items():
        assert values == pytest.approx(theirs[key], rel=1e-9), key
    rate, ratio = n / ours_s, pandas_s / ours_s
    report.add(
        f"aggregation, {label}",
        ours=f"{rate / 1e3:,.0f}k samples/s",
        peer=f"pandas per window {n / pandas_s / 1e3:,.0f}k/s",
        ratio=f"{ratio:.1f}×",
        target="≥ 500k/s; ≥ 20×" if min_ratio else "≥ 500k/s (ratio shown, no target)",
        met=rate >= 500_000 and (min_ratio is None or ratio >= min_ratio),
    )
