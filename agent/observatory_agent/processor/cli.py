"""``observatory-processor run``: one AggregationRule's processor (the Deployment's process).

A valid change of the config or shared-config files starts the processor afresh in the same
process: a new instance id, the watermark read back again, agents re-send what is not written.
That is the restart path the protocol is built for, so a reload needs no second mechanism.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from typing import TYPE_CHECKING

from observatory_agent import __version__, cli

if TYPE_CHECKING:
    from observatory_agent.processor.config import LoadedProcessorConfig

RELOAD_POLL = 2.0
"""Seconds between looks at the config files."""


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="observatory-processor", description="happy-observatory roll-up processor")
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="Merge partials and write roll-ups until SIGTERM")
    cli.config_arguments(run, "ProcessorConfig")
    return parser


def main(argv: Sequence[str] | None = None) -> None:
    args = _parser().parse_args(argv)
    if args.config is None:
        print("observatory-processor: --config is required (a ProcessorConfig JSON)", file=sys.stderr)
        sys.exit(2)
    sys.exit(_run(args))


def _run(args: argparse.Namespace) -> int:
    import asyncio  # noqa: PLC0415

    from observatory_agent import logs  # noqa: PLC0415
    from observatory_agent.contract import ConfigError  # noqa: PLC0415
    from observatory_agent.processor import config  # noqa: PLC0415

    cli.limit_malloc_arenas()
    logs.configure()
    try:
        loaded = config.load(args.config, args.shared_config)
    except ConfigError as exc:
        print(f"observatory-processor: invalid config: {exc}", file=sys.stderr)
        return 2
    try:
        asyncio.run(_serve(args, loaded))
    except KeyboardInterrupt:
        return 130
    return 0


async def _serve(args: argparse.Namespace, loaded: LoadedProcessorConfig) -> None:
    import asyncio  # noqa: PLC0415
    import contextlib  # noqa: PLC0415
    import signal  # noqa: PLC0415

    import structlog  # noqa: PLC0415

    from observatory_agent import server, tracing  # noqa: PLC0415
    from observatory_agent.processor import config  # noqa: PLC0415
    from observatory_agent.processor.service import Processor  # noqa: PLC0415
    from observatory_agent.processor.telemetry import ProcessorTelemetry  # noqa: PLC0415
    from observatory_agent.runtime import buffer_directory  # noqa: PLC0415

    log = structlog.get_logger("observatory_agent.processor.cli")
    spec = loaded.effective.processor
    telemetry = ProcessorTelemetry(__version__, spec.rule)
    tracing.setup("observatory-processor", __version__, spec.rule)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    watcher = config.Watcher(args.config, args.shared_config, loaded)
    bind = os.environ.get("POD_IP") or "127.0.0.1"
    while not stop.is_set():
        spec = loaded.effective.processor
        processor = Processor(loaded, telemetry, version=__version__)
        processor.open(buffer_directory(spec.buffer_dir))
        http = await server.start(processor.app(), bind, spec.port)
        log.info("processor_started", rule=spec.rule, instance=processor.instance, listen=f"{bind}:{spec.port}")
        reload = asyncio.Event()
        running = asyncio.create_task(processor.run(reload))
        try:
            while not stop.is_set():
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), timeout=RELOAD_POLL)
                changed = watcher.poll()
                processor.reload_error = watcher.last_error  # the last good config goes on meanwhile
                if changed is not None:
                    log.info("config_changed_starting_afresh", config_hash=changed.hash)
                    loaded = changed
                    break
        finally:
            reload.set()
            await running
            await http.cleanup()
            await processor.close()
    tracing.shutdown()
