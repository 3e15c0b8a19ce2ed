"""Where the host's /proc, /sys and / are mounted (``HOST_PROC``, ``HOST_SYS``, ``HOST_ROOT``)."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import psutil


@dataclass(frozen=True)
class HostPaths:
    """The host's filesystems as this process sees them; defaults read the local machine."""

    proc: Path = Path("/proc")
    sys: Path = Path("/sys")
    root: Path = Path("/")
    in_container: bool = False
    """True when HOST_PROC is set: per-namespace files are read through PID 1's view."""

    @classmethod
    def from_environ(cls, environ: Mapping[str, str] | None = None) -> HostPaths:
        env = os.environ if environ is None else environ
        return cls(
            proc=Path(env.get("HOST_PROC", "/proc")),
            sys=Path(env.get("HOST_SYS", "/sys")),
            root=Path(env.get("HOST_ROOT", "/")),
            in_container="HOST_PROC" in env,
        )

    def host_path(self, mountpoint: str) -> Path:
        """A host mount point as reachable from here (``/data`` → ``$HOST_ROOT/data``)."""
        return self.root / mountpoint.lstrip("/")

    def proc_net(self, name: str) -> Path:
        # /proc/net follows the reader's network namespace; PID 1's is the host's.
        return self.proc / "1" / "net" / name if self.in_container else self.proc / "net" / name

    def mounts_file(self) -> Path:
        return self.proc / "1" / "mounts" if self.in_container else self.proc / "self" / "mounts"

    def apply_to_psutil(self) -> None:
        """Point psutil at the host's proc (it reads ``PROCFS_PATH`` on every call)."""
        psutil.PROCFS_PATH = str(self.proc)
