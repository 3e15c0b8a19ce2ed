"""Load the agent config file and the shared-config directory, and notice when either changes.

Precedence is the contract's ``resolve``: CR spec (the operator-rendered ``AgentConfig``) >
shared-config (mounted directory, overridden by same-named environment variables) > built-in
defaults. Changes are found by polling a fingerprint of inodes, mtimes and sizes — plus the
kubelet's ``..data`` symlink target, which it swaps atomically when a ConfigMap changes — so
no inotify is needed and a swap is seen even when mtimes are preserved.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import structlog
from pydantic import ValidationError

from observatory_agent.contract import (
    AgentConfig,
    ConfigError,
    EffectiveConfig,
    SharedConfig,
    config_error_from,
    resolve,
)

log = structlog.get_logger("observatory_agent.config")


@dataclass(frozen=True)
class LoadedConfig:
    effective: EffectiveConfig
    hash: str
    """sha256 over the effective config (16 hex digits): what ``/status`` reports."""


def config_hash(effective: EffectiveConfig) -> str:
    return hashlib.sha256(effective.model_dump_json().encode()).hexdigest()[:16]


def load_agent_config(path: Path | None) -> AgentConfig:
    """The operator-rendered JSON; no file means every default."""
    if path is None:
        return AgentConfig()
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise ConfigError(str(path), f"cannot be read: {exc.strerror or exc}") from exc
    try:
        return AgentConfig.model_validate_json(raw)
    except ValidationError as exc:
        raise config_error_from(exc, prefix=str(path)) from exc


def load(agent_file: Path | None, shared_dir: Path | None, environ: Mapping[str, str] | None = None) -> LoadedConfig:
    """Both sources, validated and resolved; ``ConfigError`` names the file, key and rule."""
    agent = load_agent_config(agent_file)
    shared = SharedConfig.load(shared_dir, os.environ if environ is None else environ)
    effective = resolve(agent, shared)
    return LoadedConfig(effective, config_hash(effective))


Fingerprint = tuple[tuple[str, str, int, int, int], ...]


def _stat_entry(path: Path | str) -> tuple[str, str, int, int, int]:
    # os calls on strings, not pathlib: this runs every cycle (a tenth of the agent's idle cost otherwise).
    name = str(path)
    try:
        try:
            target = os.readlink(name)
        except OSError:
            target = ""  # not a symlink (or gone: stat below says which)
        st = os.stat(name)  # follows the kubelet's symlinks to the real file
        return (name, target, st.st_ino, st.st_mtime_ns, st.st_size)
    except OSError:
        return (name, "", -1, -1, -1)


def fingerprint(agent_file: Path | None, shared_dir: Path | None) -> Fingerprint:
    """Changes whenever a file's content may have: inode, mtime, size, or a swapped symlink."""
    entries: list[tuple[str, str, int, int, int]] = []
    if agent_file is not None:
        entries.append(_stat_entry(agent_file))
        entries.append(_stat_entry(agent_file.parent / "..data"))
    if shared_dir is not None:
        entries.append(_stat_entry(shared_dir / "..data"))
        try:
            names = sorted(n for n in os.listdir(shared_dir) if not n.startswith("."))
        except OSError:
            names = []
        base = str(shared_dir)
        entries.extend(_stat_entry(f"{base}/{n}") for n in names)
    return tuple(entries)


@dataclass
class ConfigWatcher:
    """Holds the last good config; ``poll()`` swaps in a changed one only if it is valid."""

    agent_file: Path | None
    shared_dir: Path | None
    environ: Mapping[str, str] = field(default_factory=lambda: dict(os.environ))
    current: LoadedConfig | None = None
    valid: bool = False
    last_error: str | None = None
    reloads: dict[str, int] = field(default_factory=lambda: {"success": 0, "failure": 0})
    _fingerprint: Fingerprint | None = None

    def start(self) -> LoadedConfig:
        """The first load. If it is invalid the agent runs on defaults and reports not ready."""
        self._fingerprint = fingerprint(self.agent_file, self.shared_dir)
        try:
            self.current = load(self.agent_file, self.shared_dir, self.environ)
            self.valid = True
        except ConfigError as exc:
            self.last_error = str(exc)
            self.reloads["failure"] += 1
            log.error("config_invalid_using_defaults", error=str(exc))
            self.current = load(None, None, {})
            self.valid = False
        return self.current

    def poll(self) -> LoadedConfig | None:
        """A new valid config when the sources changed; None when unchanged or invalid."""
        fp = fingerprint(self.agent_file, self.shared_dir)
        if fp == self._fingerprint:
            return None
        self._fingerprint = fp
        try:
            loaded = load(self.agent_file, self.shared_dir, self.environ)
        except ConfigError as exc:
            self.last_error = str(exc)
            self.reloads["failure"] += 1
            log.error("config_reload_rejected_keeping_last_good", error=str(exc))
            return None
        self.valid = True
        self.last_error = None
        if self.current is not None and loaded.hash == self.current.hash:
            return None  # touched but equivalent: nothing to apply
        self.reloads["success"] += 1
        log.info("config_reloaded", config_hash=loaded.hash)
        self.current = loaded
        return loaded
