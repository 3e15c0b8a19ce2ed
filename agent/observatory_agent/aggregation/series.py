"""One series' state within one window: exact samples up to a threshold, then a DDSketch."""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, Final

from pydantic import BaseModel

from observatory_agent.aggregation import quantiles as qmod
from observatory_agent.contract import AggregatedMetric, SeriesPartial, quantile_key

TagsKey = tuple[tuple[str, str], ...]
"""A series' tags as sorted ``(key, value)`` pairs: hashable and order-independent."""

SeriesKey = tuple[str, TagsKey]
"""``(name, tags)``: what identifies a series."""


def tags_key(tags: Mapping[str, str]) -> TagsKey:
    """The canonical, hashable form of a tag mapping."""
    return tuple(sorted(tags.items()))


class SeriesState:
    """Samples of one series in one window.

    ``values`` holds samples not yet folded into the sketch. While the series has at most
    ``threshold`` samples there is no sketch and ``values`` is every sample (exact
    quantiles). Past it, ``values`` is folded into ``sketch`` in batches of ``threshold``
    and ``n``/``total``/``lo``/``hi`` keep the folded samples' exact stats.
    """

    __slots__ = ("hi", "last", "last_ts", "lo", "n", "sketch", "total", "values")

    def __init__(self) -> None:
        self.values: list[float] = []
        self.sketch: Any = None
        self.n = 0
        self.total = 0.0
        self.lo = math.inf
        self.hi = -math.inf
        self.last = math.nan
        self.last_ts = -math.inf

    @property
    def count(self) -> int:
        return self.n + len(self.values)

    def add(self, value: float, ts: float, threshold: int) -> None:
        """One sample (the aggregator inlines this on its hot path)."""
        values = self.values
        values.append(value)
        if ts >= self.last_ts:
            self.last = value
            self.last_ts = ts
        if len(values) > threshold:
            self.spill()

    def spill(self, relative_accuracy: float = qmod.RELATIVE_ACCURACY) -> None:
        """Fold pending samples into the sketch (creating it): the series is past exact."""
        if self.sketch is None:
            self.sketch = qmod.new_sketch(relative_accuracy)
        values = self.values
        if values:
            qmod.fold_into_sketch(self.sketch, values)
            self.n += len(values)
            self.total += math.fsum(values)
            vmin, vmax = min(values), max(values)
            self.lo = min(self.lo, vmin)
            self.hi = max(self.hi, vmax)
            self.values = []

    def stats(self) -> tuple[int, float, float, float]:
        """``(count, sum, min, max)`` over every sample, folded or pending."""
        values = self.values
        if not values:
            return self.n, self.total, self.lo, self.hi
        vmin, vmax = min(values), max(values)
        return self.n + len(values), self.total + math.fsum(values), min(self.lo, vmin), max(self.hi, vmax)

    def quantiles(self, qs: Sequence[float]) -> dict[str, float]:
        """Configured quantiles, exact while there is no sketch (see ``quantiles``)."""
        if self.sketch is None:
            return qmod.exact_quantiles(sorted(self.values), tuple((quantile_key(q), q) for q in qs))
        self.spill()
        return {quantile_key(q): qmod.sketch_quantile(self.sketch, q, self.lo, self.hi) for q in qs}

    def merge(self, other: SeriesState, threshold: int) -> None:
        """Fold ``other`` in; exact stays exact while the union is within ``threshold``."""
        if other.last_ts >= self.last_ts:
            self.last = other.last
            self.last_ts = other.last_ts
        if self.sketch is None and other.sketch is None and self.count + other.count <= threshold:
            self.values = self.values + other.values
            return
        self.spill()
        pending = other.values
        if other.sketch is not None:
            qmod.merge_sketches(self.sketch, other.sketch)
            self.n += other.n
            self.total += other.total
            self.lo = min(self.lo, other.lo)
            self.hi = max(self.hi, other.hi)
        if pending:
            self.values = list(pending)
            self.spill()

    def to_partial(self, name: str, tags: TagsKey) -> SeriesPartial:
        """The contract's wire form: every sample while exact, the sketch's bins past it."""
        count, total, lo, hi = self.stats()
        exact = self.sketch is None
        if not exact:
            self.spill()
        return SeriesPartial(
            name=name,
            tags=dict(tags),
            count=count,
            sum=total,
            min=lo,
            max=hi,
            last=self.last,
            last_timestamp=self.last_ts,
            values=list(self.values) if exact else None,
            sketch=None if exact else qmod.sketch_to_state(self.sketch),
        )

    @classmethod
    def from_partial(cls, partial: SeriesPartial) -> SeriesState:
        state = cls()
        state.last = partial.last
        state.last_ts = partial.last_timestamp
        if partial.values is not None:
            state.values = list(partial.values)
            return state
        assert partial.sketch is not None  # the contract guarantees exactly one of the two
        state.sketch = qmod.sketch_from_state(partial.sketch, lo=partial.min, hi=partial.max, total=partial.sum)
        state.n = partial.count
        state.total = partial.sum
        state.lo = partial.min
        state.hi = partial.max
        return state

    def to_metric(
        self, name: str, tags: TagsKey, window_start: float, window_end: float, qs: Sequence[float]
    ) -> AggregatedMetric:
        """The finished aggregate; ``timestamp`` is the window end so replays overwrite."""
        return self.to_metric_keyed(name, tags, window_start, window_end, tuple((quantile_key(q), q) for q in qs))

    def to_metric_keyed(
        self, name: str, tags: TagsKey, window_start: float, window_end: float, keyed: tuple[tuple[str, float], ...]
    ) -> AggregatedMetric:
        """``to_metric`` with the quantile keys precomputed: window close calls this per series."""
        if self.sketch is None:
            # The common case (a handful of samples): one sort gives min, max and every quantile.
            ordered = sorted(self.values)
            count = len(ordered)
            total = math.fsum(ordered)
            lo, hi = ordered[0], ordered[-1]
            quantiles = qmod.exact_quantiles(ordered, keyed)
        else:
            self.spill()
            count, total, lo, hi = self.n, self.total, self.lo, self.hi
            quantiles = {key: qmod.sketch_quantile(self.sketch, q, lo, hi) for key, q in keyed}
        return _trusted_metric(
            {
                "name": name,
                "tags": dict(tags),
                "timestamp": window_end,
                "window_start": window_start,
                "count": count,
                "sum": total,
                "mean": total / count,
                "min": lo,
                "max": hi,
                "last": self.last,
                "quantiles": quantiles,
            }
        )


_METRIC_FIELDS: Final = frozenset(AggregatedMetric.model_fields)
# pydantic's BaseModel keeps an instance's state in four slots; their descriptors set them
# without a per-call attribute lookup on the class.
_SET_DICT: Final = BaseModel.__dict__["__dict__"].__set__
_SET_FIELDS_SET: Final = BaseModel.__dict__["__pydantic_fields_set__"].__set__
_SET_EXTRA: Final = BaseModel.__dict__["__pydantic_extra__"].__set__
_SET_PRIVATE: Final = BaseModel.__dict__["__pydantic_private__"].__set__
_new_metric: Final = AggregatedMetric.__new__


def _trusted_metric(fields: dict[str, Any]) -> AggregatedMetric:
    """An ``AggregatedMetric`` from values this module computed, skipping validation.

    Window close builds one per series per window; validation (or ``model_construct``) costs
    more than the aggregation itself. The values are correct by construction, and a unit test
    pins that the result equals a validated ``AggregatedMetric`` (and so fails loudly when
    pydantic keeps a model's state differently).
    """
    metric = _new_metric(AggregatedMetric)
    _SET_DICT(metric, fields)
    _SET_FIELDS_SET(metric, _METRIC_FIELDS)
    _SET_EXTRA(metric, None)
    _SET_PRIVATE(metric, None)
    return metric


def merge_partials(partials: Iterable[SeriesPartial], threshold: int) -> dict[SeriesKey, SeriesState]:
    """Merge partials of the same window from several nodes, series by series."""
    merged: dict[SeriesKey, SeriesState] = {}
    for partial in partials:
        key = (partial.name, tags_key(partial.tags))
        state = SeriesState.from_partial(partial)
        existing = merged.get(key)
        if existing is None:
            merged[key] = state
        else:
            existing.merge(state, threshold)
    return merged
