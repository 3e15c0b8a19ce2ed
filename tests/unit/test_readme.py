"""README stays true: the quick start is the two commands, and every metric the agent writes is listed."""

from __future__ import annotations

from pathlib import Path

import pytest

from observatory_agent.collectors import METRICS, MetricInfo

README = (Path(__file__).resolve().parents[2] / "README.md").read_text()


def test_quick_start_is_make_dev_and_make_test() -> None:
    quick = README.split("## Quick start", 1)[1].split("##", 1)[0]
    commands = [line.split("#")[0].strip() for line in quick.split("```")[1].strip().splitlines()]
    assert commands == ["make dev", "make test"]


@pytest.mark.parametrize("metric", METRICS, ids=[m.name for m in METRICS])
def test_every_metric_is_documented_with_its_unit(metric: MetricInfo) -> None:
    rows = [line for line in README.splitlines() if line.startswith(f"| `{metric.name}` |")]
    assert rows, f"README's metrics table lacks {metric.name}"
    assert rows[0].split("|")[2].strip() == (metric.unit or "—")
