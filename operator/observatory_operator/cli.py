"""``observatory-operator``: runs the kopf operator with deliberate settings.

Settings and why:

- **Namespaces**: ``--namespace NS`` (repeatable) watches only those namespaces (a Role per
  namespace is enough, except for Nodes, which status needs cluster-wide read access to);
  ``--all-namespaces`` watches the whole cluster. Without either, ``WATCH_NAMESPACE``
  (comma-separated, the usual downward-API convention) decides, and only when that is unset
  too does the operator watch everything, saying so in its first log line.
- **Liveness**: ``--liveness http://0.0.0.0:8080/healthz`` (the default) is kopf's probe
  endpoint; it answers only while the operator's watch streams are alive.
- **Events**: posted by the operator's own client (``kube/events.py``) for condition
  transitions (Warning when a condition turns False), for applied/restored/recreated/pruned
  children and for rejected specs. kopf's Event posting is off: it would turn handler log
  lines into Events, one every resync per collector.
- **Finalizers**: none. Children are owned (controller references) and the garbage collector
  deletes them; the periodic resync is our own loop, not ``@kopf.timer``, because kopf puts a
  finalizer on every object that has a timer and collectors must stay deletable while the
  operator is down.
- **More than one replica**: the default is ``--standalone``, for the chart's single replica.
  With ``--peering NAME`` replicas use kopf peering (the KopfPeering CRDs ship in the chart's
  ``crds/``): the replica with the highest ``--priority`` works, the others pause until its
  heartbeat stops, so there is one writer at a time. The operator creates the peering object
  before kopf starts (``kube/peering.py``): a replica started before it existed would work as
  if alone. Give replicas distinct priorities (the default derives one from the pod name) —
  kopf does not pause on ties.
- **Persistence**: kopf's bookkeeping goes to annotations under our own group, not to
  ``status``, which belongs to the status funnel alone.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import logging
import os
import sys
from collections.abc import Sequence
from typing import Any

import kopf

from observatory_operator import __version__
from observatory_operator.api.models import GROUP
from observatory_operator.handlers import collector
from observatory_operator.handlers.runtime import Runtime
from observatory_operator.kube import peering
from observatory_operator.kube.client import Kube
from observatory_operator.settings import AgentDefaults, ReconcileSettings, Settings


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="observatory-operator", description="happy-observatory's Kubernetes operator.")
    scope = p.add_mutually_exclusive_group()
    scope.add_argument("-n", "--namespace", action="append", help="Watch this namespace (repeatable).")
    scope.add_argument("-A", "--all-namespaces", action="store_true", help="Watch every namespace.")
    p.add_argument("--liveness", default="http://0.0.0.0:8080/healthz", help="kopf liveness endpoint URL.")
    p.add_argument("--peering", metavar="NAME", help="Use kopf peering under NAME (for more than one replica).")
    p.add_argument("--priority", type=int, help="Peering priority; default derived from POD_NAME/HOSTNAME.")
    p.add_argument(
        "--agent-image",
        default=os.environ.get("OBSERVATORY_AGENT_IMAGE", AgentDefaults.image),
        help="Agent image when a collector does not set spec.image.",
    )
    p.add_argument(
        "--resync-seconds",
        type=float,
        default=float(os.environ.get("OBSERVATORY_RESYNC_SECONDS", ReconcileSettings.resync_seconds)),
        help="Status refresh and drift-restore period.",
    )
    p.add_argument(
        "--servicemonitor-label",
        action="append",
        type=_label,
        default=_labels_from_env(os.environ.get("OBSERVATORY_SERVICEMONITOR_LABELS", "")),
        metavar="KEY=VALUE",
        help="Extra label on generated ServiceMonitors (repeatable; env OBSERVATORY_SERVICEMONITOR_LABELS=k=v,k2=v2).",
    )
    p.add_argument("--log-format", choices=["plain", "json"], default="json", help="Log line format.")
    p.add_argument("-v", "--verbose", action="store_true", help="Debug logging.")
    p.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    return p


def _label(text: str) -> tuple[str, str]:
    key, sep, value = text.partition("=")
    if not sep or not key.strip():
        raise argparse.ArgumentTypeError(f"{text!r}: a label is KEY=VALUE")
    return key.strip(), value.strip()


def _labels_from_env(text: str) -> list[tuple[str, str]]:
    return [_label(item) for item in text.split(",") if item.strip()]


def _default_priority() -> int:
    """Distinct per pod (kopf does not pause replicas of equal priority), stable across restarts of the same pod."""
    ident = os.environ.get("POD_NAME") or os.environ.get("HOSTNAME") or str(os.getpid())
    return int(hashlib.sha256(ident.encode()).hexdigest()[:6], 16) % 10_000 + 1


def build_registry(settings: Settings, *, peering: str | None, all_namespaces: bool) -> kopf.OperatorRegistry:
    """The handlers this operator runs, in a registry of its own (not kopf's import-time global one)."""
    registry = kopf.OperatorRegistry()

    @kopf.on.login(id="login", registry=registry)
    def login(**kwargs: Any) -> kopf.ConnectionInfo | None:
        # The same configuration the operator's own client loads: in-cluster, else KUBECONFIG.
        info: kopf.ConnectionInfo | None = kopf.login_via_client(**kwargs)
        return info

    @kopf.on.startup(id="configure", registry=registry)
    def configure(settings: kopf.OperatorSettings, **_: Any) -> None:
        settings.posting.enabled = False
        settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix=GROUP)
        settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(
            prefix=GROUP, key="last-handled-configuration"
        )
        settings.peering.clusterwide = all_namespaces
        settings.peering.mandatory = peering is not None
        settings.execution.max_workers = 16  # threads for sync handlers; ours are async, so few suffice
        settings.watching.server_timeout = 300
        settings.watching.client_timeout = 330

    collector.register(registry)
    return registry


def main(argv: Sequence[str] | None = None) -> int:
    """Console entry point; returns the process exit code."""
    args = _parser().parse_args(argv)
    kopf.configure(
        verbose=args.verbose,
        log_format=kopf.LogFormat.JSON if args.log_format == "json" else kopf.LogFormat.PLAIN,
    )
    if not args.namespace and not args.all_namespaces:
        watch = [ns.strip() for ns in os.environ.get("WATCH_NAMESPACE", "").split(",") if ns.strip()]
        args.namespace = watch or None
        args.all_namespaces = not watch
    if not args.verbose:
        # kopf logs a line per handler per watch event ("Handler 'remember' succeeded"): with many
        # collectors that drowns the operator's own lines, which say what changed and why.
        logging.getLogger("kopf.objects").setLevel(logging.WARNING)
        # kopf's liveness endpoint logs every kubelet probe as an access line: noise, every few seconds.
        logging.getLogger("aiohttp.access").setLevel(logging.WARNING)
    settings = Settings(
        agent=AgentDefaults(image=args.agent_image),
        reconcile=ReconcileSettings(resync_seconds=args.resync_seconds),
        service_monitor_labels=dict(args.servicemonitor_label),
    )
    kube = Kube.from_environment(field_manager=settings.field_manager)
    runtime = Runtime(kube=kube, settings=settings)
    registry = build_registry(settings, peering=args.peering, all_namespaces=args.all_namespaces)
    if args.peering:
        peering.ensure_peering(
            kube, args.peering, namespaces=args.namespace or (), clusterwide=bool(args.all_namespaces)
        )
    logging.getLogger("observatory_operator").info(
        "starting %s, namespaces=%s", __version__, "ALL" if args.all_namespaces else ",".join(args.namespace)
    )
    try:
        asyncio.run(
            kopf.operator(
                registry=registry,
                memo=kopf.Memo(runtime=runtime),
                clusterwide=args.all_namespaces,
                namespaces=args.namespace or (),
                standalone=args.peering is None,
                peering_name=args.peering,
                priority=args.priority if args.priority is not None else _default_priority(),
                liveness_endpoint=args.liveness or None,
            )
        )
    except KeyboardInterrupt:
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
