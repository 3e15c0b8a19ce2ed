"""`make dev`: a local cluster with the product installed as users install it, until Ctrl-C.

As root (the normal case here) the nodes are real: three kubelets with containerd running the
image built from ``docker/Dockerfile`` (one node tainted ``dedicated=gpu:NoSchedule``), with
kube-proxy and cluster DNS; otherwise they are simulated and the project's pods run as local
processes. The first line says which. Then:

* namespace ``observatory`` (Pod Security: restricted): ``helm install`` of the chart, so the
  operator runs in the cluster under the chart's RBAC (``--operator local`` runs it as a
  process here instead, for quick iteration on its code);
* namespace ``monitoring`` (Pod Security: privileged, warn baseline — agents mount the host's
  /proc, /sys and /): ``examples/*.yaml`` applied as they are, with the ``influxdb-auth`` Secret;
* InfluxDB 2.7 on this host, behind a Service ``influxdb`` in ``monitoring`` so the examples'
  ``http://influxdb.monitoring.svc:8086`` works unchanged from the pods.

State lives in ``.dev/`` (recreated on every run); logs stay in ``.dev/logs`` after exit. On
Ctrl-C or SIGTERM every pod sandbox, process, mount, bridge and iptables rule the bed made is
removed, and the host is audited: the last line says "nothing left behind" or names what is.
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
import threading
import time
from pathlib import Path
from types import FrameType
from typing import Any

import yaml

from tests.env import build, realnodes
from tests.env.controlplane import ControlPlane
from tests.env.influx import InfluxDB
from tests.env.kube import AGENTS_NAMESPACE_LABELS, PSA_OPERATOR, ApiError, Kube
from tests.env.nodesim import REPO, VENV_BIN, NodeSimulator, default_nodes
from tests.env.procs import Process, free_port, wait_for

OPERATOR_NAMESPACE = "observatory"
AGENTS_NAMESPACE = "monitoring"
RELEASE = "happy-observatory"
CHART = REPO / "helm" / "happy-observatory"
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


def ensure_namespace(kube: Kube, name: str, labels: dict[str, str]) -> None:
    kube.apply({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name, "labels": labels}})
    wait_for(
        lambda: kube.exists(f"/api/v1/namespaces/{name}/serviceaccounts/default"),
        timeout=30,
        what=f"the default ServiceAccount in {name}",
    )


def publish_influxdb(kube: Kube, influx: InfluxDB, namespace: str) -> None:
    """A Service ``influxdb`` in ``namespace`` whose endpoint is the InfluxDB on this host (as for any external DB)."""
    kube.apply(
        {
            "apiVersion": "v1",
            "kind": "Service",
            "metadata": {"name": "influxdb", "namespace": namespace},
            "spec": {"ports": [{"name": "http", "port": 8086, "targetPort": influx.port, "protocol": "TCP"}]},
        }
    )
    kube.apply(
        {
            "apiVersion": "discovery.k8s.io/v1",
            "kind": "EndpointSlice",
            "metadata": {
                "name": "influxdb-host",
                "namespace": namespace,
                "labels": {
                    "kubernetes.io/service-name": "influxdb",
                    "endpointslice.kubernetes.io/managed-by": "happy-observatory-testenv",
                },
            },
            "addressType": "IPv4",
            "endpoints": [{"addresses": [influx.host], "conditions": {"ready": True}}],
            "ports": [{"name": "http", "port": influx.port, "protocol": "TCP"}],
        }
    )


def apply_examples(kube: Kube, examples: Path, namespace: str) -> list[str]:
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


def helm_install(cp: ControlPlane, state: Path, *, cluster: str) -> None:
    """The chart as users install it; the shared-config and token come from the examples and the bed."""
    env = {
        **os.environ,
        "KUBECONFIG": str(cp.kubeconfig),
        "HELM_CACHE_HOME": str(state / "helm" / "cache"),
        "HELM_CONFIG_HOME": str(state / "helm" / "config"),
        "HELM_DATA_HOME": str(state / "helm" / "data"),
    }
    argv = [
        str(build.binary("helm")),
        "install",
        RELEASE,
        str(CHART),
        "--namespace",
        OPERATOR_NAMESPACE,
        # examples/shared-config.yaml is applied into the agents' namespace instead.
        "--set",
        "sharedConfig.create=false",
        "--set-string",
        f"sharedConfig.data.cluster_name={cluster}",
        # Agents' buffers (hostPath) inside the state directory, not this machine's /var/lib/observatory.
        "--set-string",
        f"operator.agentBufferRoot={state / 'agent-buffers'}",
        "--wait",
        "--timeout",
        "180s",
    ]
    done = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=240, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"helm install failed:\n{done.stdout}{done.stderr}")


def start_local_operator(kubeconfig: Path, logs: Path) -> Process | None:
    """The operator as a process of this checkout (``--operator local``)."""
    exe = VENV_BIN / "observatory-operator"
    if not exe.exists():
        print("  operator: not installed in .venv (skipped)", flush=True)
        return None
    env = {**os.environ, "KUBECONFIG": str(kubeconfig), "PYTHONUNBUFFERED": "1"}
    # Liveness and metrics on loopback and free ports: a wildcard :8080 would clash with whatever else listens.
    argv = [str(exe), "--all-namespaces", "--liveness", f"http://127.0.0.1:{free_port()}/healthz"]
    argv += ["--agent-buffer-root", str(logs.parent / "agent-buffers")]
    argv += ["--metrics", f"127.0.0.1:{free_port()}"]
    proc = Process("observatory-operator", argv, log=logs / "operator.log", env=env, cwd=REPO)
    proc.start()
    time.sleep(3)  # an operator that cannot start exits at once
    if not proc.alive():
        print(f"  operator: exited at start ({proc.tail(1).strip()}); see {proc.log}", flush=True)
        proc.stop()
        return None
    print(f"  operator: running locally (pid {proc.pid}), log {proc.log}", flush=True)
    return proc


class Bed:
    """The pieces of one `make dev` run, stopped in reverse order whatever happened."""

    def __init__(self, state: Path, mode: str, node_count: int) -> None:
        self.state = state
        self.logs = state / "logs"
        self.mode = mode
        self.node_count = node_count
        self.host: realnodes.HostNetwork | None = None
        self.cp: ControlPlane | None = None
        self.influx: InfluxDB | None = None
        self.real: realnodes.RealNodes | None = None
        self.sim: NodeSimulator | None = None
        self.operator: Process | None = None

    def start(self) -> None:
        address = "127.0.0.1"
        if self.mode == "real":
            specs = realnodes.default_specs(self.node_count)
            self.host = realnodes.open_host(self.state, specs)
            address = realnodes.BED_IP
            self.real = realnodes.RealNodes(
                ControlPlane(self.state / "control-plane", logs_dir=self.logs, address=address),
                self.host,
                self.state / "nodes",
                self.logs,
                specs=specs,
            )
            self.cp = self.real.control_plane
        else:
            self.cp = ControlPlane(self.state / "control-plane", logs_dir=self.logs)
        port = 8086 if _port_free(address, 8086) else free_port(address)
        self.influx = InfluxDB(self.state / "influxdb", logs_dir=self.logs, port=port, host=address)
        self.influx.launch()  # influxd starts while the rest does
        if self.real is not None:
            self.real.start_runtimes()
            loading = _Background(self.real.load_images)  # images load while the control plane starts
            self.cp.start()
            loading.join()
            self.real.start()
        else:
            self.cp.start()
            self.sim = NodeSimulator(
                self.cp.kube, logs_dir=self.logs, work_dir=self.state / "nodes", nodes=default_nodes(self.node_count)
            )
            self.sim.start()
        self.influx.wait_ready()

    def stop(self) -> list[str]:
        """Everything down; returns what the host audit found left behind (real nodes only)."""
        problems: list[str] = []
        if self.operator is not None:
            self.operator.stop()
        if self.real is not None:
            problems += self.real.stop()
        if self.sim is not None:
            self.sim.stop()
        if self.cp is not None:
            self.cp.stop()
        if self.influx is not None:
            self.influx.stop()
        if self.host is not None:
            problems += realnodes.close_host(self.host)
        return problems


class _Background(threading.Thread):
    """A call on another thread whose exception is raised again by ``join()``."""

    def __init__(self, target: Any) -> None:
        super().__init__(daemon=True)
        self._call = target
        self._error: BaseException | None = None
        self.start()

    def run(self) -> None:
        try:
            self._call()
        except BaseException as exc:
            self._error = exc

    def join(self, timeout: float | None = None) -> None:
        super().join(timeout)
        if self._error is not None:
            raise self._error


def install_product(bed: Bed, mode: str, operator: str) -> None:
    """CRDs, the two namespaces, the token Secret, the examples and the operator (chart or local)."""
    assert bed.cp is not None
    assert bed.influx is not None
    kube, influx = bed.cp.kube, bed.influx
    crds = install_crds(kube, REPO / "crds")
    print(f"✓ CRDs installed: {', '.join(crds) or 'none in crds/'}", flush=True)
    ensure_namespace(kube, OPERATOR_NAMESPACE, PSA_OPERATOR)
    ensure_namespace(kube, AGENTS_NAMESPACE, AGENTS_NAMESPACE_LABELS)
    print(f"✓ namespaces {OPERATOR_NAMESPACE} (restricted) and {AGENTS_NAMESPACE} (privileged, warn baseline)")
    kube.apply(
        {
            "apiVersion": "v1",
            "kind": "Secret",
            "metadata": {"name": "influxdb-auth", "namespace": AGENTS_NAMESPACE},
            "stringData": {"token": influx.token},
        }
    )
    applied = apply_examples(kube, REPO / "examples", AGENTS_NAMESPACE)
    shared = f"/api/v1/namespaces/{AGENTS_NAMESPACE}/configmaps/observatory-shared-config"
    target = {"influxdb_org": influx.org, "influxdb_bucket": influx.bucket}
    if mode == "real":
        publish_influxdb(kube, influx, AGENTS_NAMESPACE)
    else:
        # Simulated pods are processes on this host: they reach InfluxDB directly, not through DNS.
        target["influxdb_url"] = influx.url
    if kube.exists(shared):
        kube.patch(shared, {"data": target}, "merge")
    print(f"✓ examples applied in {AGENTS_NAMESPACE}: {', '.join(applied) or 'none'}", flush=True)
    if operator == "chart":
        helm_install(bed.cp, bed.state, cluster="dev")
        print(f"✓ helm install {RELEASE} -n {OPERATOR_NAMESPACE}: the operator runs in the cluster", flush=True)
    elif operator == "local":
        bed.operator = start_local_operator(bed.cp.kubeconfig, bed.logs)


def choose_mode(requested: str) -> tuple[str, str]:
    """(mode, why) for ``--nodes-mode auto|real|simulated``."""
    why = realnodes.unavailable_reason()
    if requested == "real" and why:
        raise SystemExit(f"real nodes cannot run here: {why}")
    if requested == "simulated":
        return "simulated", "asked for"
    if why:
        return "simulated", why
    return "real", "kubelet + containerd, the image built from docker/Dockerfile"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--state", type=Path, default=REPO / ".dev", help="state directory (recreated)")
    parser.add_argument("--nodes", type=int, default=3)
    parser.add_argument(
        "--nodes-mode",
        choices=("auto", "real", "simulated"),
        default=os.environ.get("HAPPY_OBSERVATORY_NODES", "auto") or "auto",
        help="real kubelets (root) or simulated ones; auto: real when this machine can run them",
    )
    parser.add_argument(
        "--operator",
        choices=("chart", "local", "none"),
        default="chart",
        help="chart: helm install (operator in the cluster); local: a process of this checkout; none",
    )
    parser.add_argument("--exit-after-ready", action="store_true", help="tear down once ready (smoke test)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(name)s %(levelname)s %(message)s")

    mode, why = choose_mode(args.nodes_mode)
    print(f"nodes: {mode} ({why})", flush=True)
    state: Path = args.state.resolve()
    shutil.rmtree(state, ignore_errors=True)
    (state / "logs").mkdir(parents=True)

    signal.signal(signal.SIGTERM, _raise_stop)
    signal.signal(signal.SIGINT, _raise_stop)
    started = time.monotonic()
    bed = Bed(state, mode, args.nodes)
    code = 0
    try:
        bed.start()
        assert bed.cp is not None
        assert bed.influx is not None
        influx = bed.influx
        print(f"✓ control plane, {args.nodes} {mode} nodes and InfluxDB ready in {time.monotonic() - started:.1f}s")
        install_product(bed, mode, args.operator)
        print(
            "\nThe environment is up. In another shell:\n\n"
            f"  export KUBECONFIG={bed.cp.kubeconfig}\n"
            f"  export INFLUXDB_URL={influx.url} INFLUXDB_ORG={influx.org} "
            f"INFLUXDB_BUCKET={influx.bucket} INFLUXDB_TOKEN={influx.token}\n\n"
            f"  {bed.cp.kubectl_path} get observatory -A\n\n"
            f"logs: {bed.logs}\n\nCtrl-C to stop.",
            flush=True,
        )
        if args.exit_after_ready:
            return 0
        while True:
            time.sleep(1)
            if not bed.cp.running():
                print("a control-plane process exited; see the logs above. Stopping.", file=sys.stderr)
                return 1
    except _Stop:
        print("\nstopping…", flush=True)
        return 0
    finally:
        # Ignore a second Ctrl-C while tearing down: a half teardown is what leaves things behind.
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        left = bed.stop()
        if left:
            print("left behind:\n  " + "\n  ".join(left), file=sys.stderr, flush=True)
            code = 1
        else:
            print(f"stopped, nothing left behind; logs kept in {bed.logs}", flush=True)
        if code:
            sys.exit(code)


def _port_free(host: str, port: int) -> bool:
    with contextlib.closing(socket.socket(socket.AF_INET, socket.SOCK_STREAM)) as sock:
        try:
            sock.bind((host, port))
        except OSError:
            return False
    return True


if __name__ == "__main__":
    sys.exit(main())
