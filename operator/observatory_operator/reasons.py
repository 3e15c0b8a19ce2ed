"""What a round came to (an enum) and every reason string the operator writes, in one place.

Reasons are what users read in ``kubectl describe`` (condition reasons, Event reasons, the
reason of an uncovered node) and what alerts match on, so they are constants here and nowhere
else; modules compare against these names, never against string literals.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Final


class Outcome(enum.Enum):
    """What the apply step of a round came to."""

    APPLIED = "Applied"
    """The children match the spec (written this round, or already right)."""
    PAUSED = "Paused"
    """``spec.paused``: the children are left as they are."""
    INVALID = "Invalid"
    """The spec cannot be built from; only the user can fix it. Nothing is applied."""
    BLOCKED = "Blocked"
    """Something the children need and the operator does not own is missing; nothing is applied until it appears."""
    REJECTED = "Rejected"
    """The API server refused what was built (dry run or apply); retried with backoff, since admission may change."""

    @property
    def ok(self) -> bool:
        return self is Outcome.APPLIED

    @property
    def failed(self) -> bool:
        """A failure the Reconciled condition reports as False (paused is a choice, not a failure)."""
        return self in (Outcome.INVALID, Outcome.BLOCKED, Outcome.REJECTED)


@dataclass(frozen=True)
class Verdict:
    """A round's outcome, the reason that names its cause, and the message users read."""

    outcome: Outcome
    reason: str
    message: str = ""


# --- condition types ----------------------------------------------------------------------

READY: Final = "Ready"
RECONCILED: Final = "Reconciled"
DATA_FLOWING: Final = "DataFlowing"
CARDINALITY_LIMITED: Final = "CardinalityLimited"
"""AggregationRule: True while maxSeries drops groups of the newest window."""

# --- Reconciled ---------------------------------------------------------------------------

APPLIED: Final = "Applied"
PAUSED: Final = "Paused"
INVALID_SPEC: Final = "InvalidSpec"
SHARED_CONFIG_NOT_FOUND: Final = "SharedConfigNotFound"
APPLY_REJECTED: Final = "ApplyRejected"
NAME_TAKEN: Final = "NameTaken"

# --- Ready --------------------------------------------------------------------------------

NO_DAEMONSET: Final = "NoDaemonSet"
ROLLOUT_PENDING: Final = "RolloutPending"
NO_NODES_SELECTED: Final = "NoNodesSelected"
ALL_AGENTS_READY: Final = "AllAgentsReady"
AGENTS_FAILING: Final = "AgentsFailing"
AGENTS_NOT_READY: Final = "AgentsNotReady"
POD_SECURITY_REFUSED: Final = "PodSecurityRefused"
"""The namespace's Pod Security level refuses agent pods (the DaemonSet controller's FailedCreate says so)."""
PODS_NOT_CREATED: Final = "PodsNotCreated"
"""The DaemonSet controller cannot create agent pods for another reason (quota, admission webhook...)."""
SECRET_NOT_FOUND: Final = "SecretNotFound"  # noqa: S105 - a reason, not a secret
"""Agent pods cannot start because the token Secret is missing (what the pods and their Events say)."""

# --- DataFlowing --------------------------------------------------------------------------

ALL_AGENTS_REPORTING: Final = "AllAgentsReporting"
AGENTS_NOT_REPORTING: Final = "AgentsNotReporting"
WAITING_FOR_FIRST_WRITE: Final = "WaitingForFirstWrite"
WAITING_FOR_AGENTS: Final = "WaitingForAgents"
NO_AGENTS: Final = "NoAgents"
COLLECTION_DISABLED: Final = "CollectionDisabled"
"""DataFlowing's reason when agents write nothing on purpose: not a Degraded collector."""


# --- uncovered nodes ----------------------------------------------------------------------

NOT_TOLERATED: Final = "NotTolerated"
SELECTOR_MISMATCH: Final = "SelectorMismatch"
AFFINITY_MISMATCH: Final = "AffinityMismatch"
POD_PENDING: Final = "PodPending"
POD_FAILING: Final = "PodFailing"

# --- AggregationRule ------------------------------------------------------------------------

COLLECTOR_NOT_FOUND: Final = "CollectorNotFound"
"""Reconciled=False: a collector the rule names does not exist (the processor still runs for the others)."""
WINDOW_MISMATCH: Final = "WindowMismatch"
"""Reconciled=False: a named collector's window does not divide the rule's window (its partials are refused)."""
NO_DEPLOYMENT: Final = "NoDeployment"
PROCESSOR_READY: Final = "ProcessorReady"
PROCESSOR_NOT_READY: Final = "ProcessorNotReady"
WATERMARK_UNREADABLE: Final = "WatermarkUnreadable"
"""Ready=False: the processor cannot read its watermark back from InfluxDB (a token that cannot read, a wrong URL)."""
WINDOWS_WRITTEN: Final = "WindowsWritten"
WINDOWS_LATE: Final = "WindowsLate"
"""DataFlowing=False: the newest window written is older than two windows plus the allowed lateness."""
WAITING_FOR_FIRST_WINDOW: Final = "WaitingForFirstWindow"
PROCESSOR_NOT_ANSWERING: Final = "ProcessorNotAnswering"
SERIES_DROPPED: Final = "SeriesDropped"
WITHIN_LIMIT: Final = "WithinLimit"

# --- Events about children ------------------------------------------------------------------

RESTORED: Final = "Restored"
"""A child edited or deleted by hand was put back (an Event; the condition stays Reconciled=True)."""
RECREATED: Final = "Recreated"
PRUNED: Final = "Pruned"
SHARED_CONFIG_INVALID: Final = "SharedConfigInvalid"

TRANSIENT: Final = frozenset(
    {
        NO_DAEMONSET,
        ROLLOUT_PENDING,
        AGENTS_NOT_READY,
        WAITING_FOR_AGENTS,
        WAITING_FOR_FIRST_WRITE,
        PAUSED,
        NO_DEPLOYMENT,
        PROCESSOR_NOT_READY,
        WAITING_FOR_FIRST_WINDOW,
        WITHIN_LIMIT,
    }
)
"""False/Unknown reasons that are a normal step of a rollout or a user's choice: Normal Events, not Warnings."""
