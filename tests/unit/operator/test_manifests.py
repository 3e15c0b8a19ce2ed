"""Pure builders: golden YAML per example, labels, hashing, pod security and the token's path."""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path
from typing import Any

import pytest
import yaml

from observatory_agent.contract import AgentConfig
from observatory_operator.api.models import API_VERSION, ObservatoryCollector, ObservatoryCollectorSpec
from observatory_operator.manifests import build_collector, names
from observatory_operator.objects import Owner
from observatory_operator.settings import Settings

ROOT = Path(__file__).resolve().parents[3]
GOLDEN = Path(__file__).parent / "golden"
UPDATE = os.environ.get("OBSERVATORY_UPDATE_GOLDEN") == "1"
"""Run with OBSERVATORY_UPDATE_GOLDEN=1 to rewrite the golden files after an intended change."""

OWNER = Owner(
    name="nodes",
    namespace="monitoring",
    uid="0b5f1a5e-0000-4000-8000-000000000001",
    kind="ObservatoryCollector",
    api_version=API_VERSION,
)


class _Dumper(yaml.SafeDumper):
    pass


def _str(dumper: yaml.SafeDumper, value: str) -> yaml.Node:
    style = "|" if "\n" in value else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", value, style=style)


_Dumper.add_representer(str, _str)


def _dump(objects: list[dict[str, Any]]) -> str:
    return yaml.dump_all(objects, Dumper=_Dumper, sort_keys=False, default_flow_style=False)


def _spec(**fields: Any) -> ObservatoryCollectorSpec:
    return ObservatoryCollectorSpec.model_validate(fields)


def _by_kind(objects: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {o["kind"]: o for o in objects}


def _pod_spec(spec: ObservatoryCollectorSpec) -> dict[str, Any]:
    ds = _by_kind(build_collector(OWNER, spec, Settings()).objects)["DaemonSet"]
    pod: dict[str, Any] = ds["spec"]["template"]["spec"]
    return pod


EXAMPLES = sorted(p for p in (ROOT / "examples").glob("*.yaml") if "ObservatoryCollector" in p.read_text())
CASES: dict[str, ObservatoryCollectorSpec] = {
    **{f"example-{p.stem}": ObservatoryCollector.model_validate(yaml.safe_load(p.read_text())).spec for p in EXAMPLES},
    "minimal-defaults": _spec(collectors=[{"name": "cpu"}, {"name": "memory"}]),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_built_objects_match_golden_yaml(case: str) -> None:
    built = build_collector(OWNER, CASES[case], Settings(), service_monitor=True)
    text = _dump(built.objects)
    golden = GOLDEN / f"{case}.yaml"
    if UPDATE or not golden.exists():
        golden.parent.mkdir(parents=True, exist_ok=True)
        golden.write_text(text)
        if not UPDATE:
            pytest.fail(f"{golden.name} did not exist and was written; review and commit it")
    assert text == golden.read_text(), f"{golden.name} is stale; rerun with OBSERVATORY_UPDATE_GOLDEN=1 if intended"


def test_every_example_collector_has_a_golden_case() -> None:
    assert EXAMPLES, "examples/collector.yaml should exist"
    for p in EXAMPLES:
        assert (GOLDEN / f"example-{p.stem}.yaml").exists()


def test_selector_labels_are_a_subset_of_pod_labels() -> None:
    for spec in CASES.values():
        ds = _by_kind(build_collector(OWNER, spec, Settings()).objects)["DaemonSet"]
        selector = ds["spec"]["selector"]["matchLabels"]
        pod_labels = ds["spec"]["template"]["metadata"]["labels"]
        assert selector.items() <= pod_labels.items()


def test_service_selects_the_agent_pods() -> None:
    objs = _by_kind(build_collector(OWNER, CASES["minimal-defaults"], Settings()).objects)
    pod_labels = objs["DaemonSet"]["spec"]["template"]["metadata"]["labels"]
    assert objs["Service"]["spec"]["selector"].items() <= pod_labels.items()
    assert objs["Service"]["spec"]["clusterIP"] == "None"


def test_selector_does_not_change_with_the_image_version() -> None:
    a = _by_kind(build_collector(OWNER, _spec(image="repo/agent:1.0"), Settings()).objects)["DaemonSet"]
    b = _by_kind(build_collector(OWNER, _spec(image="repo/agent:2.0"), Settings()).objects)["DaemonSet"]
    assert a["spec"]["selector"] == b["spec"]["selector"]


def test_every_child_has_a_controller_owner_reference_and_our_labels() -> None:
    for obj in build_collector(OWNER, CASES["minimal-defaults"], Settings(), service_monitor=True).objects:
        (ref,) = obj["metadata"]["ownerReferences"]
        assert ref["uid"] == OWNER.uid
        assert ref["controller"] is True
        assert ref["blockOwnerDeletion"] is True
        labels = obj["metadata"]["labels"]
        assert labels[names.MANAGED_BY] == "happy-observatory-operator"
        assert labels[names.INSTANCE] == "nodes"


def test_service_monitor_only_when_asked() -> None:
    kinds = {o["kind"] for o in build_collector(OWNER, CASES["minimal-defaults"], Settings()).objects}
    assert kinds == {"ConfigMap", "DaemonSet", "Service"}


# --- hashing ------------------------------------------------------------------------------


def _hash(spec: ObservatoryCollectorSpec, settings: Settings | None = None, owner: Owner = OWNER) -> str:
    return build_collector(owner, spec, settings or Settings()).config_hash


def test_hash_is_stable_for_equal_inputs() -> None:
    base = CASES["example-collector"]
    again = ObservatoryCollectorSpec.model_validate(base.model_dump(by_alias=True))
    assert _hash(base) == _hash(again)


def test_hash_ignores_owner_uid_and_service_monitor() -> None:
    spec = CASES["example-collector"]
    other = dataclasses.replace(OWNER, uid="another-uid")
    assert _hash(spec) == _hash(spec, owner=other)
    assert (
        build_collector(OWNER, spec, Settings(), service_monitor=True).config_hash
        == build_collector(OWNER, spec, Settings()).config_hash
    )


@pytest.mark.parametrize(
    ("change", "why"),
    [
        ({"interval": "20s"}, "agent config: interval"),
        ({"tags": {"tier": "edge"}}, "agent config: tags"),
        ({"aggregations": {"quantiles": [50, 90]}}, "agent config: quantiles"),
        ({"influxdb": {"bucket": "other", "tokenSecretRef": {"name": "influxdb-auth"}}}, "agent config: bucket"),
        ({"image": "ghcr.io/happy-patterns-org/happy-observatory:2.0.1"}, "pod: image"),
        ({"tolerations": []}, "pod: tolerations"),
        ({"nodeSelector": {"kubernetes.io/os": "linux", "pool": "a"}}, "pod: nodeSelector"),
        ({"resources": {"limits": {"memory": "256Mi"}}}, "pod: resources"),
        ({"priorityClassName": "system-node-critical"}, "pod: priorityClassName"),
        ({"sharedConfig": {"name": "observatory-shared-config", "optional": True}}, "pod: shared-config volume"),
    ],
)
def test_hash_changes_when_agent_config_or_pod_inputs_change(change: dict[str, Any], why: str) -> None:
    base = CASES["example-collector"].model_dump(by_alias=True, exclude_none=True)
    changed = _spec(**{**base, **change})
    assert _hash(changed) != _hash(CASES["example-collector"]), why


def test_hash_does_not_change_with_update_strategy_or_paused() -> None:
    """Neither shapes an agent pod: changing them must not roll every agent in the cluster."""
    base = CASES["example-collector"].model_dump(by_alias=True, exclude_none=True)
    changed = _spec(**{**base, "updateStrategy": {"type": "OnDelete"}, "paused": True})
    assert _hash(changed) == _hash(CASES["example-collector"])


def test_hash_is_on_the_pod_template() -> None:
    built = build_collector(OWNER, CASES["example-collector"], Settings())
    ds = _by_kind(built.objects)["DaemonSet"]
    assert ds["spec"]["template"]["metadata"]["annotations"][names.CONFIG_HASH_ANNOTATION] == built.config_hash


# --- the agent pod ------------------------------------------------------------------------


def test_container_security_context_is_locked_down() -> None:
    pod = _pod_spec(CASES["example-collector"])
    (container,) = pod["containers"]
    sc = container["securityContext"]
    assert sc["runAsNonRoot"] is True
    assert sc["readOnlyRootFilesystem"] is True
    assert sc["allowPrivilegeEscalation"] is False
    assert sc["capabilities"] == {"drop": ["ALL"]}
    assert sc["seccompProfile"] == {"type": "RuntimeDefault"}
    assert "privileged" not in sc
    assert pod["automountServiceAccountToken"] is False


def test_host_paths_are_mounted_read_only_with_host_env() -> None:
    pod = _pod_spec(CASES["minimal-defaults"])
    (container,) = pod["containers"]
    host_volumes = {v["name"]: v["hostPath"]["path"] for v in pod["volumes"] if "hostPath" in v}
    assert sorted(host_volumes.values()) == ["/", "/proc", "/sys", "/var/lib/observatory/monitoring/nodes"]
    for mount in container["volumeMounts"]:
        if mount["name"] in host_volumes:
            # The node is only read; the one writable host directory is the agent's own buffer.
            assert mount.get("readOnly") is (None if mount["name"] == "buffer" else True), mount
    env = {e["name"]: e.get("value") for e in container["env"]}
    assert env["HOST_PROC"] == "/host/proc"
    assert env["HOST_SYS"] == "/host/sys"
    assert env["HOST_ROOT"] == "/host/root"
    refs = {e["name"]: e["valueFrom"]["fieldRef"]["fieldPath"] for e in container["env"] if "valueFrom" in e}
    assert refs == {
        "NODE_NAME": "spec.nodeName",
        "POD_NAME": "metadata.name",
        "POD_NAMESPACE": "metadata.namespace",
        "POD_IP": "status.podIP",
    }


def test_host_network_only_with_the_network_collector() -> None:
    assert _pod_spec(_spec(collectors=[{"name": "network"}])).get("hostNetwork") is True
    assert "hostNetwork" not in _pod_spec(_spec(collectors=[{"name": "cpu"}]))
    assert "hostNetwork" not in _pod_spec(_spec(collectors=[{"name": "network", "enabled": False}]))


def test_host_pid_only_with_the_processes_collector() -> None:
    assert _pod_spec(_spec(collectors=[{"name": "processes"}])).get("hostPID") is True
    assert "hostPID" not in _pod_spec(_spec(collectors=[{"name": "cpu"}]))


def test_token_is_mounted_from_the_secret_and_never_in_a_configmap_or_env() -> None:
    secret_value = "s3cr3t-token-value"
    spec = _spec(influxdb={"tokenSecretRef": {"name": "influxdb-auth", "key": "api-token"}})
    objs = _by_kind(build_collector(OWNER, spec, Settings(), service_monitor=True).objects)
    config = AgentConfig.model_validate_json(objs["ConfigMap"]["data"]["agent.json"])
    assert config.influxdb.token_file == "/var/run/secrets/observatory/influxdb/api-token"
    pod = objs["DaemonSet"]["spec"]["template"]["spec"]
    (token_volume,) = [v for v in pod["volumes"] if "secret" in v]
    assert token_volume["secret"]["secretName"] == "influxdb-auth"
    assert token_volume["secret"]["items"] == [{"key": "api-token", "path": "api-token"}]
    (container,) = pod["containers"]
    assert all("secretKeyRef" not in json.dumps(e) for e in container["env"])

    assert secret_value not in json.dumps(list(objs.values()))


def test_probes_use_the_named_metrics_port() -> None:
    (container,) = _pod_spec(CASES["minimal-defaults"])["containers"]
    assert container["ports"] == [{"name": "metrics", "containerPort": 9464, "protocol": "TCP"}]
    assert container["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "metrics"}
    assert container["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "metrics"}


def test_default_resources_and_image_come_from_settings() -> None:
    (container,) = _pod_spec(CASES["minimal-defaults"])["containers"]
    assert container["image"] == "ghcr.io/happy-patterns-org/happy-observatory:2.0.0"
    assert container["resources"] == {"requests": {"cpu": "20m", "memory": "64Mi"}, "limits": {"memory": "128Mi"}}
    assert container["command"] == [
        "observatory-agent",
        "run",
        "--config",
        "/etc/observatory/agent/agent.json",
        "--shared-config",
        "/etc/observatory/shared",
    ]


def test_scheduling_fields_pass_through_from_the_spec() -> None:
    affinity = {
        "nodeAffinity": {
            "requiredDuringSchedulingIgnoredDuringExecution": {
                "nodeSelectorTerms": [{"matchExpressions": [{"key": "pool", "operator": "In", "values": ["a"]}]}]
            }
        }
    }
    spec = _spec(
        nodeSelector={"pool": "a"},
        tolerations=[{"key": "dedicated", "operator": "Equal", "value": "gpu", "effect": "NoSchedule"}],
        affinity=affinity,
        priorityClassName="system-node-critical",
    )
    pod = _pod_spec(spec)
    assert pod["nodeSelector"] == {"pool": "a"}
    assert pod["tolerations"] == [{"key": "dedicated", "operator": "Equal", "value": "gpu", "effect": "NoSchedule"}]
    assert pod["affinity"] == affinity
    assert pod["priorityClassName"] == "system-node-critical"


def test_shared_config_optional_flag_reaches_the_volume() -> None:
    pod = _pod_spec(_spec(sharedConfig={"name": "org-defaults", "optional": True}))
    (vol,) = [v for v in pod["volumes"] if v["name"] == "shared-config"]
    assert vol["configMap"] == {"name": "org-defaults", "optional": True}


def test_agent_config_leaves_unset_values_to_shared_config() -> None:
    objs = _by_kind(build_collector(OWNER, CASES["minimal-defaults"], Settings()).objects)
    config = AgentConfig.model_validate_json(objs["ConfigMap"]["data"]["agent.json"])
    assert config.interval is None
    assert config.window is None
    assert config.influxdb.url is None
    assert config.collector == "nodes"
    assert config.namespace == "monitoring"
    assert [c.name for c in config.collectors] == ["cpu", "memory"]


# --- names --------------------------------------------------------------------------------


def test_long_names_are_shortened_to_63_characters_and_stay_distinct() -> None:
    a = names.agent_daemonset("x" * 250)
    b = names.agent_daemonset("x" * 249 + "y")
    assert len(a) <= 63
    assert len(b) <= 63
    assert a != b


def test_short_names_are_kept_readable() -> None:
    assert names.agent_daemonset("nodes") == "nodes-agent"
    assert names.agent_configmap("nodes") == "nodes-agent-config"
    assert names.agent_service("nodes") == "nodes-agent-metrics"


def test_names_are_dns_1035_labels() -> None:
    for raw in ("1st", "a.b.c", "UPPER", "x" * 300):
        name = names.agent_service(raw)
        assert len(name) <= 63
        assert name[0].isalpha()
        assert all(ch.isalnum() or ch == "-" for ch in name)
        assert name == name.lower()


def test_dotted_names_do_not_collide_with_dashed_names() -> None:
    assert names.agent_daemonset("a.b") != names.agent_daemonset("a-b")


def test_long_label_values_are_hashed_within_63_characters() -> None:
    value = names.label_value("n" * 200)
    assert len(value) <= 63
    assert value != names.label_value("n" * 199 + "m")


def test_metrics_port_reaches_container_probes_service_and_agent_config() -> None:
    # Two collectors with the network collector share each node's network: they need distinct ports.
    objects = _by_kind(build_collector(OWNER, _spec(metricsPort=9470), Settings()).objects)
    container = objects["DaemonSet"]["spec"]["template"]["spec"]["containers"][0]
    assert container["ports"][0]["containerPort"] == 9470
    assert container["readinessProbe"]["httpGet"]["port"] == container["ports"][0]["name"]
    assert objects["Service"]["spec"]["ports"][0]["port"] == 9470
    config = AgentConfig.model_validate_json(objects["ConfigMap"]["data"]["agent.json"])
    assert config.port == 9470


# --- the buffer on the node -------------------------------------------------------------------


def _volume(pod: dict[str, Any], name: str) -> dict[str, Any]:
    (volume,) = [v for v in pod["volumes"] if v["name"] == name]
    return volume


def test_the_buffer_is_a_host_directory_per_collector_and_node_so_it_outlives_the_pod() -> None:
    pod = _pod_spec(CASES["minimal-defaults"])
    assert _volume(pod, "buffer") == {
        "name": "buffer",
        "hostPath": {"path": "/var/lib/observatory/monitoring/nodes", "type": "DirectoryOrCreate"},
    }
    (container,) = pod["containers"]
    (mount,) = [m for m in container["volumeMounts"] if m["name"] == "buffer"]
    assert mount == {"name": "buffer", "mountPath": "/var/lib/observatory/buffer", "subPathExpr": "$(NODE_NAME)"}
    env = {e["name"]: e["valueFrom"]["fieldRef"]["fieldPath"] for e in container["env"] if "valueFrom" in e}
    assert env["NODE_NAME"] == "spec.nodeName"  # what $(NODE_NAME) expands to
    config = AgentConfig.model_validate_json(
        _by_kind(build_collector(OWNER, CASES["minimal-defaults"], Settings()).objects)["ConfigMap"]["data"][
            "agent.json"
        ]
    )
    assert config.buffer_dir == mount["mountPath"]


def test_two_collectors_never_share_a_buffer_directory() -> None:
    spec = CASES["minimal-defaults"]
    paths = {
        _volume(
            _by_kind(build_collector(owner, spec, Settings()).objects)["DaemonSet"]["spec"]["template"]["spec"],
            "buffer",
        )["hostPath"]["path"]
        for owner in (
            OWNER,
            dataclasses.replace(OWNER, name="other"),
            dataclasses.replace(OWNER, namespace="team-b"),
        )
    }
    assert paths == {
        "/var/lib/observatory/monitoring/nodes",
        "/var/lib/observatory/monitoring/other",
        "/var/lib/observatory/team-b/nodes",
    }


def test_the_buffer_root_comes_from_settings_and_moving_it_rolls_the_agents() -> None:
    moved = Settings(agent=dataclasses.replace(Settings().agent, buffer_root="/data/observatory/"))
    ds = _by_kind(build_collector(OWNER, CASES["minimal-defaults"], moved).objects)["DaemonSet"]
    assert _volume(ds["spec"]["template"]["spec"], "buffer")["hostPath"]["path"] == "/data/observatory/monitoring/nodes"
    assert _hash(CASES["minimal-defaults"], moved) != _hash(CASES["minimal-defaults"])


def test_only_the_buffer_owner_runs_as_root_and_it_may_only_chown_that_one_directory() -> None:
    pod = _pod_spec(CASES["example-collector"])
    (init,) = pod["initContainers"]
    (agent,) = pod["containers"]
    assert init["name"] == "buffer-owner"
    assert init["image"] == agent["image"]
    assert init["command"] == ["chown", "65532:65532", "/var/lib/observatory/buffer"]  # never -R
    assert init["securityContext"] == {
        "runAsUser": 0,
        "runAsGroup": 0,
        "runAsNonRoot": False,
        "readOnlyRootFilesystem": True,
        "allowPrivilegeEscalation": False,
        "capabilities": {"drop": ["ALL"], "add": ["CHOWN"]},
        "seccompProfile": {"type": "RuntimeDefault"},
    }
    assert init["volumeMounts"] == [m for m in agent["volumeMounts"] if m["name"] == "buffer"]
    assert [e["name"] for e in init["env"]] == ["NODE_NAME"]
    # Baseline Pod Security admits CHOWN; it is the only capability added anywhere in the pod.
    added = [c.get("securityContext", {}).get("capabilities", {}).get("add") for c in [init, agent]]
    assert added == [["CHOWN"], None]
    assert agent["securityContext"]["runAsUser"] == 65532
    assert agent["securityContext"]["capabilities"] == {"drop": ["ALL"]}
    assert init["resources"] == agent["resources"]
