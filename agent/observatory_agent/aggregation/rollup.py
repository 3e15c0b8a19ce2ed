"""Merging agents' window partials into a rule's cluster-level groups, window by window (pure).

A rule window ``[end - window, end)`` takes the partials of every agent window inside it (the
rule's window is a whole multiple of the agents'). Its life:

- **open**: ``offer`` merges each partial as it arrives, keyed by ``(node, source, agent window)``;
  a re-sent identical partial changes nothing, a different one under the same key is refused.
- **due** at ``max(end + allowed_lateness, started + restart_grace)``: ``due`` hands windows out
  oldest first and ``written`` records that they went to the writer, which moves the frontier.
- **retained** until ``end + late_horizon``: a late partial still merges and the window is due
  again (its points overwrite themselves: same tags, timestamp = window end).
- **forgotten** after that: later partials are refused ``too_late`` and counted.

Windows at or below ``floor`` (what an earlier instance wrote, read back from InfluxDB) are
refused ``written``: a half re-sent window must never overwrite a complete one.

Per group the merge keeps count, sum, min, max and last (by timestamp, ties to the larger value,
so the result does not depend on arrival order) and either every sample (exact quantiles, numpy's
``linear`` definition, while every partial carried samples and the merged count is within the
exact threshold) or DDSketch buckets at 1% relative accuracy (ddsketch's logarithmic mapping),
merged bucket by bucket. Samples are binned in batches with numpy and ddsketch computes the
quantile from the buckets; buckets are bounded (``BIN_LIMIT`` a sign, collapsing the lowest), so
memory is bounded by ``max_series`` and ``max_open_windows`` whatever the input.
"""

from __future__ import annotations

import fnmatch
import math
from array import array
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any, Final

import numpy as np
from ddsketch import CollapsingLowestDenseStore, LogarithmicMapping
from ddsketch.ddsketch import BaseDDSketch

from observatory_agent.aggregation import quantiles as qmod
from observatory_agent.contract import EffectiveProcessorConfig, RefusalReason, SketchState, WindowPartial

BIN_LIMIT: Final = 2048
"""Buckets per sign of a group's sketch: nine decades at 1% before the lowest collapse."""
SPILL_BATCH: Final = 4096
"""Samples a sketched group gathers before binning them at once (numpy's cost is per call)."""
DROPPED_KEYS_KEPT: Final = 10_000
"""Distinct dropped group keys remembered per window; past it drops are still counted as series."""
FUTURE_SLACK: Final = 5.0
"""Seconds of clock skew tolerated on a partial's window end."""

GroupKey = tuple[str, ...]
"""The group's values of the rule's groupBy tags, in groupBy order ("" where a series lacks one)."""

_LN2: Final = math.log(2)
_EPS: Final = 1e-6


_MAPPING: Final = LogarithmicMapping(qmod.RELATIVE_ACCURACY)


class Bins:
    """Bucket counts of one sign, dense over ``[offset, offset + len(counts))``, at most ``BIN_LIMIT`` long.

    numpy adds a batch of buckets in one call, where ddsketch's store adds one bucket per call;
    ``store`` hands the counts to ddsketch for the quantile itself. Past ``BIN_LIMIT`` buckets the
    lowest are folded into the lowest kept one, as ddsketch's ``CollapsingLowestDenseStore`` does.
    """

    __slots__ = ("counts", "offset")

    def __init__(self) -> None:
        self.offset = 0
        self.counts: np.ndarray[Any, np.dtype[np.float64]] | None = None

    def add(self, keys: np.ndarray[Any, Any], weights: np.ndarray[Any, Any] | None = None) -> None:
        if not len(keys):
            return
        lo, hi = int(keys.min()), int(keys.max())
        counts = self.counts
        if counts is None:
            self.offset = lo
            counts = np.zeros(hi - lo + 1)
        else:
            top = self.offset + len(counts) - 1
            if lo < self.offset or hi > top:
                bottom = min(lo, self.offset)
                grown = np.zeros(max(hi, top) - bottom + 1)
                start = self.offset - bottom
                grown[start : start + len(counts)] = counts
                counts = grown
                self.offset = bottom
        counts += np.bincount(keys - self.offset, weights=weights, minlength=len(counts))
        if len(counts) > BIN_LIMIT:
            cut = len(counts) - BIN_LIMIT
            counts[cut] += counts[:cut].sum()
            counts = counts[cut:].copy()
            self.offset += cut
        self.counts = counts

    @property
    def total(self) -> float:
        return float(self.counts.sum()) if self.counts is not None else 0.0

    def store(self) -> Any:
        """The counts as a ddsketch store, through its documented attributes (tests pin this)."""
        store = CollapsingLowestDenseStore(BIN_LIMIT)
        counts = self.counts
        if counts is None or not counts.any():
            return store
        used = np.flatnonzero(counts)
        first, last = int(used[0]), int(used[-1])
        store.bins = counts[first : last + 1].tolist()
        store.offset = self.offset + first
        store.min_key = self.offset + first
        store.max_key = self.offset + last
        store.count = float(counts.sum())
        return store


def bucket_keys(values: np.ndarray[Any, np.dtype[np.float64]]) -> np.ndarray[Any, np.dtype[np.int64]]:
    """ddsketch's ``LogarithmicMapping.key`` (``ceil(log(v, 2) * multiplier) + offset``) of positive values.

    Tests pin it equal to ``mapping.key`` on many values, so a change inside ddsketch fails loudly.
    """
    mult, offset = _MAPPING._multiplier, _MAPPING._offset
    keys: np.ndarray[Any, np.dtype[np.int64]] = np.ceil(np.log(values) / _LN2 * mult + offset).astype(np.int64)
    return keys


class GroupSketch:
    """A group's samples past exact: positive and negative buckets and a zero count."""

    __slots__ = ("negative", "positive", "zeros")

    def __init__(self) -> None:
        self.positive = Bins()
        self.negative = Bins()
        self.zeros = 0.0

    def add_samples(self, samples: np.ndarray[Any, np.dtype[np.float64]]) -> None:
        floor = _MAPPING.min_possible
        positive = samples[samples > floor]
        negative = -samples[samples < -floor]
        if len(positive):
            self.positive.add(bucket_keys(positive))
        if len(negative):
            self.negative.add(bucket_keys(negative))
        self.zeros += float(len(samples) - len(positive) - len(negative))

    def add_state(self, state: SketchState) -> None:
        """An agent's sketch (the contract fixes the mapping: 1%, logarithmic)."""
        for bins, target in ((state.positive, self.positive), (state.negative, self.negative)):
            if bins:
                keys = np.fromiter(bins.keys(), np.int64, len(bins))
                target.add(keys, np.fromiter(bins.values(), np.float64, len(bins)))
        self.zeros += state.zero_count

    def ddsketch(self) -> Any:
        """A ddsketch ``BaseDDSketch`` over these buckets, for its quantile estimate."""
        return BaseDDSketch(_MAPPING, self.positive.store(), self.negative.store(), self.zeros)


class GroupState:
    """One output series in one window.

    ``values`` holds every sample while the group is exact; once it is not, ``values`` is None,
    ``sketch`` holds the binned samples and ``pending`` those not yet binned.
    """

    __slots__ = ("count", "hi", "last", "last_ts", "lo", "nodes", "pending", "sketch", "total", "values")

    def __init__(self) -> None:
        self.count = 0
        self.total = 0.0
        self.lo = math.inf
        self.hi = -math.inf
        self.last = math.nan
        self.last_ts = -math.inf
        self.values: list[float] | None = []
        self.pending: array[float] | None = None
        self.sketch: GroupSketch | None = None
        self.nodes = 0
        """Bit ``i`` set: the window's node ``i`` contributed."""

    @property
    def exact(self) -> bool:
        return self.values is not None

    def to_sketch(self) -> None:
        """Leave exact mode: every sample so far goes into a new sketch."""
        if self.values is None:
            return
        self.sketch = GroupSketch()
        self.pending = array("d", self.values)
        self.values = None
        self.spill()

    def spill(self) -> None:
        """Bin the pending samples into the sketch."""
        if self.pending:
            assert self.sketch is not None
            self.sketch.add_samples(np.frombuffer(self.pending, dtype=np.float64))
            self.pending = array("d")

    def add_samples(self, samples: list[float], threshold: int) -> None:
        values = self.values
        if values is not None:
            values += samples
            if len(values) > threshold:
                self.to_sketch()
            return
        pending = self.pending
        assert pending is not None
        pending.extend(samples)
        if len(pending) >= SPILL_BATCH:
            self.spill()

    def add_sketch(self, state: SketchState) -> None:
        self.to_sketch()
        assert self.sketch is not None
        self.sketch.add_state(state)

    def quantiles(self, keyed: tuple[tuple[str, float], ...]) -> dict[str, float]:
        if self.values is not None:
            ordered = sorted(self.values)
            return {key: qmod.exact_quantile(ordered, q) for key, q in keyed}
        self.spill()
        assert self.sketch is not None
        sketch = self.sketch.ddsketch()
        return {key: qmod.sketch_quantile(sketch, q, self.lo, self.hi) for key, q in keyed}

    def fields(self, names: tuple[str, ...], keyed: tuple[tuple[str, float], ...]) -> dict[str, float | int | str]:
        """The output point's fields: the rule's functions, ``nodes`` and ``quantile_method``."""
        # Exact groups hold every sample: their sum does not depend on the order partials came in.
        total = math.fsum(self.values) if self.values is not None else self.total
        base: dict[str, float | int] = {
            "count": self.count,
            "sum": total,
            "mean": total / self.count,
            "min": self.lo,
            "max": self.hi,
            "last": self.last,
        }
        quantiles = self.quantiles(keyed) if keyed else {}
        out: dict[str, float | int | str] = {n: quantiles[n] if n in quantiles else base[n] for n in names}
        out["nodes"] = self.nodes.bit_count()
        out["quantile_method"] = "exact" if self.values is not None else "sketch"
        return out


@dataclass
class RollupWindow:
    """One rule window's merge state."""

    start: float
    end: float
    groups: dict[GroupKey, GroupState] = field(default_factory=dict)
    contributions: dict[tuple[str, str, float, float], bytes] = field(default_factory=dict)
    """(node, source, agent window start, end) → digest of the partial merged under that key."""
    node_index: dict[str, int] = field(default_factory=dict)
    dropped_keys: set[GroupKey] = field(default_factory=set)
    dropped_series: int = 0
    """Series of this window dropped because the window had ``max_series`` groups."""
    written: bool = False
    dirty: bool = False
    """Written, then merged a late partial: due again."""

    @property
    def nodes(self) -> int:
        return len(self.node_index)


@dataclass(frozen=True)
class Outcome:
    """What became of one offered partial."""

    accepted: bool
    window_end: float | None = None
    reason: RefusalReason | None = None
    message: str | None = None
    duplicate: bool = False


@dataclass
class Counters:
    """Cumulative counts since start."""

    partials: int = 0
    late_partials: int = 0
    """Merged after their window was written (the window is written again)."""
    dropped_partials: dict[str, int] = field(default_factory=dict)
    """Refused, by reason."""
    dropped_series: int = 0
    dropped_groups: int = 0
    filtered_series: int = 0
    """Series outside the rule's metric patterns or tag matchers (agents should not send them)."""

    def drop(self, reason: RefusalReason) -> None:
        self.dropped_partials[reason.value] = self.dropped_partials.get(reason.value, 0) + 1


def _multiple(big: float, small: float) -> bool:
    ratio = big / small
    return abs(ratio - round(ratio)) < 1e-9 and round(ratio) >= 1


class Rollup:
    """Every open and retained window of one rule.

    ``floor`` is the newest window end an earlier instance wrote (read back at start);
    ``started`` is when this instance began, for the restart grace. Time is always an argument.
    """

    def __init__(self, config: EffectiveProcessorConfig, *, started: float, floor: float | None) -> None:
        self.config = config
        self.spec = config.processor
        self.started = started
        self.floor = floor if floor is not None else -math.inf
        self.frontier = self.floor
        """Newest window end handed to the writer (by anyone)."""
        self.windows: dict[float, RollupWindow] = {}
        self.counters = Counters()
        self._name_ok: dict[str, bool] = {}
        self._recent_nodes: dict[str, float] = {}

    # --- accepting partials ------------------------------------------------------------------

    def _refuse(self, reason: RefusalReason, message: str, end: float | None = None) -> Outcome:
        self.counters.drop(reason)
        return Outcome(False, end, reason, message)

    def rule_window(self, partial: WindowPartial) -> tuple[float, float] | str:
        """``(start, end)`` of the rule window holding the partial's window, or why it does not fit."""
        window = self.config.window
        length = partial.window_end - partial.window_start
        if not _multiple(window, length):
            return f"window: the agent's window ({length:g}s) does not divide the rule's ({window:g}s)"
        index = math.floor(partial.window_start / window + _EPS)
        start, end = index * window, (index + 1) * window
        offset = (partial.window_start - start) / length
        if abs(offset - round(offset)) > _EPS or partial.window_end > end + _EPS:
            return f"window_start: {partial.window_start:g} is not aligned to the agent's window ({length:g}s)"
        return start, end

    def offer(self, partial: WindowPartial, digest: bytes, now: float) -> Outcome:
        """Merge ``partial`` (``digest`` identifies its content) or say why not."""
        self.counters.partials += 1
        found = self._window_for(partial, now)
        if isinstance(found, Outcome):
            if found.reason is not None:
                self.counters.drop(found.reason)
            return found
        window = found
        end = window.end
        key = (partial.node, partial.source, partial.window_start, partial.window_end)
        seen = window.contributions.get(key)
        if seen is not None:
            if seen == digest:
                return Outcome(True, end, duplicate=True)
            return self._refuse(
                RefusalReason.CONFLICT,
                f"node {partial.node!r} source {partial.source!r} already sent different content for this window",
                end,
            )
        node = window.node_index.get(partial.node)
        if node is None:
            if len(window.node_index) >= self.spec.max_nodes:
                return self._refuse(RefusalReason.BUSY, f"window {end:g} already has {self.spec.max_nodes} nodes", end)
            node = window.node_index[partial.node] = len(window.node_index)
        per_window = round(self.config.window / (partial.window_end - partial.window_start))
        if len(window.contributions) >= 4 * per_window * self.spec.max_nodes:
            return self._refuse(RefusalReason.BUSY, f"window {end:g} holds too many partials", end)
        self._merge(window, partial, 1 << node)
        window.contributions[key] = digest
        if window.written:
            window.dirty = True
            self.counters.late_partials += 1
        self._seen(partial.node, end)
        return Outcome(True, end)

    def _window_for(self, partial: WindowPartial, now: float) -> RollupWindow | Outcome:  # noqa: PLR0911
        """The window the partial merges into (opened if need be), or the refusal (one return per rule)."""
        if partial.rule != self.spec.rule:
            return Outcome(False, None, RefusalReason.MISMATCH, f"rule: this processor serves rule {self.spec.rule!r}")
        bounds = self.rule_window(partial)
        if isinstance(bounds, str):
            return Outcome(False, None, RefusalReason.MISMATCH, bounds)
        start, end = bounds
        if partial.window_end > now + FUTURE_SLACK:
            message = f"window_end: {partial.window_end:g} is in the future"
            return Outcome(False, end, RefusalReason.MISMATCH, message)
        if end <= self.floor:
            message = f"window {end:g} is at or below the watermark this processor started from"
            return Outcome(False, end, RefusalReason.WRITTEN, message)
        window = self.windows.get(end)
        past_horizon = now > end + self.config.late_horizon
        if window is None:
            if end <= self.frontier and past_horizon:
                return Outcome(False, end, RefusalReason.TOO_LATE, f"window {end:g} is past its late horizon")
            if len(self.windows) >= self.spec.max_open_windows:
                message = f"{len(self.windows)} windows are open; try again later"
                return Outcome(False, end, RefusalReason.BUSY, message)
            window = self.windows[end] = RollupWindow(start, end)
        elif window.written and past_horizon:
            return Outcome(False, end, RefusalReason.TOO_LATE, f"window {end:g} is past its late horizon")
        return window

    def _seen(self, node: str, end: float) -> None:
        recent = self._recent_nodes
        if recent.get(node, -math.inf) < end:
            recent.pop(node, None)
            recent[node] = end
            if len(recent) > self.spec.max_nodes:
                oldest = min(recent, key=recent.__getitem__)
                del recent[oldest]

    def _wanted(self, name: str) -> bool:
        ok = self._name_ok.get(name)
        if ok is None:
            if len(self._name_ok) > 10_000:
                self._name_ok.clear()  # bad input cannot grow the cache without bound
            ok = self._name_ok[name] = any(fnmatch.fnmatchcase(name, p) for p in self.spec.metrics)
        return ok

    def _merge(self, window: RollupWindow, partial: WindowPartial, bit: int) -> None:  # noqa: PLR0912, PLR0915
        """The hot loop: one pass over the partial's columns, kept in one function (calls cost here)."""
        cols = partial.series
        sketches = cols.sketches
        samples = cols.values
        matchers = tuple(self.spec.match_tags.items())
        group_by = tuple(self.spec.group_by)
        single = group_by[0] if len(group_by) == 1 else None
        groups = window.groups
        limit = self.spec.max_series
        threshold = self.spec.exact_threshold
        name_ok = self._name_ok
        counters = self.counters
        offset = 0
        columns = zip(
            cols.name, cols.tags, cols.count, cols.sum, cols.min, cols.max, cols.last, cols.last_timestamp, strict=True
        )
        for i, (name, tags, count, total, lo, hi, last, last_ts) in enumerate(columns):
            sketch = sketches.get(i) if sketches else None
            first = offset
            if sketch is None:
                offset += count
            ok = name_ok.get(name)
            if ok is None:
                ok = self._wanted(name)
            if not ok or (matchers and any(tags.get(k) != v for k, v in matchers)):
                counters.filtered_series += 1
                continue
            if single is not None:
                key: GroupKey = (tags.get(single, ""),)
            else:
                key = tuple(tags.get(k, "") for k in group_by)
            group = groups.get(key)
            if group is None:
                if len(groups) >= limit:
                    window.dropped_series += 1
                    counters.dropped_series += 1
                    if key not in window.dropped_keys and len(window.dropped_keys) < DROPPED_KEYS_KEPT:
                        window.dropped_keys.add(key)
                        counters.dropped_groups += 1
                    continue
                group = groups[key] = GroupState()
            if sketch is not None:
                group.add_sketch(sketch)
            elif (exact := group.values) is not None:
                exact += samples[first:offset]
                if len(exact) > threshold:
                    group.to_sketch()
            else:
                group.add_samples(samples[first:offset], threshold)
            group.count += count
            group.total += total
            if lo < group.lo:  # noqa: PLR1730 - a comparison is cheaper than a min() call here
                group.lo = lo
            if hi > group.hi:  # noqa: PLR1730
                group.hi = hi
            if last_ts > group.last_ts or (last_ts == group.last_ts and last > group.last):
                group.last = last
                group.last_ts = last_ts
            group.nodes |= bit

    # --- writing -----------------------------------------------------------------------------

    def flush_at(self, end: float) -> float:
        """When a window above the frontier becomes due."""
        return max(end + self.config.allowed_lateness, self.started + self.config.restart_grace)

    def due(self, now: float) -> list[RollupWindow]:
        """Windows to write now, oldest first: those whose time came, and written ones that merged late."""
        out = []
        for end in sorted(self.windows):
            window = self.windows[end]
            if window.written:
                if window.dirty:
                    out.append(window)
            elif end <= self.frontier or now >= self.flush_at(end):
                out.append(window)  # opened below the frontier by a late partial: write it at once
        return out

    def written(self, window: RollupWindow) -> None:
        """The window's points went to the writer (InfluxDB or its durable buffer)."""
        for group in window.groups.values():
            group.spill()
        window.written = True
        window.dirty = False
        self.frontier = max(self.frontier, window.end)

    def expire(self, now: float) -> int:
        """Forget written windows past their late horizon; returns how many."""
        old = [
            end for end, w in self.windows.items() if w.written and not w.dirty and now > end + self.config.late_horizon
        ]
        for end in old:
            del self.windows[end]
        return len(old)

    def points(self, window: RollupWindow) -> Iterator[tuple[dict[str, str], dict[str, float | int | str]]]:
        """``(tags, fields)`` of each output point of ``window`` (timestamp: the window end)."""
        config = self.config
        group_by = self.spec.group_by
        base = {"rule": self.spec.rule, "cluster": config.cluster}
        for key, group in window.groups.items():
            tags = dict(base)
            tags.update((k, v) for k, v in zip(group_by, key, strict=True) if v)
            yield tags, group.fields(config.fields, config.quantiles)

    # --- reading -----------------------------------------------------------------------------

    def pending_below(self, end: float) -> float | None:
        """The oldest window at or below ``end`` that still has to be written, if any."""
        late = [e for e, w in self.windows.items() if e <= end and (not w.written or w.dirty)]
        return min(late) if late else None

    def expected_nodes(self, end: float, lookback: int = 3) -> int:
        """Nodes that contributed to any of the ``lookback`` windows up to ``end``."""
        since = end - lookback * self.config.window
        return sum(1 for seen in self._recent_nodes.values() if since < seen <= end + _EPS)

    @property
    def open_windows(self) -> int:
        return sum(1 for w in self.windows.values() if not w.written)
