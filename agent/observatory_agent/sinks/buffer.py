"""A durable, byte-bounded FIFO of line-protocol batches: append-only segment files, fsynced.

Layout: ``<dir>/seg-<20-digit sequence>.obb``, each a run of records
``magic(2) | payload length(4) | crc32(4) | points(4) | payload`` (little endian), the
payload being the batch's lines joined by ``\\n`` — exactly the body a write request sends.
Every append is written and fsynced before it returns, so a SIGKILL loses nothing
acknowledged; a torn record at a segment's tail (killed mid-write) fails its length or CRC
check on reopen, is counted in ``corrupt_records`` and ignored.

An append that fails part-way (disk full, I/O error) is cut back to the last whole record
(``ftruncate``), or, if even that fails, its segment is sealed and never appended to again:
the file never holds bytes the index does not know about. The batch is then kept in memory —
``unpersisted`` — in its place in the queue, so it is still sent in order; memory-held batches
beyond ``max_memory_bytes`` are dropped oldest first and counted.

Reopening always starts a fresh segment for writes and replays old ones in order. Records
sent but not yet deleted (a segment is deleted once all of it is sent) may be sent again
after a restart; that is harmless because points are timestamped at their window end and a
rewrite overwrites itself.

When an append would exceed ``max_bytes``, whole oldest segments are dropped first; the
lost points are counted in ``dropped_points`` and logged by the caller.

One process owns a directory at a time: ``<dir>/.lock`` is held with ``flock`` for the buffer's
life (and names its owner inside), so a buffer on a node's disk (a hostPath that outlives pods)
is never appended to by an old and a new agent at once during a rollout. By default the newcomer
waits up to ``lock_timeout`` for the old one to finish its final flush, then gives up with
``BufferLockedError``. With ``wait_for_lock=False`` it never waits: it starts *unclaimed*, keeps
its batches in memory (``unpersisted``, bounded by ``max_memory_bytes`` like batches the disk
refused) and reads nothing on disk; ``claim()`` takes the lock once it is free, then the old
owner's segments go first in the queue and the held batches are written behind them. A rolling
update that starts the new pod before the old one stops (``maxSurge``) must not wait on the old
pod, which is only stopped once the new one is ready.
"""

from __future__ import annotations

import errno
import fcntl
import os
import struct
import time
import zlib
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Final

_HEADER: Final = struct.Struct("<2sIII")
_MAGIC: Final = b"OB"
_SUFFIX: Final = ".obb"
_MEMORY: Final = -1
"""The segment number of a batch held only in memory (its append failed)."""

_write = os.write
"""The one call that puts bytes into a segment; a unit test replaces it to tear an append."""


class BufferLockedError(RuntimeError):
    """Another process holds the buffer directory."""


@dataclass(frozen=True)
class Record:
    """One buffered batch, oldest first; ``payload`` is the request body (lines joined by newlines)."""

    segment: int
    offset: int
    size: int
    points: int
    payload: bytes

    @property
    def lines(self) -> tuple[str, ...]:
        return tuple(self.payload.decode().split("\n")) if self.payload else ()


@dataclass
class _Entry:
    segment: int
    offset: int
    size: int
    points: int
    payload: bytes | None = None
    """Kept in memory while the batch is young (it is usually sent right away) or unpersisted."""


def fsync_directory(directory: Path) -> None:
    """Make a file created or renamed in ``directory`` survive a crash (its entry is data too)."""
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class DurableBuffer:
    """FIFO of line batches on disk, bounded by ``max_bytes`` of segment files."""

    def __init__(
        self,
        directory: Path,
        max_bytes: int,
        *,
        segment_bytes: int | None = None,
        max_memory_bytes: int = 8 * 1024 * 1024,
        cache_bytes: int = 1024 * 1024,
        lock_timeout: float = 30.0,
        wait_for_lock: bool = True,
        owner: str | None = None,
    ) -> None:
        self.directory = directory
        self.max_bytes = max_bytes
        self.segment_bytes = segment_bytes or max(4096, max_bytes // 8)
        self.max_memory_bytes = max_memory_bytes
        self.cache_bytes = cache_bytes
        self.dropped_points = 0
        self.dropped_records = 0
        self.corrupt_records = 0
        self.write_errors: dict[str, int] = {}
        """Appends that could not reach the disk, by errno name (``ENOSPC``): kept in memory instead."""
        self.last_write_error: str | None = None
        self.owner = owner or f"pid {os.getpid()}"
        """Who this process is, written into the lock file for the next one to name (a pod name)."""
        self.waiting_since: float | None = None
        """Wall time this buffer started unclaimed; None once it owns its directory."""
        directory.mkdir(parents=True, exist_ok=True)
        self._lock_path = directory / ".lock"
        self._lock_fd = _lock(self._lock_path, lock_timeout if wait_for_lock else None)
        self._pending: deque[_Entry] = deque()
        self._points = 0
        self._pending_bytes = 0
        self._memory_bytes = 0
        self._cached_bytes = 0
        self._segment_sizes: dict[int, int] = {}
        self._segment_pending: dict[int, int] = {}
        self._active_fd = -1
        self._active_seq = -1
        self._next_seq = 0
        if self._lock_fd >= 0:
            self._adopt_directory()
        else:
            self.waiting_since = time.time()

    def _adopt_directory(self) -> None:
        """Name this process in the lock file and queue what earlier owners left, oldest first."""
        os.ftruncate(self._lock_fd, 0)
        os.pwrite(self._lock_fd, f"{self.owner}\n".encode(), 0)
        for seq in self._existing_segments():
            self._scan(seq)
        self._next_seq = max(self._segment_sizes, default=-1) + 1

    @property
    def owned(self) -> bool:
        """Whether this process holds the directory's lock (appends reach the disk)."""
        return self._lock_fd >= 0

    def holder(self) -> str | None:
        """Who holds the directory, as the holder wrote it into the lock file (None when unreadable)."""
        try:
            return self._lock_path.read_text().strip() or None
        except OSError:
            return None

    def claim(self) -> bool:
        """Take the directory if it is free now (never waits); True once this process owns it.

        The previous owner's unsent segments go first, then every batch held in memory meanwhile
        is written to disk behind them, in order. A batch being sent during the claim is no longer
        at the head, so its acknowledgement is ignored and it is sent once more later: harmless,
        a rewritten point overwrites itself.
        """
        if self._lock_fd >= 0:
            return True
        fd = _try_lock(self._lock_path)
        if fd is None:
            return False
        self._lock_fd = fd
        held = [self._pop() for _ in range(len(self._pending))]
        self._adopt_directory()
        for entry in held:
            assert entry.payload is not None  # an unclaimed buffer holds every batch in memory
            self.append_payload(entry.payload, entry.points)
        self.waiting_since = None
        return True

    # --- state -------------------------------------------------------------------------------

    @property
    def points(self) -> int:
        """Points waiting to be sent."""
        return self._points

    @property
    def pending_bytes(self) -> int:
        """Bytes of records waiting to be sent."""
        return self._pending_bytes

    @property
    def disk_bytes(self) -> int:
        """Bytes the segment files occupy (what ``max_bytes`` bounds)."""
        return sum(self._segment_sizes.values())

    @property
    def unpersisted_points(self) -> int:
        """Points held only in memory because the disk refused them: lost if the process dies."""
        return sum(e.points for e in self._pending if e.segment == _MEMORY)

    def __len__(self) -> int:
        return len(self._pending)

    # --- files -------------------------------------------------------------------------------

    def _path(self, seq: int) -> Path:
        return self.directory / f"seg-{seq:020d}{_SUFFIX}"

    def _existing_segments(self) -> list[int]:
        seqs = []
        for entry in self.directory.iterdir():
            name = entry.name
            if name.startswith("seg-") and name.endswith(_SUFFIX):
                try:
                    seqs.append(int(name[4 : -len(_SUFFIX)]))
                except ValueError:
                    continue
        return sorted(seqs)

    def _scan(self, seq: int) -> None:
        data = self._path(seq).read_bytes()
        offset = 0
        found = False
        while offset + _HEADER.size <= len(data):
            magic, length, crc, points = _HEADER.unpack_from(data, offset)
            end = offset + _HEADER.size + length
            if magic != _MAGIC or end > len(data) or zlib.crc32(data[offset + _HEADER.size : end]) != crc:
                self.corrupt_records += 1  # a torn tail: everything after it is unusable
                break
            self._push(_Entry(seq, offset, end - offset, points))
            found = True
            offset = end
        if offset + _HEADER.size > len(data) and offset < len(data):
            self.corrupt_records += 1  # a header cut short
        if found:
            self._segment_sizes[seq] = len(data)
        else:
            self._path(seq).unlink(missing_ok=True)

    def _push(self, entry: _Entry) -> None:
        self._pending.append(entry)
        self._points += entry.points
        self._pending_bytes += entry.size
        self._segment_pending[entry.segment] = self._segment_pending.get(entry.segment, 0) + 1
        if entry.payload is not None:
            if entry.segment == _MEMORY:
                self._memory_bytes += entry.size
            else:
                self._cached_bytes += entry.size

    def _pop(self) -> _Entry:
        entry = self._pending.popleft()
        self._points -= entry.points
        self._pending_bytes -= entry.size
        self._segment_pending[entry.segment] -= 1
        if entry.payload is not None:
            if entry.segment == _MEMORY:
                self._memory_bytes -= entry.size
            else:
                self._cached_bytes -= entry.size
        return entry

    def _fsync_dir(self) -> None:
        fsync_directory(self.directory)

    def _open_active(self) -> int:
        if self._active_fd >= 0 and self._segment_sizes.get(self._active_seq, 0) < self.segment_bytes:
            return self._active_fd
        self._close_active()
        seq = self._next_seq
        self._next_seq += 1
        fd = os.open(self._path(seq), os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        self._active_fd, self._active_seq = fd, seq
        self._segment_sizes[seq] = 0
        self._fsync_dir()  # the new file's directory entry must survive a crash too
        return fd

    def _close_active(self) -> None:
        if self._active_fd >= 0:
            os.close(self._active_fd)
        self._active_fd = -1
        self._active_seq = -1

    def _delete_segment(self, seq: int) -> None:
        if seq == self._active_seq:
            self._close_active()
        self._path(seq).unlink(missing_ok=True)
        self._segment_sizes.pop(seq, None)
        self._segment_pending.pop(seq, None)

    # --- operations --------------------------------------------------------------------------

    def append(self, lines: Sequence[str]) -> int:
        """Store one batch; returns points dropped to make room (oldest first)."""
        return self.append_payload("\n".join(lines).encode(), len(lines))

    def append_payload(self, payload: bytes, points: int) -> int:
        """Store one batch given as its request body; returns points dropped to make room."""
        size = _HEADER.size + len(payload)
        dropped_before = self.dropped_points
        if size > self.max_bytes:
            self.dropped_points += points
            self.dropped_records += 1
            return self.dropped_points - dropped_before
        if self._lock_fd < 0:
            self._hold_in_memory(payload, points, size)  # unclaimed: another process owns the disk
            return self.dropped_points - dropped_before
        while self.disk_bytes + size > self.max_bytes and self._segment_sizes:
            self._drop_oldest_segment()
        record = _HEADER.pack(_MAGIC, len(payload), zlib.crc32(payload), points) + payload
        try:
            fd = self._open_active()
            offset = self._segment_sizes[self._active_seq]
            self._write_fully(fd, offset, record)
        except OSError as exc:
            self._keep_in_memory(payload, points, size, exc)
            return self.dropped_points - dropped_before
        self._segment_sizes[self._active_seq] = offset + size
        cached = payload if self._cached_bytes + size <= self.cache_bytes else None
        self._push(_Entry(self._active_seq, offset, size, points, cached))
        return self.dropped_points - dropped_before

    def _write_fully(self, fd: int, offset: int, record: bytes) -> None:
        """Write and fsync ``record`` at ``offset``; on failure leave the file exactly ``offset`` long."""
        view = memoryview(record)
        try:
            while view:
                n = _write(fd, view)
                view = view[n:]
            os.fsync(fd)
        except OSError:
            try:
                os.ftruncate(fd, offset)
                os.fsync(fd)
            except OSError:
                # Cannot cut the torn bytes off: never append to this segment again, and read
                # it only up to ``offset`` (what the index knows).
                seq = self._active_seq
                self._close_active()
                self._segment_sizes[seq] = offset
                if offset == 0:
                    self._delete_segment(seq)
            raise

    def _keep_in_memory(self, payload: bytes, points: int, size: int, exc: OSError) -> None:
        reason = errno.errorcode.get(exc.errno or 0, "OSError")
        self.write_errors[reason] = self.write_errors.get(reason, 0) + 1
        self.last_write_error = f"{reason}: {exc.strerror or exc}"
        self._hold_in_memory(payload, points, size)

    def _hold_in_memory(self, payload: bytes, points: int, size: int) -> None:
        self._push(_Entry(_MEMORY, 0, size, points, payload))
        while self._memory_bytes > self.max_memory_bytes:
            self._drop_oldest_in_memory()

    def _drop_oldest_in_memory(self) -> None:
        for i, entry in enumerate(self._pending):
            if entry.segment == _MEMORY:
                del self._pending[i]
                self._points -= entry.points
                self._pending_bytes -= entry.size
                self._memory_bytes -= entry.size
                self._segment_pending[_MEMORY] -= 1
                self.dropped_points += entry.points
                self.dropped_records += 1
                return

    def _drop_oldest_segment(self) -> None:
        oldest = min(self._segment_sizes)
        kept: deque[_Entry] = deque()
        while self._pending:
            entry = self._pop()
            if entry.segment == oldest:
                self.dropped_points += entry.points
                self.dropped_records += 1
            else:
                kept.append(entry)
        for entry in kept:
            self._push(entry)
        self._delete_segment(oldest)

    def peek(self) -> Record | None:
        """The oldest unsent batch, or None when empty."""
        if not self._pending:
            return None
        return self._read(self._pending[0])

    def peek_many(self, n: int, *, skip: int = 0) -> list[Record]:
        """The ``n`` oldest unsent batches after the ``skip`` oldest, oldest first (fewer when fewer are pending)."""
        return [self._read(self._pending[i]) for i in range(skip, min(skip + n, len(self._pending)))]

    def _read(self, entry: _Entry) -> Record:
        if entry.payload is not None:
            return Record(entry.segment, entry.offset, entry.size, entry.points, entry.payload)
        with open(self._path(entry.segment), "rb") as fh:
            fh.seek(entry.offset)
            raw = fh.read(entry.size)
        return Record(entry.segment, entry.offset, entry.size, entry.points, raw[_HEADER.size :])

    def ack(self, record: Record) -> None:
        """``record`` was delivered: forget it, and delete its segment once fully delivered."""
        if not self._pending:
            return
        head = self._pending[0]
        if head.segment != record.segment or head.offset != record.offset or head.size != record.size:
            return  # dropped meanwhile to make room
        if head.segment == _MEMORY and head.payload is not record.payload:
            return
        self._pop()
        if record.segment != _MEMORY and not self._segment_pending.get(record.segment):
            self._delete_segment(record.segment)

    def close(self) -> None:
        self._close_active()
        if self._lock_fd >= 0:
            os.close(self._lock_fd)  # releases the flock
            self._lock_fd = -1


def _try_lock(path: Path) -> int | None:
    """The lock file's descriptor with the lock held, or None when another process holds it."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        return None
    return fd


def _lock(path: Path, timeout: float | None) -> int:
    """Wait up to ``timeout`` for the lock (``BufferLockedError`` then); ``None``: one try, -1 if held."""
    deadline = time.monotonic() + (timeout or 0.0)
    while True:
        fd = _try_lock(path)
        if fd is not None:
            return fd
        if timeout is None:
            return -1
        if time.monotonic() >= deadline:
            raise BufferLockedError(f"{path.parent}: another agent holds {path.name} (waited {timeout:g}s)")
        time.sleep(0.2)
