"""The processor's own Prometheus metrics: the numbers it also writes to InfluxDB with each window."""

from __future__ import annotations

from observatory_agent.telemetry import Metrics


class ProcessorTelemetry:
    """The processor's metrics, in a registry of its own."""

    def __init__(self, version: str, rule: str) -> None:
        m = Metrics("observatory_processor_")
        self.registry = m.registry
        self.build_info = m.info("build_info", "Always 1; the processor's version and rule", version=version, rule=rule)
        self.ready = m.gauge("ready", "1 once the watermark was read back")
        self.partials = m.counter(
            "partials",
            "Partials received, by outcome: accepted, duplicate, invalid, or the refusal reason",
            ["outcome"],
        )
        self.windows_written = m.counter("windows_written", "Windows written for the first time")
        self.windows_rewritten = m.counter("windows_rewritten", "Windows written again after late partials")
        self.series = m.gauge("series", "Series (groups) in the newest window written")
        self.nodes = m.gauge("nodes", "Nodes contributing to the newest window written")
        self.expected_nodes = m.gauge("expected_nodes", "Nodes seen in the last three windows")
        self.late_partials = m.counter("late_partials", "Partials merged after their window was written")
        self.dropped_partials = m.counter(
            "dropped_partials", "Partials dropped: too late, conflicting, not fitting the rule, or invalid"
        )
        self.dropped_groups = m.counter("dropped_groups", "Output series dropped by maxSeries (per window)")
        self.dropped_series = m.counter("dropped_series", "Input series folded into no group because of maxSeries")
        self.buffered_points = m.gauge("buffered_points", "Points waiting in the disk buffer for InfluxDB")
        self.write_errors = m.counter("write_errors", "Failed InfluxDB writes by kind", ["kind"])
        self.watermark = m.gauge(
            "watermark_timestamp_seconds", "Newest window end InfluxDB acknowledged (every window up to it is written)"
        )
        self.last_window = m.gauge("last_window_timestamp_seconds", "End of the newest window written")
        self.open_windows = m.gauge("open_windows", "Windows still merging")
        self.window_write = m.histogram(
            "window_write_seconds",
            "Time to turn one window into points and hand them to the writer",
            buckets=(0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5),
        )
