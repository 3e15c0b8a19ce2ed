"""The product as users meet it: ``helm install``, ``kubectl apply`` a collector, data in InfluxDB.

The operator runs *in the cluster*: on real nodes its pod (the chart's Deployment, with the
chart's args) is a container of the image built from ``docker/Dockerfile``, in a namespace that
enforces the `restricted` Pod Security level, authenticated by the bound token of the chart's
ServiceAccount and authorised by nothing but the chart's RBAC. The collector goes into a second
namespace (privileged, warn baseline), as the README tells users, exactly as
``examples/collector.yaml`` has it: its agents run as containers on the two untainted nodes and
write to the real InfluxDB. So these tests prove the chart renders and installs, its RBAC rules
are sufficient for the whole flow (Role path and ClusterRole path), and the data path works.
"""

from __future__ import annotations

import base64
import contextlib
import datetime as dt
import os
import re
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.env import images
from tests.env.controlplane import ControlPlane
from tests.env.fixtures import REAL, Nodes, require_real_nodes, wait_until
from tests.env.influx import InfluxDB
from tests.env.kube import AGENTS_NAMESPACE_LABELS, PSA_OPERATOR, ApiError, Obj
from tests.env.nodesim import REPO

pytestmark = pytest.mark.integration

CHART = REPO / "helm" / "happy-observatory"
EXAMPLE = REPO / "examples" / "collector.yaml"
RULE_EXAMPLE = REPO / "examples" / "cpu-rollup.yaml"
WAIT = 120.0
"""Per wait: generous for a loaded machine, bounded so a broken flow fails rather than hangs."""
INTERVAL, WINDOW, RULE_WINDOW = "1s", "2s", "4s"
"""Short but valid for the CRD (the window a whole multiple of the interval): data within seconds."""
MEASUREMENT = "system.cpu.usage"
CLUSTER = "e2e"


# --- helpers ------------------------------------------------------------------------------


class Helm:
    """The built helm binary against the bed, with its own cache/config/data dirs (not the user's)."""

    def __init__(self, binary: Path, kubeconfig: Path, home: Path) -> None:
        self.binary = binary
        self.env = {
            **os.environ,
            "KUBECONFIG": str(kubeconfig),
            "HELM_CACHE_HOME": str(home / "cache"),
            "HELM_CONFIG_HOME": str(home / "config"),
            "HELM_DATA_HOME": str(home / "data"),
        }

    def __call__(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        done = subprocess.run(
            [str(self.binary), *args], env=self.env, capture_output=True, text=True, timeout=WAIT, check=False
        )
        if check and done.returncode != 0:
            raise AssertionError(f"helm {' '.join(args)} exited {done.returncode}:\n{done.stdout}\n{done.stderr}")
        return done


@pytest.fixture
def helm_cli(helm: Path, control_plane: ControlPlane, bed_root: Path) -> Helm:
    return Helm(helm, control_plane.kubeconfig, bed_root / "helm-home")


def server_version(control_plane: ControlPlane) -> str:
    return str(control_plane.kube.get("/version")["gitVersion"])


def kubectl(control_plane: ControlPlane, *args: str) -> str:
    done = control_plane.kubectl(*args, check=False)
    if done.returncode != 0:
        raise AssertionError(f"kubectl {' '.join(args)} exited {done.returncode}:\n{done.stdout}\n{done.stderr}")
    return done.stdout


def table(text: str) -> dict[str, dict[str, str]]:
    """``kubectl get`` output → {NAME: {COLUMN: value}}, cut at the header's columns (an empty cell stays empty)."""
    lines = text.rstrip().splitlines()
    if not lines:
        return {}
    starts = [m.start() for m in re.finditer(r"\S+", lines[0])]
    header = lines[0].split()
    bounds = list(zip(starts, [*starts[1:], None], strict=True))
    rows = [{name: line[a:b].strip() for name, (a, b) in zip(header, bounds, strict=True)} for line in lines[1:]]
    return {row["NAME"]: row for row in rows}


def operator_pods(control_plane: ControlPlane, namespace: str, release: str) -> list[Obj]:
    selector = f"app.kubernetes.io/instance={release},app.kubernetes.io/component=operator"
    items, _ = control_plane.kube.list(f"/api/v1/namespaces/{namespace}/pods", labelSelector=selector)
    return items


def diagnosis(control_plane: ControlPlane, nodes: Nodes, namespaces: tuple[str, ...], release: str) -> str:
    """What a user would look at: the rules' and collectors' status, the processor's and operator's logs, events.

    The shortest and most telling parts come first: a CI log that keeps only the head still shows them.
    """
    parts = []
    for namespace in namespaces[1:]:
        for kind in ("aggregationrules", "observatorycollectors"):
            done = control_plane.kubectl("get", kind, "-n", namespace, "-o", "wide", check=False)
            parts.append(f"--- kubectl get {kind} -n {namespace}:\n{done.stdout}{done.stderr}")
        done = control_plane.kubectl("get", "aggregationrules", "-n", namespace, "-o", "jsonpath={.items[*].status}")
        parts.append(f"--- aggregationrules status:\n{done.stdout}{done.stderr}")
        processors, _ = control_plane.kube.list(
            f"/api/v1/namespaces/{namespace}/pods", labelSelector="app.kubernetes.io/component=processor"
        )
        for pod in agent_pods(control_plane, namespace):
            parts.append(partials_of(control_plane, pod))
        for pod in processors:
            parts.append(tail_of(nodes, namespace, pod["metadata"]["name"], "processor", 30))
        for pod in agent_pods(control_plane, namespace):
            parts.append(tail_of(nodes, namespace, pod["metadata"]["name"], "agent", 15))
    for pod in operator_pods(control_plane, namespaces[0], release):
        parts.append(tail_of(nodes, namespaces[0], pod["metadata"]["name"], "operator", 30))
    for namespace in namespaces:
        for args in (
            ("get", "pods,daemonsets,deployments,statefulsets,jobs", "-n", namespace, "-o", "wide"),
            ("get", "events", "-n", namespace, "--sort-by=.lastTimestamp"),
            ("get", "observatorycollectors", "-n", namespace, "-o", "yaml"),
        ):
            done = control_plane.kubectl(*args, check=False)
            parts.append(f"--- kubectl {' '.join(args)}:\n{done.stdout}{done.stderr}")
    return "\n".join(parts)


def partials_of(control_plane: ControlPlane, pod: Obj) -> str:
    """The agent's own account of its partials (``/status``), through the API server's pod proxy."""
    meta = pod["metadata"]
    ports = [p["containerPort"] for c in pod["spec"]["containers"] for p in c.get("ports") or []]
    where = f"/api/v1/namespaces/{meta['namespace']}/pods/{meta['name']}:{ports[0] if ports else 9464}/proxy/status"
    try:
        answer = control_plane.kube.get(where).get("partials")
    except (ApiError, OSError, ValueError) as exc:
        answer = f"(no /status: {exc})"
    return f"--- agent {meta['name']} on {pod['spec'].get('nodeName')}: /status partials: {answer}"


def tail_of(nodes: Nodes, namespace: str, pod: str, container: str, lines: int) -> str:
    try:
        log = nodes.logs(namespace, pod, container)
    except ApiError as exc:
        log = f"(no log: {exc})"
    tail = "\n".join(log.splitlines()[-lines:])
    return f"--- {container} pod {pod} log (last {lines} lines):\n{tail}"


@contextlib.contextmanager
def explained(control_plane: ControlPlane, nodes: Nodes, namespaces: tuple[str, ...], release: str) -> Iterator[None]:
    try:
        yield
    except Exception as exc:
        raise AssertionError(f"{exc}\n\n{diagnosis(control_plane, nodes, namespaces, release)}") from exc


def deployment_available(control_plane: ControlPlane, namespace: str, name: str, replicas: int) -> bool:
    deploy = control_plane.kube.get(f"/apis/apps/v1/namespaces/{namespace}/deployments/{name}")
    status = deploy.get("status") or {}
    available = any(c["type"] == "Available" and c["status"] == "True" for c in status.get("conditions") or [])
    return available and status.get("readyReplicas") == replicas


def collector_manifest(bucket: str, directory: Path, run: str) -> Path:
    """``examples/collector.yaml`` as users apply it, with a short interval and window so data comes within seconds."""
    doc: dict[str, Any] = yaml.safe_load(EXAMPLE.read_text())
    spec = doc["spec"]
    # The bed's nodes and bucket are shared by the session: other tests' agents (still stopping
    # in namespaces being deleted) write as node-1..3 too. A tag of this run tells ours apart.
    spec["tags"] = {**(spec.get("tags") or {}), "e2e_run": run}
    spec["interval"], spec["window"] = INTERVAL, WINDOW
    spec["influxdb"]["bucket"] = bucket
    path = directory / "collector.yaml"
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return path


def rule_manifest(directory: Path, token_secret: str | None) -> Path:
    """``examples/cpu-rollup.yaml`` with a rule window of two agent windows, so roll-ups come within seconds.

    ``token_secret``: the processor's own token Secret, as the chart's NOTES say when the agents' token is write-only.
    """
    doc: dict[str, Any] = yaml.safe_load(RULE_EXAMPLE.read_text())
    doc["spec"]["window"], doc["spec"]["allowedLateness"] = RULE_WINDOW, "2s"
    if token_secret:
        doc["spec"]["output"]["tokenSecretRef"] = {"name": token_secret, "key": "token"}
    path = directory / "cpu-rollup.yaml"
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return path


def rollups_since(influxdb: InfluxDB, since: dt.datetime, measurement: str, namespace: str) -> list[dict[str, Any]]:
    """The cpu-rollup rule's points (window end, ``nodes``, ``mean``) written for windows ending after ``since``.

    Only the rule in ``namespace``: earlier tests' rules of the same name (their namespaces still
    being deleted) write the same measurement, under their own namespace tag.
    """
    flux = f"""
        from(bucket: "{influxdb.bucket}")
          |> range(start: {since.strftime("%Y-%m-%dT%H:%M:%SZ")})
          |> filter(fn: (r) => r._measurement == "{measurement}" and r.rule == "cpu-rollup")
          |> filter(fn: (r) => r.namespace == "{namespace}")
          |> filter(fn: (r) => r.cluster == "{CLUSTER}")
          |> filter(fn: (r) => r._field == "nodes" or r._field == "mean")
          |> pivot(rowKey: ["_time"], columnKey: ["_field"], valueColumn: "_value")
    """
    with influxdb.client() as client:
        return [dict(r.values) for t in client.query_api().query(flux) for r in t.records]


def nodes_with_points(influxdb: InfluxDB, since: dt.datetime, run: str) -> dict[str, set[str]]:
    """Node → cluster tags of this run's ``system.cpu.usage`` points since ``since``."""
    flux = f"""
        from(bucket: "{influxdb.bucket}")
          |> range(start: {since.strftime("%Y-%m-%dT%H:%M:%SZ")})
          |> filter(fn: (r) => r._measurement == "{MEASUREMENT}" and r._field == "mean" and r.e2e_run == "{run}")
          |> group(columns: ["node", "cluster"])
          |> count()
    """
    found: dict[str, set[str]] = {}
    with influxdb.client() as client:
        for tbl in client.query_api().query(flux):
            for record in tbl.records:
                if record.get_value():
                    found.setdefault(str(record.values.get("node")), set()).add(str(record.values.get("cluster")))
    return found


def owned_children(control_plane: ControlPlane, namespace: str, uid: str) -> list[str]:
    kube = control_plane.kube
    children = []
    for kind, path in (
        ("DaemonSet", f"/apis/apps/v1/namespaces/{namespace}/daemonsets"),
        ("ConfigMap", f"/api/v1/namespaces/{namespace}/configmaps"),
        ("Service", f"/api/v1/namespaces/{namespace}/services"),
    ):
        items, _ = kube.list(path)
        for obj in items:
            if any(ref.get("uid") == uid for ref in obj["metadata"].get("ownerReferences") or []):
                children.append(f"{kind}/{obj['metadata']['name']}")
    return children


# --- the flow -----------------------------------------------------------------------------


def agent_pods(control_plane: ControlPlane, namespace: str) -> list[Obj]:
    items, _ = control_plane.kube.list(
        f"/api/v1/namespaces/{namespace}/pods", labelSelector="app.kubernetes.io/component=agent"
    )
    return items


def check_agents_are_hardened_containers(control_plane: ControlPlane, nodes: Nodes, namespace: str) -> None:
    """What `kubectl exec` into an agent shows: uid 65532 and a root filesystem that refuses writes."""
    pods = [p for p in agent_pods(control_plane, namespace) if (p.get("status") or {}).get("phase") == "Running"]
    assert {p["spec"]["nodeName"] for p in pods} == set(nodes.untainted), "agents on the untainted nodes only"
    for pod in pods:
        name = pod["metadata"]["name"]
        (cs,) = pod["status"]["containerStatuses"]
        assert cs["containerID"].startswith("containerd://"), cs
        assert cs["imageID"], cs
        ident = nodes.exec(namespace, name, "agent", "id", check=True).stdout
        assert "uid=65532" in ident, ident
        write = nodes.exec(namespace, name, "agent", "sh", "-c", "touch /probe 2>&1; echo rc=$?").stdout
        assert "Read-only file system" in write, write
        assert "rc=1" in write, write


def install_collect_uninstall(
    control_plane: ControlPlane,
    nodes: Nodes,
    influxdb: InfluxDB,
    namespace: str,
    agents_namespace: str,
    helm_cli: Helm,
    bed_root: Path,
    *,
    watch_namespaces: list[str],
    replicas: int = 1,
    bundled_influxdb: bool = False,
) -> None:
    """``namespace`` holds the operator (Pod Security: restricted); ``agents_namespace`` the collector and agents."""
    release = f"obs-{namespace.rsplit('-', 1)[-1]}"  # cluster-scoped RBAC names differ per test
    work = bed_root / "e2e" / namespace
    work.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    scope_namespaces = (namespace, agents_namespace)

    def step(what: str) -> None:
        print(f"{time.monotonic() - started:6.1f}s {what}")  # shown with -s, and with a failure's output

    scope = ["--set", f"operator.watchNamespaces={{{','.join(watch_namespaces)}}}"] if watch_namespaces else []
    # With every namespace watched, the chart renders the shared-config only where it is told to.
    scope += [] if watch_namespaces else ["--set", f"sharedConfig.namespaces={{{agents_namespace}}}"]
    influx = [
        "--set-string", f"sharedConfig.data.influxdb_url={influxdb.url}",
        "--set-string", f"sharedConfig.data.influxdb_org={influxdb.org}",
        "--set-string", f"sharedConfig.data.influxdb_bucket={influxdb.bucket}",
    ]  # fmt: skip
    token = influxdb.token
    if bundled_influxdb:
        token = f"e2e-admin-token-{release}"
        influx = [
            "--set", "influxdb.enabled=true",
            "--set-string", f"influxdb.image={images.influxdb_ref()}",
            "--set", "influxdb.persistence.enabled=false",
            "--set-string", f"influxdb.adminPassword=pw-{release}",
            "--set-string", f"influxdb.adminToken={token}",
            "--set-string", "sharedConfig.data.influxdb_org=happy",
            "--set-string", "sharedConfig.data.influxdb_bucket=observatory",
        ]  # fmt: skip
    try:
        with explained(control_plane, nodes, scope_namespaces, release):
            if not bundled_influxdb:  # the chart's setup Job makes the agents' write-only token
                kubectl(
                    control_plane, "create", "secret", "generic", "influxdb-auth", "-n", agents_namespace,
                    f"--from-literal=token={token}",
                )  # fmt: skip
            helm_cli(
                "install", release, str(CHART), "--namespace", namespace, *scope, *influx,
                "--set-string", f"sharedConfig.data.cluster_name={CLUSTER}",
                "--set", f"operator.replicas={replicas}",
                # Agents' buffers (hostPaths) inside the bed, not in this machine's /var/lib/observatory.
                "--set-string", f"operator.agentBufferRoot={work / 'agent-buffers'}",
                *(["--wait", "--timeout", f"{int(WAIT)}s"] if bundled_influxdb else []),
            )  # fmt: skip
            step("helm install")
            deployment = f"{release}-operator"
            wait_until(
                lambda: deployment_available(control_plane, namespace, deployment, replicas),
                timeout=WAIT,
                what=f"Deployment {deployment} Available with {replicas} ready",
            )
            pods = operator_pods(control_plane, namespace, release)
            assert len(pods) == replicas
            for pod in pods:
                assert pod["spec"]["serviceAccountName"] == deployment
                (cs,) = pod["status"]["containerStatuses"]
                assert cs["ready"], cs
                if nodes.mode == REAL:
                    # Admitted under `restricted` and running as the image's non-root user.
                    assert cs["containerID"].startswith("containerd://"), cs
                    ident = nodes.exec(namespace, pod["metadata"]["name"], "operator", "id", check=True).stdout
                    assert "uid=65532" in ident, ident
            args = pods[0]["spec"]["containers"][0]["args"]
            expected = [f"--namespace={ns}" for ns in watch_namespaces] or ["--all-namespaces"]
            assert [a for a in args if a.startswith(("--namespace", "--all-namespaces"))] == expected, args
            # More than one replica: leader election, the Lease names the one that writes; one replica
            # is replaced rather than overlapped on upgrade.
            deploy = control_plane.kube.get(f"/apis/apps/v1/namespaces/{namespace}/deployments/{deployment}")
            strategy = deploy["spec"]["strategy"]["type"]
            assert (f"--leader-election={release}-operator" in args, strategy) == (
                (True, "RollingUpdate") if replicas > 1 else (False, "Recreate")
            ), args
            if replicas > 1:
                lease = f"/apis/coordination.k8s.io/v1/namespaces/{namespace}/leases/{release}-operator"

                def holder() -> str | None:
                    spec: dict[str, Any] = control_plane.kube.get(lease).get("spec") or {}
                    return spec.get("holderIdentity") or None

                leader = wait_until(holder, timeout=WAIT, what=f"a holder of Lease {release}-operator")
                assert leader in {p["metadata"]["name"] for p in pods}, leader
            step(f"operator Available ({replicas} replica{'s' if replicas > 1 else ''})")

            target = influxdb
            if bundled_influxdb:
                target = bundled(control_plane, namespace, release, token)
                secret = control_plane.kube.get(f"/api/v1/namespaces/{agents_namespace}/secrets/influxdb-auth")
                agents_token = base64.b64decode(secret["data"]["token"]).decode()
                assert agents_token != token, "agents never get the admin token"
                step(f"bundled InfluxDB set up by the chart's Job, reached at {target.url}; agents' token made")

            applied = dt.datetime.now(dt.UTC).replace(microsecond=0)
            manifest = collector_manifest(target.bucket, work, release)
            kubectl(control_plane, "apply", "-n", agents_namespace, "-f", str(manifest))
            # As in examples/collector.yaml: the tainted gpu node is not tolerated, the other two run agents.
            wanted = f"{len(nodes.untainted)}/{len(nodes.untainted)}"

            def user_view() -> dict[str, str] | None:
                out = kubectl(control_plane, "get", "observatorycollectors", "-n", agents_namespace)
                row = table(out).get("nodes")
                if row and row.get("READY") == wanted and row.get("REPORTING") == wanted:
                    return row
                return None

            row = wait_until(
                user_view, timeout=WAIT, what=f"kubectl get observatorycollectors: READY and REPORTING {wanted}"
            )
            assert row["LAST-WRITE"] not in ("", "<unknown>", "<none>"), row
            assert row["PHASE"] == "Ready", row
            step(f"READY {row['READY']} REPORTING {row['REPORTING']} LAST-WRITE {row['LAST-WRITE']}")
            if nodes.mode == REAL:
                check_agents_are_hardened_containers(control_plane, nodes, agents_namespace)
                step("kubectl exec: agents run as uid 65532 on a read-only root filesystem")

            def every_node() -> dict[str, set[str]] | None:
                found = nodes_with_points(target, applied, release)
                return found if set(found) >= set(nodes.untainted) else None

            found = wait_until(
                every_node,
                timeout=WAIT,
                what=f"{MEASUREMENT} points from every untainted node in InfluxDB",
            )
            assert set(found) == set(nodes.untainted), f"the tainted node has no agent: {found}"
            for node in nodes.untainted:
                assert found[node] == {CLUSTER}, f"{node}: cluster tag from the shared-config, got {found[node]}"
            step("points from every untainted node in InfluxDB")

            if nodes.mode == REAL:  # agents reach the processor by its Service's DNS name
                # The chart's write-only agent token cannot read a processor's watermark: its processor token can.
                processor_token = "influxdb-processor" if bundled_influxdb else None
                rollup_flow(control_plane, nodes, target, agents_namespace, work, step, processor_token)

            # helm uninstall takes the operator away (its pod too); the collector and its agents stay.
            collector = control_plane.kube.get(
                f"/apis/observatory.happypatterns.org/v1alpha1/namespaces/{agents_namespace}/observatorycollectors/nodes"
            )
            children = owned_children(control_plane, agents_namespace, collector["metadata"]["uid"])
            assert {c.split("/")[0] for c in children} == {"DaemonSet", "ConfigMap", "Service"}, children
            helm_cli("uninstall", release, "--namespace", namespace, "--wait", "--timeout", f"{int(WAIT)}s")
            wait_until(
                lambda: (
                    not operator_pods(control_plane, namespace, release)
                    and not control_plane.kube.exists(f"/apis/apps/v1/namespaces/{namespace}/deployments/{deployment}")
                ),
                timeout=WAIT,
                what="the operator's Deployment and pod gone after helm uninstall",
            )
            if bundled_influxdb:
                wait_until(
                    lambda: (
                        not control_plane.kube.exists(f"/api/v1/namespaces/{agents_namespace}/secrets/influxdb-auth")
                    ),
                    timeout=WAIT,
                    what="the agents' token Secret gone with the chart's Role",
                )
            step("helm uninstall")

            # No finalizer holds a collector while no operator runs: kubectl delete returns, and the
            # garbage collector removes every child through the owner references.
            kubectl(
                control_plane, "delete", "observatorycollector", "nodes", "-n", agents_namespace, "--wait",
                "--timeout=60s",
            )  # fmt: skip
            wait_until(
                lambda: not owned_children(control_plane, agents_namespace, collector["metadata"]["uid"]),
                timeout=WAIT,
                what=f"the collector's children {children} garbage-collected",
            )
            wait_until(
                lambda: not agent_pods(control_plane, agents_namespace),
                timeout=WAIT,
                what="the agent pods gone",
            )
            step("collector deleted, children garbage-collected")
    finally:
        # A failed test must not leave cluster-scoped RBAC behind for the next one.
        with contextlib.suppress(subprocess.TimeoutExpired, ApiError):
            helm_cli("uninstall", release, "--namespace", namespace, "--ignore-not-found", check=False)


def rollup_flow(
    control_plane: ControlPlane,
    nodes: Nodes,
    target: InfluxDB,
    agents_namespace: str,
    work: Path,
    step: Callable[[str], None],
    token_secret: str | None,
) -> None:
    """``examples/cpu-rollup.yaml`` on the running collector: a processor, partials from every agent, roll-ups."""
    rule_applied = dt.datetime.now(dt.UTC).replace(microsecond=0)
    kubectl(control_plane, "apply", "-n", agents_namespace, "-f", str(rule_manifest(work, token_secret)))
    rule_doc = yaml.safe_load(RULE_EXAMPLE.read_text())

    def rule_view() -> dict[str, str] | None:
        out = kubectl(control_plane, "get", "aggregationrules", "-n", agents_namespace)
        row = table(out).get("cpu-rollup")
        if row and (row["READY"], row["SERIES"], row["PHASE"]) == ("1/1", "1", "Ready") and row["LAST-WINDOW"]:
            return row
        return None

    row = wait_until(rule_view, timeout=WAIT, what="kubectl get aggregationrules: READY 1/1, LAST-WINDOW, SERIES 1")
    assert row["WINDOW"] == RULE_WINDOW, row

    seen: list[dict[str, Any]] = []

    def from_every_agent() -> list[dict[str, Any]] | None:
        seen[:] = rollups_since(target, rule_applied, rule_doc["spec"]["output"]["measurement"], agents_namespace)
        full = [p for p in seen if p.get("nodes") == len(nodes.untainted)]
        return full or None

    try:
        (point, *_) = wait_until(
            from_every_agent, timeout=WAIT, what="a cluster roll-up merging every untainted node's partial"
        )
    except TimeoutError as exc:
        windows = [(str(p.get("_time")), p.get("nodes")) for p in seen]
        raise TimeoutError(f"{exc}; windows written (end, nodes): {windows}") from exc
    assert 0.0 <= point["mean"] <= 100.0, point
    step(f"kubectl get aggregationrules: READY 1/1 LAST-WINDOW {row['LAST-WINDOW']}; roll-ups in InfluxDB")


def bundled(control_plane: ControlPlane, namespace: str, release: str, token: str) -> InfluxDB:
    """The chart's InfluxDB, as the test reads it: through its Service's cluster IP (kube-proxy routes the host too)."""
    service = control_plane.kube.get(f"/api/v1/namespaces/{namespace}/services/{release}-influxdb")
    db = InfluxDB(port=8086, host=service["spec"]["clusterIP"], org="happy", bucket="observatory", token=token)
    wait_until(lambda: db.call("GET", "/health").get("status") == "pass", timeout=WAIT, what="the bundled InfluxDB")
    assert not db.call("GET", "/api/v2/setup").get("allowed"), "the chart's Job set it up"
    return db


# --- tests ---------------------------------------------------------------------------------


@pytest.fixture
def agents_namespace(namespaces: Any) -> str:
    """Where the collector and its agents go: `privileged` (hostPath /proc, /sys, /), warning at baseline."""
    return str(namespaces("agents", AGENTS_NAMESPACE_LABELS))


@pytest.fixture
def operator_namespace(namespace: str, control_plane: ControlPlane) -> str:
    """The release namespace, enforcing `restricted`: the chart's operator (and its InfluxDB) must pass it."""
    control_plane.kube.patch(f"/api/v1/namespaces/{namespace}", {"metadata": {"labels": PSA_OPERATOR}}, "merge")
    return namespace


def test_chart_lints_for_the_bed_kubernetes(control_plane: ControlPlane, helm_cli: Helm) -> None:
    version = server_version(control_plane)
    for values in ([], ["--set", "operator.watchNamespaces={a,b}"], ["--set", "operator.replicas=2"]):
        done = helm_cli("lint", str(CHART), "--strict", "--kube-version", version, *values)
        assert "0 chart(s) failed" in done.stdout, done.stdout


@pytest.mark.parametrize(
    ("watch", "replicas"),
    [
        pytest.param("agents", 1, id="namespace-role"),
        pytest.param("all", 1, id="all-namespaces"),
        # Two replicas: the Lease (and the chart's leader-election Role) keeps one writer, and the flow still works.
        pytest.param("agents", 2, id="standby-replicas"),
    ],
)
def test_install_collect_uninstall(
    control_plane: ControlPlane,
    nodes: Nodes,
    influxdb: InfluxDB,
    operator_namespace: str,
    agents_namespace: str,
    helm_cli: Helm,
    bed_root: Path,
    watch: str,
    replicas: int,
) -> None:
    install_collect_uninstall(
        control_plane, nodes, influxdb, operator_namespace, agents_namespace, helm_cli, bed_root,
        watch_namespaces=[agents_namespace] if watch == "agents" else [], replicas=replicas,
    )  # fmt: skip


def test_install_with_the_bundled_influxdb_as_a_pod(
    control_plane: ControlPlane,
    nodes: Nodes,
    influxdb: InfluxDB,
    operator_namespace: str,
    agents_namespace: str,
    helm_cli: Helm,
    bed_root: Path,
) -> None:
    """influxdb.enabled: the chart's InfluxDB (the bed's influxd in an image) set up by the chart's Job;
    agents reach it by its Service name through cluster DNS."""
    require_real_nodes(nodes.mode, "the bundled InfluxDB is a pod of its own image")
    install_collect_uninstall(
        control_plane, nodes, influxdb, operator_namespace, agents_namespace, helm_cli, bed_root,
        watch_namespaces=[agents_namespace], bundled_influxdb=True,
    )  # fmt: skip
