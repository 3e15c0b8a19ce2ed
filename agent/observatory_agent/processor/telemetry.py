"""The processor's own Prometheus metrics: the numbers it also writes to InfluxDB with each window."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, ProcessCollector, disable_created_metrics


class ProcessorTelemetry:
    """One registry per processor (tests hold several)."""

    def __init__(self, version: str, rule: str) -> None:
        disable_created_metrics()  # type: ignore[no-untyped-call]
        r = self.registry = CollectorRegistry()
        ProcessCollector(registry=r)
        self.build_info = Gauge(
            "observatory_processor_build_info",
            "Always 1; the processor's version and rule",
            ["version", "rule"],
            registry=r,
        )
        self.build_info.labels(version=version, rule=rule).set(1)
        self.ready = Gauge("observatory_processor_ready", "1 once the watermark was read back", registry=r)
        self.partials = Counter(
            "observatory_processor_partials",
            "Partials received, by outcome: accepted, duplicate, invalid, or the refusal reason",
            ["outcome"],
            registry=r,
        )
        self.windows_written = Counter(
            "observatory_processor_windows_written", "Windows written for the first time", registry=r
        )
        self.windows_rewritten = Counter(
            "observatory_processor_windows_rewritten", "Windows written again after late partials", registry=r
        )
        self.series = Gauge("observatory_processor_series", "Series (groups) in the newest window written", registry=r)
        self.nodes = Gauge("observatory_processor_nodes", "Nodes contributing to the newest window written", registry=r)
        self.expected_nodes = Gauge(
            "observatory_processor_expected_nodes", "Nodes seen in the last three windows", registry=r
        )
        self.late_partials = Counter(
            "observatory_processor_late_partials", "Partials merged after their window was written", registry=r
        )
        self.dropped_partials = Counter(
            "observatory_processor_dropped_partials",
            "Partials dropped: too late, conflicting, not fitting the rule, or invalid",
            registry=r,
        )
        self.dropped_groups = Counter(
            "observatory_processor_dropped_groups", "Output series dropped by maxSeries (per window)", registry=r
        )
        self.dropped_series = Counter(
            "observatory_processor_dropped_series", "Input series folded into no group because of maxSeries", registry=r
        )
        self.buffered_points = Gauge(
            "observatory_processor_buffered_points", "Points waiting in the disk buffer for InfluxDB", registry=r
        )
        self.write_errors = Counter(
            "observatory_processor_write_errors", "Failed InfluxDB writes by kind", ["kind"], registry=r
        )
        self.watermark = Gauge(
            "observatory_processor_watermark_timestamp_seconds",
            "Newest window end InfluxDB acknowledged (every window up to it is written)",
            registry=r,
        )
        self.last_window = Gauge(
            "observatory_processor_last_window_timestamp_seconds", "End of the newest window written", registry=r
        )
        self.open_windows = Gauge("observatory_processor_open_windows", "Windows still merging", registry=r)
        self.window_write = Histogram(
            "observatory_processor_window_write_seconds",
            "Time to turn one window into points and hand them to the writer",
            buckets=(0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5),
            registry=r,
        )
