"""The AggregationRule's pure status function: its processor Deployment and the processor's own ``/status`` → status.

What ``kubectl get aggrule`` shows, and where it comes from:

- READY ``r/d``: ready processor replicas out of the Deployment's (one).
- LAST-WINDOW: the processor's watermark, the newest window end whose points InfluxDB acknowledged.
- SERIES, NODES (contributing), DROPPED: the newest window the processor wrote: groups written,
  nodes whose partials it merged, groups over ``maxSeries`` it dropped. EXPECTED is the operator's
  own count of nodes running a ready agent of the rule's collectors.
- LATE: partials that came after their window's horizon since the processor started.
- Conditions Ready, Reconciled (names collectors that do not exist and collectors whose window does
  not divide the rule's), DataFlowing (a window written within two windows plus the allowed
  lateness), CardinalityLimited (True while maxSeries drops groups); each transition is an Event,
  and turning CardinalityLimited True is a Warning.

The processor's answer is not trusted: numbers must be finite and plausible, or they read as absent.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Final

from observatory_agent.contract import parse_duration
from observatory_operator import reasons as r
from observatory_operator.api.models import AggregationRuleSpec, AggregationRuleStatus, ConditionStatus, Phase
from observatory_operator.reasons import Outcome, Verdict
from observatory_operator.status.conditions import (
    MAX_POINTS,
    MAX_TIMESTAMP,
    Computed,
    CondValue,
    Notice,
    finite,
    human,
    settle,
)

Obj = Mapping[str, Any]

COUNT_LIMIT: Final = 10**12
"""Counts past this in a processor's answer are garbage, not counts."""
MAX_NAMED: Final = 10


def _object(value: Any) -> Mapping[str, Any]:
    return value if isinstance(value, dict) else {}


@dataclass(frozen=True)
class ProcessorReport:
    """The processor's ``/status``, as far as status needs it (absent or implausible fields read as None)."""

    watermark: float | None = None
    last_end: float | None = None
    series: int | None = None
    nodes: int | None = None
    node_names: frozenset[str] | None = None
    """The nodes that contributed to the newest window (None when the processor did not list them all)."""
    dropped_series: int | None = None
    late_partials: int | None = None
    buffered_points: int | None = None
    write_error: str | None = None
    watermark_error: str | None = None
    """Why the processor could not read its watermark back (it stays unready until it can)."""

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> ProcessorReport:
        last, partials, errors = (_object(data.get(k)) for k in ("last_window", "partials", "errors"))

        def count(value: Any) -> int | None:
            number = finite(value, 0, COUNT_LIMIT)
            return int(number) if number is not None else None

        nodes = count(last.get("nodes"))
        listed = last.get("node_names")
        names = None
        if isinstance(listed, list) and len(listed) == nodes and all(isinstance(n, str) for n in listed):
            names = frozenset(n[:253] for n in listed)
        writes = _object(errors.get("writes"))
        failing = sorted(str(k)[:64] for k, v in writes.items() if isinstance(v, int) and v > 0)
        return cls(
            watermark=finite(data.get("watermark"), 0, MAX_TIMESTAMP),
            last_end=finite(last.get("end"), 0, MAX_TIMESTAMP),
            series=count(last.get("series")),
            nodes=nodes,
            node_names=names,
            dropped_series=count(last.get("dropped_series")),
            late_partials=count(partials.get("late")),
            buffered_points=count(data.get("buffered_points")),
            write_error=", ".join(failing) or None,
            watermark_error=str(errors["watermark_read"])[:300] if errors.get("watermark_read") else None,
        )


@dataclass(frozen=True)
class Observed:
    """Everything the rule's status is computed from, fetched by the caller."""

    generation: int
    spec: AggregationRuleSpec
    verdict: Verdict
    namespace: str = ""
    deployment: Obj | None = None
    report: ProcessorReport | None = None
    """The ready processor pod's answer; None when none answered usefully."""
    started: float | None = None
    """Unix time the processor pod started (how long it may still wait for its first window)."""
    expected_node_names: frozenset[str] | None = None
    """The nodes running a ready agent of the rule's collectors (None: not known)."""
    missing_collectors: Sequence[str] = ()
    window_problems: Sequence[str] = ()
    """Collectors whose window does not divide the rule's, each as ``name (window 45s)``."""
    config_hash: str | None = None
    previous_conditions: Sequence[Obj] = field(default_factory=tuple)

    @property
    def expected_nodes(self) -> int | None:
        """EXPECTED: how many nodes run a ready agent of the rule's collectors."""
        return len(self.expected_node_names) if self.expected_node_names is not None else None


def _replicas(deployment: Obj | None) -> tuple[int, int, bool]:
    """(ready, desired, rolled out) of the processor Deployment."""
    if deployment is None:
        return 0, 0, False
    spec, status = deployment.get("spec") or {}, deployment.get("status") or {}
    generation = int((deployment.get("metadata") or {}).get("generation") or 0)
    rolled_out = int(status.get("observedGeneration") or 0) >= generation
    return int(status.get("readyReplicas") or 0), int(spec.get("replicas", 1)), rolled_out


def _ready(observed: Observed) -> CondValue:
    ready, desired, rolled_out = _replicas(observed.deployment)
    if observed.deployment is None:
        return ConditionStatus.FALSE, r.NO_DEPLOYMENT, "the processor Deployment does not exist yet"
    if not rolled_out:
        return ConditionStatus.FALSE, r.ROLLOUT_PENDING, "the Deployment controller has not processed the latest spec"
    if desired and ready >= desired:
        return ConditionStatus.TRUE, r.PROCESSOR_READY, f"{ready}/{desired} processor ready"
    report = observed.report
    if desired and report is not None and report.watermark_error:
        return (
            ConditionStatus.FALSE,
            r.WATERMARK_UNREADABLE,
            f"{ready}/{desired} processor ready: it cannot read its watermark back from InfluxDB"
            f" ({report.watermark_error}); its token must read and write the output bucket"
            " (spec.output.tokenSecretRef, else the first collector's token)",
        )
    return ConditionStatus.FALSE, r.PROCESSOR_NOT_READY, f"{ready}/{desired} processor ready"


def _some(items: Sequence[str]) -> str:
    head = ", ".join(items[:MAX_NAMED])
    return f"{head} and {len(items) - MAX_NAMED} more" if len(items) > MAX_NAMED else head


def _reconciled(observed: Observed) -> CondValue:
    verdict = observed.verdict
    if observed.spec.paused or verdict.outcome is Outcome.PAUSED:
        return ConditionStatus.FALSE, r.PAUSED, "spec.paused is true: children are left as they are"
    if not verdict.outcome.ok:
        return ConditionStatus.FALSE, verdict.reason, verdict.message
    if observed.missing_collectors:
        missing = _some(list(observed.missing_collectors))
        return (
            ConditionStatus.FALSE,
            r.COLLECTOR_NOT_FOUND,
            f"spec.collectors: {missing} not found in namespace {observed.namespace}; "
            "the processor runs for the others and rolls up what they send",
        )
    if observed.window_problems:
        return (
            ConditionStatus.FALSE,
            r.WINDOW_MISMATCH,
            f"spec.window {observed.spec.window} is not a whole multiple of the window of "
            f"{_some(list(observed.window_problems))}: the processor refuses their partials",
        )
    return ConditionStatus.TRUE, verdict.reason, verdict.message


def _data_flowing(observed: Observed, now: datetime) -> CondValue:
    spec, report = observed.spec, observed.report
    window = parse_duration(spec.window, key="spec.window")
    horizon = 2 * window + parse_duration(spec.allowed_lateness, key="spec.allowedLateness")
    if report is None:
        if observed.deployment is None or _replicas(observed.deployment)[0] == 0:
            return ConditionStatus.UNKNOWN, r.PROCESSOR_NOT_READY, "the processor is not running yet"
        return ConditionStatus.FALSE, r.PROCESSOR_NOT_ANSWERING, "the processor does not answer /status"
    stamp = now.timestamp()
    mark = report.watermark if report.watermark is not None and report.watermark <= stamp + 120 else None
    detail = f"; {report.buffered_points} points buffered ({report.write_error})" if report.write_error else ""
    if mark is None:
        if observed.started is None or stamp - observed.started < horizon:
            return ConditionStatus.UNKNOWN, r.WAITING_FOR_FIRST_WINDOW, f"no window written yet{detail}"
        return ConditionStatus.FALSE, r.WINDOWS_LATE, f"no window written in {human(stamp - observed.started)}{detail}"
    age = stamp - mark
    if age > horizon:
        return ConditionStatus.FALSE, r.WINDOWS_LATE, f"the newest window written ended {human(age)} ago{detail}"
    nodes = f"{report.nodes}" if report.nodes is not None else "?"
    expected = f"/{observed.expected_nodes}" if observed.expected_nodes is not None else ""
    series = report.series if report.series is not None else 0
    names, contributed = observed.expected_node_names, report.node_names
    silent = sorted(names - contributed) if names is not None and contributed is not None else []
    # Nodes whose agents run but whose partials are not in the window: their agents' /status says why.
    absent = f"; nothing from {_some(silent)}" if silent else ""
    return (
        ConditionStatus.TRUE,
        r.WINDOWS_WRITTEN,
        f"window ending {human(age)} ago written: {series} series from {nodes}{expected} nodes{absent}{detail}",
    )


def _cardinality(observed: Observed) -> CondValue:
    dropped = (observed.report.dropped_series if observed.report else None) or 0
    if dropped:
        return (
            ConditionStatus.TRUE,
            r.SERIES_DROPPED,
            f"{dropped} groups over spec.maxSeries ({observed.spec.max_series}) were dropped from the newest window; "
            "raise maxSeries or narrow groupBy, metrics or matchTags",
        )
    return ConditionStatus.FALSE, r.WITHIN_LIMIT, f"at most spec.maxSeries ({observed.spec.max_series}) groups"


def _phase(observed: Observed, ready: CondValue, reconciled: CondValue, flow: CondValue) -> Phase:
    rules = (
        (observed.spec.paused, Phase.PAUSED),
        (observed.verdict.outcome.failed, Phase.FAILED),
        (observed.deployment is None, Phase.PENDING),
        (ready[0] is not ConditionStatus.TRUE, Phase.PROGRESSING),
        (reconciled[0] is ConditionStatus.FALSE, Phase.DEGRADED),
        (flow[0] is ConditionStatus.FALSE, Phase.DEGRADED),
    )
    return next((phase for applies, phase in rules if applies), Phase.READY)


def compute(observed: Observed, now: datetime) -> Computed:
    """The rule's status, the condition transitions worth an Event, and a Warning when groups start being dropped."""
    ready, reconciled = _ready(observed), _reconciled(observed)
    flow, cardinality = _data_flowing(observed, now), _cardinality(observed)
    conditions, transitions = settle(
        ((r.READY, ready), (r.RECONCILED, reconciled), (r.DATA_FLOWING, flow), (r.CARDINALITY_LIMITED, cardinality)),
        observed.previous_conditions,
        generation=observed.generation,
        now=now,
    )
    notices: list[Notice] = []
    before = next((c for c in observed.previous_conditions if c.get("type") == r.CARDINALITY_LIMITED), {})
    if cardinality[0] is ConditionStatus.TRUE and before.get("status") != ConditionStatus.TRUE.value:
        notices.append(Notice("Warning", r.CARDINALITY_LIMITED, cardinality[2]))
    report = observed.report
    ready_count, desired, _ = _replicas(observed.deployment)
    mark = report.watermark if report is not None else None
    status = AggregationRuleStatus(
        observed_generation=observed.generation,
        phase=_phase(observed, ready, reconciled, flow),
        conditions=conditions,
        ready=f"{ready_count}/{desired}",
        ready_replicas=ready_count,
        # Whole seconds: sub-second churn would rewrite status for nothing.
        last_window=datetime.fromtimestamp(int(mark), tz=UTC) if mark is not None else None,
        series=report.series if report else None,
        contributing_nodes=report.nodes if report else None,
        expected_nodes=observed.expected_nodes,
        dropped_series=report.dropped_series if report else None,
        late_partials=report.late_partials if report else None,
        buffered_points=min(report.buffered_points, MAX_POINTS) if report and report.buffered_points else 0,
        missing_collectors=list(observed.missing_collectors)[:32] or None,
        config_hash=observed.config_hash,
    )
    transitions = [t for t in transitions if t.type != r.CARDINALITY_LIMITED or t.status != ConditionStatus.TRUE.value]
    return Computed(status=status.model_dump(by_alias=True, mode="json"), transitions=transitions, notices=notices)


__all__ = ["Observed", "ProcessorReport", "compute"]
