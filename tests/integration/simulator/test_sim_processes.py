"""Project-image pods really run as local processes: env, volumes, readiness, updates, crashes, deletion."""

from __future__ import annotations

import json
import os
import textwrap
import urllib.request
from pathlib import Path

import pytest

from tests.env.controlplane import ControlPlane
from tests.env.fixtures import Nodes, wait_until
from tests.env.kube import Obj
from tests.env.nodesim import PROJECT_IMAGE

pytestmark = pytest.mark.integration

IMAGE = f"{PROJECT_IMAGE}:test"

# Served from a ConfigMap, run by the venv's python: prints its resolved env, then serves the
# mounted settings file on the pod IP (the readiness probe hits it).
SERVER = textwrap.dedent(
    """
    import http.server, json, os, pathlib, signal, sys
    signal.signal(signal.SIGTERM, lambda *_: (print("got SIGTERM", flush=True), sys.exit(0)))
    keys = ["POD_NAME", "POD_NAMESPACE", "NODE_NAME", "POD_IP", "HOST_IP", "GREETING", "MODE", "CONFIG"]
    print("env " + json.dumps({k: os.environ.get(k) for k in keys}), flush=True)
    print("argv " + json.dumps(sys.argv), flush=True)
    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            # /const reads the container path itself, as a path written in a config file would be.
            path = "/etc/demo/settings.json" if self.path == "/const" else os.environ["CONFIG"]
            body = pathlib.Path(path).read_bytes()
            self.send_response(200)
            self.end_headers()
            self.wfile.write(body)
        def log_message(self, *args):
            pass
    http.server.HTTPServer((os.environ["POD_IP"], 18080), Handler).serve_forever()
    """
)


def deployment(name: str, containers: list[Obj], volumes: list[Obj] | None = None) -> Obj:
    labels = {"app": name}
    return {
        "metadata": {"name": name},
        "spec": {
            "replicas": 1,
            "selector": {"matchLabels": labels},
            "template": {
                "metadata": {"labels": labels},
                "spec": {
                    "containers": containers,
                    "volumes": volumes or [],
                    "terminationGracePeriodSeconds": 5,
                },
            },
        },
    }


def only_pod(control_plane: ControlPlane, namespace: str, app: str) -> Obj:
    pods, _ = control_plane.kube.list(f"/api/v1/namespaces/{namespace}/pods", labelSelector=f"app={app}")
    live = [p for p in pods if not p["metadata"].get("deletionTimestamp")]
    assert len(live) == 1, [p["metadata"]["name"] for p in pods]
    return live[0]


def get(url: str) -> bytes:
    with urllib.request.urlopen(url, timeout=2) as resp:
        return bytes(resp.read())


def test_project_pod_runs_with_env_volumes_readiness_and_config_updates(
    control_plane: ControlPlane, nodes: Nodes, namespace: str
) -> None:
    kube = control_plane.kube
    ns_path = f"/api/v1/namespaces/{namespace}"
    kube.create(
        f"{ns_path}/configmaps",
        {"metadata": {"name": "demo"}, "data": {"server.py": SERVER, "settings.json": '{"v": 1}'}},
    )
    kube.create(f"{ns_path}/secrets", {"metadata": {"name": "demo"}, "stringData": {"greeting": "hello"}})
    container = {
        "name": "server",
        "image": IMAGE,
        "command": ["python"],
        "args": ["/etc/demo/server.py", "--config=/etc/demo/settings.json", "$(MODE)"],
        "env": [
            {"name": "POD_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
            {"name": "POD_NAMESPACE", "valueFrom": {"fieldRef": {"fieldPath": "metadata.namespace"}}},
            {"name": "NODE_NAME", "valueFrom": {"fieldRef": {"fieldPath": "spec.nodeName"}}},
            {"name": "POD_IP", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}},
            {"name": "HOST_IP", "valueFrom": {"fieldRef": {"fieldPath": "status.hostIP"}}},
            {"name": "GREETING", "valueFrom": {"secretKeyRef": {"name": "demo", "key": "greeting"}}},
            {"name": "MODE", "value": "serve"},
            {"name": "CONFIG", "value": "/etc/demo/settings.json"},
        ],
        "ports": [{"name": "http", "containerPort": 18080}],
        "readinessProbe": {"httpGet": {"path": "/", "port": "http"}, "periodSeconds": 1},
        "volumeMounts": [{"name": "demo", "mountPath": "/etc/demo", "readOnly": True}],
    }
    kube.create(
        f"/apis/apps/v1/namespaces/{namespace}/deployments",
        deployment("demo", [container], [{"name": "demo", "configMap": {"name": "demo"}}]),
    )
    dep_path = f"/apis/apps/v1/namespaces/{namespace}/deployments/demo"
    wait_until(lambda: kube.get(dep_path)["status"].get("readyReplicas") == 1, what="the demo pod Ready")

    pod = only_pod(control_plane, namespace, "demo")
    name, node, pod_ip = pod["metadata"]["name"], pod["spec"]["nodeName"], pod["status"]["podIP"]
    host_ip = next(n.ip for n in nodes.all if n.name == node)
    log = nodes.pod_log(namespace, name, "server")
    lines = wait_until(lambda: log.exists() and log.read_text().count("\n") >= 2 and log.read_text().splitlines())
    env = json.loads(next(x for x in lines if x.startswith("env "))[4:])
    assert env == {
        "POD_NAME": name,
        "POD_NAMESPACE": namespace,
        "NODE_NAME": node,
        "POD_IP": pod_ip,
        "HOST_IP": host_ip,
        "GREETING": "hello",
        "MODE": "serve",
        "CONFIG": env["CONFIG"],
    }
    # The mount-path rewrite: container paths in args and env point into the materialised volume.
    worker = nodes.simulator.worker(namespace, name)
    assert worker is not None
    volume = worker.dir / "volumes" / "demo"
    assert env["CONFIG"] == f"{volume}/settings.json"
    argv = json.loads(next(x for x in lines if x.startswith("argv "))[5:])
    assert argv == [f"{volume}/server.py", f"--config={volume}/settings.json", "serve"]
    assert os.readlink(volume / "settings.json") == "..data/settings.json"
    assert json.loads(get(f"http://{pod_ip}:18080/")) == {"v": 1}
    assert json.loads(get(f"http://{pod_ip}:18080/const")) == {"v": 1}
    # kubectl logs reaches the simulated kubelet through the API server.
    logs = control_plane.kubectl("logs", "-n", namespace, name, "-c", "server", "--tail=2").stdout
    assert logs.splitlines()[0].startswith("env ")

    # A ConfigMap change reaches the running process through the ..data swap, without a restart.
    before = os.readlink(volume / "..data")
    kube.patch(f"{ns_path}/configmaps/demo", {"data": {"settings.json": '{"v": 2}'}})
    wait_until(lambda: json.loads(get(f"http://{pod_ip}:18080/")) == {"v": 2}, what="the updated settings served")
    assert os.readlink(volume / "..data") != before
    pid = worker.pid("server")
    assert pid is not None
    assert only_pod(control_plane, namespace, "demo")["status"]["containerStatuses"][0]["restartCount"] == 0

    # Deleting the pod stops its process (SIGTERM first) and completes the deletion like a kubelet.
    kube.delete(f"{ns_path}/pods/{name}")
    wait_until(lambda: not kube.exists(f"{ns_path}/pods/{name}"), what="the pod deleted")
    wait_until(lambda: not os.path.exists(f"/proc/{pid}"), what="the process gone", timeout=10)
    assert "got SIGTERM" in log.read_text()
    wait_until(lambda: kube.get(dep_path)["status"].get("readyReplicas") == 1, what="the replacement Ready")


def test_project_commands_run_and_crashes_count_restarts(
    control_plane: ControlPlane, nodes: Nodes, namespace: str
) -> None:
    kube = control_plane.kube
    containers = [
        # One of the project's own console scripts, resolved from .venv/bin. It exits (with its
        # help, or an error while unwritten) and is restarted: either way it ran as a process.
        {"name": "agent", "image": IMAGE, "command": ["observatory-agent"], "args": ["--help"]},
        {
            "name": "crasher",
            "image": IMAGE,
            "command": ["python", "-c", "import sys; print('crashing on purpose', flush=True); sys.exit(3)"],
        },
        # A command that does not exist fails to start, as under a real runtime, and is retried.
        {"name": "missing", "image": IMAGE, "command": ["no-such-observatory-command"]},
    ]
    kube.create(f"/apis/apps/v1/namespaces/{namespace}/deployments", deployment("crashy", containers))

    def statuses() -> dict[str, Obj] | None:
        pods, _ = kube.list(f"/api/v1/namespaces/{namespace}/pods", labelSelector="app=crashy")
        if len(pods) != 1:
            return None
        got = {c["name"]: c for c in pods[0]["status"].get("containerStatuses") or []}
        return got if all(c.get("restartCount", 0) >= 2 for c in got.values()) and len(got) == 3 else None

    got = wait_until(statuses, timeout=60, what="every container restarted twice")
    crasher = got["crasher"]
    assert crasher["lastState"]["terminated"]["exitCode"] == 3
    assert crasher["ready"] is False or "running" in crasher["state"]
    pod = only_pod(control_plane, namespace, "crashy")
    name = pod["metadata"]["name"]
    crash_log = nodes.pod_log(namespace, name, "crasher").read_text()
    assert crash_log.count("crashing on purpose") >= 3
    previous = control_plane.kubectl("logs", "-n", namespace, name, "-c", "crasher", "--previous").stdout
    assert previous == "crashing on purpose\n"
    agent_log = nodes.pod_log(namespace, name, "agent").read_text()
    assert "observatory" in agent_log.lower()
    assert "lastState" in got["agent"]
    assert got["missing"]["lastState"]["terminated"]["reason"] == "StartError"
    assert "executable file not found" in got["missing"]["lastState"]["terminated"]["message"]


def test_init_containers_run_first_and_readiness_gates_ready(
    control_plane: ControlPlane, nodes: Nodes, namespace: str
) -> None:
    kube = control_plane.kube
    ns_path = f"/api/v1/namespaces/{namespace}"
    pod = {
        "metadata": {"name": "gated"},
        "spec": {
            "initContainers": [
                {
                    "name": "prepare",
                    "image": IMAGE,
                    "command": ["python", "-c", "import pathlib; pathlib.Path('/work/ready').write_text('yes')"],
                    "volumeMounts": [{"name": "work", "mountPath": "/work"}],
                }
            ],
            "containers": [
                {
                    "name": "main",
                    "image": IMAGE,
                    "command": [
                        "python",
                        "-c",
                        "import pathlib, time; print(pathlib.Path('/work/ready').read_text()); time.sleep(600)",
                    ],
                    "volumeMounts": [{"name": "work", "mountPath": "/work"}],
                    # Nothing listens on this port: the container runs but never becomes Ready.
                    "readinessProbe": {"tcpSocket": {"port": 9}, "periodSeconds": 1},
                }
            ],
            "volumes": [{"name": "work", "emptyDir": {}}],
            "terminationGracePeriodSeconds": 2,
        },
    }
    kube.create(f"{ns_path}/pods", pod)
    log = nodes.pod_log(namespace, "gated", "main")
    wait_until(lambda: log.exists() and "yes" in log.read_text(), what="main saw the init container's file")
    wait_until(lambda: kube.get(f"{ns_path}/pods/gated")["status"]["phase"] == "Running", what="Running")
    status = kube.get(f"{ns_path}/pods/gated")["status"]
    (init,) = status["initContainerStatuses"]
    assert init["state"]["terminated"]["exitCode"] == 0
    conds = {c["type"]: c["status"] for c in status["conditions"]}
    assert conds["Initialized"] == "True"
    assert conds["Ready"] == "False"
    assert status["containerStatuses"][0]["ready"] is False
    assert "running" in status["containerStatuses"][0]["state"]


def test_a_created_host_directory_is_the_nodes_own_and_subpath_expr_names_the_node(
    control_plane: ControlPlane, nodes: Nodes, namespace: str
) -> None:
    """What the agents' buffer needs: a hostPath per node (simulated nodes share one disk), a subPathExpr,
    and a root init container (a chown) that runs when the simulator is root and is moot when it is not."""
    assert nodes.simulator is not None
    host_path = f"/var/lib/observatory-sim-test/{namespace}"
    node_env = [{"name": "NODE_NAME", "valueFrom": {"fieldRef": {"fieldPath": "spec.nodeName"}}}]
    mount = [{"name": "disk", "mountPath": "/disk", "subPathExpr": "$(NODE_NAME)"}]
    write = "import os, pathlib, time; pathlib.Path('/disk/hello').write_text(os.environ['NODE_NAME']); time.sleep(600)"
    pod = {
        "metadata": {"name": "writer"},
        "spec": {
            "nodeName": nodes.untainted[0],
            "initContainers": [
                {
                    "name": "owner",
                    "image": IMAGE,
                    "command": ["chown", f"{os.geteuid()}:{os.getegid()}", "/disk"],
                    "env": node_env,
                    "securityContext": {"runAsUser": 0},
                    "volumeMounts": mount,
                }
            ],
            "containers": [
                {
                    "name": "main",
                    "image": IMAGE,
                    "command": ["python", "-c", write],
                    "env": node_env,
                    "volumeMounts": mount,
                }
            ],
            "volumes": [{"name": "disk", "hostPath": {"path": host_path, "type": "DirectoryOrCreate"}}],
            "terminationGracePeriodSeconds": 2,
        },
    }
    control_plane.kube.create(f"/api/v1/namespaces/{namespace}/pods", pod)
    node = nodes.untainted[0]
    written = nodes.simulator.work_dir / "hosts" / node / host_path.lstrip("/") / node / "hello"
    wait_until(lambda: written.exists() and written.read_text() == node, what="the file in the node's own directory")
    assert not Path(host_path).exists()  # the machine's /var/lib is not the simulated node's disk
    (init,) = control_plane.kube.get(f"/api/v1/namespaces/{namespace}/pods/writer")["status"]["initContainerStatuses"]
    assert init["state"]["terminated"]["exitCode"] == 0


def test_pods_binding_the_same_wildcard_port_each_get_their_own_ip(
    control_plane: ControlPlane, nodes: Nodes, namespace: str
) -> None:
    kube = control_plane.kube
    serve = (
        "import http.server, os\n"
        "class H(http.server.BaseHTTPRequestHandler):\n"
        "    def do_GET(self):\n"
        "        self.send_response(200); self.end_headers(); self.wfile.write(os.environ['HOSTNAME'].encode())\n"
        "http.server.HTTPServer(('0.0.0.0', 18080), H).serve_forever()\n"
    )
    container = {
        "name": "web",
        "image": IMAGE,
        "command": ["python", "-c", serve],
        "readinessProbe": {"httpGet": {"path": "/", "port": 18080}, "periodSeconds": 1},
    }
    body = deployment("wild", [container])
    body["spec"]["replicas"] = 3
    kube.create(f"/apis/apps/v1/namespaces/{namespace}/deployments", body)
    dep = f"/apis/apps/v1/namespaces/{namespace}/deployments/wild"
    wait_until(lambda: kube.get(dep)["status"].get("readyReplicas") == 3, what="3 replicas on :18080 Ready")
    pods, _ = kube.list(f"/api/v1/namespaces/{namespace}/pods", labelSelector="app=wild")
    for pod in pods:
        assert get(f"http://{pod['status']['podIP']}:18080/").decode() == pod["metadata"]["name"]
        assert pod["status"]["containerStatuses"][0]["restartCount"] == 0
