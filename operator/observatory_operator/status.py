"""Pure status funnel: observed DaemonSet, pods, nodes and agents' /status answers plus the clock → collector status.

Fetching lives in ``kube/``; this module only computes, so every rule is a table-driven test with a
fixed clock. The rules, in the words a user reads in ``kubectl get``:

- READY ``r/d``: agent pods that are ready out of the nodes the DaemonSet wants.
- REPORTING ``n/d``: agents whose last successful InfluxDB write is within two windows of now.
- uncoveredNodes: every node without a ready agent, with the reason (taint not tolerated,
  selector or affinity mismatch, pod pending or failing).
- Conditions Ready, Reconciled, DataFlowing keep their lastTransitionTime while their status holds.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Final

from observatory_agent.contract import DEFAULT_WINDOW, ConfigError, SharedConfig, parse_duration
from observatory_operator.api.models import (
    Condition,
    ConditionStatus,
    ObservatoryCollectorSpec,
    ObservatoryCollectorStatus,
    Phase,
    UncoveredNode,
)

Obj = Mapping[str, Any]

READY: Final = "Ready"
RECONCILED: Final = "Reconciled"
DATA_FLOWING: Final = "DataFlowing"
COLLECTION_DISABLED: Final = "CollectionDisabled"
"""DataFlowing's reason when agents write nothing on purpose: not a Degraded collector."""

NOT_TOLERATED: Final = "NotTolerated"
SELECTOR_MISMATCH: Final = "SelectorMismatch"
AFFINITY_MISMATCH: Final = "AffinityMismatch"
POD_PENDING: Final = "PodPending"
POD_FAILING: Final = "PodFailing"

FAILING_WAIT_REASONS: Final = frozenset(
    {
        "CrashLoopBackOff",
        "ImagePullBackOff",
        "ErrImagePull",
        "InvalidImageName",
        "CreateContainerConfigError",
        "CreateContainerError",
        "RunContainerError",
    }
)
"""Waiting reasons that will not resolve by waiting: the pod is failing, not pending."""

# Tolerations the DaemonSet controller adds to every daemon pod (pkg/controller/daemon/util).
_DAEMON_TOLERATIONS: Final = (
    ("node.kubernetes.io/not-ready", "NoExecute"),
    ("node.kubernetes.io/unreachable", "NoExecute"),
    ("node.kubernetes.io/disk-pressure", "NoSchedule"),
    ("node.kubernetes.io/memory-pressure", "NoSchedule"),
    ("node.kubernetes.io/pid-pressure", "NoSchedule"),
    ("node.kubernetes.io/unschedulable", "NoSchedule"),
)
_HOST_NETWORK_TOLERATION: Final = ("node.kubernetes.io/network-unavailable", "NoSchedule")


# --- inputs -------------------------------------------------------------------------------


@dataclass(frozen=True)
class AgentReport:
    """One agent's ``/status`` answer, as far as status needs it."""

    last_successful_write: float | None = None
    """Unix seconds of the last write InfluxDB acknowledged; None when there was none yet."""
    buffered_points: int = 0
    ready: bool = False
    config_hash: str | None = None
    enabled: bool = True
    """False when collection is switched off (shared-config observatory_enabled, spec): no writes expected."""

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> AgentReport:
        """Tolerant parse: an agent of another version may add or omit fields."""
        raw_last = data.get("last_successful_write")
        last = float(raw_last) if isinstance(raw_last, int | float) and not isinstance(raw_last, bool) else None
        raw_buffered = data.get("buffered_points")
        buffered = int(raw_buffered) if isinstance(raw_buffered, int | float) else 0
        raw_hash = data.get("config_hash")
        return cls(
            last_successful_write=last,
            buffered_points=max(buffered, 0),
            ready=bool(data.get("ready", False)),
            config_hash=raw_hash if isinstance(raw_hash, str) else None,
            enabled=data.get("enabled", True) is not False,
        )


@dataclass(frozen=True)
class Outcome:
    """What the reconciler did this round: applied, paused, or failed with a reason that names the cause."""

    ok: bool
    reason: str
    message: str = ""

    @classmethod
    def applied(cls, message: str = "children are up to date") -> Outcome:
        return cls(ok=True, reason="Applied", message=message)

    @classmethod
    def paused(cls) -> Outcome:
        return cls(ok=False, reason="Paused", message="spec.paused is true: children are left as they are")


@dataclass(frozen=True)
class Observed:
    """Everything the status is computed from, fetched by the caller."""

    generation: int
    spec: ObservatoryCollectorSpec
    outcome: Outcome
    daemonset: Obj | None = None
    pods: Sequence[Obj] = ()
    nodes: Sequence[Obj] = ()
    reports: Mapping[str, AgentReport | None] = field(default_factory=dict)
    """Pod name → its /status answer; None when the agent did not answer."""
    window_seconds: float = DEFAULT_WINDOW
    config_hash: str | None = None
    previous_conditions: Sequence[Obj] = ()


TRANSIENT_REASONS: Final = frozenset(
    {"NoDaemonSet", "RolloutPending", "AgentsNotReady", "WaitingForAgents", "WaitingForFirstWrite", "Paused"}
)
"""False/Unknown reasons that are a normal step of a rollout or a user's choice: Normal Events, not Warnings."""


@dataclass(frozen=True)
class Transition:
    """A condition whose status changed this round: worth an Event."""

    type: str
    status: str
    reason: str
    message: str

    @property
    def warning(self) -> bool:
        """Whether someone should look: a condition turned False for a reason that will not pass by itself."""
        return self.status == "False" and self.reason not in TRANSIENT_REASONS


@dataclass(frozen=True)
class Computed:
    status: dict[str, Any]
    """camelCase, JSON-ready; None values are explicit so a merge patch clears stale fields."""
    transitions: list[Transition]


# --- small helpers ------------------------------------------------------------------------


def effective_window(spec: ObservatoryCollectorSpec, shared_config: Mapping[str, str] | None) -> float:
    """Window in seconds with the agent's precedence: spec, then shared-config, then the built-in default."""
    if spec.window:
        return parse_duration(spec.window, key="spec.window")
    if shared_config:
        raw = shared_config.get("observatory_aggregation_window")
        if raw:
            try:
                window = SharedConfig.model_validate({"observatory_aggregation_window": raw})
            except ValueError:
                # A malformed shared-config is reported by the agents; status keeps the default.
                return DEFAULT_WINDOW
            return window.observatory_aggregation_window or DEFAULT_WINDOW
    return DEFAULT_WINDOW


def shared_config_problem(data: Mapping[str, str] | None, name: str) -> str | None:
    """Why the shared-config ConfigMap's data is unusable (agents then keep their last good config), or None."""
    if not data:
        return None
    try:
        SharedConfig.from_mapping(data, source=f"ConfigMap {name}")
    except ConfigError as exc:
        return str(exc)
    return None


def _human(seconds: float) -> str:
    seconds = max(int(seconds), 0)
    if seconds < 120:
        return f"{seconds}s"
    if seconds < 7200:
        return f"{seconds // 60}m"
    return f"{seconds // 3600}h"


def _parse_time(value: Any) -> datetime | None:
    if isinstance(value, datetime):
        return value if value.tzinfo else value.replace(tzinfo=UTC)
    if isinstance(value, str) and value:
        try:
            parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
        except ValueError:
            return None
        return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)
    return None


# --- coverage -----------------------------------------------------------------------------


def _tolerates(toleration: Mapping[str, Any], taint: Mapping[str, Any]) -> bool:
    """core/v1 Toleration.ToleratesTaint."""
    effect = toleration.get("effect")
    if effect and effect != taint.get("effect"):
        return False
    key = toleration.get("key") or ""
    operator = toleration.get("operator") or "Equal"
    if operator == "Exists":
        return not key or key == taint.get("key")
    return key == taint.get("key") and (toleration.get("value") or "") == (taint.get("value") or "")


def untolerated_taint(node: Obj, tolerations: Sequence[Mapping[str, Any]], host_network: bool) -> Obj | None:
    """The first NoSchedule/NoExecute taint of ``node`` that neither the spec nor the DaemonSet tolerates."""
    automatic = [{"key": k, "operator": "Exists", "effect": e} for k, e in _DAEMON_TOLERATIONS]
    if host_network:
        automatic.append({"key": _HOST_NETWORK_TOLERATION[0], "operator": "Exists", "effect": "NoSchedule"})
    all_tolerations = [*tolerations, *automatic]
    taints: list[Obj] = (node.get("spec") or {}).get("taints") or []
    for taint in taints:
        if taint.get("effect") not in {"NoSchedule", "NoExecute"}:
            continue  # PreferNoSchedule never keeps a daemon pod off a node
        if not any(_tolerates(t, taint) for t in all_tolerations):
            return taint
    return None


def _expression_matches(expr: Mapping[str, Any], labels: Mapping[str, str]) -> bool:
    key, op, values = expr.get("key", ""), expr.get("operator", ""), list(expr.get("values") or [])
    present = key in labels
    if op in {"Gt", "Lt"}:
        try:
            have, want = int(labels[key]), int(values[0])
        except (KeyError, IndexError, ValueError):
            return False
        return have > want if op == "Gt" else have < want
    simple = {
        "In": present and labels.get(key) in values,
        "NotIn": not present or labels.get(key) not in values,
        "Exists": present,
        "DoesNotExist": not present,
    }
    return simple.get(op, False)


def _term_matches(term: Mapping[str, Any], node: Obj) -> bool:
    metadata = node.get("metadata") or {}
    labels = metadata.get("labels") or {}
    fields = {"metadata.name": metadata.get("name", "")}
    exprs = term.get("matchExpressions") or []
    field_exprs = term.get("matchFields") or []
    if not exprs and not field_exprs:
        return False  # an empty term matches nothing (core/v1 NodeSelectorTerm)
    return all(_expression_matches(e, labels) for e in exprs) and all(
        _expression_matches(e, fields) for e in field_exprs
    )


def affinity_matches(affinity: Mapping[str, Any] | None, node: Obj) -> bool:
    """requiredDuringSchedulingIgnoredDuringExecution: any term matches (terms are ORed, expressions ANDed)."""
    required = ((affinity or {}).get("nodeAffinity") or {}).get("requiredDuringSchedulingIgnoredDuringExecution")
    if not required:
        return True
    return any(_term_matches(t, node) for t in required.get("nodeSelectorTerms") or [])


def _pod_node(pod: Obj) -> str | None:
    """The node a daemon pod is for: its nodeName, or before binding the DaemonSet's matchFields pin."""
    spec = pod.get("spec") or {}
    if spec.get("nodeName"):
        return str(spec["nodeName"])
    required = ((spec.get("affinity") or {}).get("nodeAffinity") or {}).get(
        "requiredDuringSchedulingIgnoredDuringExecution"
    ) or {}
    for term in required.get("nodeSelectorTerms") or []:
        for expr in term.get("matchFields") or []:
            if expr.get("key") == "metadata.name" and expr.get("values"):
                return str(expr["values"][0])
    return None


def _is_ready(pod: Obj) -> bool:
    for cond in (pod.get("status") or {}).get("conditions") or []:
        if cond.get("type") == "Ready":
            return bool(cond.get("status") == "True")
    return False


def _failure(pod: Obj) -> str | None:
    """Why a pod is failing (will not get better by waiting), or None."""
    status = pod.get("status") or {}
    phase = status.get("phase") or "Pending"
    if phase in {"Failed", "Succeeded"}:
        detail = status.get("reason") or status.get("message") or "exited"
        return f"pod {pod['metadata']['name']} {phase.lower()}: {detail}"
    for cs in status.get("containerStatuses") or []:
        state = cs.get("state") or {}
        waiting = state.get("waiting") or {}
        if waiting.get("reason") in FAILING_WAIT_REASONS:
            message = f": {waiting['message']}" if waiting.get("message") else ""
            return f"agent {waiting['reason']} (restarts {cs.get('restartCount', 0)}){message}"[:512]
        last = (cs.get("lastState") or {}).get("terminated") or {}
        if not cs.get("ready") and cs.get("restartCount", 0) > 0 and last.get("exitCode", 0) != 0:
            return f"agent restarted {cs['restartCount']} times, last exit code {last.get('exitCode')}"
    return None


def pod_problem(pod: Obj) -> tuple[str, str] | None:
    """(PodPending|PodFailing, message) for a pod that is not a ready agent; None when it is ready."""
    failure = _failure(pod)
    if failure is not None:
        return POD_FAILING, failure
    status = pod.get("status") or {}
    if _is_ready(pod):
        return None
    if not (pod.get("spec") or {}).get("nodeName"):
        for cond in status.get("conditions") or []:
            if cond.get("type") == "PodScheduled" and cond.get("status") == "False":
                return POD_PENDING, f"not scheduled: {cond.get('message') or cond.get('reason') or 'unknown'}"
        return POD_PENDING, "not scheduled yet"
    for cs in status.get("containerStatuses") or []:
        waiting = (cs.get("state") or {}).get("waiting") or {}
        if waiting.get("reason"):
            return POD_PENDING, f"agent waiting: {waiting['reason']}"
    return POD_PENDING, "agent not ready yet"


def _fmt_taint(taint: Obj) -> str:
    value = f"={taint['value']}" if taint.get("value") else ""
    return f"{taint.get('key', '')}{value}:{taint.get('effect', '')}"


def coverage(
    spec: ObservatoryCollectorSpec, nodes: Sequence[Obj], pods: Sequence[Obj], host_network: bool
) -> tuple[list[UncoveredNode], dict[str, Obj]]:
    """(nodes without a ready agent with their reasons, node name → the ready agent pod on it)."""
    tolerations = [t.model_dump(by_alias=True, exclude_none=True) for t in spec.tolerations or []]
    by_node: dict[str, Obj] = {}
    for pod in pods:
        if (pod.get("metadata") or {}).get("deletionTimestamp"):
            continue  # a terminating pod is being replaced; it no longer covers the node
        node_name = _pod_node(pod)
        if node_name:
            by_node[node_name] = pod
    uncovered: list[UncoveredNode] = []
    covered: dict[str, Obj] = {}
    for node in sorted(nodes, key=lambda n: str(n["metadata"]["name"])):
        name = str(node["metadata"]["name"])
        labels = node["metadata"].get("labels") or {}
        missing = {k: v for k, v in (spec.node_selector or {}).items() if labels.get(k) != v}
        if missing:
            wanted = ", ".join(f"{k}={v}" for k, v in sorted(missing.items()))
            uncovered.append(UncoveredNode(node=name, reason=SELECTOR_MISMATCH, message=f"node lacks {wanted}"))
            continue
        if not affinity_matches(spec.affinity, node):
            uncovered.append(
                UncoveredNode(
                    node=name, reason=AFFINITY_MISMATCH, message="no required nodeAffinity term matches the node"
                )
            )
            continue
        taint = untolerated_taint(node, tolerations, host_network)
        if taint is not None:
            uncovered.append(
                UncoveredNode(node=name, reason=NOT_TOLERATED, message=f"taint {_fmt_taint(taint)} is not tolerated")
            )
            continue
        agent = by_node.get(name)
        if agent is None:
            uncovered.append(UncoveredNode(node=name, reason=POD_PENDING, message="no agent pod yet"))
            continue
        problem = pod_problem(agent)
        if problem is not None:
            uncovered.append(UncoveredNode(node=name, reason=problem[0], message=problem[1]))
            continue
        covered[name] = agent
    return uncovered, covered


# --- conditions ---------------------------------------------------------------------------


CondValue = tuple[ConditionStatus, str, str]
"""(status, reason, message) of one condition."""


def _condition(type_: str, value: CondValue, *, generation: int, now: datetime, previous: Obj | None) -> Condition:
    status, reason, message = value
    since = now
    if previous is not None and previous.get("status") == status.value:
        since = _parse_time(previous.get("lastTransitionTime")) or now
    return Condition(
        type=type_,
        status=status,
        reason=reason,
        message=message[:32768],
        last_transition_time=since,
        observed_generation=generation,
    )


@dataclass(frozen=True)
class _Counts:
    desired: int
    current: int
    updated: int
    ready: int
    rolled_out: bool
    """The DaemonSet controller has seen the latest DaemonSet spec."""

    @classmethod
    def of(cls, ds: Obj | None, *, covered: int | None = None) -> _Counts:
        status = (ds or {}).get("status") or {}
        generation = ((ds or {}).get("metadata") or {}).get("generation", 0)
        ready = int(status.get("numberReady", 0))
        return cls(
            desired=int(status.get("desiredNumberScheduled", 0)),
            current=int(status.get("currentNumberScheduled", 0)),
            updated=int(status.get("updatedNumberScheduled", 0)),
            ready=ready if covered is None else min(ready, covered),
            rolled_out=ds is not None and int(status.get("observedGeneration", 0)) >= int(generation),
        )


def _agent_lag(pod: Obj, report: AgentReport | None, horizon: float, window: float, now: datetime) -> str | None:
    """None when the agent reports; "" while it is young enough to still be waiting for its first write;
    otherwise what is wrong, for the condition message."""
    if report is not None and report.last_successful_write is not None and report.last_successful_write >= horizon:
        return None
    started = _parse_time((pod.get("status") or {}).get("startTime"))
    young = started is None or (now - started).total_seconds() < 2 * window
    where = _pod_node(pod) or str(pod["metadata"]["name"])
    if report is None:
        return "" if young else f"{where} (no answer from /status)"
    if report.last_successful_write is None:
        return "" if young else f"{where} (no successful write; {report.buffered_points} points buffered)"
    ago = _human(now.timestamp() - report.last_successful_write)
    return f"{where} (last write {ago} ago; {report.buffered_points} points buffered)"


def _data_flowing(
    counts: _Counts, pods: Sequence[Obj], reports: Mapping[str, AgentReport | None], window: float, now: datetime
) -> tuple[int, CondValue]:
    """(reporting agents, DataFlowing condition value)."""
    desired = counts.desired
    horizon = now.timestamp() - 2 * window
    reporting, warming, disabled = 0, 0, 0
    stale: list[str] = []
    for pod in sorted(pods, key=lambda p: str(p["metadata"]["name"])):
        if (pod.get("metadata") or {}).get("deletionTimestamp"):
            continue
        report = reports.get(str(pod["metadata"]["name"]))
        if report is not None and not report.enabled:
            disabled += 1
            continue
        lag = _agent_lag(pod, report, horizon, window, now)
        if lag is None:
            reporting += 1
        elif lag:
            stale.append(lag)
        else:
            warming += 1
    span = _human(2 * window)
    head = f"{reporting}/{desired} agents wrote within {span}"
    missing = desired - reporting
    # Pods not created yet are a rollout in progress, not a broken data path.
    settling = not counts.rolled_out or counts.current < desired
    rules: tuple[tuple[bool, CondValue], ...] = (
        (
            disabled > 0 and reporting == 0 and not stale,
            (
                ConditionStatus.FALSE,
                COLLECTION_DISABLED,
                f"{disabled}/{desired} agents have collection switched off "
                "(observatory_enabled is false in shared-config)",
            ),
        ),
        (desired == 0 and settling, (ConditionStatus.UNKNOWN, "WaitingForAgents", "the DaemonSet is being rolled out")),
        (desired == 0, (ConditionStatus.UNKNOWN, "NoAgents", "no node runs an agent")),
        (reporting >= desired, (ConditionStatus.TRUE, "AllAgentsReporting", head)),
        (bool(stale), (ConditionStatus.FALSE, "AgentsNotReporting", f"{head}; not writing: {', '.join(stale)}")),
        (warming > 0, (ConditionStatus.UNKNOWN, "WaitingForFirstWrite", f"{head}; {warming} started recently")),
        (settling, (ConditionStatus.UNKNOWN, "WaitingForAgents", f"{head}; {missing} agents not started yet")),
    )
    fallback = (ConditionStatus.FALSE, "AgentsNotReporting", f"{head}; {missing} have no running agent")
    return reporting, next((value for applies, value in rules if applies), fallback)


# --- the funnel ---------------------------------------------------------------------------


def _ready_condition(ds: Obj | None, counts: _Counts, failing: Sequence[UncoveredNode]) -> CondValue:
    """Ready: every wanted node runs a ready agent on the current template."""
    c = counts
    if ds is None:
        return ConditionStatus.FALSE, "NoDaemonSet", "the agent DaemonSet does not exist yet"
    if not c.rolled_out:
        # Counts of a DaemonSet the controller has not processed yet say nothing (desired 0 included).
        return ConditionStatus.FALSE, "RolloutPending", "the DaemonSet controller has not processed the latest spec yet"
    if c.desired == 0:
        return ConditionStatus.FALSE, "NoNodesSelected", "no node matches nodeSelector, affinity and tolerations"
    if c.ready >= c.desired and c.updated >= c.desired and c.rolled_out:
        return ConditionStatus.TRUE, "AllAgentsReady", f"{c.ready}/{c.desired} agents ready"
    if failing:
        nodes = ", ".join(f"{u.node} ({u.message})" for u in failing)
        return ConditionStatus.FALSE, "AgentsFailing", f"{c.ready}/{c.desired} agents ready; failing: {nodes}"
    return ConditionStatus.FALSE, "AgentsNotReady", f"{c.ready}/{c.desired} agents ready, {c.updated} updated"


def _phase(observed: Observed, counts: _Counts, uncovered: Sequence[UncoveredNode], flow: CondValue) -> Phase:
    """The first rule that applies wins: the order is the precedence users read in ``kubectl get``."""
    c = counts
    reasons = {u.reason for u in uncovered}
    rules = (
        (observed.spec.paused, Phase.PAUSED),
        (not observed.outcome.ok, Phase.FAILED),
        (observed.daemonset is None, Phase.PENDING),
        (not c.rolled_out, Phase.PROGRESSING),
        (c.desired == 0, Phase.PENDING),
        (POD_FAILING in reasons, Phase.DEGRADED),
        (c.ready < c.desired or c.updated < c.desired or POD_PENDING in reasons, Phase.PROGRESSING),
        (flow[0] is ConditionStatus.FALSE and flow[1] != COLLECTION_DISABLED, Phase.DEGRADED),
    )
    return next((phase for applies, phase in rules if applies), Phase.READY)


def compute(observed: Observed, now: datetime) -> Computed:
    """The collector's status and the condition transitions worth an Event."""
    spec = observed.spec
    ds = observed.daemonset
    template_spec = ((ds or {}).get("spec") or {}).get("template", {}).get("spec", {})
    uncovered, covered = coverage(spec, observed.nodes, observed.pods, bool(template_spec.get("hostNetwork", False)))
    # An agent counts as ready when the DaemonSet says so *and* its pod is a ready, non-terminating
    # pod on a wanted node: during a rollout the DaemonSet still counts a pod that is being replaced.
    counts = _Counts.of(ds, covered=len(covered) if ds is not None and observed.nodes else None)
    reporting, flow = _data_flowing(counts, observed.pods, observed.reports, observed.window_seconds, now)
    writes = [r.last_successful_write for r in observed.reports.values() if r and r.last_successful_write]
    buffered = sum(r.buffered_points for r in observed.reports.values() if r is not None)

    outcome = observed.outcome
    if spec.paused:
        reconciled: CondValue = (ConditionStatus.FALSE, "Paused", Outcome.paused().message)
    else:
        reconciled = (ConditionStatus.TRUE if outcome.ok else ConditionStatus.FALSE, outcome.reason, outcome.message)
    failing = [u for u in uncovered if u.reason == POD_FAILING]

    previous = {str(c.get("type")): c for c in observed.previous_conditions}
    gen = observed.generation
    conditions = [
        _condition(t, value, generation=gen, now=now, previous=previous.get(t))
        for t, value in (
            (READY, _ready_condition(ds, counts, failing)),
            (RECONCILED, reconciled),
            (DATA_FLOWING, flow),
        )
    ]
    transitions = [
        Transition(type=c.type, status=str(c.status), reason=c.reason, message=c.message)
        for c in conditions
        if (previous.get(c.type) or {}).get("status") != str(c.status)
    ]
    status = ObservatoryCollectorStatus(
        observed_generation=gen,
        phase=_phase(observed, counts, uncovered, flow),
        conditions=conditions,
        desired_agents=counts.desired,
        current_agents=counts.current,
        updated_agents=counts.updated,
        ready_agents=counts.ready,
        ready=f"{counts.ready}/{counts.desired}",
        reporting_agents=reporting,
        reporting=f"{reporting}/{counts.desired}",
        # Whole seconds: sub-second churn would rewrite status for nothing.
        last_write=datetime.fromtimestamp(int(max(writes)), tz=UTC) if writes else None,
        buffered_points=buffered,
        uncovered_nodes=uncovered,
        config_hash=observed.config_hash,
    )
    return Computed(status=status.model_dump(by_alias=True, mode="json"), transitions=transitions)


__all__ = [
    "AgentReport",
    "Computed",
    "Observed",
    "Outcome",
    "Transition",
    "compute",
    "coverage",
    "effective_window",
    "shared_config_problem",
]
