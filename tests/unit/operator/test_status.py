"""Status funnel: coverage reasons, READY/REPORTING counts, phase and conditions, with a fixed clock."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from observatory_operator.api.models import ObservatoryCollectorSpec
from observatory_operator.reasons import Outcome, Verdict
from observatory_operator.status import collector as st

NOW = datetime(2026, 11, 30, 12, 0, 0, tzinfo=UTC)
T = NOW.timestamp()
WINDOW = 60.0
LONG_AGO = (NOW - timedelta(hours=1)).isoformat().replace("+00:00", "Z")
JUST_NOW = (NOW - timedelta(seconds=5)).isoformat().replace("+00:00", "Z")


def node(name: str, labels: dict[str, str] | None = None, taints: list[dict[str, str]] | None = None) -> dict[str, Any]:
    return {
        "metadata": {"name": name, "labels": {"kubernetes.io/os": "linux", **(labels or {})}},
        "spec": {"taints": taints or []},
    }


GPU_TAINT = {"key": "dedicated", "value": "gpu", "effect": "NoSchedule"}
TAINTED = ("node-c", "NotTolerated", "dedicated=gpu:NoSchedule")
NODES = [node("node-a"), node("node-b"), node("node-c", {"pool": "gpu"}, [GPU_TAINT])]


def initialized(p: dict[str, Any], at: str) -> dict[str, Any]:
    """``p`` with its init containers finished at ``at`` (the pod's Initialized condition)."""
    p["status"]["conditions"].append({"type": "Initialized", "status": "True", "lastTransitionTime": at})
    return p


def pod(
    name: str,
    on: str | None,
    *,
    ready: bool = True,
    waiting: str | None = None,
    restarts: int = 0,
    started: str = LONG_AGO,
    phase: str = "Running",
) -> dict[str, Any]:
    cs: dict[str, Any] = {"name": "agent", "ready": ready, "restartCount": restarts, "state": {}}
    if waiting:
        cs["state"] = {"waiting": {"reason": waiting}}
    else:
        cs["state"] = {"running": {}}
    return {
        "metadata": {"name": name},
        "spec": {"nodeName": on} if on else {},
        "status": {
            "phase": phase,
            "startTime": started,
            "conditions": [{"type": "Ready", "status": "True" if ready else "False"}],
            "containerStatuses": [cs],
        },
    }


def init_failing(agent_pod: dict[str, Any]) -> dict[str, Any]:
    """The pod with its buffer-owner init container crash-looping (say, an image without chown)."""
    agent_pod["status"]["initContainerStatuses"] = [
        {
            "name": "buffer-owner",
            "ready": False,
            "restartCount": 3,
            "state": {"waiting": {"reason": "CrashLoopBackOff"}},
            "lastState": {"terminated": {"exitCode": 127}},
        }
    ]
    return agent_pod


def ds(desired: int, ready: int, updated: int | None = None, *, host_network: bool = False) -> dict[str, Any]:
    updated = desired if updated is None else updated
    return {
        "metadata": {"name": "nodes-agent", "generation": 2},
        "spec": {"template": {"spec": {"hostNetwork": True} if host_network else {}}},
        "status": {
            "observedGeneration": 2,
            "desiredNumberScheduled": desired,
            "currentNumberScheduled": desired,
            "updatedNumberScheduled": updated,
            "numberReady": ready,
        },
    }


def spec(**fields: Any) -> ObservatoryCollectorSpec:
    return ObservatoryCollectorSpec.model_validate(fields)


def wrote(ago: float, buffered: int = 0) -> st.AgentReport:
    return st.AgentReport(last_successful_write=T - ago, buffered_points=buffered, ready=True)


def compute(**kw: Any) -> st.Computed:
    observed = st.Observed(
        generation=kw.pop("generation", 3),
        spec=kw.pop("spec", spec()),
        verdict=kw.pop("verdict", APPLIED),
        window_seconds=kw.pop("window", WINDOW),
        **kw,
    )
    return st.compute(observed, NOW)


APPLIED = Verdict(Outcome.APPLIED, "Applied", "children are up to date")
MISSING_CONFIG = Verdict(Outcome.BLOCKED, "SharedConfigNotFound", "ConfigMap org-defaults not found")


def cond(result: st.Computed, type_: str) -> dict[str, Any]:
    (c,) = [c for c in result.status["conditions"] if c["type"] == type_]
    return dict(c)


CRASHING = pod("a-2", "node-b", ready=False, waiting="CrashLoopBackOff", restarts=3)
TWO_READY = [pod("a-1", "node-a"), pod("a-2", "node-b")]
BOTH_WROTE = {"a-1": wrote(10), "a-2": wrote(30)}


# --- coverage -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("case", "collector", "pods", "expected"),
    [
        ("untolerated taint is named", spec(), TWO_READY, [("node-c", "NotTolerated", "dedicated=gpu:NoSchedule")]),
        (
            "a matching toleration covers the tainted node",
            spec(tolerations=[{"key": "dedicated", "operator": "Equal", "value": "gpu", "effect": "NoSchedule"}]),
            [*TWO_READY, pod("a-3", "node-c")],
            [],
        ),
        (
            "an Exists toleration without key tolerates everything",
            spec(tolerations=[{"operator": "Exists"}]),
            [*TWO_READY, pod("a-3", "node-c")],
            [],
        ),
        (
            "a toleration for another effect does not help",
            spec(tolerations=[{"key": "dedicated", "operator": "Exists", "effect": "NoExecute"}]),
            TWO_READY,
            [("node-c", "NotTolerated", "dedicated=gpu:NoSchedule")],
        ),
        (
            "nodeSelector mismatch names the missing label",
            spec(nodeSelector={"pool": "gpu"}, tolerations=[{"operator": "Exists"}]),
            [pod("a-3", "node-c")],
            [("node-a", "SelectorMismatch", "pool=gpu"), ("node-b", "SelectorMismatch", "pool=gpu")],
        ),
        (
            "required node affinity mismatch",
            spec(
                affinity={
                    "nodeAffinity": {
                        "requiredDuringSchedulingIgnoredDuringExecution": {
                            "nodeSelectorTerms": [
                                {"matchExpressions": [{"key": "pool", "operator": "NotIn", "values": ["gpu"]}]},
                                {"matchFields": [{"key": "metadata.name", "operator": "In", "values": ["node-a"]}]},
                            ]
                        }
                    }
                }
            ),
            TWO_READY,
            [("node-c", "AffinityMismatch", "nodeAffinity")],
        ),
        (
            "a node without a pod is pending",
            spec(),
            [pod("a-1", "node-a")],
            [("node-b", "PodPending", "no agent pod"), TAINTED],
        ),
        (
            "an unscheduled pod pinned by matchFields is pending",
            spec(),
            [
                pod("a-1", "node-a"),
                {
                    "metadata": {"name": "a-2"},
                    "spec": {
                        "affinity": {
                            "nodeAffinity": {
                                "requiredDuringSchedulingIgnoredDuringExecution": {
                                    "nodeSelectorTerms": [
                                        {
                                            "matchFields": [
                                                {"key": "metadata.name", "operator": "In", "values": ["node-b"]}
                                            ]
                                        }
                                    ]
                                }
                            }
                        }
                    },
                    "status": {"phase": "Pending"},
                },
            ],
            [("node-b", "PodPending", "not scheduled"), TAINTED],
        ),
        (
            "a crash-looping agent is failing",
            spec(),
            [pod("a-1", "node-a"), pod("a-2", "node-b", ready=False, waiting="CrashLoopBackOff", restarts=4)],
            [("node-b", "PodFailing", "CrashLoopBackOff"), TAINTED],
        ),
        (
            "an image pull error is failing",
            spec(),
            [pod("a-1", "node-a"), pod("a-2", "node-b", ready=False, waiting="ImagePullBackOff")],
            [("node-b", "PodFailing", "ImagePullBackOff"), TAINTED],
        ),
        (
            "a creating container is pending",
            spec(),
            [pod("a-1", "node-a"), pod("a-2", "node-b", ready=False, waiting="ContainerCreating")],
            [("node-b", "PodPending", "ContainerCreating"), TAINTED],
        ),
        (
            "a failed pod is failing",
            spec(),
            [pod("a-1", "node-a"), pod("a-2", "node-b", ready=False, phase="Failed")],
            [("node-b", "PodFailing", "failed"), TAINTED],
        ),
        (
            "a crash-looping buffer-owner init container is failing, named",
            spec(),
            [pod("a-1", "node-a"), init_failing(pod("a-2", "node-b", ready=False, waiting="PodInitializing"))],
            [("node-b", "PodFailing", "init container buffer-owner CrashLoopBackOff (restarts 3)"), TAINTED],
        ),
    ],
)
def test_uncovered_nodes_name_their_reason(
    case: str, collector: ObservatoryCollectorSpec, pods: list[dict[str, Any]], expected: list[tuple[str, str, str]]
) -> None:
    uncovered, _ = st.coverage(collector, NODES, pods, host_network=False)
    got = [(u.node, u.reason, u.message) for u in uncovered]
    assert [(n, r) for n, r, _ in got] == [(n, r) for n, r, _ in expected], case
    for (_, _, message), (_, _, fragment) in zip(got, expected, strict=True):
        assert fragment in message, case


def test_daemonset_default_tolerations_do_not_make_nodes_uncovered() -> None:
    unschedulable = node("node-x", taints=[{"key": "node.kubernetes.io/unschedulable", "effect": "NoSchedule"}])
    uncovered, covered = st.coverage(spec(), [unschedulable], [pod("a-1", "node-x")], host_network=False)
    assert uncovered == []
    assert list(covered) == ["node-x"]


def test_prefer_no_schedule_taints_never_uncover_a_node() -> None:
    soft = node("node-x", taints=[{"key": "spot", "value": "true", "effect": "PreferNoSchedule"}])
    uncovered, _ = st.coverage(spec(), [soft], [pod("a-1", "node-x")], host_network=False)
    assert uncovered == []


# --- counts, phase, conditions ------------------------------------------------------------


@pytest.mark.parametrize(
    ("case", "kw", "phase", "ready", "reporting", "flowing"),
    [
        ("all ready and writing", {"daemonset": ds(2, 2), "pods": TWO_READY, "reports": BOTH_WROTE}, "Ready", "2/2",
         "2/2", "True"),
        (
            "one agent stopped writing",
            {"daemonset": ds(2, 2), "pods": TWO_READY, "reports": {"a-1": wrote(10), "a-2": wrote(300, 42)}},
            "Degraded", "2/2", "1/2", "False",
        ),
        (
            "an unreachable old agent is not reporting",
            {"daemonset": ds(2, 2), "pods": TWO_READY, "reports": {"a-1": wrote(10), "a-2": None}},
            "Degraded", "2/2", "1/2", "False",
        ),
        (
            "young agents without a write are waiting, not failing",
            {
                "daemonset": ds(2, 2),
                "pods": [pod("a-1", "node-a", started=JUST_NOW), pod("a-2", "node-b", started=JUST_NOW)],
                "reports": {"a-1": st.AgentReport(ready=True), "a-2": None},
            },
            "Ready", "2/2", "0/2", "Unknown",
        ),
        (
            # The clock starts when the init containers (the buffer-owner) finished, not at the pod's startTime.
            "agents whose init containers just finished are waiting, not failing",
            {
                "daemonset": ds(2, 2),
                "pods": [initialized(pod("a-1", "node-a"), JUST_NOW), initialized(pod("a-2", "node-b"), JUST_NOW)],
                "reports": {"a-1": st.AgentReport(ready=True), "a-2": None},
            },
            "Ready", "2/2", "0/2", "Unknown",
        ),
        (
            "agents initialized long ago without a write are not reporting",
            {
                "daemonset": ds(2, 2),
                "pods": [initialized(pod("a-1", "node-a"), LONG_AGO), initialized(pod("a-2", "node-b"), LONG_AGO)],
                "reports": {"a-1": st.AgentReport(ready=True), "a-2": None},
            },
            "Degraded", "2/2", "0/2", "False",
        ),
        (
            "a rollout in progress",
            {"daemonset": ds(2, 1, updated=1), "pods": [pod("a-1", "node-a")], "reports": {"a-1": wrote(5)}},
            "Progressing", "1/2", "1/2", "False",
        ),
        (
            "a crash-looping agent degrades",
            {
                "daemonset": ds(2, 1),
                "pods": [pod("a-1", "node-a"), CRASHING],
                "reports": {"a-1": wrote(5)},
            },
            "Degraded", "1/2", "1/2", "False",
        ),
        ("no DaemonSet yet", {}, "Pending", "0/0", "0/0", "Unknown"),
        ("no node selected", {"daemonset": ds(0, 0)}, "Pending", "0/0", "0/0", "Unknown"),
        (
            "a missing shared-config fails",
            {"verdict": MISSING_CONFIG},
            "Failed", "0/0", "0/0", "Unknown",
        ),
        (
            "paused says so",
            {"spec": spec(paused=True), "daemonset": ds(2, 2), "pods": TWO_READY, "reports": BOTH_WROTE},
            "Paused", "2/2", "2/2", "True",
        ),
    ],
)  # fmt: skip
def test_phase_counts_and_data_flow(
    case: str, kw: dict[str, Any], phase: str, ready: str, reporting: str, flowing: str
) -> None:
    result = compute(nodes=NODES[:2], **kw)
    assert result.status["phase"] == phase, case
    assert result.status["ready"] == ready, case
    assert result.status["reporting"] == reporting, case
    assert cond(result, "DataFlowing")["status"] == flowing, case


def test_last_write_is_the_newest_and_buffered_points_add_up() -> None:
    result = compute(
        daemonset=ds(2, 2), pods=TWO_READY, nodes=NODES[:2], reports={"a-1": wrote(10, 5), "a-2": wrote(400, 37)}
    )
    assert result.status["lastWrite"] == "2026-11-30T11:59:50Z"
    assert result.status["bufferedPoints"] == 42


def test_not_reporting_message_names_the_node_and_its_buffer() -> None:
    result = compute(daemonset=ds(2, 2), pods=TWO_READY, reports={"a-1": wrote(10), "a-2": wrote(600, 120)})
    message = cond(result, "DataFlowing")["message"]
    assert "node-b" in message
    assert "120 points buffered" in message
    assert "last write 10m ago" in message


def test_reporting_horizon_is_two_windows() -> None:
    inside = compute(daemonset=ds(1, 1), pods=[pod("a-1", "node-a")], reports={"a-1": wrote(119)}, window=60)
    outside = compute(daemonset=ds(1, 1), pods=[pod("a-1", "node-a")], reports={"a-1": wrote(121)}, window=60)
    assert inside.status["reportingAgents"] == 1
    assert outside.status["reportingAgents"] == 0


def test_condition_keeps_last_transition_time_while_status_holds() -> None:
    earlier = "2026-11-30T10:00:00Z"
    previous = [
        {"type": "Ready", "status": "True", "lastTransitionTime": earlier},
        {"type": "DataFlowing", "status": "True", "lastTransitionTime": earlier},
        {"type": "Reconciled", "status": "False", "lastTransitionTime": earlier},
    ]
    result = compute(
        daemonset=ds(2, 2), pods=TWO_READY, reports={"a-1": wrote(10), "a-2": wrote(600)}, previous_conditions=previous
    )
    assert cond(result, "Ready")["lastTransitionTime"] == earlier
    assert cond(result, "DataFlowing")["lastTransitionTime"] == "2026-11-30T12:00:00Z"
    assert cond(result, "Reconciled")["lastTransitionTime"] == "2026-11-30T12:00:00Z"
    assert {t.type for t in result.transitions} == {"DataFlowing", "Reconciled"}


def test_no_transitions_when_nothing_changed() -> None:
    first = compute(daemonset=ds(2, 2), pods=TWO_READY, reports=BOTH_WROTE)
    again = compute(
        daemonset=ds(2, 2), pods=TWO_READY, reports=BOTH_WROTE, previous_conditions=first.status["conditions"]
    )
    assert again.transitions == []
    assert again.status == first.status


def test_conditions_carry_the_observed_generation() -> None:
    result = compute(generation=7, daemonset=ds(2, 2), pods=TWO_READY, reports=BOTH_WROTE)
    assert result.status["observedGeneration"] == 7
    assert {c["observedGeneration"] for c in result.status["conditions"]} == {7}


def test_failed_reconcile_names_the_cause() -> None:
    result = compute(verdict=MISSING_CONFIG)
    reconciled = cond(result, "Reconciled")
    assert reconciled["status"] == "False"
    assert reconciled["reason"] == "SharedConfigNotFound"
    assert "org-defaults" in reconciled["message"]


def test_paused_reconciled_condition_says_paused() -> None:
    result = compute(spec=spec(paused=True))
    assert cond(result, "Reconciled")["reason"] == "Paused"


def test_status_has_explicit_nulls_so_a_merge_patch_clears_them() -> None:
    result = compute()
    assert "lastWrite" in result.status
    assert result.status["lastWrite"] is None


def test_terminating_pods_neither_cover_nor_report() -> None:
    old = pod("a-1", "node-a")
    old["metadata"]["deletionTimestamp"] = JUST_NOW
    result = compute(daemonset=ds(1, 0), pods=[old], nodes=[node("node-a")], reports={"a-1": wrote(5)})
    assert result.status["reportingAgents"] == 0
    assert [u["node"] for u in result.status["uncoveredNodes"]] == ["node-a"]


@pytest.mark.parametrize(
    ("collector", "shared", "expected"),
    [
        (spec(interval="10s", window="2m"), {"observatory_aggregation_window": "5m"}, 120.0),
        (spec(), {"observatory_aggregation_window": "5m"}, 300.0),
        (spec(), {"observatory_aggregation_window": "nonsense"}, 60.0),
        (spec(), None, 60.0),
    ],
)
def test_effective_window_follows_spec_then_shared_config_then_default(
    collector: ObservatoryCollectorSpec, shared: dict[str, str] | None, expected: float
) -> None:
    assert st.effective_window(collector, shared) == expected


def test_agent_report_parse_is_tolerant() -> None:
    report = st.AgentReport.from_json({"last_successful_write": None, "buffered_points": "x", "extra": 1})
    assert report == st.AgentReport()
    assert st.AgentReport.from_json({"last_successful_write": 12.5, "buffered_points": 3}).buffered_points == 3


def test_an_unprocessed_daemonset_is_progressing_not_empty() -> None:
    fresh = ds(0, 0)
    fresh["status"] = {}
    result = compute(daemonset=fresh, nodes=NODES[:2])
    assert result.status["phase"] == "Progressing"
    assert cond(result, "Ready")["reason"] == "RolloutPending"
    assert cond(result, "DataFlowing")["status"] == "Unknown"


def test_pods_not_created_yet_are_waiting_not_failing_data() -> None:
    creating = ds(2, 0)
    creating["status"]["currentNumberScheduled"] = 0
    result = compute(daemonset=creating, nodes=NODES[:2], pods=[])
    assert cond(result, "DataFlowing")["status"] == "Unknown"
    assert cond(result, "DataFlowing")["reason"] == "WaitingForAgents"


def test_rollout_steps_are_not_warnings_but_failures_are() -> None:
    first = compute(daemonset=None)
    assert not any(t.warning for t in first.transitions)
    failing = compute(daemonset=ds(2, 1), pods=[pod("a-1", "node-a"), CRASHING], nodes=NODES[:2])
    assert any(t.warning and t.reason == "AgentsFailing" for t in failing.transitions)


def test_shared_config_problems_name_the_configmap_and_key() -> None:
    assert st.shared_config_problem({"observatory_collection_interval": "10s"}, "org") is None
    assert st.shared_config_problem(None, "org") is None
    problem = st.shared_config_problem({"observatory_collection_interval": "ten seconds"}, "org")
    assert problem is not None
    assert "ConfigMap org" in problem
    assert "observatory_collection_interval" in problem
    unknown = st.shared_config_problem({"influx_url": "http://x"}, "org")
    assert unknown is not None
    assert "influx_url" in unknown


def test_switched_off_collection_is_said_so_not_degraded() -> None:
    off = st.AgentReport(ready=True, enabled=False)
    result = compute(daemonset=ds(2, 2), pods=TWO_READY, nodes=NODES[:2], reports={"a-1": off, "a-2": off})
    flowing = cond(result, "DataFlowing")
    assert flowing["status"] == "False"
    assert flowing["reason"] == "CollectionDisabled"
    assert "observatory_enabled is false" in flowing["message"]
    assert result.status["phase"] == "Ready"


def test_one_agent_still_disabled_after_others_resumed_does_not_hide_a_broken_one() -> None:
    off = st.AgentReport(ready=True, enabled=False)
    result = compute(daemonset=ds(2, 2), pods=TWO_READY, nodes=NODES[:2], reports={"a-1": off, "a-2": wrote(600)})
    assert cond(result, "DataFlowing")["reason"] == "AgentsNotReporting"
    assert result.status["phase"] == "Degraded"


def test_agent_report_reads_enabled() -> None:
    assert st.AgentReport.from_json({"enabled": False}).enabled is False
    assert st.AgentReport.from_json({}).enabled is True


# --- big clusters, refused and stuck pods, hostile agents (issue 11) ----------------------------


def test_uncovered_nodes_are_capped_most_actionable_first_and_all_counted() -> None:
    many = [node(f"out-{i:04d}", {"pool": "batch"}) for i in range(5000)]
    tainted = node("node-t", {"pool": "general"}, [GPU_TAINT])
    result = compute(
        spec=spec(nodeSelector={"pool": "general"}),
        daemonset=ds(1, 1),
        pods=[pod("a-1", "node-a")],
        nodes=[node("node-a", {"pool": "general"}), tainted, *many],
        reports={"a-1": wrote(5)},
    )
    listed = result.status["uncoveredNodes"]
    assert len(listed) == st.MAX_UNCOVERED
    assert listed[0] == {
        "node": "node-t",
        "reason": "NotTolerated",
        "message": "taint dedicated=gpu:NoSchedule is not tolerated",
    }
    assert result.status["uncoveredNodeCounts"] == {"NotTolerated": 1, "SelectorMismatch": 5000}
    assert len(str(result.status)) < 4000


def test_failing_nodes_are_named_up_to_five_in_the_ready_message() -> None:
    names = [f"n{i}" for i in range(8)]
    pods = [pod(f"a-{n}", n, ready=False, waiting="CrashLoopBackOff", restarts=2) for n in names]
    result = compute(daemonset=ds(8, 0), pods=pods, nodes=[node(n) for n in names])
    message = cond(result, "Ready")["message"]
    assert "n0 (" in message
    assert "and 3 more" in message


def _warning(reason: str, involved_uid: str, message: str, at: str = JUST_NOW) -> dict[str, Any]:
    return {"reason": reason, "message": message, "involvedObject": {"uid": involved_uid}, "lastTimestamp": at}


def test_pods_refused_by_pod_security_name_the_policy_and_what_to_do() -> None:
    refused = ds(3, 0)
    refused["metadata"]["uid"] = "ds-uid"
    refused["status"]["currentNumberScheduled"] = 0
    message = (
        'Error creating: pods "nodes-agent-x" is forbidden: violates PodSecurity "baseline:latest": '
        'hostPath volumes (volumes "host-proc", "host-sys", "host-root")'
    )
    result = compute(
        daemonset=refused, nodes=NODES, namespace="team-a", warnings=[_warning("FailedCreate", "ds-uid", message)]
    )
    ready = cond(result, "Ready")
    assert ready["status"] == "False"
    assert ready["reason"] == "PodSecurityRefused"
    assert 'violates PodSecurity "baseline:latest"' in ready["message"]
    assert "pod-security.kubernetes.io/enforce=privileged" in ready["message"]
    assert "team-a" in ready["message"]
    assert result.status["phase"] == "Failed"
    assert any(t.warning and t.reason == "PodSecurityRefused" for t in result.transitions)


def test_a_fixed_namespace_stops_saying_pods_are_refused() -> None:
    created = ds(2, 2)
    created["metadata"]["uid"] = "ds-uid"
    result = compute(
        daemonset=created,
        pods=TWO_READY,
        nodes=NODES[:2],
        reports=BOTH_WROTE,
        warnings=[_warning("FailedCreate", "ds-uid", 'violates PodSecurity "baseline:latest"', at=LONG_AGO)],
    )
    assert cond(result, "Ready")["reason"] == "AllAgentsReady"


def test_a_missing_token_secret_is_read_from_what_the_pods_show() -> None:
    waiting = pod("a-1", "node-a", ready=False, waiting="ContainerCreating")
    waiting["metadata"]["uid"] = "pod-uid"
    events = [
        _warning(
            "FailedMount",
            "pod-uid",
            'MountVolume.SetUp failed for volume "influxdb-token" : secret "influxdb-auth" not found',
        )
    ]
    collector = spec(influxdb={"tokenSecretRef": {"name": "influxdb-auth", "key": "token"}})
    result = compute(
        spec=collector, daemonset=ds(1, 0), pods=[waiting], nodes=[node("node-a")], warnings=events, namespace="team-a"
    )
    ready = cond(result, "Ready")
    assert ready["reason"] == "SecretNotFound"
    assert "Secret influxdb-auth (spec.influxdb.tokenSecretRef) not found in namespace team-a" in ready["message"]
    assert result.status["phase"] == "Failed"
    assert result.status["uncoveredNodes"][0]["reason"] == "PodFailing"


def test_the_kubelets_waiting_message_also_names_a_missing_secret() -> None:
    waiting = pod("a-1", "node-a", ready=False, waiting="ContainerCreating")
    waiting["status"]["containerStatuses"][0]["state"]["waiting"]["message"] = 'secret "influxdb-auth" not found'
    collector = spec(influxdb={"tokenSecretRef": {"name": "influxdb-auth", "key": "token"}})
    result = compute(spec=collector, daemonset=ds(1, 0), pods=[waiting], nodes=[node("node-a")])
    assert cond(result, "Ready")["reason"] == "SecretNotFound"


@pytest.mark.parametrize(
    "body",
    [
        {"last_successful_write": float("nan"), "buffered_points": float("inf")},
        {"last_successful_write": 1e300, "buffered_points": -5},
        {"last_successful_write": 10**400, "buffered_points": 10**400},
        {"last_successful_write": True, "buffered_points": "7", "ready": "yes", "config_hash": "x" * 10_000},
        {"last_successful_write": [], "buffered_points": {}, "enabled": None},
    ],
)
def test_hostile_reports_parse_to_nothing_rather_than_raise(body: dict[str, Any]) -> None:
    report = st.AgentReport.from_json(body)
    assert report.last_successful_write is None
    assert report.buffered_points == 0
    assert report.ready is False
    assert report.config_hash is None or len(report.config_hash) == 128
    result = compute(daemonset=ds(1, 1), pods=[pod("a-1", "node-a")], nodes=[node("node-a")], reports={"a-1": report})
    assert result.status["reportingAgents"] == 0


def test_a_write_dated_in_the_future_does_not_count_as_reporting() -> None:
    future = st.AgentReport(last_successful_write=T + 86_400, ready=True)
    result = compute(daemonset=ds(1, 1), pods=[pod("a-1", "node-a")], nodes=[node("node-a")], reports={"a-1": future})
    assert result.status["reportingAgents"] == 0
    assert result.status["lastWrite"] is None
    assert "in the future" in cond(result, "DataFlowing")["message"]


def test_an_invalid_spec_is_failed_with_only_the_reconciled_condition() -> None:
    verdict = Verdict(Outcome.INVALID, "InvalidSpec", "spec.window: must be a whole multiple of interval")
    result = st.invalid(4, verdict, [{"type": "Ready", "status": "True"}], NOW)
    assert result.status["phase"] == "Failed"
    assert [c["reason"] for c in result.status["conditions"]] == ["InvalidSpec"]
    assert result.transitions[0].warning


def test_an_invalid_shared_config_is_announced_once() -> None:
    problem = "ConfigMap org: observatory_collection_interval: bad"
    first = st.shared_config_notice(problem, [])
    assert first is not None
    assert first.reason == "SharedConfigInvalid"
    said = [{"type": "Reconciled", "message": f"children are up to date; shared-config is invalid: {problem}"}]
    assert st.shared_config_notice(problem, said) is None
    assert st.shared_config_notice(None, []) is None


def test_a_false_condition_with_a_new_cause_is_announced_but_the_same_cause_is_not() -> None:
    pending = [{"type": "Ready", "status": "False", "reason": "RolloutPending", "lastTransitionTime": LONG_AGO}]
    refused = ds(1, 0)
    refused["metadata"]["uid"] = "u"
    refused["status"]["currentNumberScheduled"] = 0
    warnings = [{"reason": "FailedCreate", "message": "quota exceeded", "involvedObject": {"uid": "u"}}]
    first = compute(daemonset=refused, nodes=[node("node-a")], warnings=warnings, previous_conditions=pending)
    assert [(t.type, t.reason) for t in first.transitions if t.type == "Ready"] == [("Ready", "PodsNotCreated")]
    again = compute(
        daemonset=refused, nodes=[node("node-a")], warnings=warnings, previous_conditions=first.status["conditions"]
    )
    assert not [t for t in again.transitions if t.type == "Ready"]
