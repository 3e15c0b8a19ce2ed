"""Windows, alignment, exact and sketch quantiles, counters → rates, partial merging."""

from __future__ import annotations

import math
import random

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from observatory_agent.aggregation import quantiles as qmod
from observatory_agent.aggregation.series import SeriesState, merge_partials, tags_key
from observatory_agent.aggregation.windows import WindowAggregator, window_bounds
from observatory_agent.contract import MetricEvent, MetricType, SeriesPartial

TAGS = tags_key({"host": "n1", "core": "0"})


def _one_window(values: list[float], threshold: int = 1024, quantiles: tuple[float, ...] = (50, 95, 99)):
    agg = WindowAggregator(60.0, exact_threshold=threshold)
    for i, v in enumerate(values):
        agg.add("system.cpu.usage", TAGS, v, 600.0 + i * 0.001)
    (closed,) = agg.close(660.0)
    (metric,) = closed.aggregates(quantiles)
    return metric


def test_window_start_is_floor_of_time_over_window() -> None:
    assert window_bounds(125.0, 60.0) == (120.0, 180.0)
    assert window_bounds(120.0, 60.0) == (120.0, 180.0)
    assert window_bounds(179.999, 60.0) == (120.0, 180.0)
    assert window_bounds(1_700_000_012.5, 10.0) == (1_700_000_010.0, 1_700_000_020.0)


def test_window_closes_only_after_its_end_and_stamps_window_end() -> None:
    agg = WindowAggregator(60.0, exact_threshold=1024)
    agg.add("m", (), 1.0, 61.0)
    agg.add("m", (), 3.0, 119.0)
    assert agg.close(119.9) == []
    (closed,) = agg.close(120.0)
    (metric,) = closed.aggregates([50])
    assert (metric.window_start, metric.timestamp) == (60.0, 120.0)
    assert (metric.count, metric.sum, metric.mean, metric.min, metric.max, metric.last) == (2, 4.0, 2.0, 1.0, 3.0, 3.0)


def test_samples_of_different_windows_land_in_their_own_window() -> None:
    agg = WindowAggregator(10.0, exact_threshold=1024)
    for ts in (5.0, 15.0, 16.0, 25.0):
        agg.add("m", (), ts, ts)
    closed = agg.close(30.0)
    assert [(c.start, c.end) for c in closed] == [(0.0, 10.0), (10.0, 20.0), (20.0, 30.0)]
    assert [next(c.aggregates([])).count for c in closed] == [1, 2, 1]


def test_late_sample_for_a_closed_window_is_dropped_and_counted() -> None:
    agg = WindowAggregator(10.0, exact_threshold=1024)
    agg.add("m", (), 1.0, 5.0)
    agg.close(10.0)
    agg.add("m", (), 2.0, 9.0)
    assert agg.late_samples == 1
    assert agg.close(20.0) == []


def test_series_are_keyed_by_name_and_sorted_tags() -> None:
    agg = WindowAggregator(10.0, exact_threshold=1024)
    agg.add("m", tags_key({"a": "1", "b": "2"}), 1.0, 1.0)
    agg.add("m", tags_key({"b": "2", "a": "1"}), 2.0, 2.0)
    agg.add("m", tags_key({"a": "other"}), 3.0, 3.0)
    (closed,) = agg.close(10.0)
    counts = sorted(m.count for m in closed.aggregates([]))
    assert counts == [1, 2]


def test_non_finite_values_are_dropped_and_counted() -> None:
    agg = WindowAggregator(10.0, exact_threshold=1024)
    for v in (math.nan, math.inf, -math.inf, 1.0):
        agg.add("m", (), v, 1.0)
    assert agg.invalid_samples == 3
    (closed,) = agg.close(10.0)
    assert next(closed.aggregates([])).count == 1


def test_close_all_flushes_the_current_window_early() -> None:
    agg = WindowAggregator(60.0, exact_threshold=1024)
    agg.add("m", (), 1.0, 61.0)
    (closed,) = agg.close_all(70.0)
    assert closed.end == 120.0
    assert agg.close(1000.0) == []


def test_last_is_the_value_with_the_latest_timestamp() -> None:
    agg = WindowAggregator(60.0, exact_threshold=1024)
    agg.add("m", (), 5.0, 70.0)
    agg.add("m", (), 7.0, 65.0)  # out of order
    (closed,) = agg.close(120.0)
    assert next(closed.aggregates([])).last == 5.0


@settings(max_examples=200, deadline=None)
@given(
    st.lists(st.floats(min_value=-1e9, max_value=1e9, allow_nan=False), min_size=1, max_size=300),
    st.sampled_from([1.0, 25.0, 50.0, 90.0, 95.0, 99.0, 99.9]),
)
def test_window_close_emits_exact_quantiles_equal_to_numpy_linear(values: list[float], q: float) -> None:
    metric = _one_window(values, quantiles=(q,))
    expected = float(np.quantile(np.array(values), q / 100.0))
    assert metric.quantiles[f"p{q:g}"] == pytest.approx(expected, rel=1e-12, abs=1e-9)


def test_window_close_emits_exact_p95() -> None:
    values = [float(v) for v in range(1, 101)]
    metric = _one_window(values)
    assert metric.p95 == pytest.approx(np.quantile(values, 0.95))
    assert metric.p50 == 50.5
    assert metric.min == 1.0
    assert metric.max == 100.0
    assert metric.mean == 50.5


@pytest.mark.parametrize("distribution", ["lognormal", "uniform", "exponential", "mixed_sign"])
def test_sketch_quantiles_past_the_threshold_are_within_one_percent(distribution: str) -> None:
    rng = random.Random(7)
    draw = {
        "lognormal": lambda: rng.lognormvariate(3.0, 1.5),
        "uniform": lambda: rng.uniform(0.001, 100.0),
        "exponential": lambda: rng.expovariate(0.1),
        "mixed_sign": lambda: rng.gauss(0.0, 50.0),
    }[distribution]
    values = [draw() for _ in range(20_000)]
    metric = _one_window(values, threshold=1000, quantiles=(1, 50, 95, 99, 99.9))
    ordered = np.sort(np.array(values))
    for q in (1, 50, 95, 99, 99.9):
        lower = float(np.quantile(ordered, q / 100.0, method="lower"))
        assert metric.quantiles[f"p{q:g}"] == pytest.approx(lower, rel=0.01), q
    assert metric.count == 20_000
    assert metric.sum == pytest.approx(math.fsum(values))
    assert (metric.min, metric.max) == (min(values), max(values))


def test_exact_up_to_threshold_then_sketch() -> None:
    state = SeriesState()
    for i in range(10):
        state.add(float(i), float(i), threshold=10)
    assert state.sketch is None
    state.add(10.0, 10.0, threshold=10)
    assert state.sketch is not None
    assert state.count == 11


def test_batch_fold_puts_values_in_the_same_bins_as_ddsketch_add() -> None:
    rng = random.Random(1)
    values = [rng.gauss(0, 100) for _ in range(5000)] + [0.0] * 10
    one_by_one = qmod.new_sketch()
    for v in values:
        one_by_one.add(v)
    batched = qmod.new_sketch()
    qmod.fold_into_sketch(batched, values)
    assert qmod.sketch_to_state(batched) == qmod.sketch_to_state(one_by_one)


def test_counter_becomes_per_second_rate() -> None:
    agg = WindowAggregator(60.0, exact_threshold=1024)
    for ts, total in ((60.0, 1000.0), (70.0, 2000.0), (80.0, 2500.0)):
        agg.add_counter("system.network.bytes_sent", (), total, ts)
    (closed,) = agg.close(120.0)
    (metric,) = closed.aggregates([])
    assert metric.count == 2
    assert (metric.min, metric.max, metric.last) == (50.0, 100.0, 50.0)


def test_counter_reset_starts_over_without_a_negative_rate() -> None:
    agg = WindowAggregator(60.0, exact_threshold=1024)
    for ts, total in ((60.0, 1000.0), (70.0, 10.0), (80.0, 110.0)):
        agg.add_counter("c", (), total, ts)
    (closed,) = agg.close(120.0)
    (metric,) = closed.aggregates([])
    assert (metric.count, metric.min) == (1, 10.0)


def test_counter_rate_spans_window_boundaries() -> None:
    agg = WindowAggregator(10.0, exact_threshold=1024)
    agg.add_counter("c", (), 0.0, 8.0)
    agg.close(10.0)
    agg.add_counter("c", (), 20.0, 12.0)
    (closed,) = agg.close(20.0)
    assert next(closed.aggregates([])).last == 5.0


def test_add_event_routes_counters_and_gauges() -> None:
    agg = WindowAggregator(10.0, exact_threshold=1024)
    agg.add_event(MetricEvent(name="g", value=2.0, timestamp=1.0))
    agg.add_event(MetricEvent(name="c", value=2.0, type=MetricType.COUNTER, timestamp=1.0))
    agg.add_event(MetricEvent(name="c", value=4.0, type=MetricType.COUNTER, timestamp=2.0))
    (closed,) = agg.close(10.0)
    assert {m.name: m.last for m in closed.aggregates([])} == {"g": 2.0, "c": 2.0}


def test_add_event_puts_one_series_whatever_order_its_tags_come_in() -> None:
    agg = WindowAggregator(10.0, exact_threshold=1024)
    agg.add_event(MetricEvent(name="g", tags={"host": "n1", "core": "0"}, value=1.0, timestamp=1.0))
    agg.add_event(MetricEvent(name="g", tags={"core": "0", "host": "n1"}, value=3.0, timestamp=2.0))
    agg.add_event(MetricEvent(name="g", tags={"core": "1", "host": "n1"}, value=5.0, timestamp=2.0))
    (closed,) = agg.close(10.0)
    by_core = {m.tags["core"]: (m.count, m.mean) for m in closed.aggregates([])}
    assert by_core == {"0": (2, 2.0), "1": (1, 5.0)}


def test_the_tag_order_lookup_of_add_event_stays_bounded() -> None:
    from observatory_agent.aggregation import windows

    agg = WindowAggregator(10.0, exact_threshold=1024)
    for i in range(windows._TAG_KEYS_CACHED + 10):
        agg.add_event(MetricEvent(name="g", tags={"i": str(i)}, value=1.0, timestamp=1.0))
    assert len(agg._tag_keys) <= windows._TAG_KEYS_CACHED
    (closed,) = agg.close(10.0)
    assert len(closed.series) == windows._TAG_KEYS_CACHED + 10, "every series kept, only the lookup starts over"


@settings(max_examples=100, deadline=None)
@given(st.lists(st.floats(min_value=-1e9, max_value=1e9, allow_nan=False), min_size=1, max_size=40))
def test_every_quantile_of_a_window_equals_numpy_linear(values: list[float]) -> None:
    qs = (0.1, 1.0, 50.0, 90.0, 95.0, 99.0, 99.9)
    metric = _one_window(values, quantiles=qs)
    for q in qs:
        expected = float(np.quantile(np.array(values), q / 100.0))
        assert metric.quantiles[f"p{q:g}"] == pytest.approx(expected, rel=1e-12, abs=1e-9), q


def _partials_of(chunks: list[list[float]], threshold: int) -> list[SeriesPartial]:
    partials = []
    for node, chunk in enumerate(chunks):
        agg = WindowAggregator(60.0, exact_threshold=threshold)
        for i, v in enumerate(chunk):
            agg.add("m", TAGS, v, 60.0 + node + i * 1e-4)
        (closed,) = agg.close(120.0)
        partials.extend(closed.partials())
    # Through JSON, as a processor receives them.
    return [SeriesPartial.model_validate_json(p.model_dump_json()) for p in partials]


@settings(max_examples=60, deadline=None)
@given(
    st.lists(
        st.lists(st.floats(min_value=-1e6, max_value=1e6, allow_nan=False), min_size=1, max_size=80),
        min_size=1,
        max_size=5,
    ),
    st.sampled_from([10, 50, 1000]),
)
def test_merging_partials_equals_aggregating_the_union(chunks: list[list[float]], threshold: int) -> None:
    qs = (50.0, 95.0, 99.0)
    merged = merge_partials(_partials_of(chunks, threshold), threshold)
    ((key, state),) = merged.items()
    got = state.to_metric(key[0], key[1], 60.0, 120.0, qs)
    union = [v for chunk in chunks for v in chunk]
    want = _one_window(union, threshold=threshold, quantiles=qs)
    assert got.count == want.count
    assert got.sum == pytest.approx(want.sum, rel=1e-9, abs=1e-6)
    assert (got.min, got.max) == (want.min, want.max)
    assert got.last == chunks[-1][-1]
    if len(union) <= threshold:
        assert state.sketch is None
        assert got.quantiles == pytest.approx(want.quantiles)
    else:
        assert state.sketch is not None
        # Sketch bins are order-independent, so the merged sketch is the union's sketch.
        assert got.quantiles == want.quantiles


def test_merge_of_exact_partials_under_threshold_stays_exact() -> None:
    merged = merge_partials(_partials_of([[1.0, 2.0], [3.0]], 10), 10)
    (state,) = merged.values()
    assert state.sketch is None
    assert sorted(state.values) == [1.0, 2.0, 3.0]


def test_sketch_partial_round_trips_through_json() -> None:
    (partial,) = _partials_of([[float(i) for i in range(1, 500)]], 100)
    assert partial.sketch is not None
    assert partial.values is None
    state = SeriesState.from_partial(partial)
    assert state.quantiles([50.0])["p50"] == pytest.approx(250.0, rel=0.01)


def test_window_close_metrics_equal_validated_models() -> None:
    metric = _one_window([3.0, 1.0, 2.0])
    validated = type(metric).model_validate(metric.model_dump())
    assert metric == validated
    assert metric.model_dump_json() == validated.model_dump_json()
    assert metric.p50 == 2.0


def test_counter_rates_use_the_elapsed_clock_so_a_wall_clock_step_cannot_stretch_them() -> None:
    agg = WindowAggregator(60.0, exact_threshold=1024)
    key = tags_key({"interface": "eth0"})
    agg.add_counter("net.bytes", key, 1000.0, 100.0, elapsed=5.0)
    agg.add_counter("net.bytes", key, 2000.0, 3700.0, elapsed=6.0)  # the wall jumped an hour; 1 s passed
    (window,) = agg.close_all(3700.0)
    (metric,) = list(window.aggregates([50.0]))
    assert metric.last == 1000.0


def test_series_past_the_limit_are_refused_and_counted_per_window() -> None:
    agg = WindowAggregator(10.0, exact_threshold=1024, max_series=3)
    for cycle in range(2):
        for i in range(5):
            agg.add("m", tags_key({"i": str(i)}), 1.0, 1.0 + cycle)
        agg.add_counter("c", tags_key({"i": "x"}), 1.0, 1.0 + cycle)
    assert agg.open_series == 3
    # two refused gauges per cycle, and the counter's first rate (its priming is held apart, within limit)
    assert agg.limited_samples == 2 + 2 + 1
    (window,) = agg.close(10.0)
    assert len(window.series) == 3
    assert agg.dropped_series == 3
