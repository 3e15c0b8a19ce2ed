"""prometheus-operator v0.85.0, the operator benchmark's peer: built from the Go module proxy, run on the bed.

Built like the bed's Kubernetes (``tests/env/build.py``): ``go install …@v0.85.0`` is refused because
its go.mod replaces ``pkg/apis/monitoring`` and ``pkg/client`` with local paths, so a throwaway
wrapper module requires it and points those at their published v0.85.0 modules. The binary and the
CRDs of that release (``example/prometheus-operator-crd``) land in
``~/.cache/happy-observatory/prometheus-operator-v0.85.0/`` and are built once. The build runs
niced, in a process of its own, logging to ``~/.cache/happy-observatory/logs/``:

    python3 -m tests.bench.prometheus_operator        # build now (what the benchmark starts in the background)
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Final

import yaml

from tests.env import build

VERSION: Final = "v0.85.0"
MODULE: Final = "github.com/prometheus-operator/prometheus-operator"
COMPONENT: Final = build.Component("prometheus-operator", VERSION, ("operator",))
"""The version is pinned here (the bed's own pins are in tests/env/versions.env): it is the issue's named peer."""


def binary() -> Path:
    return COMPONENT.bindir / "operator"


def crds() -> list[Path]:
    return sorted((COMPONENT.bindir.parent / "crds").glob("*.yaml"))


def log_path() -> Path:
    return build.cache_root() / "logs" / f"{COMPONENT.name}-{VERSION}.log"


class _Loader(yaml.SafeLoader):
    """PyYAML's safe loader, reading the YAML 1.1 ``=`` value tag (in these CRDs' enums) as the string ``=``."""


_Loader.add_constructor("tag:yaml.org,2002:value", _Loader.construct_yaml_str)


def _normalised_crds(source: Path, target: Path) -> None:
    """The release's CRDs, re-written so that any YAML loader reads them (the bed's uses safe_load)."""
    target.mkdir(parents=True, exist_ok=True)
    for path in sorted(source.glob("*.yaml")):
        docs = [d for d in yaml.load_all(path.read_text(), Loader=_Loader) if d]
        (target / path.name).write_text(yaml.safe_dump_all(docs, sort_keys=False))


def build_now() -> None:
    """Build into the cache (what ``start_build`` runs in the background); nothing when already there."""
    if not COMPONENT.missing():
        return
    log = log_path()
    log.parent.mkdir(parents=True, exist_ok=True)
    log.write_text(f"building {MODULE}@{VERSION}\n")
    work = Path(tempfile.mkdtemp(prefix=f"build-{COMPONENT.name}-", dir=build.cache_root()))
    try:
        env = build._go_env({"CGO_ENABLED": "0"})
        build._wrapper_module(COMPONENT, MODULE, VERSION, work=work, env=env, log=log)
        out = work / "out" / "bin"
        out.mkdir(parents=True)
        ldflags = f"-s -w -X github.com/prometheus/common/version.Version={VERSION.lstrip('v')}"
        build._run(
            ["go", "build", "-trimpath", "-ldflags", ldflags, "-o", str(out / "operator"), f"{MODULE}/cmd/operator"],
            cwd=work,
            env=env,
            log=log,
            step="go build prometheus-operator",
        )
        listing = build._run(
            ["go", "mod", "download", "-json", f"{MODULE}@{VERSION}"], cwd=work, env=env, log=log, step="locate CRDs"
        )
        source = Path(json.loads(listing)["Dir"]) / "example" / "prometheus-operator-crd"
        _normalised_crds(source, work / "out" / "crds")
        build._install(work / "out", COMPONENT)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def start_build() -> subprocess.Popen[bytes] | None:
    """Start the build niced in the background (None when cached); the caller waits with ``finish``."""
    if not COMPONENT.missing():
        return None
    log = log_path()
    log.parent.mkdir(parents=True, exist_ok=True)
    root = Path(__file__).resolve().parents[2]
    with log.open("ab") as out:
        return subprocess.Popen(
            ["nice", "-n", "10", sys.executable, "-m", "tests.bench.prometheus_operator"],
            cwd=root,
            stdout=out,
            stderr=subprocess.STDOUT,
            env={**os.environ, "PYTHONPATH": str(root)},
        )


def finish(process: subprocess.Popen[bytes] | None, timeout: float = 3600) -> Path:
    """Wait for a background build; the binary's path, or an error naming the log."""
    if process is not None and process.wait(timeout=timeout) != 0:
        raise RuntimeError(f"building prometheus-operator {VERSION} failed; log: {log_path()}")
    if COMPONENT.missing():
        raise RuntimeError(f"prometheus-operator {VERSION} is not in {COMPONENT.bindir}; log: {log_path()}")
    return binary()


if __name__ == "__main__":
    build_now()
