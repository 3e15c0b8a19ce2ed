"""Partials for AggregationRule processors: built at window close, kept on disk until written, sent apart.

The protocol, agent side (the processor's side is in ``observatory_agent.processor``):

- At each window close the series a rule selects become a ``WindowPartial`` (columnar, version 2),
  stored in that rule's ``Outbox`` under ``buffer_dir/partials/<rule>`` (one fsynced file per
  partial, bounded to a quarter of ``buffer_max_bytes``: the oldest are dropped and counted when
  full) and sent by the rule's ``RuleSender`` on its own task, so the agent's node-level writes
  never wait on a processor.
- The processor answers every POST with a ``PartialsAck``: its ``instance`` id and ``watermark``
  (newest window end it has *written to InfluxDB*). A partial stays in the outbox until the
  watermark reaches its window, not merely until it was accepted.
- A new instance id means the processor restarted and merged nothing of what it had: every
  partial still in the outbox is sent again. ``written`` and ``busy`` refusals keep the partial;
  ``too_late``, ``conflict`` and ``mismatch`` refusals, and the answers by which the processor
  refuses a body it read as invalid (``REFUSED_CONTENT``: 400, 411, 413, 415, 422), drop it (counted).
  Any other answer (404 from something that is not the processor, 401/403 from a proxy, 5xx) keeps
  it and backs off: only the processor can say a partial is useless.
- Every request gets a connection of its own (the processor closes each after answering anyway): a
  connection that reached the wrong peer — a Service address used before kube-proxy routed it, a
  proxy that answers everything — is never reused, so the next attempt is routed afresh.
- Failures (network, 5xx, 503 while the processor reads its watermark back) back off up to the
  agent window; when nothing is left to send but partials wait to be written, the sender asks
  ``GET /v1/partials`` once per agent window so a restarted processor is noticed. A sender that
  starts with partials on disk (the agent restarted) asks first, so it sends only what is not
  written yet.

A partial's key is ``(rule, node, source, agent window)``. ``source`` names this process and its
window aggregator: a window closed early (SIGTERM, a config change) and closed again after a
restart or a new aggregator is sent as two partials with two sources, and both are merged.
"""

from __future__ import annotations

import asyncio
import contextlib
import fnmatch
import os
import random
import re
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

import structlog
from pydantic import ValidationError

from observatory_agent import httpclient
from observatory_agent.aggregation import quantiles as qmod
from observatory_agent.aggregation.series import SeriesKey
from observatory_agent.aggregation.windows import ClosedWindow
from observatory_agent.contract import (
    PartialsAck,
    ProcessorState,
    ProcessorTarget,
    RefusalReason,
    SeriesColumns,
    SketchState,
    WindowPartial,
    pack_floats,
    whole_multiple,
)
from observatory_agent.sinks.buffer import fsync_directory

log = structlog.get_logger("observatory_agent.sinks.partials")

REFUSED_CONTENT: Final = frozenset({400, 411, 413, 415, 422})
"""Statuses by which the processor refuses a body it read (invalid JSON or field, size, encoding):
sending the same bytes again cannot help, so the partial is dropped and counted."""
REQUEST_TIMEOUT: Final = 5.0
"""Seconds one POST or GET may take."""
BASE_BACKOFF: Final = 0.5
_SUFFIX: Final = ".json"
_NAME: Final = re.compile(r"^(\d{15})-(\d{15})-([A-Za-z0-9._-]{1,128})\.json$")


# --- building -------------------------------------------------------------------------------


def selected(keys: Sequence[SeriesKey], target: ProcessorTarget) -> list[SeriesKey]:
    """Series whose name matches one of the rule's globs and whose tags equal its matchers."""
    out = []
    for name, tags in keys:
        if not any(fnmatch.fnmatchcase(name, pattern) for pattern in target.metrics):
            continue
        tag_map = dict(tags)
        if all(tag_map.get(k) == v for k, v in target.match_tags.items()):
            out.append((name, tags))
    return out


def build(window: ClosedWindow, target: ProcessorTarget, node: str, source: str) -> WindowPartial | None:
    """The rule's series of ``window`` as one partial, or None when the rule selects none of them.

    With ``target.group_by`` set, each series carries only the tags the processor reads.
    """
    keys = selected(list(window.series), target)
    if not keys:
        return None
    keep = None if target.group_by is None else {*target.group_by, *target.match_tags}
    names: list[str] = []
    columns: dict[str, list[str | None]] = {}
    counts: list[int] = []
    sums: list[float] = []
    lows: list[float] = []
    highs: list[float] = []
    lasts: list[float] = []
    stamps: list[float] = []
    samples: list[float] = []
    sketches: dict[int, SketchState] = {}
    for i, (name, tags) in enumerate(keys):
        state = window.series[(name, tags)]
        count, total, lo, hi = state.stats()
        if state.sketch is None:
            samples.extend(state.values)
        else:
            state.spill()
            sketches[i] = qmod.sketch_to_state(state.sketch)
        names.append(name)
        for key, value in tags:
            if keep is None or key in keep:
                column = columns.get(key)
                if column is None:
                    column = columns[key] = [None] * i  # series before this one lack the tag
                column.append(value)
        for column in columns.values():
            if len(column) == i:
                column.append(None)
        counts.append(count)
        sums.append(total)
        lows.append(lo)
        highs.append(hi)
        lasts.append(state.last)
        stamps.append(state.last_ts)
    series = SeriesColumns(
        name=names,
        tags=columns,
        count=counts,
        sum=pack_floats(sums),
        min=pack_floats(lows),
        max=pack_floats(highs),
        last=pack_floats(lasts),
        last_timestamp=pack_floats(stamps),
        values=pack_floats(samples),
        sketches=sketches,
    )
    return WindowPartial(
        rule=target.rule,
        node=node,
        source=source,
        window_start=window.start,
        window_end=window.end,
        series=series,
    )


# --- the outbox -----------------------------------------------------------------------------


@dataclass(frozen=True)
class Entry:
    name: str
    window_start: float
    window_end: float
    size: int


def _entry_name(partial: WindowPartial) -> str:
    end, start = round(partial.window_end * 1000), round(partial.window_start * 1000)
    return f"{end:015d}-{start:015d}-{partial.source}{_SUFFIX}"


class Outbox:
    """Partials of one rule on disk, one file each, named so that sorting names sorts by window end.

    A ``put`` is written to a temporary file, fsynced and renamed, so a SIGKILL leaves either the
    whole partial or none. Bounded by ``max_bytes``: the oldest partials are dropped to make room
    and counted in ``dropped``.
    """

    def __init__(self, directory: Path, max_bytes: int) -> None:
        self.directory = directory
        self.max_bytes = max_bytes
        self.dropped = 0
        directory.mkdir(parents=True, exist_ok=True)
        self._entries: dict[str, Entry] = {}
        for path in sorted(directory.iterdir()):
            match = _NAME.match(path.name)
            if match is None:
                if path.name.endswith(".tmp"):
                    path.unlink(missing_ok=True)  # a put that a SIGKILL interrupted
                continue
            end_ms, start_ms, _source = match.groups()
            self._entries[path.name] = Entry(path.name, int(start_ms) / 1000, int(end_ms) / 1000, path.stat().st_size)

    def __len__(self) -> int:
        return len(self._entries)

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    @property
    def size(self) -> int:
        """Bytes of every stored partial."""
        return sum(e.size for e in self._entries.values())

    def entries(self) -> list[Entry]:
        """Oldest window first."""
        return [self._entries[k] for k in sorted(self._entries)]

    def put(self, partial: WindowPartial, body: bytes) -> int:
        """Store ``body`` (the partial's JSON) durably, replacing an earlier copy; returns partials dropped."""
        name = _entry_name(partial)
        dropped = 0
        if len(body) > self.max_bytes:
            self.dropped += 1
            return 1
        self._entries.pop(name, None)
        while self._entries and self.size + len(body) > self.max_bytes:
            self.remove(min(self._entries))
            dropped += 1
        tmp = self.directory / (name + ".tmp")
        with open(tmp, "wb") as fh:
            fh.write(body)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, self.directory / name)
        fsync_directory(self.directory)
        self._entries[name] = Entry(name, partial.window_start, partial.window_end, len(body))
        self.dropped += dropped
        return dropped

    def read(self, name: str) -> bytes:
        return (self.directory / name).read_bytes()

    def remove(self, name: str) -> None:
        if self._entries.pop(name, None) is not None:
            (self.directory / name).unlink(missing_ok=True)

    def remove_through(self, watermark: float) -> int:
        """Delete every partial whose window ends at or before ``watermark``; returns how many."""
        done = [name for name, e in self._entries.items() if e.window_end <= watermark + 1e-6]
        for name in done:
            self.remove(name)
        return len(done)


# --- sending --------------------------------------------------------------------------------


@dataclass
class SenderStats:
    sent: int = 0
    accepted: int = 0
    written: int = 0
    """Partials deleted because the processor's watermark passed their window."""
    refused: dict[str, int] = field(default_factory=dict)
    errors: int = 0
    """Requests that failed (network, 5xx, an answer that is not the contract's)."""
    rejected: int = 0
    """Partials the processor refused as invalid (``REFUSED_CONTENT``): dropped."""
    last_contact: float | None = None
    """When the processor last answered with its state (unix seconds)."""
    last_error: str | None = None
    """The newest failure, as logged (``partials_send_failed``): what a stalled node is told."""
    last_error_at: float | None = None


class Http:
    """The sender's HTTP client seam: ``request`` returns ``(status, body)`` or raises ``OSError``/``TimeoutError``."""

    def __init__(self, timeout: float = REQUEST_TIMEOUT) -> None:
        self._timeout = timeout
        self._session: Any = None

    async def request(self, method: str, url: str, body: bytes | None = None) -> tuple[int, bytes]:
        import aiohttp  # noqa: PLC0415 - only agents feeding a processor need the client

        if self._session is None or self._session.closed:
            self._session = httpclient.session(self._timeout)  # a connection per request, routed afresh
        headers = {"Content-Type": "application/json"} if body is not None else {}
        try:
            async with self._session.request(method, url, data=body, headers=headers) as resp:
                return resp.status, await resp.read()
        except aiohttp.ClientError as exc:
            raise OSError(f"{type(exc).__name__}: {exc}") from exc

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()


class RuleSender:
    """Delivers one rule's outbox to its processor; ``pump`` does one round, ``run`` loops."""

    def __init__(
        self,
        target: ProcessorTarget,
        outbox: Outbox,
        http: Http,
        *,
        clock: Callable[[], float] = time.time,
        rng: random.Random | None = None,
    ) -> None:
        self.target = target
        self.outbox = outbox
        self.http = http
        self.stats = SenderStats()
        self.instance: str | None = None
        self.watermark: float | None = None
        self.wake = asyncio.Event()
        self._clock = clock
        self._rng = rng or random.Random()  # noqa: S311 - jitter, not cryptography
        self._delivered: dict[str, str] = {}
        """Outbox entry → the processor instance that has it (accepted, or refused as written)."""
        self._failures = 0
        self._retry_at = 0.0
        self._agent_window = 1.0

    @property
    def url(self) -> str:
        return self.target.url.rstrip("/") + "/v1/partials"

    def _observe(self, state: ProcessorState) -> None:
        if state.instance != self.instance:
            if self.instance is not None:
                log.info("processor_restarted_resending", rule=self.target.rule, instance=state.instance)
            self.instance = state.instance
            self._delivered.clear()
        self.watermark = state.watermark
        self.stats.last_contact = self._clock()
        if state.watermark is not None:
            written = self.outbox.remove_through(state.watermark)
            self.stats.written += written
        live = {e.name for e in self.outbox.entries()}
        for name in list(self._delivered):
            if name not in live:
                del self._delivered[name]

    def _failed(self, what: str) -> None:
        self.stats.errors += 1
        self.stats.last_error, self.stats.last_error_at = what[:300], self._clock()
        self._failures += 1
        cap = max(1.0, min(30.0, self._agent_window))
        delay = self._rng.uniform(0.5, 1.0) * min(cap, BASE_BACKOFF * 2 ** (self._failures - 1))
        self._retry_at = self._clock() + delay
        log.warning("partials_send_failed", rule=self.target.rule, url=self.url, error=what, retry_in=round(delay, 2))

    def _undelivered(self) -> list[Entry]:
        return [e for e in self.outbox.entries() if self._delivered.get(e.name) != self.instance or not self.instance]

    def next_wakeup(self) -> float:
        """Seconds until ``run`` should look again without being woken."""
        now = self._clock()
        if self._retry_at > now:
            return self._retry_at - now
        if self._undelivered():
            return 0.0
        if len(self.outbox):
            last = self.stats.last_contact or 0.0
            return max(0.0, last + self._agent_window - now)
        return 3600.0

    def report(self) -> dict[str, Any]:
        """This rule's delivery as the agent's ``/status`` shows it (``partials.<rule>``)."""
        entries = self.outbox.entries()
        stats = self.stats
        return {
            "processor": self.target.url,
            "pending": len(entries),
            "oldest_pending_window_end": entries[0].window_end if entries else None,
            "instance": self.instance,
            "watermark": self.watermark,
            "last_contact": stats.last_contact,
            "last_error": stats.last_error,
            "last_error_at": stats.last_error_at,
            "errors": stats.errors,
            "sent": stats.sent,
            "accepted": stats.accepted,
            "written": stats.written,
            "rejected": stats.rejected,
            "refused": dict(stats.refused),
            "dropped_outbox_full": self.outbox.dropped,
        }

    async def pump(self) -> None:
        """Send what this processor instance lacks, oldest first; poll its watermark when idle."""
        if self._clock() < self._retry_at:
            return
        if self.instance is None and len(self.outbox):
            # A restarted agent asks first: what is already written is deleted, not sent again.
            await self._poll()
            if self.instance is None:
                return
        pending = self._undelivered()
        for entry in pending:
            self._agent_window = max(1e-3, entry.window_end - entry.window_start)
            if entry.name not in self.outbox:
                continue  # deleted by a watermark seen during this round
            if self._delivered.get(entry.name) == self.instance and self.instance:
                continue  # the instance seen during this round already has it
            if not await self._post(entry):
                return
        if not pending and len(self.outbox):
            last = self.stats.last_contact or 0.0
            if self._clock() - last >= self._agent_window:
                await self._poll()

    async def _post(self, entry: Entry) -> bool:
        """True when the round may go on with the next partial."""
        try:
            body = self.outbox.read(entry.name)
        except FileNotFoundError:
            return True
        try:
            status, answer = await self.http.request("POST", self.url, body)
        except (OSError, TimeoutError) as exc:
            self._failed(f"{type(exc).__name__}: {exc}")
            return False
        self.stats.sent += 1
        if status in {200, 202}:
            try:
                ack = PartialsAck.model_validate_json(answer)
            except ValidationError:
                self._failed(f"HTTP {status}: not a PartialsAck: {answer[:200]!r}")
                return False
            self._failures = 0
            self._observe(ack)
            self._settle(entry, ack)
            return True
        if status in REFUSED_CONTENT:
            # The processor read the partial and refused it: sending it again cannot help.
            self.stats.rejected += 1
            self.outbox.remove(entry.name)
            log.error(
                "partial_rejected",
                rule=self.target.rule,
                status=status,
                window_end=entry.window_end,
                message=answer[:500].decode(errors="replace"),
            )
            return True
        self._failed(f"HTTP {status}: {answer[:200].decode(errors='replace')}")
        return False

    def _settle(self, entry: Entry, ack: PartialsAck) -> None:
        if ack.accepted:
            self.stats.accepted += 1
            self._delivered[entry.name] = ack.instance
            return
        reason = ack.reason or RefusalReason.MISMATCH
        self.stats.refused[reason.value] = self.stats.refused.get(reason.value, 0) + 1
        if reason is RefusalReason.BUSY:
            self._failed(f"busy: {ack.message}")
        elif reason.keep:
            self._delivered[entry.name] = ack.instance
        else:
            self.outbox.remove(entry.name)
            log.warning(
                "partial_refused",
                rule=self.target.rule,
                reason=reason.value,
                message=ack.message,
                window_end=entry.window_end,
            )

    async def _poll(self) -> None:
        try:
            status, answer = await self.http.request("GET", self.url)
        except (OSError, TimeoutError) as exc:
            self._failed(f"{type(exc).__name__}: {exc}")
            return
        if status != 200:
            self._failed(f"HTTP {status}: {answer[:200].decode(errors='replace')}")
            return
        try:
            self._observe(ProcessorState.model_validate_json(answer))
        except ValidationError:
            self._failed(f"not a ProcessorState: {answer[:200]!r}")

    async def run(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            try:
                await self.pump()
            except Exception:  # a bug here must not end the rule's deliveries for good
                log.exception("partials_round_failed", rule=self.target.rule)
                self._failed("internal error")
            self.wake.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.wake.wait(), timeout=max(0.05, self.next_wakeup()))


def outbox_bytes(buffer_max_bytes: int) -> int:
    """Disk bytes each rule's outbox may use: a quarter of the node-level buffer's bound."""
    return max(4096, buffer_max_bytes // 4)


def _rule_dir(root: Path, rule: str) -> Path:
    return root / re.sub(r"[^A-Za-z0-9._-]", "_", rule)


class Partials:
    """Every rule's outbox and sender for one agent; ``submit`` never blocks on a processor."""

    def __init__(self, node: str, root: Path, max_bytes: int, *, http: Http | None = None) -> None:
        self.node = node
        self.root = root
        self.max_bytes = max_bytes
        self.http = http or Http()
        self.boot = uuid.uuid4().hex[:12]
        self.generation = 0
        self.senders: dict[str, RuleSender] = {}
        self.build_errors = 0
        self._targets: list[ProcessorTarget] = []
        self._queue: asyncio.Queue[tuple[ClosedWindow, float]] = asyncio.Queue()
        self._stop = asyncio.Event()
        self._tasks: dict[str, asyncio.Task[None]] = {}
        self._builder: asyncio.Task[None] | None = None
        self._warned_windows: set[tuple[str, float]] = set()

    @property
    def source(self) -> str:
        return f"{self.boot}.{self.generation}"

    # --- configuration -------------------------------------------------------------------------

    def configure(self, targets: Sequence[ProcessorTarget]) -> None:
        """Adopt the rules in the agent config: new ones get a sender, removed ones lose their outbox."""
        wanted = {t.rule: t for t in targets}
        for rule in list(self.senders):
            if rule not in wanted:
                self._tasks.pop(rule).cancel()
                gone = self.senders.pop(rule)
                for entry in gone.outbox.entries():
                    gone.outbox.remove(entry.name)
                log.info("partials_rule_removed", rule=rule)
        for rule, target in wanted.items():
            existing = self.senders.get(rule)
            if existing is not None:
                existing.target = target
                continue
            outbox = Outbox(_rule_dir(self.root, rule), self.max_bytes)
            sender = self.senders[rule] = RuleSender(target, outbox, self.http)
            self._tasks[rule] = asyncio.get_running_loop().create_task(sender.run(self._stop))
            if len(outbox):
                log.info("partials_outbox_reopened", rule=rule, partials=len(outbox))
        self._targets = list(targets)
        if self._builder is None:
            self._builder = asyncio.get_running_loop().create_task(self._build_loop())

    # --- windows in ----------------------------------------------------------------------------

    def submit(self, window: ClosedWindow, now: float) -> None:
        """Queue a closed window; its partials are built and stored on the partials' own task."""
        if not self._targets:
            return
        self._queue.put_nowait((window, now))

    async def _build_loop(self) -> None:
        while True:
            window, now = await self._queue.get()
            try:
                self.store(window, now)
            except Exception:  # one broken window must not stop the next ones
                self.build_errors += 1
                log.exception("partials_build_failed", window_end=window.end)
            finally:
                self._queue.task_done()

    def store(self, window: ClosedWindow, now: float) -> None:
        """Build each rule's partial of ``window``, store it durably and wake the rule's sender."""
        source = self.source
        if window.end > now + 1e-3:
            # Closed early (shutdown, new aggregator): the rest of this window comes from a new source.
            self.generation += 1
        for target in self._targets:
            sender = self.senders.get(target.rule)
            if sender is None:
                continue
            length = window.end - window.start
            if target.window and not whole_multiple(target.window, length):
                key = (target.rule, length)
                if key not in self._warned_windows:
                    self._warned_windows.add(key)
                    log.error(
                        "agent_window_does_not_divide_rule_window",
                        rule=target.rule,
                        agent_window=length,
                        rule_window=target.window,
                    )
            partial = build(window, target, self.node, source)
            if partial is None:
                continue
            dropped = sender.outbox.put(partial, partial.model_dump_json().encode())
            if dropped:
                log.error("partials_outbox_full_dropped_oldest", rule=target.rule, dropped=dropped)
            sender.wake.set()

    # --- state ---------------------------------------------------------------------------------

    @property
    def errors(self) -> int:
        return self.build_errors + sum(s.stats.errors for s in self.senders.values())

    def report(self) -> dict[str, dict[str, Any]]:
        """Every rule's delivery, by rule name (the agent's ``/status`` ``partials``)."""
        return {rule: sender.report() for rule, sender in sorted(self.senders.items())}

    @property
    def pending(self) -> int:
        return sum(len(s.outbox) for s in self.senders.values())

    @property
    def dropped(self) -> int:
        return sum(s.outbox.dropped + s.stats.rejected + _dropped_refusals(s.stats) for s in self.senders.values())

    async def close(self, budget: float) -> None:
        """Store what is queued and give the senders ``budget`` seconds to deliver it, then stop."""
        deadline = time.monotonic() + budget
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._queue.join(), timeout=max(0.0, deadline - time.monotonic()))
        for sender in self.senders.values():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(sender.pump(), timeout=max(0.0, deadline - time.monotonic()))
        self._stop.set()
        for task in [*self._tasks.values(), *([self._builder] if self._builder else [])]:
            task.cancel()
        await asyncio.gather(*self._tasks.values(), return_exceptions=True)
        await self.http.close()


def _dropped_refusals(stats: SenderStats) -> int:
    return sum(n for reason, n in stats.refused.items() if not RefusalReason(reason).keep)
