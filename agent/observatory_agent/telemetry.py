"""The agent's own Prometheus metrics (names pass ``promtool check metrics``)."""

from __future__ import annotations

from collections.abc import Sequence

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, ProcessCollector, disable_created_metrics

_LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


class Metrics:
    """Declares one component's metrics in a registry of its own (tests hold several), every name under one prefix."""

    def __init__(self, prefix: str) -> None:
        # *_created series double the exposition for nothing a dashboard of ours uses.
        disable_created_metrics()  # type: ignore[no-untyped-call]
        self.prefix = prefix
        self.registry = CollectorRegistry()
        ProcessCollector(registry=self.registry)

    def info(self, name: str, doc: str, **labels: str) -> Gauge:
        """An always-1 gauge whose labels say what runs (``build_info``)."""
        gauge = self.gauge(name, doc, tuple(labels))
        gauge.labels(**labels).set(1)
        return gauge

    def gauge(self, name: str, doc: str, labels: Sequence[str] = ()) -> Gauge:
        return Gauge(self.prefix + name, doc, labels, registry=self.registry)

    def counter(self, name: str, doc: str, labels: Sequence[str] = ()) -> Counter:
        return Counter(self.prefix + name, doc, labels, registry=self.registry)

    def histogram(self, name: str, doc: str, labels: Sequence[str] = (), *, buckets: Sequence[float]) -> Histogram:
        return Histogram(self.prefix + name, doc, labels, buckets=buckets, registry=self.registry)


class Telemetry:
    """The agent's metrics, in a registry of its own."""

    def __init__(self, version: str, node: str) -> None:
        m = Metrics("observatory_agent_")
        self.registry = m.registry
        self.build_info = m.info("build_info", "Always 1; the agent's version and node", version=version, node=node)
        self.config_info = m.gauge("config_info", "Always 1; the hash of the config in use", ["hash"])
        self.cycles = m.counter("cycles", "Collection cycles run")
        self.cycle_duration = m.histogram(
            "cycle_duration_seconds",
            "Wall time of one collection cycle, all collectors together",
            buckets=_LATENCY_BUCKETS,
        )
        self.collector_duration = m.gauge(
            "collector_duration_seconds", "Wall time of each collector's last collection", ["collector"]
        )
        self.collector_last_success = m.gauge(
            "collector_last_success_timestamp_seconds",
            "Unix time of each collector's last successful collection",
            ["collector"],
        )
        self.collector_errors = m.counter(
            "collector_errors",
            "Collector failures by collector and reason (timeout, busy, error, load)",
            ["collector", "reason"],
        )
        self.rejected_samples = m.counter(
            "rejected_samples",
            "Samples a collector handed back that failed validation, by collector and reason",
            ["collector", "reason"],
        )
        self.collector_skipped = m.counter(
            "collector_skipped",
            "Reads a collector skipped, by reason (mount_stuck: a statvfs that did not answer in time)",
            ["collector", "reason"],
        )
        self.scrape_up = m.gauge(
            "scrape_target_up", "1 when the application target's last scrape succeeded", ["collector", "target"]
        )
        self.samples = m.counter("samples", "Samples folded into windows")
        self.dropped_samples = m.counter(
            "dropped_samples",
            "Samples dropped: late for a closed window, not finite, or over the series limit",
            ["reason"],
        )
        self.dropped_series = m.counter(
            "dropped_series", "Series refused in a window because the agent held max_series already"
        )
        self.series_limit = m.gauge("series_limit", "max_series: series held per window")
        self.clock_steps = m.counter(
            "clock_steps",
            "Wall-clock steps detected, by direction (backward: samples stay on the agent's own timeline)",
            ["direction"],
        )
        self.windows_closed = m.counter("windows_closed", "Windows closed and flushed")
        self.window_close_lateness = m.histogram(
            "window_close_lateness_seconds",
            "How long after its end a window was closed and queued for writing",
            buckets=_LATENCY_BUCKETS,
        )
        self.open_series = m.gauge("open_series", "Series held in open windows")
        self.points_written = m.counter("points_written", "Points InfluxDB accepted")
        self.write_errors = m.counter("write_errors", "Failed InfluxDB writes by kind", ["kind"])
        self.rejected_points = m.counter(
            "rejected_points", "Points InfluxDB refused (field type conflict, bad line): dropped, never retried"
        )
        self.write_duration = m.histogram(
            "write_duration_seconds",
            "Duration of each write request to InfluxDB, failed ones included",
            buckets=_LATENCY_BUCKETS,
        )
        self.buffered_points = m.gauge("buffered_points", "Points waiting in the disk buffer")
        self.buffered_bytes = m.gauge("buffered_bytes", "Bytes of the disk buffer's files")
        self.unpersisted_points = m.gauge(
            "unpersisted_points",
            "Points held in memory only, because the buffer's disk refused them or another agent still owns "
            "the buffer directory (lost if the agent dies)",
        )
        self.buffer_owned = m.gauge(
            "buffer_owned",
            "1 when this agent owns its buffer directory; 0 while another agent (the pod it replaces) holds it",
        )
        self.buffer_dropped_points = m.counter(
            "buffer_dropped_points",
            "Points dropped because the buffer was full (bytes, or memory while the disk refused writes "
            "or another agent held the directory)",
        )
        self.buffer_write_errors = m.counter(
            "buffer_write_errors", "Buffer appends the disk refused, by errno (ENOSPC: disk full)", ["error"]
        )
        self.buffer_corrupt_records = m.counter(
            "buffer_corrupt_records", "Torn or corrupt records found in the buffer on start (skipped)"
        )
        self.last_successful_write = m.gauge(
            "last_successful_write_timestamp_seconds", "Unix time of the last accepted write"
        )
        self.config_reloads = m.counter("config_reloads", "Config reloads by result", ["result"])
        self.partials_sent = m.counter("partials_sent", "Partials sent to processors")
        self.partials_errors = m.counter("partials_errors", "Partials a processor did not take")
        self.partials_pending = m.gauge("partials_pending", "Partials kept until their processor has written them")
        self.partials_dropped = m.counter(
            "partials_dropped",
            "Partials dropped: outbox full, or refused by the processor as too late, conflicting or invalid",
        )
        self.ready = m.gauge("ready", "1 when the first cycle ran and the config is valid")
