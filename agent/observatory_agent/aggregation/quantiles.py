"""Exact and DDSketch quantiles, and a DDSketch's wire form (``SketchState``).

Definitions, so agents, processors and tests agree:

- **Exact** (up to ``exact_quantile_threshold`` samples): linear interpolation between the
  closest ranks, the same as numpy's default ``method="linear"``. For sorted samples
  ``x[0..n-1]`` and ``q`` in percent, ``h = (n - 1) * q / 100`` and the result is
  ``x[floor(h)] + (h - floor(h)) * (x[floor(h) + 1] - x[floor(h)])``.
- **Sketch** (past the threshold): a ``ddsketch.DDSketch`` with relative accuracy 0.01. Its
  estimate is within 1% relative error of the lower closest-rank sample ``x[floor(h)]``
  (numpy's ``method="lower"``), clamped to the window's exact min and max.
"""

from __future__ import annotations

import functools
import math
from collections import Counter
from collections.abc import Sequence
from typing import Any, Final

from ddsketch import DDSketch

from observatory_agent.contract import SketchState

RELATIVE_ACCURACY: Final = 0.01
"""Sketch accuracy: a p99 of 100 ms is reported between 99 and 101 ms."""

_log = math.log
_ceil = math.ceil


def exact_quantiles(sorted_values: Sequence[float], keyed: tuple[tuple[str, float], ...]) -> dict[str, float]:
    """``{key: the exact quantile q}`` for each ``(key, q)`` of already sorted, non-empty samples (``q`` in
    percent; numpy's ``linear``, as the module docstring defines): a window's quantiles of one series.

    Every series with the same sample count shares where its quantiles fall (a cached plan), so
    closing a window of many short series does the rank arithmetic once, not per series.
    """
    return {key: _lerp(sorted_values, lo, t) for key, lo, t in exact_plan(len(sorted_values), keyed)}


@functools.lru_cache(maxsize=4096)
def exact_plan(n: int, keyed: tuple[tuple[str, float], ...]) -> tuple[tuple[str, int, float], ...]:
    """For ``n`` sorted samples: ``(key, lower rank, fraction)`` of each quantile; fraction -1 is "the last sample"."""
    plan = []
    for key, q in keyed:
        h = (n - 1) * q / 100.0
        lo = math.floor(h)
        plan.append((key, n - 1, -1.0) if lo >= n - 1 else (key, lo, h - lo))
    return tuple(plan)


def _lerp(sorted_values: Sequence[float], lo: int, t: float) -> float:
    a = sorted_values[lo]
    if t < 0.0:
        return float(a)
    b = sorted_values[lo + 1]
    # numpy's _lerp: interpolating from the nearer end keeps monotonicity and exactness at t=1.
    if t >= 0.5:
        return float(b - (b - a) * (1.0 - t))
    return float(a + (b - a) * t)


def new_sketch(relative_accuracy: float = RELATIVE_ACCURACY) -> Any:
    """An empty DDSketch (unbounded dense stores: window sketches stay small)."""
    return DDSketch(relative_accuracy)


def fold_into_sketch(sketch: Any, values: Sequence[float]) -> None:
    """Add many samples at once; bins are identical to ``sketch.add`` one by one, only faster.

    ``DDSketch.add`` costs a few method calls per sample; counting keys first turns a batch
    into one ``store.add`` per distinct bin, which keeps the add path fast past the threshold.
    """
    if not values:
        return
    mapping = sketch._mapping
    mult = mapping._multiplier
    offset = mapping._offset
    floor_value = mapping.min_possible
    pos = Counter([int(_ceil(_log(v, 2) * mult) + offset) for v in values if v > floor_value])
    neg = Counter([int(_ceil(_log(-v, 2) * mult) + offset) for v in values if v < -floor_value])
    store = sketch._store
    for key, weight in pos.items():
        store.add(key, float(weight))
    nstore = sketch._negative_store
    for key, weight in neg.items():
        nstore.add(key, float(weight))
    zeros = len(values) - pos.total() - neg.total()
    sketch._zero_count += zeros
    sketch._count += len(values)
    sketch._sum += math.fsum(values)
    lo = min(values)
    hi = max(values)
    sketch._min = min(sketch._min, lo)
    sketch._max = max(sketch._max, hi)


def sketch_quantile(sketch: Any, q: float, lo: float, hi: float) -> float:
    """The sketch's estimate for ``q`` percent, clamped to the exactly known ``[lo, hi]``."""
    value = sketch.get_quantile_value(q / 100.0)
    if value is None:
        return math.nan
    return float(min(max(float(value), lo), hi))


def _bins(store: Any) -> dict[int, float]:
    return {i + store.offset: c for i, c in enumerate(store.bins) if c}


def sketch_to_state(sketch: Any) -> SketchState:
    """The sketch's bins as the contract's JSON-friendly ``SketchState``."""
    return SketchState(
        relative_accuracy=float(sketch._relative_accuracy),
        positive=_bins(sketch._store),
        negative=_bins(sketch._negative_store),
        zero_count=float(sketch._zero_count),
    )


def sketch_from_state(state: SketchState, *, lo: float, hi: float, total: float) -> Any:
    """Rebuild a DDSketch from its bins; ``lo``/``hi``/``total`` are the series' exact stats."""
    sketch = new_sketch(state.relative_accuracy)
    for key, weight in state.positive.items():
        sketch._store.add(int(key), float(weight))
    for key, weight in state.negative.items():
        sketch._negative_store.add(int(key), float(weight))
    sketch._zero_count = float(state.zero_count)
    sketch._count = sketch._store.count + sketch._negative_store.count + sketch._zero_count
    sketch._min = lo
    sketch._max = hi
    sketch._sum = total
    return sketch


def merge_sketches(into: Any, other: Any) -> None:
    """Fold ``other`` into ``into``; both must share the relative accuracy."""
    into.merge(other)
