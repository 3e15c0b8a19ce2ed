"""Per-collector memory: retries back off by doubling up to a cap and reset on success."""

from __future__ import annotations

from observatory_operator.handlers.runtime import CollectorState


def test_backoff_doubles_and_is_capped() -> None:
    state = CollectorState()
    delays = [state.failed(initial=10.0, maximum=60.0) for _ in range(5)]
    assert delays == [10.0, 20.0, 40.0, 60.0, 60.0]
    assert state.backing_off


def test_success_ends_the_backoff() -> None:
    state = CollectorState()
    state.failed(initial=10.0, maximum=60.0)
    state.succeeded()
    assert not state.backing_off
    assert state.failed(initial=10.0, maximum=60.0) == 10.0
