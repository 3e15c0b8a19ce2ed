"""A work queue of object keys with client-go's semantics: one round per key at a time, bursts deduplicated.

- ``add(key)`` marks a key dirty; a dirty key waits in the queue once, however often it is added.
- ``get()`` hands a key to one worker and marks it processing; while it is, the key is never handed
  out again. Added meanwhile, it is queued once more when ``done(key)`` is called, so the next
  round starts after this one and reads the newest object: this is the key's lock.
- ``add_after(key, delay)`` adds later (an earlier pending add wins); ``backoff(key)`` does so with
  a per-key delay doubling from ``initial`` to ``maximum`` until ``forget(key)`` resets it.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Hashable
from typing import Generic, TypeVar

K = TypeVar("K", bound=Hashable)


class WorkQueue(Generic[K]):
    def __init__(self, *, initial: float, maximum: float) -> None:
        self.initial, self.maximum = initial, maximum
        self._queue: deque[K] = deque()
        self._dirty: set[K] = set()
        self._processing: set[K] = set()
        self._failures: dict[K, int] = {}
        self._timers: dict[K, tuple[float, asyncio.TimerHandle]] = {}
        self._ready = asyncio.Event()
        self._closed = False

    def __len__(self) -> int:
        return len(self._queue)

    def _wake(self) -> None:
        self._ready.set()

    def add(self, key: K) -> None:
        if self._closed or key in self._dirty:
            return
        self._dirty.add(key)
        if key not in self._processing:
            self._queue.append(key)
            self._wake()

    def add_after(self, key: K, delay: float) -> None:
        if delay <= 0:
            self.add(key)
            return
        due = time.monotonic() + delay
        pending = self._timers.get(key)
        if pending is not None:
            if pending[0] <= due:
                return  # an earlier add is already scheduled
            pending[1].cancel()

        def fire() -> None:
            self._timers.pop(key, None)
            self.add(key)

        self._timers[key] = (due, asyncio.get_running_loop().call_later(delay, fire))

    def backoff(self, key: K) -> float:
        """Schedule ``key`` again after its next backoff delay; returns the delay in seconds."""
        failures = self._failures.get(key, 0)
        self._failures[key] = failures + 1
        delay = float(min(self.initial * 2**failures, self.maximum))
        self.add_after(key, delay)
        return delay

    def failures(self, key: K) -> int:
        return self._failures.get(key, 0)

    def forget(self, key: K) -> None:
        """Reset ``key``'s backoff (a round succeeded)."""
        self._failures.pop(key, None)

    def drop(self, key: K) -> None:
        """The object is gone: cancel pending adds and backoff. A round in progress still ends normally."""
        self._failures.pop(key, None)
        pending = self._timers.pop(key, None)
        if pending is not None:
            pending[1].cancel()
        if key in self._dirty and key not in self._processing:
            self._dirty.discard(key)
            self._queue.remove(key)
        else:
            self._dirty.discard(key)

    async def get(self) -> K:
        while not self._queue:
            if self._closed:
                raise asyncio.CancelledError
            self._ready.clear()
            await self._ready.wait()
        key = self._queue.popleft()
        self._dirty.discard(key)
        self._processing.add(key)
        return key

    def done(self, key: K) -> None:
        self._processing.discard(key)
        if key in self._dirty:
            self._queue.append(key)
            self._wake()

    def close(self) -> None:
        self._closed = True
        for _, handle in self._timers.values():
            handle.cancel()
        self._timers.clear()
        self._wake()


__all__ = ["WorkQueue"]
