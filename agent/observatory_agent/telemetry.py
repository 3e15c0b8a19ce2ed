"""The agent's own Prometheus metrics (names pass ``promtool check metrics``)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, ProcessCollector, disable_created_metrics

_LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


class Telemetry:
    """One registry per agent, so tests and the processor can hold their own."""

    def __init__(self, version: str, node: str) -> None:
        # *_created series double the exposition for nothing a dashboard of this agent uses.
        disable_created_metrics()  # type: ignore[no-untyped-call]
        r = self.registry = CollectorRegistry()
        ProcessCollector(registry=r)
        self.build_info = Gauge(
            "observatory_agent_build_info", "Always 1; the agent's version and node", ["version", "node"], registry=r
        )
        self.build_info.labels(version=version, node=node).set(1)
        self.config_info = Gauge(
            "observatory_agent_config_info", "Always 1; the hash of the config in use", ["hash"], registry=r
        )
        self.cycles = Counter("observatory_agent_cycles", "Collection cycles run", registry=r)
        self.cycle_duration = Histogram(
            "observatory_agent_cycle_duration_seconds",
            "Wall time of one collection cycle, all collectors together",
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.collector_duration = Gauge(
            "observatory_agent_collector_duration_seconds",
            "Wall time of each collector's last collection",
            ["collector"],
            registry=r,
        )
        self.collector_last_success = Gauge(
            "observatory_agent_collector_last_success_timestamp_seconds",
            "Unix time of each collector's last successful collection",
            ["collector"],
            registry=r,
        )
        self.collector_errors = Counter(
            "observatory_agent_collector_errors",
            "Collector failures by collector and reason (timeout, busy, error, load)",
            ["collector", "reason"],
            registry=r,
        )
        self.rejected_samples = Counter(
            "observatory_agent_rejected_samples",
            "Samples a collector handed back that failed validation, by collector and reason",
            ["collector", "reason"],
            registry=r,
        )
        self.collector_skipped = Counter(
            "observatory_agent_collector_skipped",
            "Reads a collector skipped, by reason (mount_stuck: a statvfs that did not answer in time)",
            ["collector", "reason"],
            registry=r,
        )
        self.scrape_up = Gauge(
            "observatory_agent_scrape_target_up",
            "1 when the application target's last scrape succeeded",
            ["collector", "target"],
            registry=r,
        )
        self.samples = Counter("observatory_agent_samples", "Samples folded into windows", registry=r)
        self.dropped_samples = Counter(
            "observatory_agent_dropped_samples",
            "Samples dropped: late for a closed window, not finite, or over the series limit",
            ["reason"],
            registry=r,
        )
        self.dropped_series = Counter(
            "observatory_agent_dropped_series",
            "Series refused in a window because the agent held max_series already",
            registry=r,
        )
        self.series_limit = Gauge("observatory_agent_series_limit", "max_series: series held per window", registry=r)
        self.clock_steps = Counter(
            "observatory_agent_clock_steps",
            "Wall-clock steps detected, by direction (backward: samples stay on the agent's own timeline)",
            ["direction"],
            registry=r,
        )
        self.windows_closed = Counter("observatory_agent_windows_closed", "Windows closed and flushed", registry=r)
        self.window_close_lateness = Histogram(
            "observatory_agent_window_close_lateness_seconds",
            "How long after its end a window was closed and queued for writing",
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.open_series = Gauge("observatory_agent_open_series", "Series held in open windows", registry=r)
        self.points_written = Counter("observatory_agent_points_written", "Points InfluxDB accepted", registry=r)
        self.write_errors = Counter(
            "observatory_agent_write_errors", "Failed InfluxDB writes by kind", ["kind"], registry=r
        )
        self.rejected_points = Counter(
            "observatory_agent_rejected_points",
            "Points InfluxDB refused (field type conflict, bad line): dropped, never retried",
            registry=r,
        )
        self.write_duration = Histogram(
            "observatory_agent_write_duration_seconds",
            "Duration of each write request to InfluxDB, failed ones included",
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.buffered_points = Gauge(
            "observatory_agent_buffered_points", "Points waiting in the disk buffer", registry=r
        )
        self.buffered_bytes = Gauge("observatory_agent_buffered_bytes", "Bytes of the disk buffer's files", registry=r)
        self.unpersisted_points = Gauge(
            "observatory_agent_unpersisted_points",
            "Points held in memory only, because the buffer's disk refused them or another agent still owns "
            "the buffer directory (lost if the agent dies)",
            registry=r,
        )
        self.buffer_owned = Gauge(
            "observatory_agent_buffer_owned",
            "1 when this agent owns its buffer directory; 0 while another agent (the pod it replaces) holds it",
            registry=r,
        )
        self.buffer_dropped_points = Counter(
            "observatory_agent_buffer_dropped_points",
            "Points dropped because the buffer was full (bytes, or memory while the disk refused writes "
            "or another agent held the directory)",
            registry=r,
        )
        self.buffer_write_errors = Counter(
            "observatory_agent_buffer_write_errors",
            "Buffer appends the disk refused, by errno (ENOSPC: disk full)",
            ["error"],
            registry=r,
        )
        self.buffer_corrupt_records = Counter(
            "observatory_agent_buffer_corrupt_records",
            "Torn or corrupt records found in the buffer on start (skipped)",
            registry=r,
        )
        self.last_successful_write = Gauge(
            "observatory_agent_last_successful_write_timestamp_seconds",
            "Unix time of the last accepted write",
            registry=r,
        )
        self.config_reloads = Counter(
            "observatory_agent_config_reloads", "Config reloads by result", ["result"], registry=r
        )
        self.partials_sent = Counter("observatory_agent_partials_sent", "Partials sent to processors", registry=r)
        self.partials_errors = Counter(
            "observatory_agent_partials_errors", "Partials a processor did not take", registry=r
        )
        self.partials_pending = Gauge(
            "observatory_agent_partials_pending", "Partials kept until their processor has written them", registry=r
        )
        self.partials_dropped = Counter(
            "observatory_agent_partials_dropped",
            "Partials dropped: outbox full, or refused by the processor as too late, conflicting or invalid",
            registry=r,
        )
        self.ready = Gauge("observatory_agent_ready", "1 when the first cycle ran and the config is valid", registry=r)
