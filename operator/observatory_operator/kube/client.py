"""The operator's API client: plain camelCase dicts over aiohttp, server-side apply, watch streams.

Credentials come from ``login()`` (kopf's in-cluster and kubeconfig loaders), which kopf's own
login handler uses too, so both authenticate the same way; a 401 logs in again once (bound
service-account tokens rotate). Everything is async on kopf's
event loop: no worker threads. Every request is counted by verb and code (``metrics``), and
every write first passes the ``fence`` (leader election): a replica that may not write raises
instead of sending.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import logging
import os
import time
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass
from typing import Any, Final

import aiohttp
import kopf

from observatory_operator import __version__, metrics
from observatory_operator.kube import errors
from observatory_operator.objects import Obj

APPLY: Final = "application/apply-patch+yaml"
MERGE: Final = "application/merge-patch+json"
JSON: Final = "application/json"
REQUEST_TIMEOUT: Final = aiohttp.ClientTimeout(total=30.0, sock_connect=5.0)
"""A hung API server surfaces as a TemporaryError instead of a stuck round."""
WRITES: Final = frozenset({"create", "patch", "update", "delete"})

log = logging.getLogger("observatory_operator.kube")


@dataclass(frozen=True)
class Resource:
    """One API resource: what its objects say (apiVersion, kind) and where they live (plural, scope)."""

    api_version: str
    kind: str
    plural: str
    namespaced: bool = True

    @property
    def group(self) -> str:
        return self.api_version.rpartition("/")[0]

    def path(self, namespace: str | None = None, name: str | None = None) -> str:
        """The REST path of the collection (no name; every namespace when ``namespace`` is None) or one object."""
        base = f"/apis/{self.api_version}" if "/" in self.api_version else f"/api/{self.api_version}"
        if self.namespaced and namespace:
            base += f"/namespaces/{namespace}"
        base += f"/{self.plural}"
        return f"{base}/{name}" if name else base

    def __str__(self) -> str:
        return f"{self.plural}.{self.group}" if self.group else self.plural


CONFIGMAPS: Final = Resource("v1", "ConfigMap", "configmaps")
SERVICES: Final = Resource("v1", "Service", "services")
PODS: Final = Resource("v1", "Pod", "pods")
EVENTS: Final = Resource("v1", "Event", "events")
NODES: Final = Resource("v1", "Node", "nodes", namespaced=False)
DAEMONSETS: Final = Resource("apps/v1", "DaemonSet", "daemonsets")
DEPLOYMENTS: Final = Resource("apps/v1", "Deployment", "deployments")
NETWORKPOLICIES: Final = Resource("networking.k8s.io/v1", "NetworkPolicy", "networkpolicies")
LEASES: Final = Resource("coordination.k8s.io/v1", "Lease", "leases")
SERVICEMONITORS: Final = Resource("monitoring.coreos.com/v1", "ServiceMonitor", "servicemonitors")


def login() -> kopf.ConnectionInfo:
    """In a pod: its ServiceAccount's token; else ``$KUBECONFIG`` (or ~/.kube/config): a token or client certificate.

    kopf's own loaders, so the kubernetes package is never imported (it costs this process ~9 MB);
    exec plugins in a kubeconfig are not supported. In a pod the API server's address comes from
    ``KUBERNETES_SERVICE_HOST``/``_PORT``, as client-go's in-cluster config takes it, rather than the
    ``kubernetes.default.svc`` name kopf assumes (which needs the cluster's DNS).
    """
    settings = kopf.OperatorSettings()
    info: kopf.ConnectionInfo | None = kopf.login_with_service_account(settings=settings, logger=log)
    if info is not None:
        host, port = os.environ.get("KUBERNETES_SERVICE_HOST"), os.environ.get("KUBERNETES_SERVICE_PORT")
        if host and port:
            host = f"[{host}]" if ":" in host else host
            info = dataclasses.replace(info, server=f"https://{host}:{port}")
        return info
    info = kopf.login_with_kubeconfig(settings=settings, logger=log)
    if info is None:
        raise errors.PermanentError("no Kubernetes credentials: not in a pod, and no KUBECONFIG or ~/.kube/config")
    return info


class Kube:
    """One connection pool to the API server, shared by every round, watch and Event."""

    def __init__(
        self, *, field_manager: str, login: Callable[[], kopf.ConnectionInfo] = login, user_agent: str = ""
    ) -> None:
        self.field_manager = field_manager
        self.user_agent = user_agent or f"{field_manager}/{__version__}"
        self.fence: Callable[[], None] | None = None
        """Called before every write except the Lease's own: raises when this replica may not write."""
        self._login = login
        self._session: aiohttp.ClientSession | None = None
        self._server = ""
        self._discovery: dict[str, tuple[float, bool]] = {}
        self._discovery_locks: dict[str, asyncio.Lock] = {}

    # --- session ------------------------------------------------------------------------

    async def _connect(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            info = await asyncio.to_thread(self._login)  # reads files; the kubernetes loader is synchronous
            headers = {**info.as_http_headers(), "User-Agent": self.user_agent}
            self._server = info.server.rstrip("/")
            self._session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(ssl=info.as_ssl_context(), limit=32),
                headers=headers,
                timeout=REQUEST_TIMEOUT,
            )
        return self._session

    async def _relogin(self) -> None:
        if self._session is not None:
            await self._session.close()
        self._session = None

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    # --- raw ------------------------------------------------------------------------------

    async def request(
        self,
        verb: str,
        path: str,
        *,
        body: Any = None,
        query: Mapping[str, str] | None = None,
        content_type: str = JSON,
        fenced: bool = True,
    ) -> Obj:
        """One API call by its Kubernetes verb; non-2xx answers and transport failures raise ``errors.KubeError``."""
        if verb in WRITES and fenced and self.fence is not None:
            self.fence()
        method = {"get": "GET", "list": "GET", "create": "POST", "patch": "PATCH", "update": "PUT", "delete": "DELETE"}
        what = f"{verb} {path}"
        data = None if body is None else json.dumps(body).encode()
        for attempt in (1, 2):
            session = await self._connect()
            status, text, headers = 0, "", None
            try:
                async with session.request(
                    method[verb],
                    self._server + path,
                    params=dict(query or {}),
                    data=data,
                    headers={"Content-Type": content_type, "Accept": JSON},
                ) as response:
                    status, headers = response.status, response.headers
                    text = await response.text(errors="replace")
            except (aiohttp.ClientError, TimeoutError, OSError) as exc:
                # Refused, reset or timed out: the API server is restarting or overloaded.
                metrics.API_REQUESTS.labels(verb, "0").inc()
                raise errors.TemporaryError(f"{what}: {exc!r}") from exc
            metrics.API_REQUESTS.labels(verb, str(status)).inc()
            if status == 401 and attempt == 1:
                await self._relogin()  # a rotated token: load the credentials again, once
                continue
            break
        if not 200 <= status < 300:
            raise errors.from_response(status, text, headers, what=what)
        if not text:
            return {}
        parsed: Obj = json.loads(text)
        return parsed

    async def watch(self, path: str, query: Mapping[str, str], *, timeout_seconds: int) -> AsyncIterator[Obj]:
        """Watch events (``{"type", "object"}``) until the server ends the stream after ``timeout_seconds``."""
        session = await self._connect()
        params = {**query, "watch": "true", "allowWatchBookmarks": "true", "timeoutSeconds": str(timeout_seconds)}
        # No total timeout: the server ends the stream. A silent connection (bookmarks come every
        # minute or so) is dead well before the read timeout.
        timeout = aiohttp.ClientTimeout(total=None, sock_connect=5.0, sock_read=timeout_seconds + 90.0)
        try:
            async with session.get(self._server + path, params=params, timeout=timeout) as response:
                metrics.API_REQUESTS.labels("watch", str(response.status)).inc()
                if response.status == 401:
                    await self._relogin()
                if response.status != 200:
                    text = await response.text(errors="replace")
                    raise errors.from_response(response.status, text, response.headers, what=f"watch {path}")
                pending = b""
                async for chunk in response.content.iter_any():
                    pending += chunk
                    # Objects can be larger than any line limit: split on newlines ourselves.
                    *lines, pending = pending.split(b"\n")
                    for line in lines:
                        if line.strip():
                            yield json.loads(line)
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:
            metrics.API_REQUESTS.labels("watch", "0").inc()
            raise errors.TemporaryError(f"watch {path}: {exc!r}") from exc

    # --- verbs ----------------------------------------------------------------------------

    async def get(self, path: str) -> Obj:
        return await self.request("get", path)

    async def get_or_none(self, path: str) -> Obj | None:
        try:
            return await self.request("get", path)
        except errors.NotFound:
            return None

    async def list_objects(
        self, path: str, *, label_selector: str | None = None, field_selector: str | None = None
    ) -> tuple[list[Obj], str]:
        """Items and the list's resourceVersion, served from the API server's watch cache (``resourceVersion=0``)."""
        query = {"resourceVersion": "0"}
        if label_selector:
            query["labelSelector"] = label_selector
        if field_selector:
            query["fieldSelector"] = field_selector
        answer = await self.request("list", path, query=query)
        items: list[Obj] = answer.get("items") or []
        return items, str((answer.get("metadata") or {}).get("resourceVersion") or "")

    async def apply(self, obj: Obj, resource: Resource, *, dry_run: bool = False) -> Obj:
        """Server-side apply with the operator's one field manager; ``force`` takes fields back from hand edits."""
        meta = obj["metadata"]
        query = {"fieldManager": self.field_manager, "force": "true"}
        if dry_run:
            query["dryRun"] = "All"
        return await self.request(
            "patch", resource.path(meta.get("namespace"), meta["name"]), body=obj, query=query, content_type=APPLY
        )

    async def delete(self, obj: Obj, resource: Resource, *, propagation: str = "Background") -> None:
        meta = obj["metadata"]
        body: Obj = {"kind": "DeleteOptions", "apiVersion": "v1", "propagationPolicy": propagation}
        if meta.get("uid"):
            # Never delete a namesake that replaced the object we looked at.
            body["preconditions"] = {"uid": meta["uid"]}
        with contextlib.suppress(errors.NotFound):  # already gone: the outcome we wanted
            await self.request("delete", resource.path(meta.get("namespace"), meta["name"]), body=body)

    async def patch_status(self, resource: Resource, namespace: str, name: str, uid: str, status: Obj) -> Obj:
        """A JSON merge patch of the status subresource; ``None`` values remove stale fields.

        The uid rides along as a precondition: a round that outlived its object never writes its
        status onto a namesake created since (the API server answers 409 Conflict).
        """
        body = {"metadata": {"uid": uid}, "status": status}
        return await self.request("patch", resource.path(namespace, name) + "/status", body=body, content_type=MERGE)

    async def create(self, path: str, body: Obj, *, fenced: bool = True) -> Obj:
        return await self.request("create", path, body=body, fenced=fenced)

    async def update(self, path: str, body: Obj, *, fenced: bool = True) -> Obj:
        return await self.request("update", path, body=body, fenced=fenced)

    async def served(self, api_version: str, *, ttl: float = 300.0) -> bool:
        """Whether the cluster serves ``api_version`` (discovery, cached ``ttl`` seconds; no RBAC needed).

        One request per expiry, however many rounds ask at once (they wait for its answer).
        """
        lock = self._discovery_locks.setdefault(api_version, asyncio.Lock())
        async with lock:
            now = time.monotonic()
            cached = self._discovery.get(api_version)
            if cached and now - cached[0] < ttl:
                return cached[1]
            try:
                await self.get(f"/apis/{api_version}")
                present = True
            except errors.NotFound:
                present = False
            except errors.KubeError:
                return cached[1] if cached else False  # keep the last answer through a blip
            self._discovery[api_version] = (now, present)
            return present


__all__ = [
    "CONFIGMAPS",
    "DAEMONSETS",
    "EVENTS",
    "LEASES",
    "NODES",
    "PODS",
    "SERVICEMONITORS",
    "SERVICES",
    "Kube",
    "Resource",
]
