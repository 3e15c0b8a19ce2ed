"""The roll-up merge against numpy: exact and sketched quantiles, lateness, idempotence, bounds."""

from __future__ import annotations

import hashlib
import math
import random
from typing import Any

import numpy as np
import pytest
from ddsketch import DDSketch
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from observatory_agent.aggregation import rollup
from observatory_agent.aggregation.rollup import Rollup
from observatory_agent.aggregation.series import tags_key
from observatory_agent.aggregation.windows import WindowAggregator
from observatory_agent.contract import (
    ProcessorConfig,
    ProcessorTarget,
    RefusalReason,
    SharedConfig,
    WindowPartial,
    resolve_processor,
)
from observatory_agent.sinks import partials

T0 = 1_800_000_000.0
FUNCTIONS = ["count", "sum", "mean", "min", "max", "last", "p50", "p95", "p99"]


def _config(**overrides: Any) -> Any:
    spec: dict[str, Any] = {
        "rule": "r",
        "metrics": ["app.latency*"],
        "group_by": ["zone"],
        "functions": FUNCTIONS,
        "window": "20s",
        "allowed_lateness": "5s",
        "late_horizon": "40s",
        "restart_grace": "1s",
        "output": {"measurement": "cluster.latency"},
        **overrides,
    }
    return resolve_processor(ProcessorConfig.model_validate(spec), SharedConfig(cluster_name="c1"))


def _partial(
    node: str,
    samples: list[tuple[float, float]],
    *,
    zone: str = "a",
    name: str = "app.latency",
    agent_window: float = 10.0,
    threshold: int = 1024,
    source: str = "s1",
    extra_tags: dict[str, str] | None = None,
) -> list[WindowPartial]:
    """Partials of one node built the way agents build them: WindowAggregator windows, through JSON."""
    agg = WindowAggregator(agent_window, exact_threshold=threshold)
    tags = tags_key({"zone": zone, "node": node, **(extra_tags or {})})
    for ts, value in samples:
        agg.add(name, tags, value, ts)
    target = ProcessorTarget(rule="r", url="http://p", metrics=["app.*"])
    out = []
    for window in agg.close(T0 + 10_000):
        built = partials.build(window, target, node, source)
        assert built is not None
        out.append(WindowPartial.model_validate_json(built.model_dump_json()))
    return out


def _digest(partial: WindowPartial) -> bytes:
    return hashlib.blake2b(partial.model_dump_json().encode(), digest_size=16).digest()


def _offer_all(roll: Rollup, items: list[WindowPartial], now: float) -> list[rollup.Outcome]:
    return [roll.offer(p, _digest(p), now) for p in items]


def _points(roll: Rollup, end: float) -> dict[str, dict[str, Any]]:
    window = roll.windows[end]
    return {tags.get("zone", ""): fields for tags, fields in roll.points(window)}


def _samples(rng: random.Random, n: int, start: float, span: float) -> list[tuple[float, float]]:
    return [(start + span * i / n, rng.lognormvariate(2.0, 1.0)) for i in range(n)]


@settings(max_examples=40, deadline=None)
@given(
    st.lists(
        st.lists(st.floats(min_value=-1e6, max_value=1e6, allow_nan=False), min_size=1, max_size=60),
        min_size=1,
        max_size=6,
    ),
    st.sampled_from([20, 100, 5000]),
)
def test_merged_window_equals_numpy_over_every_nodes_samples(nodes: list[list[float]], threshold: int) -> None:
    config = _config(exact_threshold=threshold)
    roll = Rollup(config, started=0.0, floor=None)
    everything: list[float] = []
    for i, values in enumerate(nodes):
        # Two agent windows per rule window: the rule folds both.
        timed = [(T0 + 19.9 * j / len(values), v) for j, v in enumerate(values)]
        everything += values
        assert all(o.accepted for o in _offer_all(roll, _partial(f"n{i}", timed), T0 + 21))
    (fields,) = _points(roll, T0 + 20).values()
    arr = np.array(everything)
    assert fields["count"] == len(everything)
    assert fields["sum"] == pytest.approx(math.fsum(everything), rel=1e-9, abs=1e-6)
    assert fields["mean"] == pytest.approx(float(arr.mean()), rel=1e-9, abs=1e-6)
    assert (fields["min"], fields["max"]) == (float(arr.min()), float(arr.max()))
    assert fields["nodes"] == len(nodes)
    if len(everything) <= threshold:
        assert fields["quantile_method"] == "exact"
        for q in (50, 95, 99):
            assert fields[f"p{q}"] == pytest.approx(float(np.percentile(arr, q)), rel=1e-12, abs=1e-9)
    else:
        assert fields["quantile_method"] == "sketch"
        for q in (50, 95, 99):
            want = float(np.percentile(arr, q, method="lower"))
            assert fields[f"p{q}"] == pytest.approx(want, rel=0.0101, abs=1e-9)


def test_sketched_p99_of_a_thousand_nodes_is_within_one_percent_of_numpy() -> None:
    rng = random.Random(7)
    roll = Rollup(_config(), started=0.0, floor=None)
    everything: list[float] = []
    for n in range(300):
        samples = _samples(rng, 20, T0, 19.9)
        everything += [v for _, v in samples]
        _offer_all(roll, _partial(f"node-{n}", samples), T0 + 21)
    (fields,) = _points(roll, T0 + 20).values()
    assert fields["quantile_method"] == "sketch"
    assert fields["count"] == 6000
    for q in (50, 95, 99):
        assert fields[f"p{q}"] == pytest.approx(float(np.percentile(everything, q)), rel=0.01)


def test_agents_sketches_merge_bucket_by_bucket() -> None:
    """An agent past its own exact threshold sends a sketch; the group then is a sketch too."""
    rng = random.Random(3)
    roll = Rollup(_config(), started=0.0, floor=None)
    everything: list[float] = []
    for n in range(4):
        samples = _samples(rng, 400, T0, 9.9)
        everything += [v for _, v in samples]
        (partial,) = _partial(f"n{n}", samples, threshold=50)
        assert partial.series.sketches
        assert roll.offer(partial, _digest(partial), T0 + 21).accepted
    (fields,) = _points(roll, T0 + 20).values()
    assert fields["quantile_method"] == "sketch"
    assert fields["count"] == 1600
    reference = DDSketch(0.01)
    for v in everything:
        reference.add(v)
    for q in (50, 95, 99):
        # The same buckets as one sketch fed every sample: merging lost nothing.
        assert fields[f"p{q}"] == pytest.approx(
            min(max(reference.get_quantile_value(q / 100), min(everything)), max(everything)), rel=1e-12
        )
        assert fields[f"p{q}"] == pytest.approx(float(np.percentile(everything, q, method="lower")), rel=0.0101)


def test_one_sketched_partial_makes_the_group_a_sketch_even_under_the_threshold() -> None:
    roll = Rollup(_config(exact_threshold=10_000), started=0.0, floor=None)
    rng = random.Random(1)
    (sketched,) = _partial("n1", _samples(rng, 100, T0, 9.9), threshold=10)
    (exact,) = _partial("n2", _samples(rng, 5, T0, 9.9))
    _offer_all(roll, [exact, sketched], T0 + 21)
    (fields,) = _points(roll, T0 + 20).values()
    assert (fields["quantile_method"], fields["count"]) == ("sketch", 105)


def test_last_is_the_newest_sample_and_ties_go_to_the_larger_value() -> None:
    roll = Rollup(_config(), started=0.0, floor=None)
    # Agents stamp samples with the tick, so every node's last sample shares one timestamp.
    a = _partial("a", [(T0 + 1, 5.0), (T0 + 9, 1.0)])
    b = _partial("b", [(T0 + 2, 7.0), (T0 + 9, 3.0)])
    _offer_all(roll, b + a, T0 + 21)
    assert _points(roll, T0 + 20)["a"]["last"] == 3.0
    roll2 = Rollup(_config(), started=0.0, floor=None)
    _offer_all(roll2, a + b, T0 + 21)
    assert _points(roll2, T0 + 20)["a"]["last"] == 3.0


def test_group_by_a_tag_with_two_values_gives_two_series_with_their_own_tags() -> None:
    roll = Rollup(_config(), started=0.0, floor=None)
    _offer_all(roll, _partial("n1", [(T0 + 1, 1.0)], zone="a") + _partial("n2", [(T0 + 1, 9.0)], zone="b"), T0 + 21)
    points = list(roll.points(roll.windows[T0 + 20]))
    assert sorted((tags["zone"], fields["max"]) for tags, fields in points) == [("a", 1.0), ("b", 9.0)]
    for tags, fields in points:
        assert tags == {"rule": "r", "namespace": "default", "cluster": "c1", "zone": tags["zone"]}
        assert set(fields) == {*FUNCTIONS, "nodes", "quantile_method"}
        assert isinstance(fields["count"], int)
        assert isinstance(fields["nodes"], int)


def test_a_series_without_the_group_tag_forms_its_own_group_without_that_tag() -> None:
    roll = Rollup(_config(group_by=["zone", "pool"]), started=0.0, floor=None)
    _offer_all(roll, _partial("n1", [(T0 + 1, 1.0)], extra_tags={"pool": "gpu"}), T0 + 21)
    _offer_all(roll, _partial("n2", [(T0 + 1, 2.0)]), T0 + 21)
    tags = sorted((sorted(t.items()) for t, _ in roll.points(roll.windows[T0 + 20])), key=len)
    assert tags == [
        [("cluster", "c1"), ("namespace", "default"), ("rule", "r"), ("zone", "a")],
        [("cluster", "c1"), ("namespace", "default"), ("pool", "gpu"), ("rule", "r"), ("zone", "a")],
    ]


def test_metric_patterns_and_tag_matchers_are_checked_again_at_the_processor() -> None:
    roll = Rollup(_config(match_tags={"zone": "a"}), started=0.0, floor=None)
    _offer_all(roll, _partial("n1", [(T0 + 1, 1.0)], name="app.other"), T0 + 21)
    _offer_all(roll, _partial("n2", [(T0 + 1, 2.0)], zone="b"), T0 + 21)
    _offer_all(roll, _partial("n3", [(T0 + 1, 3.0)]), T0 + 21)
    assert {k: f["max"] for k, f in _points(roll, T0 + 20).items()} == {"a": 3.0}
    assert roll.counters.filtered_series == 2


def test_a_resent_partial_changes_nothing_and_different_content_under_its_key_is_refused() -> None:
    roll = Rollup(_config(), started=0.0, floor=None)
    (first,) = _partial("n1", [(T0 + 1, 1.0), (T0 + 2, 2.0)])
    assert roll.offer(first, _digest(first), T0 + 12).accepted
    again = roll.offer(first, _digest(first), T0 + 13)
    assert (again.accepted, again.duplicate) == (True, True)
    (changed,) = _partial("n1", [(T0 + 1, 100.0)])
    conflict = roll.offer(changed, _digest(changed), T0 + 13)
    assert (conflict.accepted, conflict.reason) == (False, RefusalReason.CONFLICT)
    fields = _points(roll, T0 + 20)["a"]
    assert (fields["count"], fields["max"]) == (2, 2.0)


def test_a_restarted_agent_sends_a_second_source_for_the_same_window_and_both_count() -> None:
    roll = Rollup(_config(), started=0.0, floor=None)
    before = _partial("n1", [(T0 + 1, 1.0)], source="boot1.0")
    after = _partial("n1", [(T0 + 6, 4.0)], source="boot2.0")
    assert all(o.accepted for o in _offer_all(roll, before + after, T0 + 21))
    fields = _points(roll, T0 + 20)["a"]
    assert (fields["count"], fields["nodes"], fields["max"]) == (2, 1, 4.0)


def test_window_is_due_only_after_its_allowed_lateness_and_windows_come_oldest_first() -> None:
    roll = Rollup(_config(), started=0.0, floor=None)
    assert all(o.accepted for o in _offer_all(roll, _partial("n1", [(T0 + 1, 1.0)]), T0 + 12))
    assert roll.due(T0 + 24.9) == []
    (first,) = roll.due(T0 + 25)
    assert first.end == T0 + 20
    assert all(o.accepted for o in _offer_all(roll, _partial("n1", [(T0 + 21, 2.0)]), T0 + 30))
    assert [w.end for w in roll.due(T0 + 45)] == [T0 + 20, T0 + 40]


def test_late_partial_within_the_horizon_rewrites_its_window_and_later_ones_are_dropped() -> None:
    roll = Rollup(_config(), started=0.0, floor=None)
    _offer_all(roll, _partial("n1", [(T0 + 1, 1.0)]), T0 + 12)
    (window,) = roll.due(T0 + 25)
    roll.written(window)
    assert roll.due(T0 + 26) == []
    late = _partial("n2", [(T0 + 2, 5.0)])
    assert _offer_all(roll, late, T0 + 30)[0].accepted
    assert roll.counters.late_partials == 1
    (again,) = roll.due(T0 + 30)
    assert again is window
    assert _points(roll, T0 + 20)["a"]["count"] == 2
    roll.written(again)
    too_late = _partial("n3", [(T0 + 3, 9.0)])
    refused = _offer_all(roll, too_late, T0 + 61)[0]
    assert (refused.accepted, refused.reason) == (False, RefusalReason.TOO_LATE)
    assert roll.counters.dropped_partials == {"too_late": 1}
    assert roll.expire(T0 + 61) == 1
    assert _offer_all(roll, too_late, T0 + 62)[0].reason is RefusalReason.TOO_LATE


def test_a_window_never_seen_below_the_frontier_opens_late_and_is_due_at_once() -> None:
    roll = Rollup(_config(), started=0.0, floor=None)
    _offer_all(roll, _partial("n1", [(T0 + 21, 1.0)]), T0 + 30)
    (window,) = roll.due(T0 + 45)
    roll.written(window)
    assert roll.frontier == T0 + 40
    assert _offer_all(roll, _partial("n2", [(T0 + 1, 1.0)]), T0 + 46)[0].accepted
    assert [w.end for w in roll.due(T0 + 46)] == [T0 + 20]
    assert roll.pending_below(T0 + 40) == T0 + 20


def test_windows_at_or_below_the_floor_are_refused_as_written() -> None:
    roll = Rollup(_config(), started=T0 + 50, floor=T0 + 40)
    refused = _offer_all(roll, _partial("n1", [(T0 + 21, 1.0)]), T0 + 50)[0]
    assert (refused.accepted, refused.reason, refused.window_end) == (False, RefusalReason.WRITTEN, T0 + 40)
    assert _offer_all(roll, _partial("n1", [(T0 + 41, 1.0)]), T0 + 50)[0].accepted


def test_after_a_start_windows_already_due_wait_for_the_grace() -> None:
    roll = Rollup(_config(restart_grace="10s"), started=T0 + 70, floor=T0 + 20)
    _offer_all(roll, _partial("n1", [(T0 + 21, 1.0), (T0 + 41, 1.0), (T0 + 61, 1.0)]), T0 + 70)
    assert roll.due(T0 + 79) == []
    assert [w.end for w in roll.due(T0 + 80)] == [T0 + 40, T0 + 60]
    assert roll.due(T0 + 80)[-1].end == T0 + 60


def test_the_grace_runs_from_the_first_partial_an_instance_hears_not_its_start() -> None:
    """Agents reach a new instance only once its pod is Ready behind the Service: until the first partial
    gets through, the grace has not begun."""
    roll = Rollup(_config(restart_grace="10s"), started=T0 + 70, floor=T0 + 20)
    _offer_all(roll, _partial("n1", [(T0 + 21, 1.0), (T0 + 41, 1.0)]), T0 + 78)
    assert roll.due(T0 + 80) == []  # ten seconds after the start, but two after the first partial
    assert roll.due(T0 + 87) == []
    assert [w.end for w in roll.due(T0 + 88)] == [T0 + 40, T0 + 60]


def test_after_an_outage_a_window_that_ended_before_the_instance_heard_from_anyone_takes_late_partials() -> None:
    """An agent whose node routes to the new instance later than the others is late, not lost: windows that
    ended before the instance first heard from an agent keep the late horizon (40 s) from then."""
    roll = Rollup(_config(restart_grace="1s"), started=T0 + 100, floor=T0 + 20)
    _offer_all(roll, _partial("n1", [(T0 + 21, 1.0)]), T0 + 100)
    (window,) = roll.due(T0 + 102)
    assert (window.end, len(window.node_index)) == (T0 + 40, 1)
    roll.written(window)
    assert roll.expire(T0 + 130) == 0  # 90 s after its end, 30 s after the instance heard n1
    late = _offer_all(roll, _partial("n2", [(T0 + 22, 3.0)]), T0 + 130)
    assert late[0].accepted, late
    (again,) = roll.due(T0 + 130)
    assert (again.end, len(again.node_index)) == (T0 + 40, 2)
    roll.written(again)
    assert roll.expire(T0 + 141) == 1  # past 40 s from when it first heard: forgotten
    assert _offer_all(roll, _partial("n3", [(T0 + 23, 1.0)]), T0 + 141)[0].reason is RefusalReason.TOO_LATE


def test_over_max_series_groups_are_dropped_counted_and_never_stored() -> None:
    roll = Rollup(_config(max_series=2), started=0.0, floor=None)
    for zone in "abcde":
        _offer_all(roll, _partial(f"n-{zone}", [(T0 + 1, 1.0)], zone=zone), T0 + 12)
        _offer_all(roll, _partial(f"m-{zone}", [(T0 + 1, 1.0)], zone=zone), T0 + 12)
    window = roll.windows[T0 + 20]
    assert window.series == 2
    assert len(window.dropped_keys) == 3
    assert (window.dropped_series, roll.counters.dropped_groups, roll.counters.dropped_series) == (6, 3, 6)


def test_bounds_on_open_windows_and_nodes_answer_busy() -> None:
    roll = Rollup(_config(max_open_windows=2, max_nodes=2), started=0.0, floor=None)
    now = T0 + 200
    for k in range(2):
        assert _offer_all(roll, _partial("n1", [(T0 + 20 * k + 1, 1.0)]), now)[0].accepted
    busy = _offer_all(roll, _partial("n1", [(T0 + 41, 1.0)]), now)[0]
    assert (busy.accepted, busy.reason) == (False, RefusalReason.BUSY)
    assert _offer_all(roll, _partial("n2", [(T0 + 1, 1.0)]), now)[0].accepted
    crowded = _offer_all(roll, _partial("n3", [(T0 + 1, 1.0)]), now)[0]
    assert (crowded.accepted, crowded.reason) == (False, RefusalReason.BUSY)


def test_rules_of_one_name_in_two_namespaces_write_series_of_their_own() -> None:
    # Same measurement, same rule name, same window: without the namespace tag one team's points
    # would overwrite the other's in InfluxDB.
    tags = []
    for namespace in ("team-a", "team-b"):
        roll = Rollup(_config(namespace=namespace), started=0.0, floor=None)
        _offer_all(roll, _partial("n1", [(T0 + 1, 1.0)], zone="a"), T0 + 21)
        ((point_tags, _),) = list(roll.points(roll.windows[T0 + 20]))
        tags.append(point_tags)
    assert tags[0] != tags[1]
    assert [t["namespace"] for t in tags] == ["team-a", "team-b"]


@pytest.mark.parametrize("tag", ["rule", "namespace", "_field", ""])
def test_the_rules_own_tags_cannot_be_grouped_by(tag: str) -> None:
    with pytest.raises(ValidationError, match="cannot be grouped by"):
        _config(group_by=[tag])


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"rule": "other"}, "rule"),
        ({"window_start": T0 + 3.0, "window_end": T0 + 10.0}, "window"),
        ({"window_start": T0 + 5.0, "window_end": T0 + 15.0}, "window_start"),
        ({"window_start": T0 + 1000.0, "window_end": T0 + 1010.0}, "window_end"),
    ],
)
def test_partials_that_do_not_fit_the_rule_are_refused_naming_why(change: dict[str, Any], field: str) -> None:
    roll = Rollup(_config(), started=0.0, floor=None)
    (partial,) = _partial("n1", [(T0 + 1, 1.0)])
    bad = partial.model_copy(update=change)
    outcome = roll.offer(bad, _digest(bad), T0 + 12)
    assert (outcome.accepted, outcome.reason) == (False, RefusalReason.MISMATCH)
    assert outcome.message is not None
    assert outcome.message.startswith(f"{field}:")


def test_written_windows_are_forgotten_after_the_horizon_and_pending_ones_are_not() -> None:
    roll = Rollup(_config(), started=0.0, floor=None)
    assert all(o.accepted for o in _offer_all(roll, _partial("n1", [(T0 + 1, 1.0)]), T0 + 12))
    assert all(o.accepted for o in _offer_all(roll, _partial("n1", [(T0 + 21, 1.0)]), T0 + 30))
    roll.written(roll.due(T0 + 31)[0])
    assert roll.expire(T0 + 61) == 1
    assert list(roll.windows) == [T0 + 40]
    assert roll.open_windows == 1


def test_numpy_bucket_keys_equal_ddsketchs_own_mapping() -> None:
    """Pins the one ddsketch internal the merge reads (the mapping's multiplier and offset)."""
    rng = np.random.default_rng(1)
    values = np.concatenate(
        [rng.lognormal(3, 4, 200_000), rng.uniform(1e-300, 1e-290, 1000), rng.uniform(1e300, 1.7e308, 1000)]
    )
    mapping = DDSketch(0.01)._mapping
    want = np.array([mapping.key(v) for v in values.tolist()])
    assert np.array_equal(rollup.bucket_keys(values), want)


def test_buckets_handed_to_ddsketch_give_the_quantiles_of_a_sketch_fed_sample_by_sample() -> None:
    """Pins the store attributes ``Bins.store`` fills (bins, offset, min_key, max_key, count)."""
    rng = np.random.default_rng(2)
    values = np.concatenate([rng.lognormal(1, 2, 5000), -rng.lognormal(0, 1, 500), np.zeros(30)])
    ours = rollup.GroupSketch()
    for chunk in np.array_split(values, 7):
        ours.add_samples(chunk)
    reference = DDSketch(0.01)
    for v in values.tolist():
        reference.add(v)
    sketch = ours.ddsketch()
    assert sketch.count == reference.count
    for q in (0.0, 0.01, 0.1, 0.25, 0.5, 0.9, 0.99, 0.999, 1.0):
        assert sketch.get_quantile_value(q) == reference.get_quantile_value(q)


def test_buckets_stay_bounded_whatever_the_spread() -> None:
    bins = rollup.Bins()
    bins.add(np.arange(-30_000, 30_000, 7, dtype=np.int64))
    assert bins.counts is not None
    assert len(bins.counts) == rollup.BIN_LIMIT
    assert bins.total == len(range(-30_000, 30_000, 7))


def test_written_windows_make_room_for_new_ones_before_their_horizon() -> None:
    roll = Rollup(_config(max_open_windows=2, late_horizon="1h"), started=0.0, floor=None)
    for k in range(4):
        start = T0 + 20 * k
        assert all(o.accepted for o in _offer_all(roll, _partial("n1", [(start + 1, 1.0)]), start + 11))
        for window in roll.due(start + 25):
            roll.written(window)
    assert len(roll.windows) == 2
    forgotten = _offer_all(roll, _partial("n2", [(T0 + 1, 1.0)]), T0 + 90)[0]
    assert forgotten.reason is RefusalReason.TOO_LATE
