"""``observatory-agent run`` (the DaemonSet's process) and ``observatory-agent once`` (a demo).

Heavy modules are imported inside the command that needs them: ``once`` never loads the
HTTP server, Prometheus client, InfluxDB client or OpenTelemetry.
"""

from __future__ import annotations

import argparse
import os
import socket
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from observatory_agent import __version__


def config_arguments(parser: argparse.ArgumentParser, kind: str) -> None:
    """``--config`` and ``--shared-config``, as the agent and the processor both take them."""
    parser.add_argument(
        "--config",
        type=Path,
        default=os.environ.get("OBSERVATORY_CONFIG") or None,
        help=f"{kind} JSON rendered by the operator (env OBSERVATORY_CONFIG)",
    )
    parser.add_argument(
        "--shared-config",
        type=Path,
        default=os.environ.get("OBSERVATORY_SHARED_CONFIG_DIR") or None,
        help="Mounted shared-config ConfigMap directory (env OBSERVATORY_SHARED_CONFIG_DIR)",
    )


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="observatory-agent", description="happy-observatory node agent")
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    for name, text in (("run", "Collect, aggregate and write until SIGTERM"), ("once", "Print one cycle and exit")):
        p = sub.add_parser(name, help=text, description=text)
        config_arguments(p, "AgentConfig")
        if name == "once":
            p.add_argument("--format", choices=("table", "json", "line-protocol"), default="table")
    return parser


def _identity() -> tuple[str, str]:
    hostname = socket.gethostname()
    node = os.environ.get("NODE_NAME") or hostname
    # In a pod the hostname is the pod's; the node name is the machine's.
    host = os.environ.get("NODE_NAME") or hostname
    return node, host


def main(argv: Sequence[str] | None = None) -> None:
    args = _parser().parse_args(argv)
    try:
        code = _once(args) if args.command == "once" else _run(args)
    except BrokenPipeError:
        # `observatory-agent once | head`: the reader left; that is not an error.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        code = 0
    sys.exit(code)


# --- run ----------------------------------------------------------------------------------


M_ARENA_MAX = -8
"""glibc's ``mallopt`` parameter number for the arena limit (``<malloc.h>``)."""


def limit_malloc_arenas(environ: dict[str, str] | os._Environ[str] = os.environ) -> bool:
    """One malloc arena for the whole process, unless ``MALLOC_ARENA_MAX`` says otherwise.

    glibc gives each thread that allocates concurrently its own arena (up to 8 per core), and
    each keeps a few MB of freed memory resident: the collector and writer threads cost ~7 MB
    of steady RSS that way. The GIL serialises this process's allocations anyway, so one arena
    loses nothing. Must run before any thread starts; a no-op off glibc. Returns whether applied.
    """
    if "MALLOC_ARENA_MAX" in environ or not sys.platform.startswith("linux"):
        return False
    try:
        import ctypes  # noqa: PLC0415 - 0.2 MB, only for the long-running command

        libc = ctypes.CDLL(None)
        return bool(libc.mallopt(M_ARENA_MAX, 1))
    except (OSError, AttributeError):  # musl and friends have no mallopt
        return False


def _run(args: argparse.Namespace) -> int:
    import asyncio  # noqa: PLC0415

    from observatory_agent import logs  # noqa: PLC0415

    limit_malloc_arenas()
    logs.configure()
    try:
        asyncio.run(_serve(args))
    except KeyboardInterrupt:
        return 130
    # Everything worth keeping is written or fsynced in the buffer by now. A collector thread
    # stuck in the kernel (statvfs on a dead NFS mount) would block the interpreter's thread
    # join forever, so leave without it.
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


async def _serve(args: argparse.Namespace) -> None:
    import asyncio  # noqa: PLC0415
    import signal  # noqa: PLC0415

    import structlog  # noqa: PLC0415

    from observatory_agent import server, tracing  # noqa: PLC0415
    from observatory_agent.collectors.host import HostPaths  # noqa: PLC0415
    from observatory_agent.config import ConfigWatcher  # noqa: PLC0415
    from observatory_agent.runtime import Agent  # noqa: PLC0415
    from observatory_agent.telemetry import Telemetry  # noqa: PLC0415

    log = structlog.get_logger("observatory_agent.cli")
    paths = HostPaths.from_environ()
    paths.apply_to_psutil()
    node, host = _identity()
    watcher = ConfigWatcher(args.config, args.shared_config)
    loaded = watcher.start()
    telemetry = Telemetry(__version__, node)
    agent = Agent(
        watcher,
        node=node,
        host=host,
        paths=paths,
        version=__version__,
        telemetry=telemetry,
        instance=os.environ.get("POD_NAME"),
    )
    tracing.setup("observatory-agent", __version__, node)

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)

    bind = os.environ.get("POD_IP") or "127.0.0.1"
    port = loaded.effective.agent.port
    app = server.make_app(telemetry, agent.status, lambda: agent.ready)
    http = await server.start(app, bind, port)
    log.info("agent_started", version=__version__, node=node, listen=f"{bind}:{port}", config_hash=loaded.hash)
    try:
        await agent.run(stop)
    finally:
        await http.cleanup()
        tracing.shutdown()


# --- once ---------------------------------------------------------------------------------


def _once(args: argparse.Namespace) -> int:
    import asyncio  # noqa: PLC0415

    from observatory_agent.contract import ConfigError  # noqa: PLC0415

    try:
        metrics = asyncio.run(_collect_once(args))
    except ConfigError as exc:
        print(f"observatory-agent: invalid config: {exc}", file=sys.stderr)
        return 2
    if args.format == "json":
        import json  # noqa: PLC0415

        print(json.dumps([m.model_dump() for m in metrics], indent=2))
    elif args.format == "line-protocol":
        from observatory_agent.sinks import lineproto  # noqa: PLC0415

        print("\n".join(lineproto.encode_many(metrics)))
    else:
        print(_table(metrics))
    return 0


async def _collect_once(args: argparse.Namespace) -> list[Any]:
    import asyncio  # noqa: PLC0415
    import time  # noqa: PLC0415

    import structlog  # noqa: PLC0415

    from observatory_agent import config  # noqa: PLC0415
    from observatory_agent.aggregation.windows import WindowAggregator  # noqa: PLC0415
    from observatory_agent.collectors import runner  # noqa: PLC0415
    from observatory_agent.collectors.base import COUNTER  # noqa: PLC0415
    from observatory_agent.collectors.host import HostPaths  # noqa: PLC0415

    # A demo prints to stdout; keep warnings on stderr and quiet.
    structlog.configure(logger_factory=structlog.PrintLoggerFactory(file=sys.stderr))
    paths = HostPaths.from_environ()
    paths.apply_to_psutil()
    node, host = _identity()
    eff = config.load(args.config, args.shared_config).effective
    built = runner.build_collectors(eff.agent.collectors, paths, max_timeout=eff.interval * 0.9)
    identity = {"host": host, "node": node, "cluster": eff.cluster}
    agg = WindowAggregator(eff.window, exact_threshold=eff.agent.exact_quantile_threshold)

    def fold(samples: Sequence[Any], ts: float, *, counters_only: bool) -> None:
        for s in samples:
            key = runner.series_tags(s.tags, eff.tags, identity)
            if s.type is COUNTER:
                agg.add_counter(s.name, key, s.value, ts)
            elif not counters_only:
                agg.add(s.name, key, s.value, ts)

    # Two readings ~0.5 s apart — only here — so CPU usage and rates have a delta to show.
    first = await runner.run_cycle(built.collectors)
    fold(first.samples, time.time(), counters_only=True)
    await asyncio.sleep(0.5)
    second = await runner.run_cycle(built.collectors)
    fold(second.samples, time.time(), counters_only=False)
    for name, reason in {**built.errors, **second.errors}.items():
        print(f"collector {name}: {reason}", file=sys.stderr)
    metrics = [m for window in agg.close_all(time.time()) for m in window.aggregates(eff.agent.quantiles)]
    return sorted(metrics, key=lambda m: (m.name, sorted(m.tags.items())))


def _table(metrics: Sequence[Any]) -> str:
    from observatory_agent.collectors import METRICS  # noqa: PLC0415

    units = {m.name: m.unit for m in METRICS}
    identity = {"host", "node", "cluster"}
    rows = [("METRIC", "TAGS", "VALUE", "UNIT")]
    for m in metrics:
        tags = ",".join(f"{k}={v}" for k, v in sorted(m.tags.items()) if k not in identity)
        unit = units.get(m.name, "")
        rows.append((m.name, tags, _fmt(m.last), unit))
    widths = [max(len(r[i]) for r in rows) for i in range(3)]
    return "\n".join(f"{r[0]:<{widths[0]}}  {r[1]:<{widths[1]}}  {r[2]:>{widths[2]}}  {r[3]}".rstrip() for r in rows)


def _fmt(value: float) -> str:
    if value == int(value) and abs(value) < 1e15:
        return f"{int(value)}"
    return f"{value:.2f}" if abs(value) >= 0.01 else f"{value:.3g}"
