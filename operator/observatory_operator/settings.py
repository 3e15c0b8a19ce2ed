"""Operator settings: small frozen dataclasses grouped by concern, each field with its unit, default and why."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Final

DEFAULT_AGENT_IMAGE: Final = "ghcr.io/happy-patterns-org/happy-observatory:2.0.0"
FIELD_MANAGER: Final = "happy-observatory-operator"


@dataclass(frozen=True)
class AgentDefaults:
    """What an agent pod gets when the collector's spec is silent."""

    image: str = DEFAULT_AGENT_IMAGE
    """Agent image; the operator's own release, so agent and operator speak the same contract."""
    image_pull_policy: str = "IfNotPresent"
    """Tags are immutable releases; re-pulling on every start only adds registry load."""
    cpu_request: str = "20m"
    """An agent samples /proc every interval: a few millicores on an idle node."""
    memory_request: str = "64Mi"
    """Python runtime plus one window of samples."""
    memory_limit: str = "128Mi"
    """A leak is killed and restarted instead of squeezing the node's workloads."""
    buffer_root: str = "/var/lib/observatory"
    """Directory on each node under which agents keep their write buffers (``<root>/<namespace>/<collector>/<node>``):
    on the node's disk so that buffered windows outlive the pod; the agent caps each at 64 MiB."""
    run_as_user: int = 65532
    """The image's own non-root user (docker/Dockerfile): agents read world-readable /proc and /sys files only."""


@dataclass(frozen=True)
class ProcessorDefaults:
    """What a rule's processor pod gets when the rule's spec is silent."""

    cpu_request: str = "50m"
    """Merging one window of a few hundred nodes' partials: well under a core-second per window."""
    memory_request: str = "128Mi"
    """Python, numpy and the open windows' merge state."""
    memory_limit: str = "512Mi"
    """The benchmark's 1,000 agents x 500 series peak at ~150 MB; a leak is killed, not left to grow."""
    buffer_size_limit: str = "128Mi"
    """emptyDir size limit of the roll-ups' write buffer (the processor caps itself at 64 MiB)."""


@dataclass(frozen=True)
class ReconcileSettings:
    """How often and how hard the operator retries."""

    resync_seconds: float = 10.0
    """Timer period: status refresh and restoration of hand-edited children (restore within 30 s)."""
    backoff_initial_seconds: float = 10.0
    """First retry after a missing Secret/ConfigMap or a temporary API error."""
    backoff_max_seconds: float = 300.0
    """Retries never wait longer than this, so a fixed Secret is picked up within five minutes."""
    probe_timeout_seconds: float = 2.0
    """Per-agent /status request timeout; a slow agent must not stall the status of the others."""
    probe_body_limit_bytes: int = 64 * 1024
    """An agent's /status answer is a few hundred bytes; anything past this is refused unread."""
    workers: int = 8
    """Rounds running at once (one per key at most): bounds concurrent agent probes and API writes."""
    poke_delay_seconds: float = 1.0
    """A child or pod change waits this long before its owner's round, so a rollout's burst of events is one round."""


@dataclass(frozen=True)
class LeaderSettings:
    """Leader election on a coordination.k8s.io Lease: one replica writes, the others wait (client-go's defaults)."""

    lease_seconds: float = 15.0
    """A standby takes over this long after it last saw the leader renew: the failover time after a SIGKILL."""
    renew_deadline_seconds: float = 10.0
    """The leader stops writing when it could not renew for this long, well before a standby may take over."""
    retry_seconds: float = 5.0
    """How often the leader renews (one update) and a standby checks the Lease (one read): 12 requests a minute."""


@dataclass(frozen=True)
class Settings:
    """Everything the pure builders and the reconciler need from the operator's configuration."""

    agent: AgentDefaults = field(default_factory=AgentDefaults)
    processor: ProcessorDefaults = field(default_factory=ProcessorDefaults)
    reconcile: ReconcileSettings = field(default_factory=ReconcileSettings)
    leader: LeaderSettings = field(default_factory=LeaderSettings)
    field_manager: str = FIELD_MANAGER
    """The single server-side-apply field manager: one owner for every field the operator sets."""
    service_monitor_labels: dict[str, str] = field(default_factory=dict)
    """Extra labels on generated ServiceMonitors: Prometheus selects on them (kube-prometheus-stack: release)."""
    operator_namespace: str | None = None
    """Where the operator's pods run (POD_NAMESPACE in the chart): processors' NetworkPolicies admit its probes.
    None outside a cluster, where no policy can name it."""
