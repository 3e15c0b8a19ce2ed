"""Benchmark session: collects each benchmark's rows and prints them as one table at the end.

Benchmarks run with `make bench`, never with `make test`. Each row names the measurement,
ours, the peer measured in the same run, the ratio and the target, and whether it was met.
The table is also written to `.bench/results.md` (for the README) and `.bench/results.json` (for tools).
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[2]


@dataclass
class Row:
    name: str
    ours: str
    peer: str
    ratio: str
    target: str
    met: bool


@dataclass
class Report:
    rows: list[Row] = field(default_factory=list)

    def add(self, name: str, *, ours: str, peer: str = "—", ratio: str = "—", target: str, met: bool) -> None:
        self.rows.append(Row(name, ours, peer, ratio, target, met))

    def json(self) -> str:
        """The rows as JSON, for tools: one object per measurement, ``met`` a boolean."""
        return json.dumps([dataclasses.asdict(r) for r in self.rows], indent=2, ensure_ascii=False)

    def markdown(self) -> str:
        lines = [
            "| benchmark | ours | peer (same run) | ratio | target | met |",
            "|---|---|---|---|---|---|",
        ]
        lines += [
            f"| {r.name} | {r.ours} | {r.peer} | {r.ratio} | {r.target} | {'yes' if r.met else 'NO'} |"
            for r in self.rows
        ]
        return "\n".join(lines)


_REPORT = Report()


@pytest.fixture(scope="session")
def agent_bin() -> Path:
    """``observatory-agent`` from a venv synced like the image's (``uv sync --frozen --no-dev``).

    The process benchmarks (RSS, start-up) measure what ships. The repository's venv carries
    the dev group, and structlog imports rich (import-linter's dependency) whenever it is
    installed: about 9 MB the image never loads.
    """
    venv = ROOT / ".bench" / "venv"
    uv = os.environ.get("UV") or shutil.which("uv") or "uv"
    env = {**os.environ, "UV_PROJECT_ENVIRONMENT": str(venv)}
    env.pop("VIRTUAL_ENV", None)
    result = subprocess.run(
        [uv, "sync", "--frozen", "--no-dev", "--quiet"], cwd=ROOT, env=env, capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, f"uv sync --no-dev into {venv} failed:\n{result.stderr}"
    return venv / "bin" / "observatory-agent"


@pytest.fixture(scope="session")
def report() -> Report:
    return _REPORT


def pytest_terminal_summary(terminalreporter: Any) -> None:
    if not _REPORT.rows:
        return
    text = _REPORT.markdown()
    out = ROOT / ".bench"
    out.mkdir(exist_ok=True)
    (out / "results.md").write_text(text + "\n")
    (out / "results.json").write_text(_REPORT.json() + "\n")
    terminalreporter.write_line("")
    for line in text.splitlines():
        terminalreporter.write_line(line)
    terminalreporter.write_line(f"(written to {out / 'results.md'})")
