"""Process-wide operator state shared by handlers and the resync loop: API client, settings, per-collector memory."""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field
from typing import Any

from observatory_operator.kube.client import Kube
from observatory_operator.settings import Settings
from observatory_operator.status import Outcome

Key = tuple[str, str]
"""(namespace, name) of a collector."""


@dataclass
class CollectorState:
    """What the operator remembers about one collector between rounds (lost on restart, by design)."""

    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    """One round at a time per collector: a spec change and a resync must not interleave their writes."""
    failures: int = 0
    retry_at: float = 0.0
    """Monotonic time before which resyncs only refresh status (backoff after a failed apply)."""
    outcome: Outcome | None = None
    rounds: int = 0
    shared_config_problem: str | None = None
    """The last reported shared-config problem: a Warning Event goes out only when it changes."""
    status: dict[str, Any] | None = None
    """The status as the API server answered our last write. Rounds compare against this rather
    than against a body, which may predate that write (a resync or poke that took its body before
    waiting for the lock, or a late watch event) and would make them repeat the write and its Events."""

    def failed(self, initial: float, maximum: float) -> float:
        """Record a failure; returns the backoff delay in seconds (doubling, capped)."""
        self.failures += 1
        delay = float(min(initial * 2 ** (self.failures - 1), maximum))
        self.retry_at = time.monotonic() + delay
        return delay

    def succeeded(self) -> None:
        self.failures = 0
        self.retry_at = 0.0

    @property
    def backing_off(self) -> bool:
        return time.monotonic() < self.retry_at


@dataclass
class Runtime:
    """Everything a handler needs besides the resource itself; passed to kopf as the memo."""

    kube: Kube
    settings: Settings
    bodies: dict[Key, dict[str, Any]] = field(default_factory=dict)
    """The latest body of every collector seen on the watch stream (the resync loop's work list)."""
    states: dict[Key, CollectorState] = field(default_factory=dict)
    resync_task: asyncio.Task[None] | None = None
    pokes: dict[Key, asyncio.Task[None]] = field(default_factory=dict)
    """Pending out-of-turn rounds (a child changed), at most one per collector."""

    def state(self, key: Key) -> CollectorState:
        if key not in self.states:
            self.states[key] = CollectorState()
        return self.states[key]

    def forget(self, key: Key) -> None:
        self.bodies.pop(key, None)
        self.states.pop(key, None)
        poke = self.pokes.pop(key, None)
        if poke is not None:
            poke.cancel()
