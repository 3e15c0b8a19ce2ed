"""The operator's own Prometheus metrics, served on ``/metrics`` (prometheus-client's default registry).

Besides these, the default registry carries ``process_*`` (RSS, CPU, open fds) and ``python_*``.

======================================================  =====================================================
metric                                                  meaning
======================================================  =====================================================
``observatory_operator_reconciles_total``               rounds by kind and outcome (Applied, Paused, ...)
``observatory_operator_reconcile_errors_total``         rounds that raised, by kind and error class
``observatory_operator_reconcile_duration_seconds``     round duration by kind (apply, observe, status write)
``observatory_operator_probe_failures_total``           agent ``/status`` reads that failed, by reason
``observatory_operator_api_requests_total``             API requests by verb and HTTP code (0: no answer)
``observatory_operator_queue_depth``                    keys waiting for a round, by kind
``observatory_operator_leader``                         1 while this replica holds the Lease (or runs alone)
======================================================  =====================================================
"""

from __future__ import annotations

from typing import Final

from prometheus_client import Counter, Gauge, Histogram, start_http_server

PREFIX: Final = "observatory_operator"

RECONCILES = Counter(f"{PREFIX}_reconciles", "Reconcile rounds by kind and outcome.", ["kind", "outcome"])
RECONCILE_ERRORS = Counter(
    f"{PREFIX}_reconcile_errors",
    "Rounds that raised (retried with backoff), by kind and error class.",
    ["kind", "error"],
)
RECONCILE_DURATION = Histogram(
    f"{PREFIX}_reconcile_duration_seconds",
    "Duration of one round (apply, observe, status write) by kind.",
    ["kind"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0),
)
PROBE_FAILURES = Counter(f"{PREFIX}_probe_failures", "Agent /status reads that failed, by reason.", ["reason"])
API_REQUESTS = Counter(f"{PREFIX}_api_requests", "Kubernetes API requests by verb and HTTP code.", ["verb", "code"])
QUEUE_DEPTH = Gauge(f"{PREFIX}_queue_depth", "Keys waiting for a round, by kind.", ["kind"])
LEADER = Gauge(f"{PREFIX}_leader", "1 while this replica may write (holds the Lease, or runs without election).")


def serve(bind: str) -> None:
    """Serve ``/metrics`` on ``host:port`` from a daemon thread (prometheus-client's own server)."""
    host, _, port = bind.rpartition(":")
    start_http_server(int(port), addr=host or "0.0.0.0")  # noqa: S104 - a pod's metrics port is meant to be scraped


__all__ = [
    "API_REQUESTS",
    "LEADER",
    "PROBE_FAILURES",
    "QUEUE_DEPTH",
    "RECONCILES",
    "RECONCILE_DURATION",
    "RECONCILE_ERRORS",
    "serve",
]
