"""A small JSON client for the Kubernetes API: plain dicts in and out, watches, server-side apply.

The test bed talks to the API server through this rather than the generated client so that
patch content types, watch restarts and timeouts are explicit, and so that objects stay in
the API's own camelCase shape (the same as the YAML in ``examples/`` and ``crds/``).
Thread-safe: every request opens its own connection (loopback TLS is cheap).
"""

from __future__ import annotations

import base64
import http.client
import json
import ssl
import tempfile
import threading
import time
import urllib.parse
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import yaml

Obj = dict[str, Any]

FIELD_MANAGER = "happy-observatory-testenv"

PSA_OPERATOR: dict[str, str] = {
    "pod-security.kubernetes.io/enforce": "restricted",
    "pod-security.kubernetes.io/warn": "restricted",
    "pod-security.kubernetes.io/audit": "restricted",
}
"""Pod Security labels of the operator's namespace: nothing there needs more than `restricted`."""
PSA_AGENTS: dict[str, str] = {
    "pod-security.kubernetes.io/enforce": "privileged",
    "pod-security.kubernetes.io/warn": "baseline",
    "pod-security.kubernetes.io/audit": "baseline",
}
"""Pod Security labels of the agents' namespace: agents mount the host's /proc, /sys and / (hostPath) and may
use the host's network and PID namespaces, which only `privileged` admits; `warn: baseline` still names
every other pod there that asks for more than baseline."""
COLLECTORS_ALLOWED: dict[str, str] = {"observatory.happypatterns.org/collectors": "allowed"}
"""The label the chart's admission policy accepts as "collectors may live here" (besides its values)."""
AGENTS_NAMESPACE_LABELS: dict[str, str] = {**PSA_AGENTS, **COLLECTORS_ALLOWED}
"""Every label a namespace holding collectors gets (as the README tells users)."""


class ApiError(Exception):
    """A non-2xx answer from the API server, with its Status message."""

    def __init__(self, status: int, reason: str, body: str) -> None:
        self.status = status
        self.reason = reason
        self.body = body
        try:
            self.message = str(json.loads(body).get("message", body))
        except ValueError:
            self.message = body
        super().__init__(f"{status} {reason}: {self.message}")


class Kube:
    """Bearer-token client for one API server."""

    def __init__(self, server: str, token: str, ca_file: Path | None = None) -> None:
        parsed = urllib.parse.urlsplit(server)
        self.server = server
        self.host = parsed.hostname or "127.0.0.1"
        self.port = parsed.port or 443
        self.token = token
        self._ssl = ssl.create_default_context(cafile=str(ca_file) if ca_file else None)
        self._resources: dict[str, dict[str, tuple[str, bool]]] = {}
        self._lock = threading.Lock()

    @classmethod
    def from_kubeconfig(cls, path: Path) -> Kube:
        """Read the current context's server, token and CA (the bed's admin kubeconfig)."""
        config = yaml.safe_load(path.read_text())
        ctx_name = config["current-context"]
        ctx = next(c["context"] for c in config["contexts"] if c["name"] == ctx_name)
        cluster = next(c["cluster"] for c in config["clusters"] if c["name"] == ctx["cluster"])
        user = next(u["user"] for u in config["users"] if u["name"] == ctx["user"])
        ca_file: Path | None = None
        if "certificate-authority" in cluster:
            ca_file = Path(cluster["certificate-authority"])
        elif "certificate-authority-data" in cluster:
            fh = tempfile.NamedTemporaryFile("wb", suffix=".crt", delete=False)  # noqa: SIM115
            fh.write(base64.b64decode(cluster["certificate-authority-data"]))
            fh.close()
            ca_file = Path(fh.name)
        return cls(cluster["server"], user["token"], ca_file)

    # --- raw requests ---------------------------------------------------------------------

    def _connect(self, timeout: float) -> http.client.HTTPSConnection:
        return http.client.HTTPSConnection(self.host, self.port, context=self._ssl, timeout=timeout)

    def request(
        self,
        method: str,
        path: str,
        body: Obj | list[Any] | None = None,
        *,
        query: dict[str, str] | None = None,
        content_type: str = "application/json",
        timeout: float = 30.0,
    ) -> Obj:
        raw = self._send(method, path, body, query=query, content_type=content_type, timeout=timeout)
        if not raw:
            return {}
        try:
            return dict(json.loads(raw))
        except ValueError:  # /readyz, /healthz and friends answer in plain text
            return {"text": raw}

    def text(self, path: str, *, timeout: float = 30.0, **query: str) -> str:
        """A GET whose answer is text (a pod's log), returned as is."""
        return self._send("GET", path, None, query=query or None, timeout=timeout)

    def _send(
        self,
        method: str,
        path: str,
        body: Obj | list[Any] | None,
        *,
        query: dict[str, str] | None,
        content_type: str = "application/json",
        timeout: float,
    ) -> str:
        url = path + ("?" + urllib.parse.urlencode(query) if query else "")
        headers = {"Authorization": f"Bearer {self.token}", "Accept": "application/json"}
        data = None
        if body is not None:
            data = json.dumps(body).encode()
            headers["Content-Type"] = content_type
        conn = self._connect(timeout)
        try:
            conn.request(method, url, body=data, headers=headers)
            resp = conn.getresponse()
            raw = resp.read().decode(errors="replace")
        finally:
            conn.close()
        if not 200 <= resp.status < 300:
            raise ApiError(resp.status, resp.reason, raw)
        return raw

    def get(self, path: str, **query: str) -> Obj:
        return self.request("GET", path, query=query or None)

    def exists(self, path: str) -> bool:
        try:
            self.get(path)
        except ApiError as exc:
            if exc.status == 404:
                return False
            raise
        return True

    def create(self, path: str, body: Obj) -> Obj:
        return self.request("POST", path, body)

    def delete(self, path: str, body: Obj | None = None, **query: str) -> Obj:
        return self.request("DELETE", path, body, query=query or None)

    def patch(self, path: str, body: Obj | list[Any], kind: str = "strategic") -> Obj:
        content = {
            "strategic": "application/strategic-merge-patch+json",
            "merge": "application/merge-patch+json",
            "json": "application/json-patch+json",
        }[kind]
        return self.request("PATCH", path, body, content_type=content)

    # --- typed paths ----------------------------------------------------------------------

    def _discover(self, api_version: str) -> dict[str, tuple[str, bool]]:
        base = "/api/v1" if api_version == "v1" else f"/apis/{api_version}"
        doc = self.get(base)
        kinds: dict[str, tuple[str, bool]] = {}
        for res in doc.get("resources", []):
            if "/" not in res["name"]:  # subresources share their parent's kind
                kinds[res["kind"]] = (res["name"], bool(res["namespaced"]))
        return kinds

    def path_for(self, api_version: str, kind: str, namespace: str | None = None, name: str | None = None) -> str:
        """The REST path of a kind (discovered, so CRDs work once they are established)."""
        with self._lock:
            kinds = self._resources.get(api_version)
        if kinds is None or kind not in kinds:
            kinds = self._discover(api_version)  # refresh: a CRD may have been installed since
            with self._lock:
                self._resources[api_version] = kinds
        if kind not in kinds:
            raise KeyError(f"the API server serves no kind {kind} in {api_version}")
        plural, namespaced = kinds[kind]
        base = "/api/v1" if api_version == "v1" else f"/apis/{api_version}"
        path = base
        if namespaced:
            path += f"/namespaces/{namespace or 'default'}"
        path += f"/{plural}"
        if name:
            path += f"/{name}"
        return path

    def path_of(self, obj: Obj, namespace: str | None = None) -> str:
        meta = obj.get("metadata", {})
        return self.path_for(obj["apiVersion"], obj["kind"], meta.get("namespace", namespace), meta["name"])

    def apply(self, obj: Obj, namespace: str | None = None, field_manager: str = FIELD_MANAGER) -> Obj:
        """Server-side apply (forced: the bed owns what it applies)."""
        return self.request(
            "PATCH",
            self.path_of(obj, namespace),
            obj,
            query={"fieldManager": field_manager, "force": "true"},
            content_type="application/apply-patch+yaml",
        )

    def apply_file(self, path: Path, namespace: str | None = None) -> list[Obj]:
        return [self.apply(doc, namespace) for doc in yaml.safe_load_all(path.read_text()) if doc]

    # --- lists and watches ----------------------------------------------------------------

    def list(self, path: str, **query: str) -> tuple[list[Obj], str]:
        doc = self.get(path, **query)
        return list(doc.get("items") or []), str(doc["metadata"].get("resourceVersion", ""))

    def watch(self, path: str, resource_version: str, timeout_seconds: int = 60) -> Iterator[Obj]:
        """Events after ``resource_version`` until the server closes the watch.

        Raises ApiError(410) when the version has expired: the caller lists again.
        """
        query = {
            "watch": "1",
            "resourceVersion": resource_version,
            "allowWatchBookmarks": "true",
            "timeoutSeconds": str(timeout_seconds),
        }
        conn = self._connect(timeout_seconds + 15)
        try:
            conn.request(
                "GET",
                f"{path}?{urllib.parse.urlencode(query)}",
                headers={"Authorization": f"Bearer {self.token}", "Accept": "application/json"},
            )
            resp = conn.getresponse()
            if resp.status != 200:
                raise ApiError(resp.status, resp.reason, resp.read().decode(errors="replace"))
            while True:
                line = resp.readline()
                if not line:
                    return
                event = json.loads(line)
                if event.get("type") == "ERROR":
                    status = event.get("object", {})
                    raise ApiError(int(status.get("code", 500)), "watch", json.dumps(status))
                yield event
        finally:
            conn.close()


def now_rfc3339(micro: bool = False) -> str:
    """The API's timestamps: seconds for Time, six fractional digits for MicroTime."""
    t = time.time()
    stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(t))
    if micro:
        stamp += f".{int((t % 1) * 1_000_000):06d}"
    return stamp + "Z"
