"""Pure pieces every pod the operator builds shares: hardening, downward-API env, resources, the token volume."""

from __future__ import annotations

from typing import Any, Final

from observatory_operator.api.models import ResourceRequirements, SecretKeyRef
from observatory_operator.manifests import names

Obj = dict[str, Any]

TOKEN_DIR: Final = "/var/run/secrets/observatory/influxdb"  # noqa: S105 - a mount path, not a secret


def container_security(uid: int) -> Obj:
    """The image's non-root user, read-only root filesystem, no capabilities, no escalation, RuntimeDefault seccomp."""
    return {
        "runAsNonRoot": True,
        "runAsUser": uid,
        "runAsGroup": uid,
        "readOnlyRootFilesystem": True,
        "allowPrivilegeEscalation": False,
        "capabilities": {"drop": ["ALL"]},
        "seccompProfile": {"type": "RuntimeDefault"},
    }


def pod_security(uid: int) -> Obj:
    """Pod-level: non-root, RuntimeDefault seccomp, and ``fsGroup`` so the non-root user can read mounted Secrets."""
    return {"runAsNonRoot": True, "fsGroup": uid, "seccompProfile": {"type": "RuntimeDefault"}}


def field_env(var: str, path: str) -> Obj:
    """An environment variable from the downward API (``status.podIP``, ``spec.nodeName``...)."""
    return {"name": var, "valueFrom": {"fieldRef": {"apiVersion": "v1", "fieldPath": path}}}


def resources(given: ResourceRequirements | None, *, cpu: str, memory: str, limit: str) -> Obj:
    """The spec's resources as given, else the defaults: requests, and a memory limit (no CPU limit: no throttling)."""
    if given is None:
        return {"requests": {"cpu": cpu, "memory": memory}, "limits": {"memory": limit}}
    out: Obj = {}
    if given.requests:
        out["requests"] = {k: str(v) for k, v in given.requests.items()}
    if given.limits:
        out["limits"] = {k: str(v) for k, v in given.limits.items()}
    return out


def token_file(ref: SecretKeyRef | None) -> str | None:
    """Where the token Secret's key is mounted (None without a tokenSecretRef)."""
    return f"{TOKEN_DIR}/{ref.key}" if ref else None


def token_volume(ref: SecretKeyRef | None) -> tuple[Obj, Obj] | None:
    """(volume, mount) of a token Secret: only its one key, 0440 (readable through fsGroup)."""
    if ref is None:
        return None
    volume = {
        "name": "influxdb-token",
        "secret": {"secretName": ref.name, "items": [{"key": ref.key, "path": ref.key}], "defaultMode": 0o440},
    }
    return volume, {"name": "influxdb-token", "mountPath": TOKEN_DIR, "readOnly": True}


def image_version(image: str) -> str | None:
    """The tag of ``repo:tag`` (for the version label); digests and untagged images have none."""
    if "@" in image:
        return None
    last = image.rsplit("/", 1)[-1]
    return last.split(":", 1)[1] if ":" in last else None


def version_label(image: str) -> dict[str, str]:
    """``app.kubernetes.io/version`` when the image's tag is a readable version, else nothing."""
    version = image_version(image)
    return {names.VERSION: names.label_value(version)} if version else {}
