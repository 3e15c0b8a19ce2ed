"""The health dashboard's one Prometheus panel (operator reconcile errors) evaluates in Prometheus' own engine.

The operator's reconcile-error counter is not in InfluxDB: the operator exposes it on its
``/metrics`` for Prometheus. On this branch the operator does not export it yet, so the series
are SEEDED as ``promtool test rules`` input (Debian's ``prometheus`` package, the real PromQL
engine); once the operator exports ``observatory_operator_reconcile_errors_total{kind}``, replace
the seeded series with a real Prometheus scraping a real operator process.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest
import yaml
from dashboards import generate

from tests.env import tools

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[3]
SCRAPE_INTERVAL = 15


def rate_interval(interval: float, scrape_interval: float) -> str:
    """Grafana's ``$__rate_interval``: max(interval + scrape interval, 4 × scrape interval)."""
    return f"{int(max(interval + scrape_interval, 4 * scrape_interval))}s"


def _panel_expr() -> tuple[str, str]:
    board = json.loads((ROOT / "dashboards" / "observatory-health.json").read_text())
    panels = [p for p in board["panels"] if p.get("datasource", {}).get("type") == "prometheus"]
    assert [p["title"] for p in panels] == ["Operator reconcile errors"]
    target = panels[0]["targets"][0]
    return target["expr"], target["legendFormat"]


def test_reconcile_errors_panel_shows_errors_per_kind(tmp_path: Path) -> None:
    expr, legend = _panel_expr()
    assert generate.RECONCILE_ERRORS in expr
    assert legend == "{{kind}}"
    window = rate_interval(SCRAPE_INTERVAL, SCRAPE_INTERVAL)
    metric = generate.RECONCILE_ERRORS
    spec = {
        "rule_files": [],
        "evaluation_interval": f"{SCRAPE_INTERVAL}s",
        "tests": [
            {
                "interval": f"{SCRAPE_INTERVAL}s",
                # SEEDED: one error per scrape for collectors, none for rules (see the module docstring).
                "input_series": [
                    {
                        "series": f'{metric}{{kind="ObservatoryCollector",job="operator",instance="a:8080"}}',
                        "values": "0+1x40",
                    },
                    {
                        "series": f'{metric}{{kind="AggregationRule",job="operator",instance="a:8080"}}',
                        "values": "0x40",
                    },
                ],
                "promql_expr_test": [
                    {
                        "expr": expr.replace("$__rate_interval", window),
                        "eval_time": "5m",
                        "exp_samples": [
                            {"labels": '{kind="ObservatoryCollector"}', "value": 60 / SCRAPE_INTERVAL},
                            {"labels": '{kind="AggregationRule"}', "value": 0},
                        ],
                    }
                ],
            }
        ],
    }
    path = tmp_path / "panel-test.yaml"
    path.write_text(yaml.safe_dump(spec))
    result = subprocess.run(
        [tools.promtool(), "test", "rules", str(path)], capture_output=True, text=True, check=False, timeout=60
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout


def test_a_wrong_expectation_fails_promtool(tmp_path: Path) -> None:
    # The check above can fail: the same panel query with a wrong expected value is refused.
    expr, _ = _panel_expr()
    metric = generate.RECONCILE_ERRORS
    spec = {
        "rule_files": [],
        "tests": [
            {
                "interval": "15s",
                "input_series": [{"series": f'{metric}{{kind="ObservatoryCollector"}}', "values": "0+1x40"}],
                "promql_expr_test": [
                    {
                        "expr": expr.replace("$__rate_interval", "60s"),
                        "eval_time": "5m",
                        "exp_samples": [{"labels": '{kind="ObservatoryCollector"}', "value": 99}],
                    }
                ],
            }
        ],
    }
    path = tmp_path / "panel-test.yaml"
    path.write_text(yaml.safe_dump(spec))
    result = subprocess.run([tools.promtool(), "test", "rules", str(path)], capture_output=True, text=True, check=False)
    assert result.returncode != 0
