"""`make dev` brought up with agents running on real nodes, then Ctrl-C: nothing the bed made is left on the host.

Runs before the session's own bed (marker ``whole_bed``): one real bed holds the machine at a time.
The host is compared with a snapshot taken before: processes and mounts under the bed's directories
(pod sandboxes, shims, pause and agent containers), network namespaces, veths and bridges, shim
sockets, iptables and ip6tables rules and chains, the bed's address, forwarding and mount propagation.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.env import realnodes
from tests.env.fixtures import REAL, require_real_nodes
from tests.env.kube import Kube
from tests.env.nodesim import REPO
from tests.env.procs import wait_for

pytestmark = [pytest.mark.integration, pytest.mark.whole_bed]


def test_ctrl_c_of_make_dev_leaves_nothing_behind(tmp_path: Path) -> None:
    why = realnodes.unavailable_reason()
    require_real_nodes("simulated" if why else REAL, f"make dev's real bed; here: {why}")
    state = tmp_path / "dev"
    specs = realnodes.default_specs()
    # A bed that died without teardown (a killed session) left host state behind: clear it first, as
    # every bed does, so the snapshot below is of the host itself.
    cleaner = realnodes.HostNetwork()
    cleaner.acquire()
    try:
        cleaner.clear_stale([realnodes.node_cache(s.name) for s in specs])
    finally:
        cleaner.release()
    # Our own audit, independent of the one make dev prints: the same host checks, from before it started.
    watcher = realnodes.HostNetwork(state_file=tmp_path / "unused.json")
    watcher.before = realnodes.HostSnapshot.take()
    watcher.roots = [state, realnodes.RUN_DIR / "nodes", *(realnodes.node_cache(s.name) for s in specs)]
    log = tmp_path / "dev.log"
    with log.open("w") as out:
        dev = subprocess.Popen(
            [sys.executable, "-m", "tests.env.dev", "--state", str(state), "--nodes-mode", "real"],
            cwd=REPO,
            stdout=out,
            stderr=subprocess.STDOUT,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
    try:
        wait_for(lambda: "The environment is up" in log.read_text(), timeout=300, what=f"make dev up ({log})")
        kube = Kube.from_kubeconfig(state / "control-plane" / "kubeconfig")

        def agents_running() -> bool:
            pods, _ = kube.list("/api/v1/namespaces/monitoring/pods", labelSelector="app.kubernetes.io/component=agent")
            running = [p for p in pods if (p.get("status") or {}).get("phase") == "Running"]
            return len(running) == 2

        # The example collector's agents (and the operator, from the chart) run as containers now.
        wait_for(agents_running, timeout=120, what="the example collector's agents running")

        def rule_ready() -> bool:
            group = "/apis/observatory.happypatterns.org/v1alpha1"
            rule = kube.get(f"{group}/namespaces/monitoring/aggregationrules/cpu-rollup")
            return (rule.get("status") or {}).get("ready") == "1/1"

        # The example rule's processor too (its first window is written a minute later, too long to wait here).
        wait_for(rule_ready, timeout=120, what="examples/cpu-rollup.yaml: its processor READY 1/1")
        assert realnodes.processes_under([realnodes.node_cache(specs[0].name)]), "containers run under the bed"
        dev.send_signal(signal.SIGINT)
        assert dev.wait(timeout=180) == 0, log.read_text()[-4000:]
    finally:
        if dev.poll() is None:  # a failed check above: still tear the bed down properly
            dev.send_signal(signal.SIGINT)
            try:
                dev.wait(timeout=180)
            except subprocess.TimeoutExpired:
                dev.kill()
                dev.wait()
    output = log.read_text()
    assert "nodes: real" in output
    assert "stopped, nothing left behind" in output, output[-4000:]
    time.sleep(1)  # a lazily unmounted filesystem or an exiting process gets its moment
    assert watcher.audit() == []
