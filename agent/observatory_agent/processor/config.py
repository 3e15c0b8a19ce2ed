"""Load a processor's ``ProcessorConfig`` and the shared-config directory, and notice when either changes.

Precedence is the contract's ``resolve_processor``: the rule (the operator-rendered
``ProcessorConfig``) > shared-config (mounted directory, overridden by same-named environment
variables) > built-in defaults. Changes are found with the agent's fingerprint of the files.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from pydantic import ValidationError

from observatory_agent.config import Fingerprint, fingerprint
from observatory_agent.contract import (
    ConfigError,
    EffectiveProcessorConfig,
    ProcessorConfig,
    SharedConfig,
    config_error_from,
    resolve_processor,
)


@dataclass(frozen=True)
class LoadedProcessorConfig:
    effective: EffectiveProcessorConfig
    hash: str
    """sha256 over the effective config (16 hex digits): what ``/status`` reports."""


def load(config_file: Path, shared_dir: Path | None, environ: Mapping[str, str] | None = None) -> LoadedProcessorConfig:
    """Both sources, validated and resolved; ``ConfigError`` names the file, key and rule."""
    try:
        raw = config_file.read_bytes()
    except OSError as exc:
        raise ConfigError(str(config_file), f"cannot be read: {exc.strerror or exc}") from exc
    try:
        config = ProcessorConfig.model_validate_json(raw)
    except ValidationError as exc:
        raise config_error_from(exc, prefix=str(config_file)) from exc
    shared = SharedConfig.load(shared_dir, os.environ if environ is None else environ)
    effective = resolve_processor(config, shared)
    digest = hashlib.sha256(effective.model_dump_json().encode()).hexdigest()[:16]
    return LoadedProcessorConfig(effective, digest)


@dataclass
class Watcher:
    """Tells when the config files changed to a *valid* config with a different hash."""

    config_file: Path
    shared_dir: Path | None
    current: LoadedProcessorConfig
    last_error: str | None = None
    _fingerprint: Fingerprint | None = None

    def __post_init__(self) -> None:
        self._fingerprint = fingerprint(self.config_file, self.shared_dir)

    def poll(self) -> LoadedProcessorConfig | None:
        fp = fingerprint(self.config_file, self.shared_dir)
        if fp == self._fingerprint:
            return None
        self._fingerprint = fp
        try:
            loaded = load(self.config_file, self.shared_dir)
        except ConfigError as exc:
            self.last_error = str(exc)
            return None
        self.last_error = None
        if loaded.hash == self.current.hash:
            return None
        self.current = loaded
        return loaded
