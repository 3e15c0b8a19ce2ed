"""The work queue: one round per key at a time, bursts deduplicated, a key added mid-round runs after it."""

from __future__ import annotations

import asyncio

from observatory_operator.controller.queue import WorkQueue


def _queue() -> WorkQueue[str]:
    return WorkQueue(initial=10.0, maximum=60.0)


async def test_a_burst_of_adds_is_one_round() -> None:
    q = _queue()
    for _ in range(5):
        q.add("ns/a")
    q.add("ns/b")
    assert [await q.get(), await q.get()] == ["ns/a", "ns/b"]
    assert len(q) == 0


async def test_a_key_added_during_its_round_is_handed_out_only_after_done() -> None:
    q = _queue()
    q.add("ns/a")
    key = await q.get()
    q.add("ns/a")  # a spec change while the round runs
    waiter = asyncio.create_task(q.get())
    await asyncio.sleep(0.01)
    assert not waiter.done(), "never two rounds of one key at once"
    q.done(key)
    assert await asyncio.wait_for(waiter, 1) == "ns/a"


async def test_backoff_doubles_is_capped_and_resets() -> None:
    q = _queue()
    delays = [q.backoff("ns/a") for _ in range(5)]
    assert delays == [10.0, 20.0, 40.0, 60.0, 60.0]
    q.forget("ns/a")
    assert q.backoff("ns/a") == 10.0
    q.close()


async def test_an_earlier_add_after_wins_and_drop_cancels_it() -> None:
    q = _queue()
    q.add_after("ns/a", 30.0)
    q.add_after("ns/a", 0.01)
    assert await asyncio.wait_for(q.get(), 1) == "ns/a"
    q.done("ns/a")
    q.add_after("ns/b", 0.01)
    q.drop("ns/b")
    await asyncio.sleep(0.05)
    assert len(q) == 0
