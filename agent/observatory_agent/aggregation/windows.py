"""Tumbling windows aligned to wall-clock multiples of their length, and counter→rate folding.

Every node computes ``window_start = floor(t / window) * window``, so windows line up across
the cluster without coordination and a window's end is a stable point timestamp.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field

from observatory_agent.aggregation.series import SeriesKey, SeriesState, TagsKey
from observatory_agent.contract import AggregatedMetric, MetricEvent, MetricType, SeriesPartial, quantile_key

_floor = math.floor
_REFUSED_TRACKED = 1 << 16
"""Distinct refused series remembered per window (as hashes); past it the count is a floor."""
_COUNTER = MetricType.COUNTER
_TAG_KEYS_CACHED = 4096
"""Tag orderings ``add_event`` remembers the sorted key of; past it the table starts over."""


def window_index(ts: float, window: float) -> int:
    """Which window ``ts`` falls in, counted from the Unix epoch."""
    return _floor(ts / window)


def window_bounds(ts: float, window: float) -> tuple[float, float]:
    """``[start, end)`` of the window containing ``ts``."""
    idx = window_index(ts, window)
    return idx * window, (idx + 1) * window


@dataclass
class ClosedWindow:
    """A window whose end has passed: its series, ready to become aggregates or partials."""

    start: float
    end: float
    series: dict[SeriesKey, SeriesState] = field(default_factory=dict)

    def aggregates(self, quantiles: Sequence[float]) -> Iterator[AggregatedMetric]:
        """One aggregate per series, made lazily: a consumer that encodes and drops each one
        keeps thousands of short-lived models from being promoted into the GC's oldest generation."""
        keyed = tuple((quantile_key(q), q) for q in quantiles)
        start, end = self.start, self.end
        for (name, tags), state in self.series.items():
            yield state.to_metric_keyed(name, tags, start, end, keyed)

    def partials(self, keys: Iterable[SeriesKey] | None = None) -> list[SeriesPartial]:
        wanted = self.series.keys() if keys is None else keys
        return [self.series[k].to_partial(k[0], k[1]) for k in wanted if k in self.series]


class WindowAggregator:
    """Folds samples into aligned tumbling windows; emits them once ``now`` passes their end.

    The add path takes plain ``(name, tags_key, value, ts)`` arguments — no model objects —
    because it runs once per sample. Samples for a window already closed are counted in
    ``late_samples`` and dropped; non-finite values in ``invalid_samples``.

    At most ``max_series`` series are held per window (and as many counters primed): a sample
    of a new series past that is refused, counted in ``limited_samples``, and its series in
    ``dropped_series`` (distinct per window), so memory never grows with a flood of series.
    """

    def __init__(
        self, window: float, *, exact_threshold: int, counter_ttl_windows: int = 3, max_series: int = 1 << 62
    ) -> None:
        if window <= 0:
            raise ValueError("window must be positive")
        self.window = window
        self.threshold = exact_threshold
        self.max_series = max_series
        self.late_samples = 0
        self.invalid_samples = 0
        self.limited_samples = 0
        self.dropped_series = 0
        self._refused: set[int] = set()
        self._windows: dict[int, dict[SeriesKey, SeriesState]] = {}
        self._closed_below = -(2**62)
        # The current window is cached so the common case skips the division and dict lookup.
        self._cur_idx = -(2**62)
        self._cur_lo = math.inf
        self._cur_hi = -math.inf
        self._cur: dict[SeriesKey, SeriesState] = {}
        self._counters: dict[SeriesKey, tuple[float, float, float]] = {}
        """Per counter series: last value, its rate clock reading, its wall time."""
        self._keys: dict[SeriesKey, SeriesKey] = {}
        self._tag_keys: dict[TagsKey, TagsKey] = {}
        self._counter_ttl = counter_ttl_windows * window

    def _table(self, ts: float) -> dict[SeriesKey, SeriesState] | None:
        idx = _floor(ts / self.window)
        if idx < self._closed_below:
            self.late_samples += 1
            return None
        table = self._windows.get(idx)
        if table is None:
            table = self._windows[idx] = {}
        self._cur_idx = idx
        self._cur_lo = idx * self.window
        self._cur_hi = (idx + 1) * self.window
        self._cur = table
        return table

    def add(self, name: str, tags: TagsKey, value: float, ts: float) -> None:
        """One gauge sample. Hot path: keep it free of allocations beyond the list append."""
        if value - value != 0.0:  # NaN and ±inf, in one comparison
            self.invalid_samples += 1
            return
        if self._cur_lo <= ts < self._cur_hi:
            table = self._cur
        else:
            maybe = self._table(ts)
            if maybe is None:
                return
            table = maybe
        key = (name, tags)
        state = table.get(key)
        if state is None:
            if len(table) >= self.max_series:
                self._refuse(key)
                return
            # Interned keys live as long as the series, so a new window allocates only its state.
            key = self._keys.setdefault(key, key)
            state = table[key] = SeriesState()
        values = state.values
        values.append(value)
        if ts >= state.last_ts:
            state.last = value
            state.last_ts = ts
        if len(values) > self.threshold:
            state.spill()

    def add_counter(self, name: str, tags: TagsKey, value: float, ts: float, elapsed: float | None = None) -> None:
        """One reading of a monotonically increasing total, folded as a per-second rate at ``ts``.

        The rate's time base is ``elapsed`` (a monotonic clock) when given, else ``ts``: a wall
        clock step must not stretch or squeeze a rate. The first reading of a series only primes
        it. A decrease is a counter reset (process restart, wrap): it primes again rather than
        reporting a negative rate.
        """
        if value - value != 0.0:
            self.invalid_samples += 1
            return
        key = (name, tags)
        previous = self._counters.get(key)
        if previous is None and len(self._counters) >= self.max_series:
            self._refuse(key)
            return
        clock = ts if elapsed is None else elapsed
        self._counters[key] = (value, clock, ts)
        if previous is None:
            return
        prev_value, prev_clock, _ = previous
        dt = clock - prev_clock
        if dt <= 0 or value < prev_value:
            return
        self.add(name, tags, (value - prev_value) / dt, ts)

    def _refuse(self, key: SeriesKey) -> None:
        self.limited_samples += 1
        if len(self._refused) < _REFUSED_TRACKED:
            self._refused.add(hash(key))

    def forget_counters(self) -> None:
        """Prime every counter again: after a clock step no rate may span the step."""
        self._counters.clear()

    def add_event(self, event: MetricEvent) -> None:
        """Convenience for collectors that build ``MetricEvent`` objects.

        A series' tags arrive in the same order sample after sample, so their canonical (sorted)
        key is looked up by the tags as they come instead of sorted again; the lookup table is
        bounded like the agent's own tag cache.
        """
        items = tuple(event.tags.items())
        cache = self._tag_keys
        key = cache.get(items)
        if key is None:
            if len(cache) >= _TAG_KEYS_CACHED:
                cache.clear()
            key = cache[items] = tuple(sorted(items))
        if event.type is _COUNTER:
            self.add_counter(event.name, key, event.value, event.timestamp)
        else:
            self.add(event.name, key, event.value, event.timestamp)

    def close(self, now: float) -> list[ClosedWindow]:
        """Every open window whose end is ``<= now``, oldest first; later samples for them are late."""
        limit = _floor(now / self.window)  # windows with index < limit have ended
        return self._close_below(limit, now)

    def close_all(self, now: float) -> list[ClosedWindow]:
        """Close every window now, the current one early (shutdown: flush what we have)."""
        top = max(self._windows, default=self._closed_below - 1)
        return self._close_below(max(top + 1, _floor(now / self.window)), now)

    def _close_below(self, limit: int, now: float) -> list[ClosedWindow]:
        done = sorted(i for i in self._windows if i < limit)
        closed = [
            ClosedWindow(start=i * self.window, end=(i + 1) * self.window, series=self._windows.pop(i)) for i in done
        ]
        closed = [c for c in closed if c.series]
        if closed and self._refused:
            self.dropped_series += len(self._refused)
            self._refused = set()
        self._closed_below = max(self._closed_below, limit)
        if self._cur_idx < limit:
            self._cur_lo, self._cur_hi, self._cur = math.inf, -math.inf, {}
            self._cur_idx = -(2**62)
        # Counters of series that disappeared (an unplugged interface) must not pile up.
        horizon = now - self._counter_ttl
        stale = [k for k, (_, _, ts) in self._counters.items() if ts < horizon]
        for k in stale:
            del self._counters[k]
        if len(self._keys) > 4 * (self.open_series + 1024):
            self._keys = {k: k for table in self._windows.values() for k in table}  # forget vanished series
        return closed

    @property
    def open_series(self) -> int:
        """Series across open windows: the agent's window-state size."""
        return sum(len(t) for t in self._windows.values())
