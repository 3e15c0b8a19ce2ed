"""Leader election on a coordination.k8s.io Lease (client-go's algorithm): one replica writes at a time.

The leader renews the Lease every ``retry_seconds``; a standby takes over only when the Lease
has not changed for ``lease_seconds`` *by its own clock* (never by comparing timestamps across
machines), or when the leader released it on shutdown. Updates carry the Lease's
resourceVersion, so two standbys racing for an expired Lease cannot both win: the API server
answers the loser 409 Conflict.

The leader stops writing on its own as soon as it could not renew for ``renew_deadline_seconds``
(< ``lease_seconds``): ``fence()`` raises ``NotLeader`` before any write is sent, so even a leader
cut off from the API server has stopped before a standby may start. Losing the Lease ends the
process (``on_lost``): the pod restarts as a standby with a fresh cache, as client-go's users do.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from observatory_operator import metrics
from observatory_operator.kube import errors
from observatory_operator.kube.client import LEASES, Kube
from observatory_operator.objects import Obj
from observatory_operator.settings import LeaderSettings

log = logging.getLogger("observatory_operator.lease")


def _now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


class LeaderElector:
    """Holds (or waits for) one Lease; ``leading`` is set while this replica may write."""

    def __init__(
        self,
        kube: Kube,
        *,
        namespace: str,
        name: str,
        identity: str,
        settings: LeaderSettings,
        on_lost: Callable[[], None],
    ) -> None:
        self.kube, self.namespace, self.name, self.identity = kube, namespace, name, identity
        self.settings = settings
        self.on_lost = on_lost
        self.leading = asyncio.Event()
        self._renewed_at = 0.0
        """Monotonic time of our last successful acquire or renew."""
        self._held: Obj | None = None
        """The Lease as our last successful update answered it: renewing from it needs no read first."""
        self._observed: tuple[str, str] | None = None
        self._observed_at = 0.0
        """The (holder, renewTime) we last saw, and when by our clock: a standby's only measure of expiry."""

    @property
    def path(self) -> str:
        return LEASES.path(self.namespace, self.name)

    def _renewed_recently(self) -> bool:
        return time.monotonic() - self._renewed_at <= self.settings.renew_deadline_seconds

    def fence(self) -> None:
        """Raise ``NotLeader`` unless this replica renewed recently enough to be sure nobody else writes."""
        if not self.leading.is_set() or not self._renewed_recently():
            raise errors.NotLeader(f"not the leader of Lease {self.namespace}/{self.name}; write not sent")

    async def run(self) -> None:
        """Acquire, then renew until the Lease is lost (then ``on_lost``) or the task is cancelled (then release)."""
        try:
            while True:
                try:
                    held = await self._try_acquire_or_renew()
                except errors.KubeError as exc:
                    log.warning("Lease %s/%s: %s", self.namespace, self.name, exc.message)
                    held = False
                if held and not self.leading.is_set():
                    log.info("acquired Lease %s/%s as %s", self.namespace, self.name, self.identity)
                    self.leading.set()
                    metrics.LEADER.set(1)
                elif not held and self.leading.is_set() and not self._renewed_recently():
                    log.error("lost Lease %s/%s: stopping", self.namespace, self.name)
                    self.leading.clear()
                    metrics.LEADER.set(0)
                    self.on_lost()
                    return
                await asyncio.sleep(self.settings.retry_seconds)
        except asyncio.CancelledError:
            await self._release()
            raise

    async def _renew(self) -> bool:
        """Renew from the Lease we last wrote: one request per renewal; a 409 means read it again."""
        held = self._held
        if held is None:
            return False
        held = {**held, "spec": {**held["spec"], "renewTime": _now()}}
        try:
            answer = await self.kube.update(self.path, held, fenced=False)
        except (errors.Conflict, errors.NotFound):
            self._held = None
            return False
        self._held = answer
        self._won()
        return True

    async def _try_acquire_or_renew(self) -> bool:
        if await self._renew():
            return True
        now = _now()
        mine: Obj = {
            "holderIdentity": self.identity,
            "leaseDurationSeconds": int(self.settings.lease_seconds),
            "renewTime": now,
        }
        try:
            lease = await self.kube.get(self.path)
        except errors.NotFound:
            body = {
                "apiVersion": "coordination.k8s.io/v1",
                "kind": "Lease",
                "metadata": {"name": self.name, "namespace": self.namespace},
                "spec": {**mine, "acquireTime": now, "leaseTransitions": 0},
            }
            try:
                self._held = await self.kube.create(LEASES.path(self.namespace), body, fenced=False)
            except errors.Conflict:
                return False  # another replica created it first
            self._won()
            return True
        spec: dict[str, Any] = lease.get("spec") or {}
        holder = str(spec.get("holderIdentity") or "")
        seen = (holder, str(spec.get("renewTime") or ""))
        if seen != self._observed:
            self._observed, self._observed_at = seen, time.monotonic()
        if holder and holder != self.identity:
            duration = float(spec.get("leaseDurationSeconds") or self.settings.lease_seconds)
            if time.monotonic() - self._observed_at < duration:
                return False  # someone else holds it and renewed within its lease by our clock
        transitions = int(spec.get("leaseTransitions") or 0)
        if holder != self.identity:
            mine.update(acquireTime=now, leaseTransitions=transitions + 1)
        else:
            mine.update(acquireTime=spec.get("acquireTime") or now, leaseTransitions=transitions)
        lease["spec"] = {**spec, **mine}
        try:
            answer = await self.kube.update(self.path, lease, fenced=False)
        except errors.Conflict:
            return False  # someone wrote the Lease since our read; look again next time
        spec = answer.get("spec") or {}
        self._observed, self._observed_at = (self.identity, str(spec.get("renewTime") or "")), time.monotonic()
        self._held = answer
        self._won()
        return True

    def _won(self) -> None:
        self._renewed_at = time.monotonic()

    async def _release(self) -> None:
        """On shutdown: hand the Lease over at once instead of making a standby wait out its duration."""
        if not self.leading.is_set():
            return
        self.leading.clear()
        self._held = None
        metrics.LEADER.set(0)
        with contextlib.suppress(errors.KubeError):
            lease = await self.kube.get(self.path)
            spec = lease.get("spec") or {}
            if spec.get("holderIdentity") != self.identity:
                return
            lease["spec"] = {**spec, "holderIdentity": None, "leaseDurationSeconds": 1, "renewTime": _now()}
            await self.kube.update(self.path, lease, fenced=False)
            log.info("released Lease %s/%s", self.namespace, self.name)


__all__ = ["LeaderElector"]
