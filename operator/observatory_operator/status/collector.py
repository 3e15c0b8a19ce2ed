"""The collector's pure status function: observed DaemonSet, pods, nodes, Events and agents' answers → status.

Fetching lives elsewhere (the cache, the probe); this module only computes, so every rule is a
table-driven test with a fixed clock. The rules, in the words a user reads in ``kubectl get``:

- READY ``r/d``: agent pods that are ready out of the nodes the DaemonSet wants.
- REPORTING ``n/d``: agents whose last successful InfluxDB write is within two windows of now
  (and not in the future: an agent's clock is not trusted past ``CLOCK_SKEW_SECONDS``).
- uncoveredNodes: nodes without a ready agent with the reason (taint not tolerated, selector or
  affinity mismatch, pod pending or failing), at most ``MAX_UNCOVERED`` of them, the ones to act
  on first; ``uncoveredNodeCounts`` counts them all by reason, so status stays small on 5,000 nodes.
- Pods the DaemonSet controller cannot create (its FailedCreate Events: Pod Security, quota) and
  pods that cannot start for want of the token Secret (their waiting state and FailedMount Events)
  are named in Ready, with what to do; the operator itself never reads Secrets.
- Conditions Ready, Reconciled, DataFlowing keep their lastTransitionTime while their status holds.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Final

from observatory_agent.contract import DEFAULT_WINDOW, ConfigError, SharedConfig, parse_duration
from observatory_operator import reasons as r
from observatory_operator.api.models import (
    ConditionStatus,
    ObservatoryCollectorSpec,
    ObservatoryCollectorStatus,
    Phase,
    UncoveredNode,
)
from observatory_operator.reasons import Outcome, Verdict
from observatory_operator.status.conditions import (
    MAX_POINTS,
    MAX_TIMESTAMP,
    Computed,
    CondValue,
    Notice,
    finite,
    human,
    invalid,
    parse_time,
    settle,
)

Obj = Mapping[str, Any]

MAX_UNCOVERED: Final = 10
"""uncoveredNodes lists at most this many; uncoveredNodeCounts counts every one."""
MAX_NAMED: Final = 5
"""Condition messages name at most this many nodes, then say how many more."""
CLOCK_SKEW_SECONDS: Final = 120.0
"""A write an agent dates further in the future than this is not believed (its clock, or its answer, is wrong)."""

UNCOVERED_ORDER: Final = (r.POD_FAILING, r.POD_PENDING, r.NOT_TOLERATED, r.AFFINITY_MISMATCH, r.SELECTOR_MISMATCH)
"""The order uncoveredNodes lists reasons in: what someone can act on first."""

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
FAILING_EVENT_REASONS: Final = frozenset({"FailedMount", "Failed"})
"""Warning Events on a pod that say it cannot start (a missing Secret, a config error)."""
FAILED_CREATE: Final = "FailedCreate"
"""The DaemonSet controller's Warning Event when the API server refuses an agent pod."""

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
        """Tolerant and defensive: another version may add or omit fields, a hostile agent may send anything.

        Numbers must be finite and plausible (a timestamp before 2100, a point count below 2**53);
        anything else reads as absent, never raises.
        """
        buffered = finite(data.get("buffered_points"), 0, MAX_POINTS)
        raw_hash = data.get("config_hash")
        return cls(
            last_successful_write=finite(data.get("last_successful_write"), 0, MAX_TIMESTAMP),
            buffered_points=int(buffered) if buffered is not None else 0,
            ready=data.get("ready") is True,
            config_hash=raw_hash[:128] if isinstance(raw_hash, str) else None,
            enabled=data.get("enabled", True) is not False,
        )


@dataclass(frozen=True)
class Observed:
    """Everything the status is computed from, fetched by the caller."""

    generation: int
    spec: ObservatoryCollectorSpec
    verdict: Verdict
    namespace: str = ""
    daemonset: Obj | None = None
    pods: Sequence[Obj] = ()
    nodes: Sequence[Obj] = ()
    warnings: Sequence[Obj] = ()
    """Warning Events about the DaemonSet and its pods (FailedCreate, FailedMount, Failed)."""
    reports: Mapping[str, AgentReport | None] = field(default_factory=dict)
    """Pod name → its /status answer; None when the agent did not answer usefully."""
    window_seconds: float = DEFAULT_WINDOW
    config_hash: str | None = None
    previous_conditions: Sequence[Obj] = ()


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


def _some(items: Sequence[str]) -> str:
    """The first MAX_NAMED items, then how many more: condition messages stay short on big clusters."""
    head = ", ".join(items[:MAX_NAMED])
    return f"{head} and {len(items) - MAX_NAMED} more" if len(items) > MAX_NAMED else head


def _event_time(event: Obj) -> str:
    return str(event.get("lastTimestamp") or event.get("eventTime") or "")


def _uid(obj: Obj | None) -> str:
    return str(((obj or {}).get("metadata") or {}).get("uid") or "")


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


def _failure(pod: Obj, warnings: Sequence[Obj]) -> str | None:
    """Why a pod is failing (will not get better by waiting), or None."""
    status = pod.get("status") or {}
    phase = status.get("phase") or "Pending"
    if phase in {"Failed", "Succeeded"}:
        detail = status.get("reason") or status.get("message") or "exited"
        return f"pod {pod['metadata']['name']} {phase.lower()}: {detail}"
    # The buffer-owner init container first: while it fails, the agent container only waits.
    statuses = [(f"init container {cs.get('name')}", cs) for cs in status.get("initContainerStatuses") or []] + [
        ("agent", cs) for cs in status.get("containerStatuses") or []
    ]
    for who, cs in statuses:
        state = cs.get("state") or {}
        waiting = state.get("waiting") or {}
        if waiting.get("reason") in FAILING_WAIT_REASONS:
            message = f": {waiting['message']}" if waiting.get("message") else ""
            return f"{who} {waiting['reason']} (restarts {cs.get('restartCount', 0)}){message}"[:512]
        last = (cs.get("lastState") or {}).get("terminated") or {}
        if not cs.get("ready") and cs.get("restartCount", 0) > 0 and last.get("exitCode", 0) != 0:
            return f"{who} restarted {cs['restartCount']} times, last exit code {last.get('exitCode')}"
    if not _is_ready(pod):
        uid = _uid(pod)
        mine = [w for w in warnings if ((w.get("involvedObject") or {}).get("uid")) == uid and uid]
        failing = [w for w in mine if w.get("reason") in FAILING_EVENT_REASONS]
        if failing:
            latest = max(failing, key=_event_time)
            return f"{latest.get('reason')}: {latest.get('message') or ''}"[:512]
    return None


def pod_problem(pod: Obj, warnings: Sequence[Obj] = ()) -> tuple[str, str] | None:
    """(PodPending|PodFailing, message) for a pod that is not a ready agent; None when it is ready."""
    failure = _failure(pod, warnings)
    if failure is not None:
        return r.POD_FAILING, failure
    status = pod.get("status") or {}
    if _is_ready(pod):
        return None
    if not (pod.get("spec") or {}).get("nodeName"):
        for cond in status.get("conditions") or []:
            if cond.get("type") == "PodScheduled" and cond.get("status") == "False":
                return r.POD_PENDING, f"not scheduled: {cond.get('message') or cond.get('reason') or 'unknown'}"
        return r.POD_PENDING, "not scheduled yet"
    for cs in status.get("containerStatuses") or []:
        waiting = (cs.get("state") or {}).get("waiting") or {}
        if waiting.get("reason"):
            detail = f": {waiting['message']}" if waiting.get("message") else ""
            return r.POD_PENDING, f"agent waiting: {waiting['reason']}{detail}"[:512]
    return r.POD_PENDING, "agent not ready yet"


def _fmt_taint(taint: Obj) -> str:
    value = f"={taint['value']}" if taint.get("value") else ""
    return f"{taint.get('key', '')}{value}:{taint.get('effect', '')}"


def coverage(
    spec: ObservatoryCollectorSpec,
    nodes: Sequence[Obj],
    pods: Sequence[Obj],
    host_network: bool,
    warnings: Sequence[Obj] = (),
) -> tuple[list[UncoveredNode], dict[str, Obj]]:
    """(every node without a ready agent with its reason, node name → the ready agent pod on it)."""
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
            uncovered.append(UncoveredNode(node=name, reason=r.SELECTOR_MISMATCH, message=f"node lacks {wanted}"))
            continue
        if not affinity_matches(spec.affinity, node):
            uncovered.append(
                UncoveredNode(
                    node=name, reason=r.AFFINITY_MISMATCH, message="no required nodeAffinity term matches the node"
                )
            )
            continue
        taint = untolerated_taint(node, tolerations, host_network)
        if taint is not None:
            uncovered.append(
                UncoveredNode(node=name, reason=r.NOT_TOLERATED, message=f"taint {_fmt_taint(taint)} is not tolerated")
            )
            continue
        agent = by_node.get(name)
        if agent is None:
            uncovered.append(UncoveredNode(node=name, reason=r.POD_PENDING, message="no agent pod yet"))
            continue
        problem = pod_problem(agent, warnings)
        if problem is not None:
            uncovered.append(UncoveredNode(node=name, reason=problem[0], message=problem[1]))
            continue
        covered[name] = agent
    return uncovered, covered


def shortlist(uncovered: Sequence[UncoveredNode]) -> tuple[list[UncoveredNode], dict[str, int]]:
    """The MAX_UNCOVERED nodes to act on first (failing, pending, tolerations, then mismatches) and counts by reason."""
    rank = {reason: i for i, reason in enumerate(UNCOVERED_ORDER)}
    ordered = sorted(uncovered, key=lambda u: (rank.get(u.reason, len(rank)), u.node))
    return ordered[:MAX_UNCOVERED], dict(sorted(Counter(u.reason for u in uncovered).items()))


# --- what keeps pods from existing or starting ----------------------------------------------------


def refused_pods(observed: Observed, counts: _Counts) -> CondValue | None:
    """Ready's value when the DaemonSet controller cannot create agent pods (its newest FailedCreate Event)."""
    ds = observed.daemonset
    if ds is None or counts.current >= counts.desired:
        return None
    uid = _uid(ds)
    refusals = [
        w
        for w in observed.warnings
        if w.get("reason") == FAILED_CREATE and (w.get("involvedObject") or {}).get("uid") == uid
    ]
    if not refusals:
        return None
    message = str(max(refusals, key=_event_time).get("message") or "")
    head = f"{counts.current}/{counts.desired} agent pods exist; the DaemonSet controller cannot create the rest: "
    if "PodSecurity" in message:
        hint = (
            f" (agents read the node through hostPath volumes, and use hostNetwork/hostPID with the network/processes "
            f"collectors, which only the privileged Pod Security level allows: label namespace {observed.namespace} "
            "pod-security.kubernetes.io/enforce=privileged, or run collectors in a namespace that has it)"
        )
        return ConditionStatus.FALSE, r.POD_SECURITY_REFUSED, (head + message)[:2048] + hint
    return ConditionStatus.FALSE, r.PODS_NOT_CREATED, (head + message)[:2048]


def _started(pod: Obj) -> bool:
    """Whether any container of the pod runs or ran (its volumes were mounted)."""
    for cs in (pod.get("status") or {}).get("containerStatuses") or []:
        state = cs.get("state") or {}
        if "running" in state or "terminated" in state or cs.get("lastState", {}).get("terminated"):
            return True
    return False


def missing_secret(observed: Observed, uncovered: Sequence[UncoveredNode]) -> CondValue | None:
    """Ready's value when agent pods cannot start because the token Secret does not exist.

    The operator never reads Secrets (not even their metadata): what the pods say is the evidence,
    the kubelet's ``secret "x" not found`` in a waiting state or a FailedMount Event.
    """
    ref = observed.spec.influxdb.token_secret_ref
    if ref is None:
        return None
    needle = f'secret "{ref.name}" not found'
    texts = [u.message for u in uncovered if u.reason in {r.POD_FAILING, r.POD_PENDING}]
    # Only pods still waiting to start: a FailedMount Event outlives the Secret's creation by an hour,
    # while the pod it was about has mounted its volume and runs.
    pod_uids = {_uid(p) for p in observed.pods if not _started(p)}
    texts += [
        str(w.get("message") or "") for w in observed.warnings if (w.get("involvedObject") or {}).get("uid") in pod_uids
    ]
    if not any(needle in text.lower() for text in texts):
        return None
    message = (
        f"Secret {ref.name} (spec.influxdb.tokenSecretRef) not found in namespace {observed.namespace}: "
        f"agent pods cannot start; create it with key {ref.key}"
    )
    return ConditionStatus.FALSE, r.SECRET_NOT_FOUND, message


# --- conditions ---------------------------------------------------------------------------


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


def _agent_started(pod: Obj) -> datetime | None:
    """When the agent could first start: once the pod's init containers finished (the buffer-owner's
    chown can take seconds on a busy node), not when the kubelet took the pod (``startTime``)."""
    status = pod.get("status") or {}
    started = parse_time(status.get("startTime"))
    for cond in status.get("conditions") or []:
        if cond.get("type") == "Initialized" and cond.get("status") == "True":
            initialized = parse_time(cond.get("lastTransitionTime"))
            if initialized is not None and (started is None or initialized > started):
                return initialized
    return started


def _agent_lag(pod: Obj, report: AgentReport | None, horizon: float, window: float, now: datetime) -> str | None:
    """None when the agent reports; "" while it is young enough to still be waiting for its first write;
    otherwise what is wrong, for the condition message."""
    last = report.last_successful_write if report is not None else None
    future = last is not None and last > now.timestamp() + CLOCK_SKEW_SECONDS
    if last is not None and last >= horizon and not future:
        return None
    where = _pod_node(pod) or str(pod["metadata"]["name"])
    if future:
        # Not a write this agent is still waiting for: an answer (or a clock) that is wrong.
        return f"{where} (last write dated {human((last or 0) - now.timestamp())} in the future; agent clock?)"
    started = _agent_started(pod)
    young = started is None or (now - started).total_seconds() < 2 * window
    if report is None:
        return "" if young else f"{where} (no answer from /status)"
    if last is None:
        return "" if young else f"{where} (no successful write; {report.buffered_points} points buffered)"
    ago = human(now.timestamp() - last)
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
    span = human(2 * window)
    head = f"{reporting}/{desired} agents wrote within {span}"
    missing = desired - reporting
    # Pods not created yet are a rollout in progress, not a broken data path.
    settling = not counts.rolled_out or counts.current < desired
    rules: tuple[tuple[bool, CondValue], ...] = (
        (
            disabled > 0 and reporting == 0 and not stale,
            (
                ConditionStatus.FALSE,
                r.COLLECTION_DISABLED,
                f"{disabled}/{desired} agents have collection switched off "
                "(observatory_enabled is false in shared-config)",
            ),
        ),
        (
            desired == 0 and settling,
            (ConditionStatus.UNKNOWN, r.WAITING_FOR_AGENTS, "the DaemonSet is being rolled out"),
        ),
        (desired == 0, (ConditionStatus.UNKNOWN, r.NO_AGENTS, "no node runs an agent")),
        (reporting >= desired, (ConditionStatus.TRUE, r.ALL_AGENTS_REPORTING, head)),
        (bool(stale), (ConditionStatus.FALSE, r.AGENTS_NOT_REPORTING, f"{head}; not writing: {_some(stale)}")),
        (warming > 0, (ConditionStatus.UNKNOWN, r.WAITING_FOR_FIRST_WRITE, f"{head}; {warming} started recently")),
        (settling, (ConditionStatus.UNKNOWN, r.WAITING_FOR_AGENTS, f"{head}; {missing} agents not started yet")),
    )
    fallback = (ConditionStatus.FALSE, r.AGENTS_NOT_REPORTING, f"{head}; {missing} have no running agent")
    return reporting, next((value for applies, value in rules if applies), fallback)


# --- the funnel ---------------------------------------------------------------------------


def _ready_condition(
    ds: Obj | None, counts: _Counts, failing: Sequence[UncoveredNode], blocked: CondValue | None
) -> CondValue:
    """Ready: every wanted node runs a ready agent on the current template. The first rule that applies wins."""
    c = counts
    nodes = _some([f"{u.node} ({u.message})" for u in failing])
    rules: tuple[tuple[bool, CondValue | None], ...] = (
        (ds is None, (ConditionStatus.FALSE, r.NO_DAEMONSET, "the agent DaemonSet does not exist yet")),
        (blocked is not None, blocked),
        # Counts of a DaemonSet the controller has not processed yet say nothing (desired 0 included).
        (
            not c.rolled_out,
            (
                ConditionStatus.FALSE,
                r.ROLLOUT_PENDING,
                "the DaemonSet controller has not processed the latest spec yet",
            ),
        ),
        (
            c.desired == 0,
            (ConditionStatus.FALSE, r.NO_NODES_SELECTED, "no node matches nodeSelector, affinity and tolerations"),
        ),
        (
            c.ready >= c.desired and c.updated >= c.desired,
            (ConditionStatus.TRUE, r.ALL_AGENTS_READY, f"{c.ready}/{c.desired} agents ready"),
        ),
        (
            bool(failing),
            (ConditionStatus.FALSE, r.AGENTS_FAILING, f"{c.ready}/{c.desired} agents ready; failing: {nodes}"),
        ),
    )
    fallback = (ConditionStatus.FALSE, r.AGENTS_NOT_READY, f"{c.ready}/{c.desired} agents ready, {c.updated} updated")
    return next((value for applies, value in rules if applies and value is not None), fallback)


def _phase(
    observed: Observed, counts: _Counts, uncovered: Sequence[UncoveredNode], flow: CondValue, blocked: bool
) -> Phase:
    """The first rule that applies wins: the order is the precedence users read in ``kubectl get``."""
    c = counts
    reasons = {u.reason for u in uncovered}
    rules = (
        (observed.spec.paused, Phase.PAUSED),
        (observed.verdict.outcome.failed, Phase.FAILED),
        (observed.daemonset is None, Phase.PENDING),
        (blocked, Phase.FAILED),
        (not c.rolled_out, Phase.PROGRESSING),
        (c.desired == 0, Phase.PENDING),
        (r.POD_FAILING in reasons, Phase.DEGRADED),
        (c.ready < c.desired or c.updated < c.desired or r.POD_PENDING in reasons, Phase.PROGRESSING),
        (flow[0] is ConditionStatus.FALSE and flow[1] != r.COLLECTION_DISABLED, Phase.DEGRADED),
    )
    return next((phase for applies, phase in rules if applies), Phase.READY)


def _reconciled(observed: Observed) -> CondValue:
    verdict = observed.verdict
    if observed.spec.paused or verdict.outcome is Outcome.PAUSED:
        return ConditionStatus.FALSE, r.PAUSED, "spec.paused is true: children are left as they are"
    status = ConditionStatus.TRUE if verdict.outcome.ok else ConditionStatus.FALSE
    return status, verdict.reason, verdict.message


def compute(observed: Observed, now: datetime) -> Computed:
    """The collector's status and the condition transitions worth an Event."""
    spec = observed.spec
    ds = observed.daemonset
    template_spec = ((ds or {}).get("spec") or {}).get("template", {}).get("spec", {})
    uncovered, covered = coverage(
        spec, observed.nodes, observed.pods, bool(template_spec.get("hostNetwork", False)), observed.warnings
    )
    # An agent counts as ready when the DaemonSet says so *and* its pod is a ready, non-terminating
    # pod on a wanted node: during a rollout the DaemonSet still counts a pod that is being replaced.
    counts = _Counts.of(ds, covered=len(covered) if ds is not None and observed.nodes else None)
    reporting, flow = _data_flowing(counts, observed.pods, observed.reports, observed.window_seconds, now)
    horizon = now.timestamp() + CLOCK_SKEW_SECONDS
    writes = [
        w for rep in observed.reports.values() if rep and (w := rep.last_successful_write) is not None and w <= horizon
    ]
    buffered = min(sum(rep.buffered_points for rep in observed.reports.values() if rep is not None), MAX_POINTS)
    blocked = refused_pods(observed, counts) or missing_secret(observed, uncovered)
    failing = [u for u in uncovered if u.reason == r.POD_FAILING]
    conditions, transitions = settle(
        (
            (r.READY, _ready_condition(ds, counts, failing, blocked)),
            (r.RECONCILED, _reconciled(observed)),
            (r.DATA_FLOWING, flow),
        ),
        observed.previous_conditions,
        generation=observed.generation,
        now=now,
    )
    listed, counted = shortlist(uncovered)
    status = ObservatoryCollectorStatus(
        observed_generation=observed.generation,
        phase=_phase(observed, counts, uncovered, flow, blocked is not None),
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
        uncovered_nodes=listed,
        uncovered_node_counts=counted,
        config_hash=observed.config_hash,
    )
    return Computed(status=status.model_dump(by_alias=True, mode="json"), transitions=transitions)


def shared_config_notice(problem: str | None, previous_conditions: Sequence[Obj]) -> Notice | None:
    """A Warning Event when the shared-config turns invalid or its problem changes (not on every round)."""
    if problem is None:
        return None
    before = next((c for c in previous_conditions if c.get("type") == r.RECONCILED), {})
    if problem in str(before.get("message") or ""):
        return None
    return Notice("Warning", r.SHARED_CONFIG_INVALID, problem)


__all__ = [
    "AgentReport",
    "Computed",
    "Observed",
    "compute",
    "coverage",
    "effective_window",
    "invalid",
    "shared_config_notice",
    "shared_config_problem",
    "shortlist",
]
