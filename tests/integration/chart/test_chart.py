"""The chart as a platform engineer meets it, rendered by the pinned Helm (v4): lint, schema, provisioning, docs."""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.env import build

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[3]
CHART = ROOT / "helm" / "happy-observatory"
SCHEMA = json.loads((CHART / "values.schema.json").read_text())
VALUES = yaml.safe_load((CHART / "values.yaml").read_text())


def helm_run(helm: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(helm), *args], capture_output=True, text=True, check=False, timeout=120)


def render(helm: Path, *sets: str, namespace: str = "observatory") -> list[dict[str, Any]]:
    args = ["template", "obs", str(CHART), "-n", namespace]
    for s in sets:
        args += ["--set", s]
    result = helm_run(helm, *args)
    assert result.returncode == 0, result.stderr
    return [d for d in yaml.safe_load_all(result.stdout) if d]


def find(docs: list[dict[str, Any]], kind: str, name: str | None = None) -> list[dict[str, Any]]:
    return [d for d in docs if d["kind"] == kind and (name is None or d["metadata"]["name"] == name)]


def operator_deployment(docs: list[dict[str, Any]]) -> dict[str, Any]:
    (deployment,) = find(docs, "Deployment", "obs-operator")
    return deployment


FULL = (
    "operator.replicas=2",
    "operator.watchNamespaces={team-a,team-b}",
    "grafana.datasource.enabled=true",
    "influxdb.enabled=true",
    "influxdb.adminPassword=a-password",
    "influxdb.adminToken=a-token",
    "serviceMonitor.labels.release=kube-prometheus-stack",
)


@pytest.mark.parametrize("sets", [(), FULL], ids=["defaults", "everything-on"])
def test_helm_lint_strict_is_clean(helm: Path, sets: tuple[str, ...]) -> None:
    args = ["lint", "--strict", str(CHART)]
    for s in sets:
        args += ["--set", s]
    result = helm_run(helm, *args)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "[WARNING]" not in result.stdout
    assert "[ERROR]" not in result.stdout
    assert "1 chart(s) linted, 0 chart(s) failed" in result.stdout


@pytest.mark.parametrize(
    ("setting", "named"),
    [
        ("operator.replicas=0", "/operator/replicas"),
        ("operator.replica=2", "'replica' not allowed"),
        ("image.pullPolicy=Sometimes", "/image/pullPolicy"),
        ("operator.watchNamespaces={Team_A}", "/operator/watchNamespaces/0"),
        (
            "sharedConfig.data.observatory_collection_interval=ten seconds",
            "/sharedConfig/data/observatory_collection_interval",
        ),
        ("sharedConfig.data.influxdb_urll=http://x", "'influxdb_urll' not allowed"),
        ("grafana.dashboards.enabled=yes-please", "/grafana/dashboards/enabled"),
        ("grafana.datasource.uid=not a uid", "/grafana/datasource/uid"),
        ("grafana.datasource.url=influxdb:8086", "/grafana/datasource/url"),
        ("operator.imagePullSecrets[0].nam=regcred", "/operator/imagePullSecrets/0"),
        ("operator.tolerations[0].effect=Sometimes", "/operator/tolerations/0/effect"),
        ("influxdb.adminPassword=short", "/influxdb/adminPassword"),
        ("operator.agentBufferRoot=var/lib/observatory", "/operator/agentBufferRoot"),
    ],
)
def test_a_bad_value_is_refused_naming_it(helm: Path, setting: str, named: str) -> None:
    for command in (["template", "obs"], ["lint", "--strict"]):
        result = helm_run(helm, *command, str(CHART), "--set", setting)
        assert result.returncode != 0, f"helm {command[0]} accepted {setting}"
        assert named in result.stdout + result.stderr, result.stdout + result.stderr


def _leaves(value: Any, path: tuple[str, ...] = ()) -> list[tuple[str, ...]]:
    if isinstance(value, dict) and value and path not in {("operator", "resources")}:
        return [leaf for key, child in value.items() for leaf in _leaves(child, (*path, key))]
    return [path]


def test_every_value_is_typed_and_described_in_the_schema() -> None:
    assert SCHEMA["additionalProperties"] is False
    leaves = _leaves(VALUES)
    assert len(leaves) >= 40
    for leaf in leaves:
        node = SCHEMA
        for depth, key in enumerate(leaf):
            assert "type" in node, f"{'.'.join(leaf[:depth])} has no type"
            assert node.get("description"), f"{'.'.join(leaf[:depth]) or 'values'} has no description"
            if "properties" not in node and isinstance(node.get("additionalProperties"), dict):
                break  # a free-form map (labels, nodeSelector): its entries are typed by additionalProperties
            node = node["properties"][key] if "properties" in node and key in node["properties"] else None
            assert node is not None, f"{'.'.join(leaf)} is not in values.schema.json"
        assert node.get("type"), f"{'.'.join(leaf)} has no type"
        assert node.get("description"), f"{'.'.join(leaf)} has no description"


def test_one_replica_updates_by_recreate_and_has_no_disruption_budget(helm: Path) -> None:
    docs = render(helm)
    assert operator_deployment(docs)["spec"]["strategy"] == {"type": "Recreate"}
    assert not find(docs, "PodDisruptionBudget")


def test_more_replicas_roll_and_keep_one_up_through_drains(helm: Path) -> None:
    docs = render(helm, "operator.replicas=3")
    deployment = operator_deployment(docs)
    assert deployment["spec"]["strategy"]["type"] == "RollingUpdate"
    (pdb,) = find(docs, "PodDisruptionBudget")
    assert pdb["spec"]["minAvailable"] == 1
    pod_labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert pdb["spec"]["selector"]["matchLabels"].items() <= pod_labels.items()


def test_operator_scheduling_values_reach_the_pod(helm: Path) -> None:
    docs = render(
        helm,
        "operator.nodeSelector.pool=system",
        "operator.tolerations[0].key=dedicated",
        "operator.tolerations[0].operator=Exists",
        "operator.tolerations[0].effect=NoSchedule",
        "operator.affinity.nodeAffinity.requiredDuringSchedulingIgnoredDuringExecution.nodeSelectorTerms[0]"
        ".matchExpressions[0].key=zone",
        "operator.affinity.nodeAffinity.requiredDuringSchedulingIgnoredDuringExecution.nodeSelectorTerms[0]"
        ".matchExpressions[0].operator=Exists",
        "operator.priorityClassName=system-cluster-critical",
        "operator.imagePullSecrets[0].name=regcred",
    )
    pod = operator_deployment(docs)["spec"]["template"]["spec"]
    assert pod["nodeSelector"] == {"pool": "system"}
    assert pod["tolerations"] == [{"key": "dedicated", "operator": "Exists", "effect": "NoSchedule"}]
    term = pod["affinity"]["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]["nodeSelectorTerms"][0]
    assert term["matchExpressions"] == [{"key": "zone", "operator": "Exists"}]
    assert pod["priorityClassName"] == "system-cluster-critical"
    assert pod["imagePullSecrets"] == [{"name": "regcred"}]
    bare = operator_deployment(render(helm))["spec"]["template"]["spec"]
    assert not {"nodeSelector", "tolerations", "affinity", "priorityClassName", "imagePullSecrets"} & set(bare)


def test_dashboards_are_configmaps_for_the_grafana_sidecar(helm: Path) -> None:
    docs = render(helm)
    maps = [d for d in find(docs, "ConfigMap") if d["metadata"]["labels"].get("grafana_dashboard") == "1"]
    committed = {p.name: json.loads(p.read_text()) for p in (ROOT / "dashboards").glob("*.json")}
    assert len(maps) == len(committed) == 3
    for cm in maps:
        assert cm["metadata"]["annotations"] == {"grafana_folder": "Observatory"}
        assert cm["metadata"]["namespace"] == "observatory"
        ((name, text),) = cm["data"].items()
        assert json.loads(text) == committed[name], f"{name} in the chart differs from dashboards/{name}"


def test_dashboard_label_folder_and_namespace_are_configurable(helm: Path) -> None:
    docs = render(
        helm,
        "grafana.dashboards.labels.grafana_dashboard=null",
        "grafana.dashboards.labels.team-dashboards=observatory",
        "grafana.dashboards.folderAnnotation=k8s-sidecar-target-directory",
        "grafana.dashboards.folder=/tmp/dashboards/Platform",
        "grafana.dashboards.namespace=monitoring",
    )
    maps = [d for d in find(docs, "ConfigMap") if d["metadata"]["labels"].get("team-dashboards") == "observatory"]
    assert len(maps) == 3
    for cm in maps:
        assert "grafana_dashboard" not in cm["metadata"]["labels"]
        assert cm["metadata"]["annotations"] == {"k8s-sidecar-target-directory": "/tmp/dashboards/Platform"}
        assert cm["metadata"]["namespace"] == "monitoring"
    assert not [
        d
        for d in find(render(helm, "grafana.dashboards.enabled=false"), "ConfigMap")
        if "grafana_dashboard" in d["metadata"]["labels"]
    ]


def test_datasource_is_flux_with_org_bucket_and_the_token_from_grafanas_environment(helm: Path) -> None:
    docs = render(
        helm, "grafana.datasource.enabled=true", "sharedConfig.data.influxdb_url=http://influxdb.monitoring:8086"
    )
    (cm,) = [d for d in find(docs, "ConfigMap") if d["metadata"]["labels"].get("grafana_datasource") == "1"]
    ((_, text),) = cm["data"].items()
    provisioning = yaml.safe_load(text)
    (ds,) = provisioning["datasources"]
    assert provisioning["apiVersion"] == 1
    assert ds["type"] == "influxdb"
    assert ds["url"] == "http://influxdb.monitoring:8086"
    assert ds["jsonData"] == {
        "version": "Flux",
        "organization": "happy",
        "defaultBucket": "observatory",
        "timeInterval": "1m",
    }
    assert ds["secureJsonData"] == {"token": "$__env{INFLUXDB_TOKEN}"}
    assert "a-token" not in json.dumps(find(docs, "ConfigMap"))
    bundled = render(helm, "grafana.datasource.enabled=true", *FULL[3:6])
    (cm,) = [d for d in find(bundled, "ConfigMap") if d["metadata"]["labels"].get("grafana_datasource") == "1"]
    assert "http://obs-influxdb.observatory.svc:8086" in next(iter(cm["data"].values()))


def test_datasource_without_any_influxdb_url_is_refused_naming_the_value(helm: Path) -> None:
    result = helm_run(helm, "template", "obs", str(CHART), "--set", "grafana.datasource.enabled=true")
    assert result.returncode != 0
    assert "grafana.datasource.url is required" in result.stderr


def test_grafana_is_refused_the_agents_write_only_token(helm: Path) -> None:
    args = ["template", "obs", str(CHART), "--set", "grafana.datasource.enabled=true"]
    for s in FULL[3:6]:
        args += ["--set", s]
    result = helm_run(helm, *args, "--set", "grafana.datasource.tokenSecret.name=influxdb-auth")
    assert result.returncode != 0
    assert 'grafana.datasource.tokenSecret.name is "influxdb-auth", the agents\' write-only token' in result.stderr
    assert helm_run(helm, *args).returncode == 0  # the default, influxdb-read, is another Secret


def test_shared_config_is_rendered_where_collectors_can_mount_it(helm: Path) -> None:
    docs = render(helm, "operator.watchNamespaces={team-a,team-b}", "sharedConfig.namespaces={team-c,team-a}")
    namespaces = sorted(d["metadata"]["namespace"] for d in find(docs, "ConfigMap", "observatory-shared-config"))
    assert namespaces == ["observatory", "team-a", "team-b", "team-c"]
    everywhere = render(helm)
    assert [d["metadata"]["namespace"] for d in find(everywhere, "ConfigMap", "observatory-shared-config")] == [
        "observatory"
    ]


def test_service_monitor_labels_are_passed_to_the_operator(helm: Path) -> None:
    args = operator_deployment(render(helm, "serviceMonitor.labels.release=kube-prometheus-stack"))["spec"]["template"][
        "spec"
    ]["containers"][0]["args"]
    assert "--servicemonitor-label=release=kube-prometheus-stack" in args


def test_the_setup_job_writes_the_agents_token_secret_in_every_collector_namespace_and_nothing_else(
    helm: Path,
) -> None:
    bundled = (*FULL[3:6], "sharedConfig.namespaces={team-c}")
    docs = render(helm, *bundled, "operator.watchNamespaces={team-a,team-b}")
    roles = find(docs, "Role", "obs-influxdb-agent-token")
    assert sorted(r["metadata"]["namespace"] for r in roles) == ["observatory", "team-a", "team-b", "team-c"]
    for role in roles:
        assert role["rules"] == [
            {"apiGroups": [""], "resources": ["secrets"], "resourceNames": ["influxdb-auth", "influxdb-processor"],
             "verbs": ["create", "get", "patch"]},
            {"apiGroups": ["rbac.authorization.k8s.io"], "resources": ["roles"],
             "resourceNames": ["obs-influxdb-agent-token"], "verbs": ["get"]},
        ]  # fmt: skip
    bindings = find(docs, "RoleBinding", "obs-influxdb-agent-token")
    assert len(bindings) == 4
    account = {"kind": "ServiceAccount", "name": "obs-influxdb-setup", "namespace": "observatory"}
    for binding in bindings:
        assert binding["subjects"] == [account]
    (job,) = find(docs, "Job", "obs-influxdb-setup")
    pod = job["spec"]["template"]["spec"]
    assert (pod["serviceAccountName"], pod["automountServiceAccountToken"]) == ("obs-influxdb-setup", True)
    env = {v["name"]: v.get("value") for v in pod["containers"][0]["env"]}
    assert env["INFLUXDB_AGENT_TOKEN_NAMESPACES"] == "observatory,team-a,team-b,team-c"
    assert env["INFLUXDB_AGENT_TOKEN_SECRET"] == "influxdb-auth"
    assert env["INFLUXDB_PROCESSOR_TOKEN_SECRET"] == "influxdb-processor"
    # Without the processors' token the Role names the agents' Secret only, and the Job makes none.
    agents_only = render(helm, *bundled, "influxdb.processorToken.enabled=false")
    for role in find(agents_only, "Role", "obs-influxdb-agent-token"):
        assert role["rules"][0]["resourceNames"] == ["influxdb-auth"]
    (job,) = find(agents_only, "Job", "obs-influxdb-setup")
    assert "INFLUXDB_PROCESSOR_TOKEN_SECRET" not in {
        v["name"] for v in job["spec"]["template"]["spec"]["containers"][0]["env"]
    }
    # Without the agent token the Job talks to InfluxDB only: no account token, no Role.
    off = render(helm, *bundled, "influxdb.agentToken.enabled=false")
    (job,) = find(off, "Job", "obs-influxdb-setup")
    pod = job["spec"]["template"]["spec"]
    assert pod["automountServiceAccountToken"] is False
    assert "serviceAccountName" not in pod
    assert not find(off, "Role", "obs-influxdb-agent-token")
    assert not [v for v in pod["containers"][0]["env"] if v["name"].endswith(("_TOKEN_SECRET", "_TOKEN_NAMESPACES"))]
    # And no InfluxDB of the chart's own: the token is the user's to make.
    assert not find(render(helm), "ServiceAccount", "obs-influxdb-setup")


def test_the_agents_buffer_root_on_the_nodes_is_passed_to_the_operator(helm: Path) -> None:
    def args(*sets: str) -> list[str]:
        pod = operator_deployment(render(helm, *sets))["spec"]["template"]["spec"]
        return list(pod["containers"][0]["args"])

    assert "--agent-buffer-root=/var/lib/observatory" in args()
    assert "--agent-buffer-root=/data/observatory" in args("operator.agentBufferRoot=/data/observatory")


def test_install_notes_tell_a_new_user_the_next_commands(helm: Path) -> None:
    result = helm_run(
        helm,
        "install",
        "obs",
        str(CHART),
        "-n",
        "observatory",
        "--dry-run=client",
        "--set",
        "grafana.datasource.enabled=true",
        "--set",
        "sharedConfig.data.influxdb_url=http://influxdb.monitoring:8086",
    )
    assert result.returncode == 0, result.stderr
    notes = result.stdout.split("NOTES:", 1)[1]
    for expected in (
        "kubectl -n observatory rollout status deployment/obs-operator",
        "kubectl -n <namespace> create secret generic influxdb-auth",
        "kubectl apply -n <namespace> -f examples/collector.yaml",
        "kubectl get observatory -A",
        "Observatory / Nodes",
        "INFLUXDB_TOKEN:",
        "secretKeyRef: {name: influxdb-read, key: token}",
        "kubectl apply --server-side --force-conflicts",
    ):
        assert expected in notes, f"NOTES lack {expected!r}:\n{notes}"


def test_install_notes_with_the_bundled_influxdb_say_the_agents_token_is_made_and_write_only(helm: Path) -> None:
    args = ["install", "obs", str(CHART), "-n", "observatory", "--dry-run=client"]
    for s in (*FULL[3:6], "sharedConfig.namespaces={monitoring}"):
        args += ["--set", s]
    result = helm_run(helm, *args)
    assert result.returncode == 0, result.stderr
    notes = result.stdout.split("NOTES:", 1)[1]
    assert 'may only write to\n   the bucket "observatory"' in notes, notes
    assert 'stored it as the Secret "influxdb-auth" (key token) in\n   observatory, monitoring' in notes, notes
    assert "kubectl -n observatory logs job/obs-influxdb-setup" in notes
    assert "create secret generic influxdb-auth" not in notes, "nothing left for the user to create"
    # The agents' token cannot read: rules are told which Secret lets processors read their watermark back.
    assert 'as the Secret "influxdb-processor" (key token)' in notes, notes
    assert "tokenSecretRef: {name: influxdb-processor, key: token}" in notes, notes


def test_the_processors_token_secret_must_not_be_the_agents(helm: Path) -> None:
    args = ["template", "obs", str(CHART), "-n", "observatory"]
    for s in (*FULL[3:6], "influxdb.processorToken.secretName=influxdb-auth"):
        args += ["--set", s]
    result = helm_run(helm, *args)
    assert result.returncode != 0
    assert "influxdb.processorToken.secretName must differ from influxdb.agentToken.secretName" in result.stderr


def test_chart_readme_is_what_helm_docs_makes_from_the_values() -> None:
    """`make chart-docs` regenerates it; the flags are read from the Makefile so both stay one command."""
    build.ensure(["helm-docs"])
    flags = re.search(r"^HELM_DOCS_ARGS := (.+)$", (ROOT / "Makefile").read_text(), re.M)
    assert flags is not None
    result = subprocess.run(
        [str(build.binary("helm-docs")), *flags.group(1).split(), "--dry-run"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    committed = (CHART / "README.md").read_text()
    assert result.stdout.strip() == committed.strip(), (
        "helm/happy-observatory/README.md is stale: run `make chart-docs`"
    )
    for key in ("grafana.dashboards.enabled", "operator.priorityClassName", "serviceMonitor.labels"):
        assert f"| {key} |" in committed
