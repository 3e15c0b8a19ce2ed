"""Merging agents' window partials into a rule's cluster-level groups, window by window (pure).

A rule window ``[end - window, end)`` takes the partials of every agent window inside it (the
rule's window is a whole multiple of the agents'). Its life:

- **open**: ``offer`` merges each partial as it arrives, keyed by ``(node, source, agent window)``;
  a re-sent identical partial changes nothing, a different one under the same key is refused.
- **due** at ``max(end + allowed_lateness, heard + restart_grace)``: ``due`` hands windows out
  oldest first and ``written`` records that they went to the writer, which moves the frontier.
  ``heard`` is when this instance accepted its first partial: agents reach a new instance only
  once its pod is Ready behind the Service on every node, so the grace for their re-sent
  partials runs from when the first of them got through, not from the process's start.
- **retained** until ``max(end, heard) + late_horizon``: a late partial still merges and the
  window is due again (its points overwrite themselves: same tags, timestamp = window end). A
  window that ended before this instance heard from anyone gets the whole horizon from then:
  after an outage, an agent whose node routes to the new instance later is late, not lost.
- **forgotten** after that (or earlier, oldest first, when ``max_open_windows`` needs the room):
  later partials are refused ``too_late`` and counted, never re-open it.

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
from collections.abc import Iterator
from dataclasses import dataclass, field
from itertools import repeat
from typing import Any, Final

import numpy as np
from ddsketch import CollapsingLowestDenseStore, LogarithmicMapping
from ddsketch.ddsketch import BaseDDSketch

from observatory_agent.aggregation import quantiles as qmod
from observatory_agent.contract import (
    EffectiveProcessorConfig,
    RefusalReason,
    SeriesColumns,
    SketchState,
    WindowPartial,
    unpack_floats,
    whole_multiple,
)

BIN_LIMIT: Final = 2048
"""Buckets per sign of a group's sketch: nine decades at 1% before the lowest collapse."""
SPILL_BATCH: Final = 1 << 19
"""Samples of sketched groups a window gathers before binning them at once (~6 MB)."""
MATRIX_LIMIT: Final = 1 << 22
"""Most (group × bucket) cells counted in one ``bincount`` (32 MB of counts)."""
DROPPED_KEYS_KEPT: Final = 10_000
"""Distinct dropped group keys remembered per window; past it drops are still counted as series."""
FUTURE_SLACK: Final = 5.0
"""Seconds of clock skew tolerated on a partial's window end."""

GroupKey = tuple[str | None, ...]
"""The group's values of the rule's groupBy tags, in groupBy order (None where a series lacks one)."""

Array = np.ndarray[Any, Any]

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
    """One output series' samples in one window (its count, sum, min, max and last are in ``Stats``).

    ``values`` holds every sample while the group is exact; once it is not, ``values`` is None and
    ``sketch`` holds its buckets (samples still waiting in the window's batch are binned later).
    """

    __slots__ = ("sketch", "values")

    def __init__(self) -> None:
        self.values: list[float] | None = []
        self.sketch: GroupSketch | None = None

    @property
    def exact(self) -> bool:
        return self.values is not None

    def to_sketch(self) -> None:
        """Leave exact mode: every sample so far goes into a new sketch."""
        if self.values is None:
            return
        self.sketch = GroupSketch()
        self.sketch.add_samples(np.array(self.values))
        self.values = None

    def add_sketch(self, state: SketchState) -> None:
        self.to_sketch()
        assert self.sketch is not None
        self.sketch.add_state(state)

    def quantiles(self, keyed: tuple[tuple[str, float], ...], lo: float, hi: float) -> dict[str, float]:
        if self.values is not None:
            ordered = sorted(self.values)
            return qmod.exact_quantiles(ordered, keyed)
        assert self.sketch is not None
        sketch = self.sketch.ddsketch()
        return {key: qmod.sketch_quantile(sketch, q, lo, hi) for key, q in keyed}


class Batch:
    """Samples of sketched groups, gathered over many partials and binned at once.

    Binning a partial's few samples per group costs a numpy call per group; gathered over
    ``SPILL_BATCH`` samples, one ``bincount`` over (group, bucket) bins them all.
    """

    __slots__ = ("rows", "size", "values")

    def __init__(self) -> None:
        self.rows: list[np.ndarray[Any, Any]] = []
        self.values: list[np.ndarray[Any, Any]] = []
        self.size = 0

    def add(self, rows: np.ndarray[Any, Any], values: np.ndarray[Any, Any]) -> None:
        self.rows.append(rows)
        self.values.append(values)
        self.size += len(values)

    def bin(self, states: list[GroupState]) -> None:
        """Add every gathered sample to its group's sketch."""
        if not self.size:
            return
        rows, values = np.concatenate(self.rows), np.concatenate(self.values)
        self.rows, self.values, self.size = [], [], 0
        floor = _MAPPING.min_possible
        positive, negative = values > floor, values < -floor
        for mask, sign in ((positive, 1.0), (negative, -1.0)):
            if mask.any():
                _bin_rows(states, rows[mask], bucket_keys(sign * values[mask]), negative=sign < 0)
        zeros = ~(positive | negative)
        if zeros.any():
            for row, n in zip(*np.unique(rows[zeros], return_counts=True), strict=True):
                sketch = states[int(row)].sketch
                assert sketch is not None
                sketch.zeros += float(n)


def _bin_rows(
    states: list[GroupState], rows: np.ndarray[Any, Any], keys: np.ndarray[Any, Any], *, negative: bool
) -> None:
    """Count (group, bucket) pairs in one pass and hand each group its buckets."""
    low = int(keys.min())
    span = int(keys.max()) - low + 1
    groups = len(states)
    if span * groups <= MATRIX_LIMIT:
        matrix = np.bincount(rows * span + (keys - low), minlength=groups * span).reshape(groups, span)
        for row in np.flatnonzero(matrix.any(axis=1)).tolist():
            counts = matrix[row]
            used = np.flatnonzero(counts)
            sketch = states[row].sketch
            assert sketch is not None
            (sketch.negative if negative else sketch.positive).add(used + low, counts[used].astype(np.float64))
        return
    # Too spread for one matrix (bad input, or very many groups): sort the pairs instead.
    pairs, counts = np.unique(rows.astype(np.int64) * (1 << 32) + (keys - low), return_counts=True)
    owners = pairs >> 32
    starts = np.flatnonzero(np.append(True, owners[1:] != owners[:-1]))
    for first, last in zip(starts.tolist(), [*starts[1:].tolist(), len(pairs)], strict=True):
        sketch = states[int(owners[first])].sketch
        assert sketch is not None
        bins = sketch.negative if negative else sketch.positive
        bins.add((pairs[first:last] & 0xFFFFFFFF) + low, counts[first:last].astype(np.float64))


class Stats:
    """Count, sum, min, max and last of every group of a window, as numpy columns indexed by group."""

    __slots__ = ("count", "hi", "last", "last_ts", "lo", "sketched", "total")

    def __init__(self, capacity: int = 64) -> None:
        self.sketched = np.zeros(capacity, dtype=bool)
        """Groups no longer exact: their samples go to the window's batch."""
        self.count = np.zeros(capacity, dtype=np.int64)
        self.total = np.zeros(capacity)
        self.lo = np.full(capacity, np.inf)
        self.hi = np.full(capacity, -np.inf)
        self.last = np.full(capacity, np.nan)
        self.last_ts = np.full(capacity, -np.inf)

    def reserve(self, groups: int) -> None:
        capacity = len(self.count)
        if groups <= capacity:
            return
        grown = Stats(max(groups, 2 * capacity))
        for name in self.__slots__:
            getattr(grown, name)[:capacity] = getattr(self, name)
            setattr(self, name, getattr(grown, name))

    def fold(self, groups: np.ndarray[Any, Any], cols: SeriesColumns, rows: np.ndarray[Any, Any] | None) -> None:
        """Fold one partial's series (``rows`` of its columns, all when None) into their ``groups``."""

        def column(values: bytes | list[int]) -> Array:
            arr = np.frombuffer(values, dtype="<f8") if isinstance(values, bytes) else np.asarray(values)
            return arr if rows is None else arr[rows]

        size = int(groups.max()) + 1
        self.reserve(size)
        self.count[:size] += np.bincount(groups, weights=column(cols.count), minlength=size).astype(np.int64)
        self.total[:size] += np.bincount(groups, weights=column(cols.sum), minlength=size)
        np.minimum.at(self.lo, groups, column(cols.min))
        np.maximum.at(self.hi, groups, column(cols.max))
        # Last: the newest sample, ties to the larger value, so arrival order cannot change it.
        stamps, lasts = column(cols.last_timestamp), column(cols.last)
        order = np.lexsort((lasts, stamps, groups))
        ordered = groups[order]
        ends = np.flatnonzero(np.append(ordered[1:] != ordered[:-1], True))
        best, best_ts, best_last = ordered[ends], stamps[order][ends], lasts[order][ends]
        cur_ts, cur_last = self.last_ts[best], self.last[best]
        newer = (best_ts > cur_ts) | ((best_ts == cur_ts) & ~(best_last <= cur_last))
        self.last_ts[best[newer]] = best_ts[newer]
        self.last[best[newer]] = best_last[newer]


class NodeSets:
    """Which of a window's nodes contributed to each group: one bit per (node, group).

    Bits are packed along nodes, so the bound is ``max_nodes / 8`` bytes per group.
    """

    __slots__ = ("bits",)

    def __init__(self) -> None:
        self.bits = np.zeros((1, 64), dtype=np.uint8)

    def add(self, node: int, groups: Array) -> None:
        row, rows, columns = node >> 3, *self.bits.shape
        need = int(groups.max()) + 1
        if row >= rows or need > columns:
            grown = np.zeros((max(row + 1, 2 * rows if row >= rows else rows), max(need, 2 * columns)), np.uint8)
            grown[:rows, :columns] = self.bits
            self.bits = grown
        self.bits[row, groups] |= np.uint8(1 << (node & 7))

    def counts(self, groups: int) -> Array:
        """Contributing nodes of groups ``0 .. groups - 1``."""
        counts: Array = np.unpackbits(self.bits[:, :groups], axis=0).sum(axis=0, dtype=np.int64)
        return np.pad(counts, (0, max(0, groups - len(counts))))


@dataclass
class RollupWindow:
    """One rule window's merge state."""

    start: float
    end: float
    index: dict[GroupKey, int] = field(default_factory=dict)
    """Group key → its row in ``keys``, ``states`` and ``stats``."""
    keys: list[GroupKey] = field(default_factory=list)
    states: list[GroupState] = field(default_factory=list)
    stats: Stats = field(default_factory=Stats)
    batch: Batch = field(default_factory=Batch)
    node_sets: NodeSets = field(default_factory=NodeSets)
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

    @property
    def series(self) -> int:
        """Output series (groups) in the window."""
        return len(self.keys)

    def add_group(self, key: GroupKey) -> int:
        row = self.index[key] = len(self.keys)
        self.keys.append(key)
        self.states.append(GroupState())
        self.stats.reserve(row + 1)
        return row

    def to_sketch(self, row: int) -> None:
        self.states[row].to_sketch()
        self.stats.sketched[row] = True

    def add_sketch(self, row: int, state: SketchState) -> None:
        self.states[row].add_sketch(state)
        self.stats.sketched[row] = True

    def fields(
        self, row: int, names: tuple[str, ...], keyed: tuple[tuple[str, float], ...], nodes: int
    ) -> dict[str, Any]:
        """One output point's fields: the rule's functions, ``nodes`` and ``quantile_method``."""
        stats, state = self.stats, self.states[row]
        count = int(stats.count[row])
        lo, hi = float(stats.lo[row]), float(stats.hi[row])
        # Exact groups hold every sample: their sum does not depend on the order partials came in.
        total = math.fsum(state.values) if state.values is not None else float(stats.total[row])
        base: dict[str, float | int] = {
            "count": count,
            "sum": total,
            "mean": total / count,
            "min": lo,
            "max": hi,
            "last": float(stats.last[row]),
        }
        quantiles = state.quantiles(keyed, lo, hi) if keyed else {}
        out: dict[str, float | int | str] = {n: quantiles[n] if n in quantiles else base[n] for n in names}
        out["nodes"] = nodes
        out["quantile_method"] = "exact" if state.values is not None else "sketch"
        return out


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


class Rollup:
    """Every open and retained window of one rule.

    ``floor`` is the newest window end an earlier instance wrote (read back at start);
    ``started`` is when this instance began; its restart grace and the late horizon of windows that
    ended before it run from the first partial it accepts (``heard``). Time is always an argument.
    """

    def __init__(self, config: EffectiveProcessorConfig, *, started: float, floor: float | None) -> None:
        self.config = config
        self.spec = config.processor
        self.started = started
        self.heard: float | None = None
        """When this instance accepted its first partial (agents could reach it)."""
        self.floor = floor if floor is not None else -math.inf
        self.frontier = self.floor
        """Newest window end handed to the writer (by anyone)."""
        self.forgotten_through = -math.inf
        """Newest written window this instance no longer holds: a partial for it cannot re-open it."""
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
        if not whole_multiple(window, length):
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
        self._merge(window, partial, node)
        window.contributions[key] = digest
        if self.heard is None:
            self.heard = now
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
        past_horizon = self._past_horizon(end, now)
        if window is None:
            if end <= self.frontier and (past_horizon or end <= self.forgotten_through):
                return Outcome(False, end, RefusalReason.TOO_LATE, f"window {end:g} is past its late horizon")
            if len(self.windows) >= self.spec.max_open_windows and not self._forget_oldest_written():
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

    def _keep(self, cols: SeriesColumns) -> list[bool] | None:  # the merge's filter
        """Which series pass the rule's metric patterns and tag matchers (None: all of them)."""
        names = cols.name
        refused = {name for name in set(names) if not self._wanted(name)}
        keep = [name not in refused for name in names] if refused else None
        for tag, wanted in self.spec.match_tags.items():
            column = cols.tags.get(tag)
            matches = [value == wanted for value in column] if column is not None else [False] * len(names)
            keep = matches if keep is None else [a and b for a, b in zip(keep, matches, strict=True)]
        return keep

    def _keys(self, cols: SeriesColumns) -> Iterator[GroupKey]:
        """Each series' group key, built at C speed from the tag columns."""
        n = len(cols)
        group_by = self.spec.group_by
        if not group_by:
            return repeat((), n)
        return zip(*[cols.tags.get(tag) or repeat(None, n) for tag in group_by], strict=True)

    def _rows(self, window: RollupWindow, cols: SeriesColumns) -> list[int]:
        """Each series' group row (new groups made), or -1 when filtered or dropped by ``max_series``."""
        keys = list(self._keys(cols))
        rows: list[int | None] = list(map(window.index.get, keys))
        keep = self._keep(cols)
        if keep is None and None not in rows:
            return rows  # type: ignore[return-value]  # the common case: every series known
        self.counters.filtered_series += len(rows) - (sum(keep) if keep is not None else len(rows))
        out = []
        for i, (known, key) in enumerate(zip(rows, keys, strict=True)):
            if keep is not None and not keep[i]:
                out.append(-1)
                continue
            row = known if known is not None else window.index.get(key)  # maybe made by an earlier series
            if row is None:
                if len(window.index) >= self.spec.max_series:
                    self._drop(window, key)
                    out.append(-1)
                    continue
                row = window.add_group(key)
            out.append(row)
        return out

    def _merge(self, window: RollupWindow, partial: WindowPartial, node: int) -> None:
        """The partial's series into their groups: numpy over its columns, Python only where it must.

        Samples of sketched groups (the common case once a window has many nodes) go into the
        window's batch as one array; exact groups take theirs series by series.
        """
        cols = partial.series
        rows = self._rows(window, cols)
        groups = np.array(rows, dtype=np.int64)
        taken = groups >= 0
        if not taken.any():
            return
        stats = window.stats
        counts = np.asarray(cols.count, dtype=np.int64)
        if cols.sketches:  # an agent's own sketch: its samples are not in ``values``
            counts[list(cols.sketches)] = 0
            for i, state in cols.sketches.items():
                if rows[i] >= 0:
                    window.add_sketch(rows[i], state)
        owners = np.where(taken & (counts > 0), groups, -1)
        exact = (owners >= 0) & ~stats.sketched[np.maximum(owners, 0)]
        if exact.any():
            samples = unpack_floats(cols.values)
            starts = (np.cumsum(counts) - counts).tolist()
            threshold = self.spec.exact_threshold
            for i in np.flatnonzero(exact).tolist():
                row = rows[i]
                values = window.states[row].values
                if values is None:
                    continue  # went past exact earlier in this partial: its samples join the batch
                values += samples[starts[i] : starts[i] + int(counts[i])]
                owners[i] = -1
                if len(values) > threshold:
                    window.to_sketch(row)
        per_sample = np.repeat(owners, counts)
        batched = per_sample >= 0
        if batched.any():
            window.batch.add(per_sample[batched], np.frombuffer(cols.values, dtype="<f8")[batched])
            if window.batch.size >= SPILL_BATCH:
                window.batch.bin(window.states)
        stats.fold(groups[taken], cols, None if taken.all() else np.flatnonzero(taken))
        window.node_sets.add(node, groups[taken])

    def _drop(self, window: RollupWindow, key: GroupKey) -> None:
        window.dropped_series += 1
        self.counters.dropped_series += 1
        if key not in window.dropped_keys and len(window.dropped_keys) < DROPPED_KEYS_KEPT:
            window.dropped_keys.add(key)
            self.counters.dropped_groups += 1

    # --- writing -----------------------------------------------------------------------------

    def flush_at(self, end: float) -> float:
        """When a window above the frontier becomes due."""
        return max(end + self.config.allowed_lateness, self._heard_or_started + self.config.restart_grace)

    @property
    def _heard_or_started(self) -> float:
        return self.heard if self.heard is not None else self.started

    def _past_horizon(self, end: float, now: float) -> bool:
        """Too late for window ``end``: its horizon runs from its end, or from when this instance first heard
        from an agent when the window ended before that."""
        return now > max(end, self._heard_or_started) + self.config.late_horizon

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
        window.batch.bin(window.states)
        window.written = True
        window.dirty = False
        self.frontier = max(self.frontier, window.end)

    def _forget_oldest_written(self) -> bool:
        """Make room by forgetting the oldest written window early (its late partials become too late)."""
        written = [end for end, w in self.windows.items() if w.written and not w.dirty]
        if not written:
            return False
        oldest = min(written)
        del self.windows[oldest]
        self.forgotten_through = max(self.forgotten_through, oldest)
        return True

    def expire(self, now: float) -> int:
        """Forget written windows past their late horizon; returns how many."""
        old = [end for end, w in self.windows.items() if w.written and not w.dirty and self._past_horizon(end, now)]
        for end in old:
            del self.windows[end]
            self.forgotten_through = max(self.forgotten_through, end)
        return len(old)

    def points(self, window: RollupWindow) -> Iterator[tuple[dict[str, str], dict[str, float | int | str]]]:
        """``(tags, fields)`` of each output point of ``window`` (timestamp: the window end)."""
        config = self.config
        group_by = self.spec.group_by
        # The namespace too: two teams' rules of one name write the same measurement, and without it
        # each one's windows would overwrite the other's points (same tags, same timestamps).
        base = {"rule": self.spec.rule, "namespace": self.spec.namespace, "cluster": config.cluster}
        window.batch.bin(window.states)
        nodes = window.node_sets.counts(window.series).tolist()
        for row, key in enumerate(window.keys):
            tags = dict(base)
            tags.update((k, v) for k, v in zip(group_by, key, strict=True) if v)
            yield tags, window.fields(row, config.fields, config.quantiles, nodes[row])

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
