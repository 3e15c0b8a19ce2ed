"""Benchmark results as JSON (``tests/bench/results.json``) and the README table rendered from it.

Every benchmark adds rows keyed by ``key`` (``group.name``); a run merges its rows into the file
(replacing rows with the same key, keeping the rest), so a partial ``make bench -k ...`` or another
component's benchmarks (operator, processor) update only their own rows. The README's table
between ``<!-- bench:begin -->`` and ``<!-- bench:end -->`` is ``render(load())``; a unit test keeps
them in step. Format, version 1::

    {"format": 1, "rows": [{"key": "agent.cpu_per_cycle", "group": "agent", "name": "...",
      "ours": "...", "peer": "...", "ratio": "...", "target": "...", "met": true,
      "measured": "2026-12-04", "values": {"ours_ms": 1.9, ...}}]}
"""

from __future__ import annotations

import json
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
RESULTS = ROOT / "tests" / "bench" / "results.json"
README = ROOT / "README.md"
BEGIN, END = "<!-- bench:begin -->", "<!-- bench:end -->"
FORMAT = 1


@dataclass
class Row:
    key: str
    group: str
    name: str
    ours: str
    peer: str
    ratio: str
    target: str
    met: bool
    measured: str = ""
    values: dict[str, Any] = field(default_factory=dict)


def slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "_", text.lower()).strip("_")[:60]


def load(path: Path = RESULTS) -> list[Row]:
    if not path.exists():
        return []
    data = json.loads(path.read_text())
    if data.get("format") != FORMAT:
        raise ValueError(f"{path}: format {data.get('format')!r}, expected {FORMAT}")
    return [Row(**row) for row in data["rows"]]


def merge(existing: list[Row], new: list[Row]) -> list[Row]:
    """``existing`` with rows of the same key replaced in place and new keys appended."""
    fresh = {r.key: r for r in new}
    out = [fresh.pop(r.key, r) for r in existing]
    return out + [r for r in new if r.key in fresh]


def save(rows: list[Row], path: Path = RESULTS) -> None:
    path.write_text(json.dumps({"format": FORMAT, "rows": [asdict(r) for r in rows]}, indent=2) + "\n")


def render(rows: list[Row]) -> str:
    lines = [
        "| benchmark | ours | peer (same run) | ratio | target | met |",
        "|---|---|---|---|---|---|",
    ]
    lines += [f"| {r.name} | {r.ours} | {r.peer} | {r.ratio} | {r.target} | {'yes' if r.met else 'NO'} |" for r in rows]
    return "\n".join(lines)


def readme_table(text: str) -> str:
    """The table between the README's markers."""
    return text.split(BEGIN, 1)[1].split(END, 1)[0].strip()


def write_readme(rows: list[Row], path: Path = README) -> None:
    text = path.read_text()
    head, rest = text.split(BEGIN, 1)
    _, tail = rest.split(END, 1)
    path.write_text(f"{head}{BEGIN}\n{render(rows)}\n{END}{tail}")
