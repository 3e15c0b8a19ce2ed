"""A rewritten path is a host path: an emptyDir at ``/tmp`` must not swallow the bed's own (``/tmp/...``) volumes."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from tests.env.controlplane import ControlPlane
from tests.env.fixtures import Nodes, wait_until
from tests.env.nodesim import PROJECT_IMAGE

pytestmark = pytest.mark.integration

READER = textwrap.dedent(
    """
    import pathlib, sys, time
    # argv[1] was rewritten to the materialised volume, which lives under the bed (in /tmp here).
    print("arg " + pathlib.Path(sys.argv[1]).read_text(), flush=True)
    # The container path still maps: through the configMap mount, and /tmp through the emptyDir.
    print("const " + open("/etc/demo/greeting").read(), flush=True)
    pathlib.Path("/tmp/scratch").write_text("mine")
    print("tmp " + open("/tmp/scratch").read(), flush=True)
    time.sleep(60)
    """
)


def test_rewritten_paths_are_not_mapped_again(
    control_plane: ControlPlane, nodes: Nodes, namespace: str, bed_root: Path
) -> None:
    assert str(bed_root).startswith("/tmp/"), "pytest's basetemp is what puts the bed under /tmp"
    kube = control_plane.kube
    kube.create(
        f"/api/v1/namespaces/{namespace}/configmaps", {"metadata": {"name": "demo"}, "data": {"greeting": "hello"}}
    )
    kube.create(
        f"/api/v1/namespaces/{namespace}/pods",
        {
            "metadata": {"name": "reader"},
            "spec": {
                "automountServiceAccountToken": False,
                "terminationGracePeriodSeconds": 1,
                "containers": [
                    {
                        "name": "reader",
                        "image": f"{PROJECT_IMAGE}:test",
                        "command": ["python", "-c", READER, "/etc/demo/greeting"],
                        "volumeMounts": [
                            {"name": "demo", "mountPath": "/etc/demo"},
                            {"name": "tmp", "mountPath": "/tmp"},
                        ],
                    }
                ],
                "volumes": [{"name": "demo", "configMap": {"name": "demo"}}, {"name": "tmp", "emptyDir": {}}],
            },
        },
    )
    log = nodes.pod_log(namespace, "reader", "reader")

    def lines() -> list[str]:
        return log.read_text().splitlines() if log.exists() else []

    wait_until(lambda: "tmp mine" in lines(), timeout=60, what=f"the reader's output (log {log})")
    assert {"arg hello", "const hello", "tmp mine"} <= set(lines()), lines()
    worker = nodes.simulator.worker(namespace, "reader")
    assert worker is not None
    assert (worker.dir / "volumes" / "tmp" / "scratch").read_text() == "mine"
