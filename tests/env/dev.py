"""`make dev`: control plane, three simulated nodes, InfluxDB, CRDs, examples and the operator until Ctrl-C.

State lives in ``.dev/`` at the repository root (gitignored) and is recreated on every run;
logs stay in ``.dev/logs`` after exit for a post-mortem.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from types import FrameType
from typing import Any

import yaml

from tests.env.controlplane import ControlPlane
from tests.env.influx import InfluxDB
from tests.env.kube import ApiError, Kube
from tests.env.nodesim import REPO, VENV_BIN, NodeSimulator, default_nodes
from tests.env.procs import Process, free_port, wait_for

# Objects that others refer to go first, so a collector never waits for its ConfigMap.
_APPLY_ORDER = {"Namespace": 0, "CustomResourceDefinition": 1, "ConfigMap": 2, "Secret": 2}


class _Stop(BaseException):
    """Ctrl-C or SIGTERM. A BaseException, so no retry loop's ``except Exception`` swallows it."""


def _raise_stop(signum: int, frame: FrameType | None) -> None:
    raise _Stop


def install_crds(kube: Kube, crd_dir: Path, timeout: float = 30.0) -> list[str]:
    """Apply every CRD in ``crd_dir`` and wait until the API server serves each of them."""
    names = []
    for path in sorted(crd_dir.glob("*.yaml")):
        for obj in kube.apply_file(path):
            names.append(obj["metadata"]["name"])
    for name in names:

        def established(name: str = name) -> bool:
            crd = kube.get(f"/apis/apiextensions.k8s.io/v1/customresourcedefinitions/{name}")
            conds = (crd.get("status") or {}).get("conditions") or []
            return any(c["type"] == "Established" and c["status"] == "True" for c in conds)

        wait_for(established, timeout=timeout, what=f"CRD {name} Established")
    return names


def point_examples_at_local_influxdb(kube: Kube, influx: InfluxDB, namespace: str = "default") -> None:
    """The examples target an in-cluster InfluxDB; locally there is this one (and its token Secret)."""
    kube.apply(
        {
            "apiVersion": "v1",
            "kind": "Secret",
            "metadata": {"name": "influxdb-auth", "namespace": namespace},
            "stringData": {"token": influx.token},
        }
    )
    path = f"/api/v1/namespaces/{namespace}/configmaps/observatory-shared-config"
    if kube.exists(path):
        local = {"influxdb_url": influx.url, "influxdb_org": influx.org, "influxdb_bucket": influx.bucket}
        kube.patch(path, {"data": local}, "merge")


def apply_examples(kube: Kube, examples: Path, namespace: str = "default") -> list[str]:
    """Apply every document of ``examples/*.yaml``; report (not raise) the ones refused."""
    docs: list[dict[str, Any]] = []
    for path in sorted(examples.glob("*.yaml")):
        docs += [d for d in yaml.safe_load_all(path.read_text()) if d]
    docs.sort(key=lambda d: _APPLY_ORDER.get(d.get("kind", ""), 9))
    applied = []
    for doc in docs:
        label = f"{doc['kind']}/{doc['metadata']['name']}"
        try:
            kube.apply(doc, namespace)
            applied.append(label)
        except (ApiError, KeyError) as exc:
            print(f"  ! {label} refused: {exc}", flush=True)
    return applied


def start_operator(kubeconfig: Path, logs: Path, influx: InfluxDB) -> Process | None:
    """Run the operator from the venv if it exists and keeps running; say why not otherwise."""
    exe = VENV_BIN / "observatory-operator"
    if not exe.exists():
        print("  operator: not installed in .venv (skipped)", flush=True)
        return None
    env = dict(os.environ)
    env.update(
        KUBECONFIG=str(kubeconfig),
        PYTHONUNBUFFERED="1",
        INFLUXDB_URL=influx.url,
        INFLUXDB_ORG=influx.org,
        INFLUXDB_BUCKET=influx.bucket,
    )
    argv = [str(exe)]
    helptext = subprocess.run([str(exe), "--help"], capture_output=True, text=True, check=False, env=env).stdout
    if "--all-namespaces" in helptext:
        argv.append("--all-namespaces")  # the examples live in `default`; watch everything anyway
    if "--liveness" in helptext:
        # On loopback and a free port: a wildcard :8080 would shadow every pod IP's :8080.
        argv += ["--liveness", f"http://127.0.0.1:{free_port()}/healthz"]
    if "--metrics" in helptext:
        argv += ["--metrics", f"127.0.0.1:{free_port()}"]  # the same for the operator's /metrics
    proc = Process("observatory-operator", argv, log=logs / "operator.log", env=env, cwd=REPO)
    proc.start()
    time.sleep(3)  # an unfinished operator exits at once; a real one keeps running
    if not proc.alive():
        last = proc.tail(1).strip() or f"exit code {proc.returncode()}"
        print(f"  operator: exited at start ({last}); see {proc.log}", flush=True)
        proc.stop()
        return None
    print(f"  operator: running (pid {proc.pid}), log {proc.log}", flush=True)
    return proc


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--state", type=Path, default=REPO / ".dev", help="state directory (recreated)")
    parser.add_argument("--nodes", type=int, default=3)
    parser.add_argument("--no-operator", action="store_true", help="do not start the operator")
    parser.add_argument("--exit-after-ready", action="store_true", help="tear down once ready (smoke test)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(name)s %(levelname)s %(message)s")

    state: Path = args.state.resolve()
    shutil.rmtree(state, ignore_errors=True)
    logs = state / "logs"
    logs.mkdir(parents=True)

    signal.signal(signal.SIGTERM, _raise_stop)
    signal.signal(signal.SIGINT, _raise_stop)
    started = time.monotonic()
    cp = ControlPlane(state / "control-plane", logs_dir=logs)
    influx = InfluxDB(state / "influxdb", logs_dir=logs, port=8086 if _port_free(8086) else free_port())
    sim: NodeSimulator | None = None
    operator: Process | None = None
    try:
        influx.launch()  # influxd starts while the control plane does
        cp.start()
        sim = NodeSimulator(cp.kube, logs_dir=logs, work_dir=state / "nodes", nodes=default_nodes(args.nodes))
        sim.start()
        influx.wait_ready()
        ready = time.monotonic() - started
        print(f"✓ control plane, {args.nodes} nodes and InfluxDB ready in {ready:.1f}s", flush=True)
        crds = install_crds(cp.kube, REPO / "crds")
        print(f"✓ CRDs installed: {', '.join(crds) or 'none in crds/'}", flush=True)
        applied = apply_examples(cp.kube, REPO / "examples")
        point_examples_at_local_influxdb(cp.kube, influx)
        print(f"✓ examples applied: {', '.join(applied) or 'none'}", flush=True)
        print(f"  (Secret influxdb-auth and the shared-config's InfluxDB point at {influx.url})", flush=True)
        if not args.no_operator:
            operator = start_operator(cp.kubeconfig, logs, influx)
        print(
            "\nThe environment is up. In another shell:\n\n"
            f"  export KUBECONFIG={cp.kubeconfig}\n"
            f"  export INFLUXDB_URL={influx.url} INFLUXDB_ORG={influx.org} "
            f"INFLUXDB_BUCKET={influx.bucket} INFLUXDB_TOKEN={influx.token}\n\n"
            f"kubectl: {cp.kubectl_path}\nlogs: {logs} (pods: {logs / 'pods'})\n\nCtrl-C to stop.",
            flush=True,
        )
        if args.exit_after_ready:
            return 0
        while True:
            time.sleep(1)
            if not cp.running():
                print("a control-plane process exited; see the logs above. Stopping.", file=sys.stderr)
                return 1
    except _Stop:
        print("\nstopping…", flush=True)
        return 0
    finally:
        # Ignore a second Ctrl-C while tearing down: a half teardown is what leaves processes behind.
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        if operator is not None:
            operator.stop()
        if sim is not None:
            sim.stop()
        cp.stop()
        influx.stop()
        print(f"stopped; logs kept in {logs}", flush=True)


def _port_free(port: int) -> bool:
    with contextlib.closing(socket.socket(socket.AF_INET, socket.SOCK_STREAM)) as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


if __name__ == "__main__":
    sys.exit(main())
