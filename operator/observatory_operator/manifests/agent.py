"""Pure builders of one collector's agent objects: AgentConfig, ConfigMap, DaemonSet, Service, ServiceMonitor."""

from __future__ import annotations

import copy
from collections.abc import Sequence
from typing import Any, Final

from observatory_agent.contract import (
    DEFAULT_METRICS_PORT,
    AgentConfig,
    CollectorConfig,
    InfluxTarget,
    ProcessorTarget,
    parse_duration,
)
from observatory_operator.api.models import ObservatoryCollectorSpec
from observatory_operator.manifests import names, pods
from observatory_operator.manifests.pods import token_file
from observatory_operator.settings import Settings

Obj = dict[str, Any]

CONFIG_DIR: Final = "/etc/observatory/agent"
CONFIG_FILE: Final = "agent.json"
SHARED_CONFIG_DIR: Final = "/etc/observatory/shared"
BUFFER_DIR: Final = "/var/lib/observatory/buffer"
BUFFER_SUBPATH: Final = "$(NODE_NAME)"
"""The buffer's hostPath is mounted at the node's own subdirectory: nodes that share a filesystem
(diskless nodes with a shared /var/lib, the test bed's kubelets on one machine) must not share a
buffer, whose lock would leave all but one agent holding its windows in memory."""
HOST_MOUNTS: Final = (
    ("host-proc", "/proc", "/host/proc"),
    ("host-sys", "/sys", "/host/sys"),
    ("host-root", "/", "/host/root"),
)
"""(volume, host path, mount path): read-only windows onto the node the collectors measure."""

COMMAND: Final = (
    "observatory-agent",
    "run",
    "--config",
    f"{CONFIG_DIR}/{CONFIG_FILE}",
    "--shared-config",
    SHARED_CONFIG_DIR,
)


def _enabled_kinds(spec: ObservatoryCollectorSpec) -> set[str]:
    return {c.effective_kind for c in spec.collectors if c.enabled}


def needs_host_network(spec: ObservatoryCollectorSpec) -> bool:
    """The network collector reports the node's interfaces, which only the host network namespace shows."""
    return "network" in _enabled_kinds(spec)


def needs_host_pid(spec: ObservatoryCollectorSpec) -> bool:
    """The processes collector counts the node's processes, which only the host PID namespace shows."""
    return "processes" in _enabled_kinds(spec)


def agent_config(
    name: str, namespace: str, spec: ObservatoryCollectorSpec, processors: Sequence[ProcessorTarget] = ()
) -> AgentConfig:
    """The collector's spec as the agent's ``agent.json``; values the spec leaves unset stay unset for shared-config.

    ``processors``: the AggregationRules that name this collector, each as the series to send and where.
    """
    influx = spec.influxdb
    return AgentConfig(
        collector=name,
        namespace=namespace,
        interval=parse_duration(spec.interval, key="spec.interval") if spec.interval else None,
        window=parse_duration(spec.window, key="spec.window") if spec.window else None,
        collectors=[
            CollectorConfig(
                name=c.name,
                kind=c.effective_kind,
                enabled=c.enabled,
                timeout=parse_duration(c.timeout, key=f"spec.collectors[{c.name}].timeout"),
                targets=list(c.targets or []),
                entry_point=c.entry_point,
                options=dict(c.options or {}),
            )
            for c in spec.collectors
        ],
        quantiles=list(spec.aggregations.quantiles),
        exact_quantile_threshold=spec.aggregations.exact_threshold,
        tags=dict(spec.tags or {}),
        influxdb=InfluxTarget(
            url=influx.url, org=influx.org, bucket=influx.bucket, token_file=token_file(spec.influxdb.token_secret_ref)
        ),
        processors=sorted(processors, key=lambda t: t.rule),
        buffer_dir=BUFFER_DIR,
        port=spec.metrics_port,
    )


def render_agent_config(config: AgentConfig) -> str:
    """The exact text of ``agent.json``; hashing and the ConfigMap both use this one rendering."""
    return config.model_dump_json(indent=2)


def configmap(name: str, namespace: str, rendered: str, labels: dict[str, str]) -> Obj:
    """The ConfigMap with ``agent.json``. It never holds the token: that stays in the user's Secret."""
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {"name": names.agent_configmap(name), "namespace": namespace, "labels": dict(labels)},
        "data": {CONFIG_FILE: rendered},
    }


def _env(spec: ObservatoryCollectorSpec) -> list[Obj]:
    field_ref = pods.field_env
    return [
        field_ref("NODE_NAME", "spec.nodeName"),
        field_ref("POD_NAME", "metadata.name"),
        field_ref("POD_NAMESPACE", "metadata.namespace"),
        # The agent binds its metrics/status server to this address, which is also where the operator
        # probes: the pod's IP, or on the host network the node's own IP — never 0.0.0.0, so agents of
        # nodes that share one host network (and two collectors on one node) do not collide.
        field_ref("POD_IP", "status.hostIP" if needs_host_network(spec) else "status.podIP"),
        {"name": "HOST_PROC", "value": "/host/proc"},
        {"name": "HOST_SYS", "value": "/host/sys"},
        {"name": "HOST_ROOT", "value": "/host/root"},
    ]


_BUFFER_MOUNT: Final[Obj] = {"name": "buffer", "mountPath": BUFFER_DIR, "subPathExpr": BUFFER_SUBPATH}


def _volumes(
    name: str, namespace: str, spec: ObservatoryCollectorSpec, settings: Settings
) -> tuple[list[Obj], list[Obj]]:
    """(volumes, volumeMounts) of the agent pod."""
    volumes: list[Obj] = [
        {"name": "config", "configMap": {"name": names.agent_configmap(name)}},
        {
            "name": "shared-config",
            "configMap": {"name": spec.shared_config.name, "optional": spec.shared_config.optional},
        },
        # On the node's disk, so buffered windows outlive the pod (a rollout, an eviction, a crash
        # loop); one directory per collector. The agent locks it: one writer at a time.
        {
            "name": "buffer",
            "hostPath": {
                "path": names.agent_buffer_directory(settings.agent.buffer_root, namespace, name),
                "type": "DirectoryOrCreate",
            },
        },
        # Python and libraries want a writable /tmp; the root filesystem is read-only.
        {"name": "tmp", "emptyDir": {"sizeLimit": "16Mi"}},
    ]
    mounts: list[Obj] = [
        {"name": "config", "mountPath": CONFIG_DIR, "readOnly": True},
        {"name": "shared-config", "mountPath": SHARED_CONFIG_DIR, "readOnly": True},
        dict(_BUFFER_MOUNT),
        {"name": "tmp", "mountPath": "/tmp"},  # noqa: S108 - an emptyDir, private to the pod
    ]
    token = pods.token_volume(spec.influxdb.token_secret_ref)
    if token is not None:
        volumes.append(token[0])
        mounts.append(token[1])
    for volume, host_path, mount_path in HOST_MOUNTS:
        volumes.append({"name": volume, "hostPath": {"path": host_path, "type": "Directory"}})
        mount: Obj = {"name": volume, "mountPath": mount_path, "readOnly": True}
        if host_path == "/":
            # Filesystems the node mounts after the agent started must show up for disk usage.
            mount["mountPropagation"] = "HostToContainer"
        mounts.append(mount)
    return volumes, mounts


def buffer_owner(image: str, pull_policy: str, resources: Obj, uid: int) -> Obj:
    """The init container that hands the node's buffer directory to the agent's uid, and nothing more.

    The kubelet creates a hostPath directory owned by root (0755), and ``fsGroup`` does not apply to
    hostPath volumes, so the non-root agent could not write there. Rather than give the agent any
    privilege, this container runs as root with ``CAP_CHOWN`` alone (every other capability dropped,
    read-only root filesystem, no privilege escalation, RuntimeDefault seccomp: all within the
    baseline Pod Security level) and chowns that one directory. Never recursively: a symlink a
    compromised agent planted inside must not make root chown a file of the host; what is inside
    was written by the agent and is its own already.
    """
    return {
        "name": names.BUFFER_OWNER_CONTAINER,
        "image": image,
        "imagePullPolicy": pull_policy,
        "command": ["chown", f"{uid}:{uid}", BUFFER_DIR],
        # subPathExpr expands the container's own environment.
        "env": [pods.field_env("NODE_NAME", "spec.nodeName")],
        # The agent's own: a quota or LimitRange that admits the agent admits this, and the pod's
        # effective request (the larger of init and app containers) does not change.
        "resources": resources,
        "securityContext": {
            "runAsUser": 0,
            "runAsGroup": 0,
            "runAsNonRoot": False,
            "readOnlyRootFilesystem": True,
            "allowPrivilegeEscalation": False,
            "capabilities": {"drop": ["ALL"], "add": ["CHOWN"]},
            "seccompProfile": {"type": "RuntimeDefault"},
        },
        "volumeMounts": [dict(_BUFFER_MOUNT)],
    }


def pod_template(name: str, namespace: str, spec: ObservatoryCollectorSpec, settings: Settings) -> Obj:
    """The agent pod template, without the config-hash annotation (which is computed over it).

    Security: the agent runs as a non-root uid with a read-only root filesystem, no capabilities,
    no privilege escalation and the RuntimeDefault seccomp profile. Everything it reads on the host
    (``/proc/stat``, ``/proc/meminfo``, ``/proc/<pid>/stat``, ``/sys/block``, statvfs of mounts) is
    world-readable, so root buys nothing; per-process I/O counters of other users' processes are the
    one thing it cannot see, and the processes collector reports without them. ``hostNetwork`` and
    ``hostPID`` widen what the agent sees, not what it may do, and are set only when the network
    or processes collector is enabled. The one thing that runs as root is ``buffer_owner``, an init
    container that only chowns the agent's buffer directory on the node.
    """
    image = spec.image or settings.agent.image
    pull_policy = spec.image_pull_policy or settings.agent.image_pull_policy
    volumes, mounts = _volumes(name, namespace, spec, settings)
    port = spec.metrics_port
    resources = pods.resources(
        spec.resources,
        cpu=settings.agent.cpu_request,
        memory=settings.agent.memory_request,
        limit=settings.agent.memory_limit,
    )
    container: Obj = {
        "name": names.AGENT_CONTAINER,
        "image": image,
        "imagePullPolicy": pull_policy,
        "command": list(COMMAND),
        "env": _env(spec),
        "ports": [{"name": names.METRICS_PORT_NAME, "containerPort": port, "protocol": "TCP"}],
        "readinessProbe": {
            "httpGet": {"path": "/readyz", "port": names.METRICS_PORT_NAME},
            "periodSeconds": 10,
            "timeoutSeconds": 2,
            "failureThreshold": 3,
        },
        "livenessProbe": {
            "httpGet": {"path": "/healthz", "port": names.METRICS_PORT_NAME},
            # Generous: a liveness kill throws away the window in progress.
            "initialDelaySeconds": 10,
            "periodSeconds": 20,
            "timeoutSeconds": 2,
            "failureThreshold": 3,
        },
        "resources": resources,
        "securityContext": pods.container_security(settings.agent.run_as_user),
        "volumeMounts": mounts,
    }
    pod_spec: Obj = {
        # Agents never call the API server; a mounted token would only be something to steal.
        "automountServiceAccountToken": False,
        "initContainers": [buffer_owner(image, pull_policy, copy.deepcopy(resources), settings.agent.run_as_user)],
        "containers": [container],
        "securityContext": pods.pod_security(settings.agent.run_as_user),
        # Time for the agent to flush the window in progress to InfluxDB or its buffer.
        "terminationGracePeriodSeconds": 30,
        "volumes": volumes,
    }
    if needs_host_network(spec):
        pod_spec["hostNetwork"] = True
        # Keep cluster DNS (the InfluxDB Service name) resolvable from the host network namespace.
        pod_spec["dnsPolicy"] = "ClusterFirstWithHostNet"
    if needs_host_pid(spec):
        pod_spec["hostPID"] = True
    if spec.node_selector:
        pod_spec["nodeSelector"] = dict(spec.node_selector)
    if spec.tolerations:
        pod_spec["tolerations"] = [t.model_dump(by_alias=True, exclude_none=True) for t in spec.tolerations]
    if spec.affinity:
        pod_spec["affinity"] = spec.affinity
    if spec.priority_class_name:
        pod_spec["priorityClassName"] = spec.priority_class_name
    return {
        "metadata": {"labels": names.pod_labels(name, pods.image_version(image))},
        "spec": pod_spec,
    }


def daemonset(
    name: str,
    namespace: str,
    spec: ObservatoryCollectorSpec,
    template: Obj,
    *,
    config_hash: str,
    labels: dict[str, str],
) -> Obj:
    """The agent DaemonSet: one pod per selected node, the config hash on its template."""
    template = {
        "metadata": {
            **template["metadata"],
            "annotations": {
                names.CONFIG_HASH_ANNOTATION: config_hash,
                "kubectl.kubernetes.io/default-container": names.AGENT_CONTAINER,
            },
        },
        "spec": template["spec"],
    }
    ds_spec: Obj = {
        "selector": {"matchLabels": dict(names.selector_labels(name))},
        "template": template,
    }
    if spec.update_strategy is not None:
        ds_spec["updateStrategy"] = spec.update_strategy.model_dump(by_alias=True, exclude_none=True, mode="json")
    return {
        "apiVersion": "apps/v1",
        "kind": "DaemonSet",
        "metadata": {"name": names.agent_daemonset(name), "namespace": namespace, "labels": dict(labels)},
        "spec": ds_spec,
    }


def service(name: str, namespace: str, labels: dict[str, str], port: int = DEFAULT_METRICS_PORT) -> Obj:
    """A headless Service listing every agent's metrics endpoint (for Prometheus and for people)."""
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": names.agent_service(name), "namespace": namespace, "labels": dict(labels)},
        "spec": {
            "clusterIP": "None",
            # An agent that is not ready is exactly the one whose metrics someone wants to read.
            "publishNotReadyAddresses": True,
            "selector": dict(names.selector_labels(name)),
            "ports": [
                {
                    "name": names.METRICS_PORT_NAME,
                    "port": port,
                    "targetPort": names.METRICS_PORT_NAME,
                    "protocol": "TCP",
                }
            ],
        },
    }


def servicemonitor(name: str, namespace: str, labels: dict[str, str]) -> Obj:
    """A prometheus-operator ServiceMonitor for the agents' Service (only when that CRD is installed)."""
    return {
        "apiVersion": "monitoring.coreos.com/v1",
        "kind": "ServiceMonitor",
        "metadata": {"name": names.agent_servicemonitor(name), "namespace": namespace, "labels": dict(labels)},
        "spec": {
            "selector": {"matchLabels": dict(names.selector_labels(name))},
            "namespaceSelector": {"matchNames": [namespace]},
            "endpoints": [{"port": names.METRICS_PORT_NAME, "path": "/metrics", "interval": "30s"}],
        },
    }
