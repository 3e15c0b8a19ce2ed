"""The agent's own Prometheus metrics (names pass ``promtool check metrics``)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, ProcessCollector, disable_created_metrics


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
        self.cycles = Counter("observatory_agent_cycles", "Collection cycles run", registry=r)
        self.cycle_duration = Histogram(
            "observatory_agent_cycle_duration_seconds",
            "Wall time of one collection cycle, all collectors together",
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0),
            registry=r,
        )
        self.samples = Counter("observatory_agent_samples", "Samples folded into windows", registry=r)
        self.dropped_samples = Counter(
            "observatory_agent_dropped_samples",
            "Samples dropped: late for a closed window or not finite",
            ["reason"],
            registry=r,
        )
        self.windows_closed = Counter("observatory_agent_windows_closed", "Windows closed and flushed", registry=r)
        self.open_series = Gauge("observatory_agent_open_series", "Series held in open windows", registry=r)
        self.points_written = Counter("observatory_agent_points_written", "Points InfluxDB accepted", registry=r)
        self.write_errors = Counter(
            "observatory_agent_write_errors", "Failed InfluxDB writes by kind", ["kind"], registry=r
        )
        self.buffered_points = Gauge(
            "observatory_agent_buffered_points", "Points waiting in the disk buffer", registry=r
        )
        self.buffered_bytes = Gauge("observatory_agent_buffered_bytes", "Bytes of the disk buffer's files", registry=r)
        self.buffer_dropped_points = Counter(
            "observatory_agent_buffer_dropped_points", "Points dropped because the buffer was full", registry=r
        )
        self.last_successful_write = Gauge(
            "observatory_agent_last_successful_write_timestamp_seconds",
            "Unix time of the last accepted write",
            registry=r,
        )
        self.config_reloads = Counter(
            "observatory_agent_config_reloads", "Config reloads by result", ["result"], registry=r
        )
        self.collector_errors = Counter(
            "observatory_agent_collector_errors",
            "Collector failures by collector and reason",
            ["collector", "reason"],
            registry=r,
        )
        self.partials_sent = Counter("observatory_agent_partials_sent", "Partials sent to processors", registry=r)
        self.partials_pending = Gauge(
            "observatory_agent_partials_pending", "Partials kept until their processor has written them", registry=r
        )
        self.partials_dropped = Counter(
            "observatory_agent_partials_dropped",
            "Partials dropped: outbox full, or refused by the processor as too late, conflicting or invalid",
            registry=r,
        )
        self.ready = Gauge("observatory_agent_ready", "1 when the first cycle ran and the config is valid", registry=r)
