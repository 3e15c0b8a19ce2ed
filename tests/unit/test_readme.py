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


def test_benchmark_table_is_rendered_from_the_results_json() -> None:
    from tests.bench import report

    rows = report.load()
    assert rows, "tests/bench/results.json has no rows"
    assert report.readme_table(README) == report.render(rows), "README's table is stale: run make bench"
    assert len({r.key for r in rows}) == len(rows)


def test_the_agents_own_point_is_documented_field_by_field() -> None:
    from observatory_agent import runtime

    section = README.split("`observatory.agent`", 1)[1].split("System collectors take", 1)[0]
    documented = {line.split("|")[1].strip(" `") for line in section.splitlines() if line.startswith("| `")}
    point = runtime.SELF_FIELDS
    assert documented == set(point)
