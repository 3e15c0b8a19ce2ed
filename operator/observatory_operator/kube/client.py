"""A small JSON client over the kubernetes package's ApiClient: plain camelCase dicts, SSA, metadata-only reads.

Blocking calls (urllib3) run in worker threads through the ``a*`` coroutine wrappers so kopf's
event loop never stalls on the network.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import threading
import time
import urllib.parse
from collections import Counter
from collections.abc import Mapping
from typing import Any, Final

import urllib3
from kubernetes import client as k8s
from kubernetes import config as k8s_config

from observatory_operator.kube import errors

Obj = dict[str, Any]

APPLY: Final = "application/apply-patch+yaml"
MERGE: Final = "application/merge-patch+json"
METADATA_ONLY: Final = "application/json;as=PartialObjectMetadata;g=meta.k8s.io;v=v1"
REQUEST_TIMEOUT: Final = (5.0, 30.0)
"""(connect, read) seconds: a hung API server surfaces as a TemporaryError instead of a stuck handler."""

# (apiVersion, kind) → (plural, namespaced) for every kind the operator reads or writes.
RESOURCES: Final[dict[tuple[str, str], tuple[str, bool]]] = {
    ("v1", "ConfigMap"): ("configmaps", True),
    ("v1", "Service"): ("services", True),
    ("v1", "Secret"): ("secrets", True),
    ("v1", "Pod"): ("pods", True),
    ("v1", "Node"): ("nodes", False),
    ("apps/v1", "DaemonSet"): ("daemonsets", True),
    ("monitoring.coreos.com/v1", "ServiceMonitor"): ("servicemonitors", True),
    ("observatory.happypatterns.org/v1alpha1", "ObservatoryCollector"): ("observatorycollectors", True),
}


def path_for(api_version: str, kind: str, namespace: str | None = None, name: str | None = None) -> str:
    """The REST path of a collection (no name) or an object."""
    plural, namespaced = RESOURCES[(api_version, kind)]
    base = f"/api/{api_version}" if "/" not in api_version else f"/apis/{api_version}"
    if namespaced and namespace:
        base += f"/namespaces/{namespace}"
    base += f"/{plural}"
    return f"{base}/{name}" if name else base


class Kube:
    """One API server connection pool, shared by every handler."""

    def __init__(self, api_client: Any, *, field_manager: str) -> None:
        self.api = api_client
        self.field_manager = field_manager
        self._discovery: dict[str, tuple[float, bool]] = {}
        self._calls_lock = threading.Lock()
        self.calls: Counter[str] = Counter()
        """Requests sent, by HTTP method: a resync where nothing changed must add no PATCH/POST/PUT/DELETE."""
        self._nodes: tuple[float, list[Obj]] | None = None

    @classmethod
    def from_environment(cls, *, field_manager: str) -> Kube:
        """In-cluster service account, else ``$KUBECONFIG`` / ``~/.kube/config``."""
        try:
            k8s_config.load_incluster_config()  # type: ignore[no-untyped-call]  # the client ships no annotations
        except k8s_config.ConfigException:
            k8s_config.load_kube_config()  # type: ignore[no-untyped-call]
        return cls(k8s.ApiClient(), field_manager=field_manager)

    # --- raw ------------------------------------------------------------------------------

    def request(
        self,
        method: str,
        path: str,
        *,
        body: Any = None,
        query: Mapping[str, str] | None = None,
        content_type: str = "application/json",
        accept: str = "application/json",
    ) -> Obj:
        """One API call; non-2xx answers and transport failures raise ``errors.KubeError`` subclasses."""
        url = self.api.configuration.host + path
        if query:
            url += "?" + urllib.parse.urlencode(query)
        headers = {"Accept": accept, "Content-Type": content_type, "User-Agent": self.field_manager}
        self.api.update_params_for_auth(headers, [], ["BearerToken"], path, method, body)
        what = f"{method} {path}"
        with self._calls_lock:
            self.calls[method] += 1
        try:
            response = self.api.call_api(
                method, url, header_params=headers, body=body, _request_timeout=REQUEST_TIMEOUT
            )
            data = response.read()
        except (urllib3.exceptions.HTTPError, OSError) as exc:
            # Refused, reset or timed out: the API server is restarting or overloaded.
            raise errors.TemporaryError(f"{what}: {exc}") from exc
        text = data.decode("utf-8", "replace") if isinstance(data, bytes) else str(data or "")
        if not 200 <= response.status < 300:
            raise errors.from_response(response.status, text, response.headers, what=what)
        if not text:
            return {}
        parsed: Obj = json.loads(text)
        return parsed

    # --- verbs ----------------------------------------------------------------------------

    def get(self, path: str) -> Obj:
        return self.request("GET", path)

    def get_or_none(self, path: str) -> Obj | None:
        try:
            return self.get(path)
        except errors.NotFound:
            return None

    def metadata_or_none(self, path: str) -> Obj | None:
        """Only the metadata: used for Secrets, so the operator never receives a token it does not need."""
        try:
            return self.request("GET", path, accept=METADATA_ONLY)
        except errors.NotFound:
            return None

    def list_objects(self, path: str, *, label_selector: str | None = None) -> list[Obj]:
        query = {"labelSelector": label_selector} if label_selector else None
        items: list[Obj] = self.request("GET", path, query=query).get("items") or []
        return items

    def apply(self, obj: Obj, *, dry_run: bool = False) -> Obj:
        """Server-side apply with the operator's one field manager; ``force`` takes fields back from hand edits."""
        meta = obj["metadata"]
        path = path_for(obj["apiVersion"], obj["kind"], meta.get("namespace"), meta["name"])
        query = {"fieldManager": self.field_manager, "force": "true"}
        if dry_run:
            query["dryRun"] = "All"
        return self.request("PATCH", path, body=obj, query=query, content_type=APPLY)

    def delete(self, obj: Obj, *, propagation: str = "Background") -> None:
        meta = obj["metadata"]
        path = path_for(obj["apiVersion"], obj["kind"], meta.get("namespace"), meta["name"])
        body: Obj = {"kind": "DeleteOptions", "apiVersion": "v1", "propagationPolicy": propagation}
        uid = meta.get("uid")
        if uid:
            # Never delete a namesake that replaced the object we looked at.
            body["preconditions"] = {"uid": uid}
        with contextlib.suppress(errors.NotFound):  # already gone: the outcome we wanted
            self.request("DELETE", path, body=body)

    def patch_status(self, api_version: str, kind: str, namespace: str, name: str, status: Obj) -> Obj:
        """A JSON merge patch of the status subresource; ``None`` values remove stale fields."""
        path = path_for(api_version, kind, namespace, name) + "/status"
        return self.request("PATCH", path, body={"status": status}, content_type=MERGE)

    def has_api(self, api_version: str, *, ttl: float = 300.0) -> bool:
        """Whether the cluster serves ``api_version`` (e.g. monitoring.coreos.com/v1), cached for ``ttl`` seconds."""
        now = time.monotonic()
        cached = self._discovery.get(api_version)
        if cached and now - cached[0] < ttl:
            return cached[1]
        try:
            self.get(f"/apis/{api_version}")
            present = True
        except errors.NotFound:
            present = False
        except errors.KubeError:
            return cached[1] if cached else False  # keep the last answer through a blip
        self._discovery[api_version] = (now, present)
        return present

    def writes(self) -> int:
        """Write requests sent so far."""
        with self._calls_lock:
            return sum(n for method, n in self.calls.items() if method != "GET")

    def nodes(self, *, ttl: float = 5.0) -> list[Obj]:
        """Every Node, cached for ``ttl`` seconds: each collector's status needs them, the list rarely changes."""
        now = time.monotonic()
        if self._nodes is None or now - self._nodes[0] >= ttl:
            self._nodes = (now, self.list_objects(path_for("v1", "Node")))
        return self._nodes[1]

    # --- async wrappers -------------------------------------------------------------------

    async def aget_or_none(self, path: str) -> Obj | None:
        return await asyncio.to_thread(self.get_or_none, path)

    async def ametadata_or_none(self, path: str) -> Obj | None:
        return await asyncio.to_thread(self.metadata_or_none, path)

    async def alist_objects(self, path: str, *, label_selector: str | None = None) -> list[Obj]:
        return await asyncio.to_thread(self.list_objects, path, label_selector=label_selector)

    async def aapply(self, obj: Obj, *, dry_run: bool = False) -> Obj:
        return await asyncio.to_thread(lambda: self.apply(obj, dry_run=dry_run))

    async def adelete(self, obj: Obj) -> None:
        await asyncio.to_thread(self.delete, obj)

    async def apatch_status(self, api_version: str, kind: str, namespace: str, name: str, status: Obj) -> Obj:
        return await asyncio.to_thread(self.patch_status, api_version, kind, namespace, name, status)

    async def anodes(self) -> list[Obj]:
        return await asyncio.to_thread(self.nodes)

    async def ahas_api(self, api_version: str) -> bool:
        return await asyncio.to_thread(self.has_api, api_version)
