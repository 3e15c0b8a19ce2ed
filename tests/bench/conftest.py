"""Benchmark session: collects each benchmark's rows, writes them as JSON and the README table.

Benchmarks run with `make bench`, never with `make test`. Each row names the measurement, ours,
the peer measured in the same run, the ratio and the target, and whether it was met. At the end
the rows are merged into ``tests/bench/results.json`` and the README's table is rendered from
that file (``tests/bench/report.py``); a missed target makes the session — and `make bench` — fail.
"""

from __future__ import annotations

import datetime
import inspect
import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest

from tests.bench import report as results

ROOT = results.ROOT


class Report:
    def __init__(self) -> None:
        self.rows: list[results.Row] = []

    def add(
        self,
        name: str,
        *,
        ours: str,
        peer: str = "—",
        ratio: str = "—",
        target: str,
        met: bool,
        key: str | None = None,
        group: str | None = None,
        values: dict[str, Any] | None = None,
    ) -> None:
        if group is None:  # the benchmark module's name: test_operator.py → "operator"
            group = Path(inspect.stack()[1].filename).stem.removeprefix("test_")
        self.rows.append(
            results.Row(
                key=key or f"{group}.{results.slug(name)}",
                group=group,
                name=name,
                ours=ours,
                peer=peer,
                ratio=ratio,
                target=target,
                met=met,
                measured=datetime.date.today().isoformat(),
                values=values or {},
            )
        )

    def markdown(self) -> str:
        return results.render(self.rows)


_REPORT = Report()


@pytest.fixture(scope="session")
def agent_bin() -> Path:
    """``observatory-agent`` from a venv synced like the image's (``uv sync --frozen --no-dev``).

    The process benchmarks (CPU, RSS, start-up) measure what ships. The repository's venv carries
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


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    if not _REPORT.rows:
        return
    rows = results.merge(results.load(), _REPORT.rows)
    results.save(rows)
    results.write_readme(rows)
    if any(not r.met for r in _REPORT.rows) and session.exitstatus == 0:
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


def pytest_terminal_summary(terminalreporter: Any) -> None:
    if not _REPORT.rows:
        return
    terminalreporter.write_line("")
    for line in _REPORT.markdown().splitlines():
        terminalreporter.write_line(line)
    missed = [r.name for r in _REPORT.rows if not r.met]
    terminalreporter.write_line(f"(merged into {results.RESULTS.relative_to(ROOT)} and README.md's table)")
    if missed:
        terminalreporter.write_line(f"TARGETS MISSED: {'; '.join(missed)}")


@pytest.fixture(scope="session")
def bed_mode() -> str:
    """Benchmarks of 200 collectors and many nodes run on simulated nodes: that many real containers do not fit."""
    return "simulated"
