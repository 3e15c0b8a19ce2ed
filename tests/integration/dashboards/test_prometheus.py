"""The health dashboard's Prometheus panel (operator reconcile errors) on a real Prometheus scraping a real operator.

The operator's rounds are Prometheus counters on its ``--metrics`` endpoint, not InfluxDB points.
Here Debian's ``prometheus`` scrapes a real ``observatory-operator`` process watching a namespace
of the bed's API server, reconcile errors are provoked for real, and the panel's queries run in
that Prometheus as Grafana sends them (``$__rate_interval`` and the step filled in as Grafana does):

- a collector whose DaemonSet the API server refuses (an invalid affinity): rounds end ``Rejected``;
- a collector whose ConfigMap a validating webhook that cannot be reached blocks (failurePolicy
  Fail, so the API server answers 500): rounds raise a temporary error and back off.

Before either exists, a healthy collector proves the scrape works while the panel draws nothing.
"""

from __future__ import annotations

import contextlib
import json
import secrets
import time
import urllib.parse
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.env import tools
from tests.env.controlplane import ControlPlane
from tests.env.dev import install_crds
from tests.env.fixtures import create_namespace, wait_until
from tests.env.kube import ApiError
from tests.env.nodesim import REPO
from tests.env.procs import Process, free_port
from tests.integration.operator.conftest import Operator, stand_in_collector, start_operator

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[3]
SCRAPE_INTERVAL = 1.0
"""Prometheus' scrape interval, and the datasource's ``timeInterval`` Grafana reads it from."""
KIND = "ObservatoryCollector"
WEBHOOK_PATH = "/apis/admissionregistration.k8s.io/v1/validatingwebhookconfigurations"


def rate_interval(interval: float, scrape_interval: float) -> str:
    """Grafana's ``$__rate_interval``: max(interval + scrape interval, 4 × scrape interval)."""
    return f"{int(max(interval + scrape_interval, 4 * scrape_interval))}s"


@dataclass(frozen=True)
class PanelQuery:
    expr: str
    legend: str


def panel_queries() -> list[PanelQuery]:
    board = json.loads((ROOT / "dashboards" / "observatory-health.json").read_text())
    panels = [p for p in board["panels"] if p.get("datasource", {}).get("type") == "prometheus"]
    assert [p["title"] for p in panels] == ["Operator reconcile errors"]
    return [PanelQuery(t["expr"], t["legendFormat"]) for t in panels[0]["targets"]]


class Prometheus:
    """Debian's prometheus on a free loopback port, scraping one target every second."""

    def __init__(self, root: Path, target: str) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        root.mkdir(parents=True, exist_ok=True)
        config = root / "prometheus.yml"
        interval = f"{SCRAPE_INTERVAL:g}s"
        config.write_text(
            yaml.safe_dump(
                {
                    "global": {"scrape_interval": interval, "evaluation_interval": interval},
                    "scrape_configs": [{"job_name": "observatory-operator", "static_configs": [{"targets": [target]}]}],
                }
            )
        )
        self.process = Process(
            "prometheus",
            [
                tools.prometheus(),
                f"--config.file={config}",
                f"--storage.tsdb.path={root / 'data'}",
                f"--web.listen-address=127.0.0.1:{self.port}",
                "--log.level=warn",
            ],
            log=root / "prometheus.log",
            cwd=root,
        )

    def start(self) -> None:
        self.process.start()
        wait_until(self._ready, timeout=60, what=f"prometheus /-/ready (log: {self.process.log})")

    def _ready(self) -> bool:
        with urllib.request.urlopen(f"{self.url}/-/ready", timeout=2) as answer:
            return bool(answer.status == 200)

    def api(self, path: str, **params: str | float) -> Any:
        query = urllib.parse.urlencode({k: str(v) for k, v in params.items()})
        with urllib.request.urlopen(f"{self.url}/api/v1/{path}?{query}", timeout=10) as answer:
            body = json.loads(answer.read())
        assert body["status"] == "success", body
        return body["data"]

    def instant(self, expr: str) -> list[dict[str, Any]]:
        result: list[dict[str, Any]] = self.api("query", query=expr)["result"]
        return result

    def as_grafana_sends(self, query: PanelQuery, start: float, end: float, interval: float) -> list[dict[str, Any]]:
        """A range query: ``$__rate_interval`` filled in, the step Grafana's interval (at least the scrape interval)."""
        step = max(interval, SCRAPE_INTERVAL)
        expr = query.expr.replace("$__rate_interval", rate_interval(step, SCRAPE_INTERVAL))
        result: list[dict[str, Any]] = self.api("query_range", query=expr, start=start, end=end, step=step)["result"]
        return result

    def stop(self) -> None:
        self.process.stop()


def drawn(series: list[dict[str, Any]], legend: str) -> dict[str, float]:
    """What the panel draws for one query: Grafana's legend of each series → its largest value.

    Fails when a label the legend shows is missing (Grafana would print it empty).
    """
    out: dict[str, float] = {}
    for one in series:
        labels = one["metric"]
        wanted = [name.strip() for name in legend.split("{{")[1:] for name in [name.split("}}")[0]]]
        missing = [name for name in wanted if name not in labels]
        assert not missing, f"legend {legend!r} shows {missing}, which series {labels} lack"
        name = legend
        for label in wanted:
            name = name.replace("{{" + label + "}}", labels[label])
        out[name] = max(float(v) for _, v in one["values"])
    return out


def failed_rounds(prom: Prometheus, queries: list[PanelQuery], start: float, interval: float) -> dict[str, float]:
    """Every series of every query of the panel, as the panel would draw it since ``start``."""
    out: dict[str, float] = {}
    for query in queries:
        out.update(drawn(prom.as_grafana_sends(query, start, time.time(), interval), query.legend))
    return out


BAD_AFFINITY = {
    "nodeAffinity": {
        "requiredDuringSchedulingIgnoredDuringExecution": {
            "nodeSelectorTerms": [{"matchExpressions": [{"key": "pool", "operator": "Sometimes"}]}]
        }
    }
}
"""Valid for the CRD (affinity passes through), refused by the API server's DaemonSet validation."""
FAILED = {f"{KIND} Rejected", f"{KIND} raised (temporary)"}
"""What the panel must draw once both broken collectors exist (Grafana's legend of each series)."""


def unreachable_webhook(namespace: str) -> dict[str, Any]:
    """A validating webhook on the ConfigMaps of collector ``unreachable`` in ``namespace``, with nothing behind it."""
    return {
        "apiVersion": "admissionregistration.k8s.io/v1",
        "kind": "ValidatingWebhookConfiguration",
        "metadata": {"name": f"unreachable-{namespace}"},
        "webhooks": [
            {
                "name": "unreachable.itest.happypatterns.org",
                # Nothing listens on port 1: the call fails and failurePolicy Fail refuses the write with a 500.
                "clientConfig": {"url": "https://127.0.0.1:1/validate"},
                "rules": [
                    {
                        "apiGroups": [""],
                        "apiVersions": ["v1"],
                        "operations": ["CREATE", "UPDATE"],
                        "resources": ["configmaps"],
                    }
                ],
                "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": namespace}},
                "objectSelector": {"matchLabels": {"app.kubernetes.io/instance": "unreachable"}},
                "failurePolicy": "Fail",
                "sideEffects": "None",  # so dry runs call it too, as real writes do
                "admissionReviewVersions": ["v1"],
                "timeoutSeconds": 2,
            }
        ],
    }


@dataclass(frozen=True)
class Provoked:
    operator: Operator
    prometheus: Prometheus
    started: float
    quiet: dict[str, float]
    """What the panel drew while only a healthy collector existed (its rounds scraped)."""


@pytest.fixture(scope="module")
def provoked(control_plane: ControlPlane, bed_root: Path) -> Iterator[Provoked]:
    """An operator scraped by Prometheus: a healthy collector first, then two whose rounds fail."""
    kube = control_plane.kube
    install_crds(kube, REPO / "crds")
    namespace = create_namespace(kube, f"dashboards-prometheus-{secrets.token_hex(3)}")
    webhook = unreachable_webhook(namespace)
    op = start_operator(control_plane.kubeconfig, namespace, bed_root / "logs" / f"operator-{namespace}.log")
    prom = Prometheus(bed_root / f"prometheus-{namespace}", urllib.parse.urlsplit(op.metrics_url).netloc)
    try:
        prom.start()
        started = time.time()
        kube.apply(stand_in_collector("healthy"), namespace)
        applied = f'observatory_operator_reconciles_total{{kind="{KIND}",outcome="Applied"}}'
        wait_until(lambda: prom.instant(applied), timeout=60, what=f"Prometheus scraped {applied}")
        time.sleep(4 * SCRAPE_INTERVAL)  # a few more scrapes of the healthy collector's resyncs
        quiet = failed_rounds(prom, panel_queries(), started, SCRAPE_INTERVAL)
        kube.create(WEBHOOK_PATH, webhook)
        kube.apply(stand_in_collector("refused", affinity=BAD_AFFINITY), namespace)
        kube.apply(stand_in_collector("unreachable"), namespace)
        yield Provoked(op, prom, started, quiet)
    finally:
        prom.stop()
        op.process.stop()
        with contextlib.suppress(ApiError):
            kube.delete(f"{WEBHOOK_PATH}/{webhook['metadata']['name']}")
        with contextlib.suppress(ApiError):
            kube.delete(f"/api/v1/namespaces/{namespace}")


def draws_every_failure(provoked: Provoked, queries: list[PanelQuery]) -> dict[str, float]:
    """What the panel draws since the start; fails unless it shows both failed collectors' rounds."""
    seen = failed_rounds(provoked.prometheus, queries, provoked.started, SCRAPE_INTERVAL)
    assert {k for k, v in seen.items() if v > 0} >= FAILED, f"the panel draws {seen}"
    return seen


def wait_drawn(provoked: Provoked, queries: list[PanelQuery]) -> dict[str, float]:
    result: dict[str, float] = wait_until(
        lambda: draws_every_failure(provoked, queries), timeout=90, what=f"the panel drawing {sorted(FAILED)}"
    )
    return result


def test_the_panel_draws_nothing_while_every_round_succeeds(provoked: Provoked) -> None:
    assert provoked.quiet == {}, f"failed rounds drawn while none failed: {provoked.quiet}"


def test_reconcile_errors_panel_shows_each_failed_round_by_kind_and_cause(provoked: Provoked) -> None:
    queries = panel_queries()
    assert len(queries) == 2
    seen = wait_drawn(provoked, queries)
    assert set(seen) == FAILED, f"the panel draws {seen}; only {sorted(FAILED)} failed"
    # What the panel draws is what the operator counted (its own /metrics, read directly).
    own = provoked.operator.metrics()
    assert own[("observatory_operator_reconciles_total", (("kind", KIND), ("outcome", "Rejected")))] >= 1
    assert own[("observatory_operator_reconcile_errors_total", (("error", "temporary"), ("kind", KIND)))] >= 1
    # Zoomed out (a 5 s interval: a 6 s $__rate_interval and step), the same series once a step covers them.
    wait_until(
        lambda: set(failed_rounds(provoked.prometheus, queries, provoked.started, 5.0)) == FAILED,
        timeout=30,
        what=f"the panel at a 5 s interval drawing exactly {sorted(FAILED)}",
    )


@pytest.mark.parametrize(
    ("wrong", "right"),
    [
        ("observatory_operator_reconcile_errors_total", "observatory_operator_reconcile_error_total"),
        ("by (kind, outcome)", "by (knd, outcome)"),
        ('outcome=~"', 'result=~"'),
    ],
    ids=["metric", "grouping label", "matcher label"],
)
def test_a_query_naming_what_the_operator_does_not_export_fails_the_check(
    wrong: str, right: str, provoked: Provoked
) -> None:
    wait_drawn(provoked, panel_queries())  # the real panel draws both: the operator and the scrape work
    broken = [PanelQuery(q.expr.replace(wrong, right), q.legend) for q in panel_queries()]
    assert any(right in q.expr for q in broken)
    with pytest.raises(AssertionError):
        draws_every_failure(provoked, broken)
