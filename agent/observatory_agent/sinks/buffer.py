"""A durable, byte-bounded FIFO of line-protocol batches: append-only segment files, fsynced.

Layout: ``<dir>/seg-<20-digit sequence>.obb``, each a run of records
``magic(2) | payload length(4) | crc32(4) | points(4) | payload`` (little endian), the
payload being the batch's lines joined by ``\\n``. Every append is written, flushed and
fsynced before it returns, so a SIGKILL loses nothing acknowledged; a torn record at a
segment's tail (killed mid-write) fails its length or CRC check and is ignored on reopen.

Reopening always starts a fresh segment for writes and replays old ones in order. Records
sent but not yet deleted (a segment is deleted once all of it is sent) may be sent again
after a restart; that is harmless because points are timestamped at their window end and a
rewrite overwrites itself.

When an append would exceed ``max_bytes``, whole oldest segments are dropped first; the
lost points are counted in ``dropped_points`` and logged by the caller.
"""

from __future__ import annotations

import os
import struct
import zlib
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Final

_HEADER: Final = struct.Struct("<2sIII")
_MAGIC: Final = b"OB"
_SUFFIX: Final = ".obb"


@dataclass(frozen=True)
class Record:
    """One buffered batch, oldest first."""

    segment: int
    offset: int
    size: int
    points: int
    lines: tuple[str, ...]


@dataclass
class _Entry:
    segment: int
    offset: int
    size: int
    points: int


def fsync_directory(directory: Path) -> None:
    """Make a file created or renamed in ``directory`` survive a crash (its entry is data too)."""
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class DurableBuffer:
    """FIFO of line batches on disk, bounded by ``max_bytes`` of segment files."""

    def __init__(self, directory: Path, max_bytes: int, *, segment_bytes: int | None = None) -> None:
        self.directory = directory
        self.max_bytes = max_bytes
        self.segment_bytes = segment_bytes or max(4096, max_bytes // 8)
        self.dropped_points = 0
        self.dropped_records = 0
        self.corrupt_records = 0
        directory.mkdir(parents=True, exist_ok=True)
        self._pending: deque[_Entry] = deque()
        self._segment_sizes: dict[int, int] = {}
        self._active: BinaryIO | None = None
        self._active_seq = -1
        for seq in self._existing_segments():
            self._scan(seq)
        self._next_seq = max(self._segment_sizes, default=-1) + 1

    # --- state -------------------------------------------------------------------------------

    @property
    def points(self) -> int:
        """Points waiting to be sent."""
        return sum(e.points for e in self._pending)

    @property
    def pending_bytes(self) -> int:
        """Bytes of records waiting to be sent."""
        return sum(e.size for e in self._pending)

    @property
    def disk_bytes(self) -> int:
        """Bytes the segment files occupy (what ``max_bytes`` bounds)."""
        return sum(self._segment_sizes.values())

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
            self._pending.append(_Entry(seq, offset, end - offset, points))
            found = True
            offset = end
        if found:
            self._segment_sizes[seq] = len(data)
        else:
            self._path(seq).unlink(missing_ok=True)

    def _fsync_dir(self) -> None:
        fsync_directory(self.directory)

    def _open_active(self) -> BinaryIO:
        if self._active is not None and self._segment_sizes.get(self._active_seq, 0) < self.segment_bytes:
            return self._active
        self._close_active()
        seq = self._next_seq
        self._next_seq += 1
        handle = open(self._path(seq), "ab")  # noqa: SIM115 - kept open across appends
        self._fsync_dir()  # the new file's directory entry must survive a crash too
        self._active, self._active_seq = handle, seq
        self._segment_sizes[seq] = 0
        return handle

    def _close_active(self) -> None:
        if self._active is not None:
            self._active.close()
        self._active = None
        self._active_seq = -1

    def _delete_segment(self, seq: int) -> None:
        if seq == self._active_seq:
            self._close_active()
        self._path(seq).unlink(missing_ok=True)
        self._segment_sizes.pop(seq, None)

    # --- operations --------------------------------------------------------------------------

    def append(self, lines: Sequence[str]) -> int:
        """Store one batch durably; returns points dropped to make room (oldest first)."""
        payload = "\n".join(lines).encode()
        size = _HEADER.size + len(payload)
        dropped_before = self.dropped_points
        if size > self.max_bytes:
            self.dropped_points += len(lines)
            self.dropped_records += 1
            return self.dropped_points - dropped_before
        while self.disk_bytes + size > self.max_bytes and self._segment_sizes:
            self._drop_oldest_segment()
        handle = self._open_active()
        offset = self._segment_sizes[self._active_seq]
        handle.write(_HEADER.pack(_MAGIC, len(payload), zlib.crc32(payload), len(lines)) + payload)
        handle.flush()
        os.fsync(handle.fileno())
        self._segment_sizes[self._active_seq] = offset + size
        self._pending.append(_Entry(self._active_seq, offset, size, len(lines)))
        return self.dropped_points - dropped_before

    def _drop_oldest_segment(self) -> None:
        oldest = min(self._segment_sizes)
        while self._pending and self._pending[0].segment == oldest:
            entry = self._pending.popleft()
            self.dropped_points += entry.points
            self.dropped_records += 1
        self._delete_segment(oldest)

    def peek(self) -> Record | None:
        """The oldest unsent batch, or None when empty."""
        if not self._pending:
            return None
        return self._read(self._pending[0])

    def peek_many(self, n: int) -> list[Record]:
        """The ``n`` oldest unsent batches, oldest first (fewer when fewer are pending)."""
        return [self._read(self._pending[i]) for i in range(min(n, len(self._pending)))]

    def _read(self, entry: _Entry) -> Record:
        with open(self._path(entry.segment), "rb") as fh:
            fh.seek(entry.offset)
            raw = fh.read(entry.size)
        payload = raw[_HEADER.size :]
        lines = tuple(payload.decode().split("\n")) if payload else ()
        return Record(entry.segment, entry.offset, entry.size, entry.points, lines)

    def ack(self, record: Record) -> None:
        """``record`` was delivered: forget it, and delete its segment once fully delivered."""
        if not self._pending:
            return
        head = self._pending[0]
        if (head.segment, head.offset) != (record.segment, record.offset):
            return  # dropped meanwhile to make room
        self._pending.popleft()
        if not self._pending or self._pending[0].segment != record.segment:
            self._delete_segment(record.segment)

    def close(self) -> None:
        self._close_active()
