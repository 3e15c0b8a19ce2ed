"""``observatory-operator``: runs the controller machinery under kopf with deliberate settings.

Settings and why:

- **Namespaces**: ``--namespace NS`` (repeatable) watches only those namespaces (a Role per
  namespace is enough, except for Nodes, which status needs cluster-wide read access to);
  ``--all-namespaces`` watches the whole cluster. Without either, ``WATCH_NAMESPACE``
  (comma-separated, the usual downward-API convention) decides, and only when that is unset
  too does the operator watch everything, saying so in its first log line.
- **What kopf does**: it logs in, watches the custom resources and hands every event to the
  machinery (``handlers/``), and serves ``--liveness`` (default ``http://0.0.0.0:8080/healthz``),
  which answers only while its watch streams are alive. It writes nothing: no finalizers (children
  are owned and the garbage collector deletes them, so collectors stay deletable while the operator
  is down), no annotations, and its Event posting is off (the machinery posts condition
  transitions and child changes itself). It does not scan the cluster's namespaces and CRDs
  (``settings.scanning.disabled``): the CRDs must exist when the operator starts, as the chart
  ensures.
- **One writer**: ``--leader-election NAME`` holds the coordination.k8s.io Lease NAME in
  ``--leader-election-namespace`` (default: ``POD_NAMESPACE``); only the holder writes, a standby
  takes over within the lease duration after the holder stops renewing, and a holder that cannot
  renew stops writing before a standby may start (``kube/lease.py``). The chart turns it on with
  more than one replica (then a rolling update's old and new pods never both write either); a
  single replica it replaces rather than overlaps (``strategy: Recreate``), and it runs without
  the Lease's renewals. Without the flag the operator writes alone (one replica, tests, ``make dev``).
- **Metrics**: ``--metrics HOST:PORT`` (default ``0.0.0.0:8081``, empty to disable) serves
  ``/metrics`` (``observatory_operator.metrics``).
"""

from __future__ import annotations

import sys

# kopf imports the kubernetes client when it is installed (to recognise its model objects, which
# this operator never hands it), and the whole client costs ~9 MB of RSS. The operator speaks
# to the API server through its own client, so it makes the package absent for this process:
# kopf then runs without it, as it documents it can. (Left alone when something already
# imported it, such as a test process.) tests/unit/operator/test_cli.py fails when this stops
# keeping the client out.
sys.modules.setdefault("kubernetes", None)  # type: ignore[arg-type]

import argparse  # noqa: E402
import asyncio  # noqa: E402
import contextlib  # noqa: E402
import logging  # noqa: E402
import os  # noqa: E402
import socket  # noqa: E402
from collections.abc import Sequence  # noqa: E402
from typing import Any  # noqa: E402

import kopf  # noqa: E402

from observatory_agent.cli import limit_malloc_arenas  # noqa: E402
from observatory_operator import __version__, metrics  # noqa: E402
from observatory_operator.controller.cache import Cache  # noqa: E402
from observatory_operator.controller.machinery import Controller, Machinery  # noqa: E402
from observatory_operator.handlers import collector, rule  # noqa: E402
from observatory_operator.kube import client  # noqa: E402
from observatory_operator.kube.lease import LeaderElector  # noqa: E402
from observatory_operator.kube.probe import Prober  # noqa: E402
from observatory_operator.manifests import names  # noqa: E402
from observatory_operator.settings import AgentDefaults, ReconcileSettings, Settings  # noqa: E402

log = logging.getLogger("observatory_operator")


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="observatory-operator", description="happy-observatory's Kubernetes operator.")
    scope = p.add_mutually_exclusive_group()
    scope.add_argument("-n", "--namespace", action="append", help="Watch this namespace (repeatable).")
    scope.add_argument("-A", "--all-namespaces", action="store_true", help="Watch every namespace.")
    p.add_argument("--liveness", default="http://0.0.0.0:8080/healthz", help="kopf liveness endpoint URL.")
    p.add_argument("--metrics", default="0.0.0.0:8081", help="HOST:PORT of /metrics; empty: none.")
    p.add_argument("--leader-election", metavar="LEASE", help="Hold this Lease to write (for more than one replica).")
    p.add_argument(
        "--leader-election-namespace",
        default=os.environ.get("POD_NAMESPACE"),
        help="Namespace of the Lease (default: $POD_NAMESPACE).",
    )
    p.add_argument(
        "--identity",
        default=os.environ.get("POD_NAME") or f"{socket.gethostname()}-{os.getpid()}",
        help="This replica's name in the Lease (default: $POD_NAME).",
    )
    p.add_argument(
        "--agent-image",
        default=os.environ.get("OBSERVATORY_AGENT_IMAGE", AgentDefaults.image),
        help="Agent image when a collector does not set spec.image.",
    )
    p.add_argument(
        "--agent-buffer-root",
        type=_absolute_path,
        default=os.environ.get("OBSERVATORY_AGENT_BUFFER_ROOT", AgentDefaults.buffer_root),
        help="Directory on each node under which agents keep their write buffers (hostPath; env "
        "OBSERVATORY_AGENT_BUFFER_ROOT). Changing it rolls every agent, and what was buffered stays behind.",
    )
    p.add_argument(
        "--resync-seconds",
        type=float,
        default=float(os.environ.get("OBSERVATORY_RESYNC_SECONDS", ReconcileSettings.resync_seconds)),
        help="Status refresh period (children changes are acted on at once, through watches).",
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


def _absolute_path(text: str) -> str:
    if not text.startswith("/") or "/../" in f"{text}/":
        raise argparse.ArgumentTypeError(f"{text!r}: a directory on the node must be an absolute path without '..'")
    return text


def _label(text: str) -> tuple[str, str]:
    key, sep, value = text.partition("=")
    if not sep or not key.strip():
        raise argparse.ArgumentTypeError(f"{text!r}: a label is KEY=VALUE")
    return key.strip(), value.strip()


def _labels_from_env(text: str) -> list[tuple[str, str]]:
    return [_label(item) for item in text.split(",") if item.strip()]


def build_registry(
    machinery: Machinery, *, elector: LeaderElector | None, stopped: asyncio.Event | None = None
) -> kopf.OperatorRegistry:
    """The handlers this operator runs, in a registry of its own (not kopf's import-time global one).

    ``stopped`` is the stop flag handed to kopf: set once the operator has stopped for any reason (a
    signal too), or kopf's task waiting on it holds the exit back by 5 s (its wait for leftover tasks)."""
    registry = kopf.OperatorRegistry()
    tasks: list[asyncio.Task[None]] = []

    @kopf.on.login(id="login", registry=registry)
    def login(**_: Any) -> kopf.ConnectionInfo:
        # The same credentials the operator's own client uses: in-cluster, else KUBECONFIG.
        return client.login()

    @kopf.on.startup(id="start", registry=registry)
    async def start(settings: kopf.OperatorSettings, **_: Any) -> None:
        settings.posting.enabled = False
        # Serve the given namespaces and the CRDs present at start (the chart installs them first):
        # no list/watch of every Namespace and CRD in the cluster, and no RBAC for it.
        settings.scanning.disabled = True
        settings.execution.max_workers = 2  # only the (synchronous) login runs in a thread
        settings.watching.server_timeout = 300
        settings.watching.client_timeout = 330
        if elector is None:
            machinery.leading.set()
            metrics.LEADER.set(1)
        else:
            machinery.leading = elector.leading
            machinery.kube.fence = elector.fence
            tasks.append(asyncio.create_task(elector.run(), name="leader election"))
        machinery.start()

    @kopf.on.cleanup(id="stop", registry=registry)
    async def stop(**_: Any) -> None:
        for task in tasks:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task  # releases the Lease, so a standby takes over at once
        await machinery.stop()
        if stopped is not None:
            stopped.set()

    collector.register(registry, machinery.controller(collector.COLLECTORS.kind))
    rule.register(registry, machinery.controller(rule.RULES.kind))
    return registry


async def _operate(args: argparse.Namespace, settings: Settings) -> int:
    kube = client.Kube(
        field_manager=settings.field_manager, user_agent=f"{settings.field_manager}/{__version__} ({args.identity})"
    )
    cache = Cache(kube, args.namespace)
    machinery = Machinery(kube, cache)
    prober = Prober(
        timeout_seconds=settings.reconcile.probe_timeout_seconds, body_limit=settings.reconcile.probe_body_limit_bytes
    )
    collectors = machinery.add(
        Controller(
            collector.kind(settings, prober, processors=rule.targets_for),
            kube=kube,
            cache=cache,
            settings=settings.reconcile,
            annotation=names.INPUT_HASH_ANNOTATION,
        )
    )
    rules = machinery.add(
        Controller(
            rule.kind(settings, prober),
            kube=kube,
            cache=cache,
            settings=settings.reconcile,
            annotation=names.INPUT_HASH_ANNOTATION,
        )
    )
    rule.connect(rules, collectors)
    stopped = asyncio.Event()
    lost = False

    def lost_lease() -> None:
        nonlocal lost
        lost = True
        stopped.set()

    elector = None
    if args.leader_election:
        elector = LeaderElector(
            kube,
            namespace=args.leader_election_namespace,
            name=args.leader_election,
            identity=args.identity,
            settings=settings.leader,
            on_lost=lost_lease,
        )
    try:
        await kopf.operator(
            registry=build_registry(machinery, elector=elector, stopped=stopped),
            clusterwide=args.all_namespaces,
            namespaces=args.namespace or (),
            standalone=True,  # one writer is the Lease's job, not kopf peering's
            liveness_endpoint=args.liveness or None,
            stop_flag=stopped,
        )
    finally:
        await prober.close()
    return 1 if lost else 0


def main(argv: Sequence[str] | None = None) -> int:
    """Console entry point; returns the process exit code."""
    parser = _parser()
    args = parser.parse_args(argv)
    kopf.configure(
        verbose=args.verbose,
        log_format=kopf.LogFormat.JSON if args.log_format == "json" else kopf.LogFormat.PLAIN,
    )
    if not args.namespace and not args.all_namespaces:
        watch = [ns.strip() for ns in os.environ.get("WATCH_NAMESPACE", "").split(",") if ns.strip()]
        args.namespace = watch or None
        args.all_namespaces = not watch
    if args.leader_election and not args.leader_election_namespace:
        parser.error("--leader-election needs --leader-election-namespace (or POD_NAMESPACE)")
    if not args.verbose:
        # kopf logs a line per handler per watch event: with many collectors that drowns the
        # operator's own lines, which say what changed and why.
        logging.getLogger("kopf.objects").setLevel(logging.WARNING)
        # kopf's liveness endpoint logs every kubelet probe as an access line: noise, every few seconds.
        logging.getLogger("aiohttp.access").setLevel(logging.WARNING)
    settings = Settings(
        agent=AgentDefaults(image=args.agent_image, buffer_root=args.agent_buffer_root),
        reconcile=ReconcileSettings(resync_seconds=args.resync_seconds),
        service_monitor_labels=dict(args.servicemonitor_label),
        # In a cluster the chart sets POD_NAMESPACE: processors' NetworkPolicies admit the operator's probes from there.
        operator_namespace=os.environ.get("POD_NAMESPACE") or None,
    )
    # One malloc arena (the agent's reasoning: the GIL serialises allocations anyway; each extra
    # arena keeps freed memory resident). Before any thread starts, metrics' server thread included.
    limit_malloc_arenas()
    if args.metrics:
        metrics.serve(args.metrics)
    log.info(
        "starting %s as %s, namespaces=%s, leader election=%s",
        __version__,
        args.identity,
        "ALL" if args.all_namespaces else ",".join(args.namespace),
        args.leader_election or "off",
    )
    try:
        return asyncio.run(_operate(args, settings))
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
