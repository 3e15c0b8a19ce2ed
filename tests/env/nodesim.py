"""Simulated nodes: Node objects and leases, kubelet-like pod status, and project pods run as processes.

There is no kubelet and no container runtime here, so this module plays the kubelet for N
Node objects it registers (zone and pool labels, one node tainted, a loopback InternalIP
``127.0.1.N`` each, leases renewed in ``kube-node-lease``). Node and pod IPs are leased
machine-wide (``LoopbackIPs``), so concurrent beds on one machine never share an address.

For every pod bound to one of those nodes it reports what a kubelet would: phase,
conditions (PodReadyToStartContainers, Initialized, ContainersReady, Ready, PodScheduled),
containerStatuses (state, ready, started, restartCount, lastState), hostIP(s), podIP(s)
and startTime. Every pod gets a unique loopback IP ``127.0.x.y`` (x ≥ 2); hostNetwork pods
get their node's IP. Deleting a pod stops its processes (SIGTERM, SIGKILL after the grace
period) and then completes the deletion the way a kubelet does (grace period 0).

Containers whose image starts with ``PROJECT_IMAGE`` really run: ``command`` + ``args``
(combined with the image's ``IMAGE_ENTRYPOINT``/``IMAGE_CMD`` as a runtime does) become a
local process whose executable is looked up first in the repository's ``.venv/bin`` (so
``observatory-agent``, ``python`` or ``/app/.venv/bin/observatory-agent`` all resolve there),
then on PATH. The process gets:

* the pod's env: literal values with ``$(VAR)`` expansion, downward-API ``fieldRef``
  (metadata.name/namespace/uid/labels/annotations, spec.nodeName, spec.serviceAccountName,
  status.podIP(s), status.hostIP(s)), ``resourceFieldRef``, ``configMapKeyRef`` /
  ``secretKeyRef`` and ``envFrom``; plus PATH (venv first), HOSTNAME, PYTHONUNBUFFERED and
  KUBERNETES_SERVICE_HOST/PORT(_HTTPS) pointing at the real API server (its loopback address,
  which its serving certificate covers);
* its volumes, materialised under a per-pod directory: configMap, secret, downwardAPI and
  projected sources are written the kubelet's way (files are symlinks into ``..data``,
  which points at a timestamped directory and is swapped atomically when the source
  changes); emptyDir is a fresh directory; hostPath is the real host path, except a
  ``DirectoryOrCreate`` one (a directory pods write to) which is the node's own,
  ``<work>/hosts/<node>/<path>``: simulated nodes share this machine's disk, real ones do not.
  ``subPathExpr`` expands the container's literal and downward-API env. A projected
  ``serviceAccountToken`` source is a bound token from the TokenRequest API for the pod's
  ServiceAccount, renewed at 80 % of its lifetime, so the ``kube-api-access-*`` volume that
  ServiceAccount admission adds (token, ``kube-root-ca.crt``'s ``ca.crt``, namespace) is what
  in-cluster clients expect at ``/var/run/secrets/kubernetes.io/serviceaccount``;
* **the mount-path rewrite rule**: a local process cannot see container mount paths, so
  every arg, env value and workingDir that equals a volumeMount's ``mountPath`` or starts
  with ``mountPath + "/"`` has that prefix replaced by the materialised directory (longest
  mountPath first). ``--flag=/mount/path`` is rewritten the same way after the ``=``.
  Paths a program builds itself from constants are not rewritten: pass them in args/env.

Namespaces, emulated for Python: ``podshim/sitecustomize.py`` is on every project process's
PYTHONPATH. It pins wildcard binds (``0.0.0.0``/``""``) to the pod IP, so three agents can all
serve ``:8080`` as they would in their own network namespaces (wildcard IPv6 binds fail with
EADDRNOTAVAIL, which asyncio skips); and it maps Python-level file access (``open``,
``os.stat``, ``os.listdir``, ``os.scandir``, ...) under a mountPath to the materialised
directory, so a path that only appears inside a config file (a token file, say) works too.

Readiness follows the readinessProbe (httpGet, tcpSocket, exec; against the pod IP) with
its thresholds; probe periods are capped at ``max_probe_period`` so tests do not wait out
10 s defaults. A livenessProbe that fails its threshold restarts the container. A process
that exits is restarted per restartPolicy with exponential backoff (CrashLoopBackOff while
waiting), counting restartCount. Output goes to ``<logs>/pods/<ns>_<pod>_<container>.log``
(stdout and stderr, appended across restarts; each start adds one ``=== HH:MM:SS start: argv`` line).

Containers of any other image get status only: running and ready as soon as the pod is
bound (their probes are not run: there is nothing to probe).

Not simulated: securityContext (processes run as the test runner's user; an init container that
asks for root, ``runAsUser: 0``, completes without running when the runner is not root: what it
would do as root, a chown, is moot when every process runs as one user), resource limits,
image pulls, and most of the kubelet's own API: only ``/containerLogs`` is served (on
``<node IP>:10250``), so ``kubectl logs [-f] [--previous] [--tail]`` works but ``exec``,
``port-forward`` and ``attach`` do not. clusterTrustBundle projections are not written.
"""

from __future__ import annotations

import base64
import contextlib
import datetime as dt
import hashlib
import http.server
import json
import logging
import os
import re
import shutil
import signal
import socket
import ssl
import subprocess
import tempfile
import threading
import time
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from tests.env.kube import ApiError, Kube, Obj, now_rfc3339
from tests.env.procs import Process, wait_for

log = logging.getLogger("happy-observatory.nodesim")

PROJECT_IMAGE = "ghcr.io/happy-patterns-org/happy-observatory"
# The image's ENTRYPOINT and CMD (docker/Dockerfile), combined with command/args the way a runtime does.
IMAGE_ENTRYPOINT: list[str] = []
IMAGE_CMD = ["observatory-agent", "run"]
REPO = Path(__file__).resolve().parents[2]
VENV_BIN = REPO / ".venv" / "bin"
POD_SHIM = Path(__file__).resolve().parent / "podshim"
KUBELET_VERSION = "v1.34.4"
POOL_LABEL = "happypatterns.org/pool"
ZONE_LABEL = "topology.kubernetes.io/zone"
NOT_READY_TAINT = "node.kubernetes.io/not-ready"
LEASE_SECONDS = 40
TICK = 0.2


@dataclass(frozen=True)
class SimNode:
    name: str
    ip: str
    zone: str
    pool: str
    taints: tuple[tuple[str, str, str], ...] = ()  # (key, value, effect)

    @property
    def tainted(self) -> bool:
        return bool(self.taints)


def default_nodes(count: int = 3, prefix: str = "node") -> list[SimNode]:
    """``count`` nodes over three zones; the last one is a tainted ``gpu`` pool node.

    Their IPs (``127.0.1.N``) are only preferences: ``NodeSimulator.start()`` leases free ones.
    """
    nodes = []
    for i in range(1, count + 1):
        last = i == count and count > 1
        nodes.append(
            SimNode(
                name=f"{prefix}-{i}",
                ip=f"127.0.1.{i}",
                zone=f"zone-{'abc'[(i - 1) % 3]}",
                pool="gpu" if last else "general",
                taints=(("dedicated", "gpu", "NoSchedule"),) if last else (),
            )
        )
    return nodes


# --- a list+watch cache -----------------------------------------------------------------


class Informer:
    """Keeps a dict of every object at ``path`` current; survives watch expiry (410) and errors."""

    def __init__(self, kube: Kube, path: str, on_event: Callable[[str, Obj], None] | None = None) -> None:
        self.kube = kube
        self.path = path
        self.on_event = on_event
        self.store: dict[str, Obj] = {}
        self.synced = threading.Event()
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._run, name=f"informer {path}", daemon=True)

    @staticmethod
    def key(obj: Obj) -> str:
        meta = obj["metadata"]
        return f"{meta.get('namespace', '')}/{meta['name']}"

    def get(self, namespace: str, name: str) -> Obj | None:
        with self._lock:
            return self.store.get(f"{namespace}/{name}")

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()

    def _emit(self, kind: str, obj: Obj) -> None:
        if self.on_event is not None:
            try:
                self.on_event(kind, obj)
            except Exception:
                log.exception("handler for %s %s failed", kind, self.key(obj))

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self._watch(self._relist())
            except ApiError as exc:
                if exc.status != 410:  # 410: our version expired; relist at once
                    log.warning("watch %s: %s", self.path, exc)
                    self._stop.wait(1.0)
            except Exception as exc:  # connection refused/reset while the API server restarts
                if not self._stop.is_set():
                    log.debug("watch %s: %r", self.path, exc)
                    self._stop.wait(1.0)

    def _relist(self) -> str:
        items, rv = self.kube.list(self.path)
        fresh = {self.key(o): o for o in items}
        with self._lock:
            gone = [o for k, o in self.store.items() if k not in fresh]
            self.store = fresh
        for obj in gone:
            self._emit("DELETED", obj)
        for obj in items:
            self._emit("ADDED", obj)
        self.synced.set()
        return rv

    def _watch(self, rv: str) -> None:
        while not self._stop.is_set():
            for event in self.kube.watch(self.path, rv, timeout_seconds=30):
                obj = event["object"]
                rv = obj["metadata"].get("resourceVersion", rv)
                if event["type"] == "BOOKMARK":
                    continue
                with self._lock:
                    if event["type"] == "DELETED":
                        self.store.pop(self.key(obj), None)
                    else:
                        self.store[self.key(obj)] = obj
                self._emit(event["type"], obj)
                if self._stop.is_set():
                    return


# --- the kubelet's atomic volume writer -------------------------------------------------


def _runs_as_root(container: Obj) -> bool:
    return bool((container.get("securityContext") or {}).get("runAsUser") == 0)


def write_atomic(target: Path, payload: dict[str, tuple[bytes, int]]) -> None:
    """Publish ``payload`` (relative path → (content, mode)) the way the kubelet's AtomicWriter does.

    Files go into a fresh ``..<timestamp>`` directory; ``..data`` is swapped to it with one
    rename; every top-level entry is a symlink through ``..data``, so readers see either the
    old set or the new set, never a mix.
    """
    target.mkdir(parents=True, exist_ok=True)
    stamp = dt.datetime.now(dt.UTC).strftime("..%Y_%m_%d_%H_%M_%S.%f")
    fresh = Path(tempfile.mkdtemp(prefix=stamp, dir=target))
    for rel, (content, mode) in payload.items():
        dest = fresh / rel
        dest.parent.mkdir(parents=True, exist_ok=True)
        dest.write_bytes(content)
        dest.chmod(mode)
    fresh.chmod(0o755)
    data = target / "..data"
    old = Path(os.readlink(data)) if data.is_symlink() else None
    tmp = target / "..data_tmp"
    with contextlib.suppress(FileNotFoundError):
        tmp.unlink()
    tmp.symlink_to(fresh.name)
    tmp.replace(data)
    tops = {rel.split("/", 1)[0] for rel in payload}
    for top in tops:
        link = target / top
        if not link.is_symlink():
            link.symlink_to(Path("..data") / top)
    for entry in target.iterdir():
        if not entry.name.startswith("..") and entry.name not in tops:
            entry.unlink()
    if old is not None and old.name != fresh.name:
        shutil.rmtree(target / old, ignore_errors=True)


# --- helpers ----------------------------------------------------------------------------

_VAR_REF = re.compile(r"\$\$|\$\(([A-Za-z_][A-Za-z0-9_.-]*)\)")


def expand(value: str, env: dict[str, str]) -> str:
    """Kubernetes' ``$(VAR)`` expansion: known names are replaced, ``$$`` escapes, others stay."""

    def sub(m: re.Match[str]) -> str:
        if m.group(0) == "$$":
            return "$"
        return env.get(m.group(1), m.group(0))

    return _VAR_REF.sub(sub, value)


def rewrite_path(value: str, mounts: list[tuple[str, Path]]) -> str:
    """Apply the mount-path rewrite rule (see the module docstring) to one string."""
    for mount_path, real in mounts:
        mp = mount_path.rstrip("/") or "/"
        if value == mp or value.startswith(mp + "/"):
            rest = value[len(mp) :]
            base = str(real).rstrip("/")
            return base + rest if base or rest else "/"
    if value.startswith("-") and "=" in value:
        flag, _, rest = value.partition("=")
        rewritten = rewrite_path(rest, mounts)
        if rewritten != rest:
            return f"{flag}={rewritten}"
    return value


def container_command(command: list[str] | None, args: list[str] | None) -> list[str]:
    """What a runtime executes: ``command`` replaces ENTRYPOINT (and drops CMD), ``args`` replaces CMD."""
    if command:
        return [*command, *(args or [])]
    return [*IMAGE_ENTRYPOINT, *(args if args else IMAGE_CMD)]


def parse_quantity(q: str) -> float:
    units = {"m": 1e-3, "k": 1e3, "M": 1e6, "G": 1e9, "T": 1e12, "Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40}
    m = re.fullmatch(r"([0-9.]+)([a-zA-Z]*)", str(q).strip())
    if not m:
        raise ValueError(f"bad quantity {q!r}")
    return float(m.group(1)) * units.get(m.group(2), 1.0)


class NotReadyError(Exception):
    """A container cannot start yet (missing ConfigMap/Secret): the reason goes into its waiting state."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message


class LoopbackIPs:
    """Machine-wide leases on loopback IPs, so concurrent beds (test sessions, `make dev`) never share one.

    A lease is a file named after the IP holding the owner's pid, created with O_EXCL; a lease
    whose owner is dead is taken over.
    """

    def __init__(self, directory: Path | None = None) -> None:
        self.dir = directory or Path(tempfile.gettempdir()) / "happy-observatory-ips"
        self.dir.mkdir(parents=True, exist_ok=True)
        self.held: set[str] = set()
        self._lock = threading.Lock()

    def _try(self, ip: str) -> bool:
        path = self.dir / ip
        for _ in range(2):
            try:
                fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                try:
                    os.kill(int(path.read_text() or "0"), 0)
                    return False  # held by a live process
                except PermissionError:
                    return False
                except (ValueError, ProcessLookupError, FileNotFoundError):
                    path.unlink(missing_ok=True)  # stale: its owner is gone
                    continue
            with os.fdopen(fd, "w") as fh:
                fh.write(str(os.getpid()))
            self.held.add(ip)
            return True
        return False

    def acquire(self, candidates: Iterable[str]) -> str:
        with self._lock:
            for ip in candidates:
                if ip not in self.held and self._try(ip):
                    return ip
        raise RuntimeError(f"no free loopback IP left (leases in {self.dir})")

    def release(self, ip: str) -> None:
        with self._lock:
            if ip in self.held:
                self.held.discard(ip)
                (self.dir / ip).unlink(missing_ok=True)

    def release_all(self) -> None:
        for ip in list(self.held):
            self.release(ip)


# --- containers -------------------------------------------------------------------------


@dataclass
class Container:
    spec: Obj
    kind: str  # "init", "sidecar" or "main"
    project: bool
    log_path: Path
    proc: Process | None = None
    restart_count: int = 0
    started_at: str | None = None
    started_mono: float = 0.0
    state: str = "waiting"  # waiting | running | terminated
    waiting_reason: str = "ContainerCreating"
    waiting_message: str = ""
    terminated: Obj | None = None  # this run's terminated state, when state == terminated
    last_state: Obj | None = None
    next_start: float = 0.0
    backoff: float = 0.0
    ready: bool = False
    probe_ok: int = 0
    probe_fail: int = 0
    next_probe: float = 0.0
    live_fail: int = 0
    next_live: float = 0.0
    container_id: str = ""
    done: bool = False  # an init container that completed

    @property
    def name(self) -> str:
        return str(self.spec["name"])

    def status(self) -> Obj:
        if self.state == "running":
            state: Obj = {"running": {"startedAt": self.started_at}}
        elif self.state == "terminated":
            state = {"terminated": self.terminated}
        else:
            state = {
                "waiting": {
                    "reason": self.waiting_reason,
                    **({"message": self.waiting_message} if self.waiting_message else {}),
                }
            }
        image = self.spec.get("image", "")
        status: Obj = {
            "name": self.name,
            "image": image,
            "imageID": f"sim://{image}",
            "ready": self.ready,
            "restartCount": self.restart_count,
            "started": self.state == "running",
            "state": state,
        }
        if self.container_id:
            status["containerID"] = self.container_id
        if self.last_state:
            status["lastState"] = {"terminated": self.last_state}
        return status


# --- one pod ----------------------------------------------------------------------------


class PodWorker:
    """Plays the kubelet for one pod: volumes, processes, probes, status, deletion."""

    def __init__(self, sim: NodeSimulator, pod: Obj, node: SimNode, pod_ip: str) -> None:
        self.sim = sim
        self.pod = pod
        self.node = node
        self.pod_ip = pod_ip
        meta = pod["metadata"]
        self.namespace: str = meta["namespace"]
        self.name: str = meta["name"]
        self.uid: str = meta["uid"]
        # Readable, unique, and within NAME_MAX even for the longest namespace and pod names.
        self.dir = sim.work_dir / "pods" / (f"{self.namespace}_{self.name}"[:200] + f"_{self.uid[:8]}")
        self.start_time = now_rfc3339()
        spec = pod["spec"]
        self.restart_policy: str = spec.get("restartPolicy", "Always")
        self.containers: list[Container] = []
        for c in spec.get("initContainers") or []:
            kind = "sidecar" if c.get("restartPolicy") == "Always" else "init"
            self.containers.append(self._container(c, kind))
        for c in spec.get("containers") or []:
            self.containers.append(self._container(c, "main"))
        self.volume_dirs: dict[str, Path] = {}
        self.volume_hashes: dict[str, str] = {}
        self.tokens: dict[tuple[str, int], tuple[bytes, float]] = {}  # (volume, source) → (token, renew at)
        self.volumes_ready = False
        self.volume_error: NotReadyError | None = None
        self.conditions: dict[str, Obj] = {}
        self.last_sent: str = ""
        self.terminal = (pod.get("status") or {}).get("phase") in ("Succeeded", "Failed")
        self._gone = threading.Event()
        self._changed = threading.Event()
        self._lock = threading.Lock()
        self.thread = threading.Thread(target=self._run, name=f"pod {self.namespace}/{self.name}", daemon=True)

    def _container(self, spec: Obj, kind: str) -> Container:
        project = str(spec.get("image", "")).startswith(PROJECT_IMAGE)
        return Container(
            spec=spec, kind=kind, project=project, log_path=self.sim.pod_log(self.namespace, self.name, spec["name"])
        )

    # --- called from the informer thread ---

    def update(self, pod: Obj) -> None:
        with self._lock:
            self.pod = pod
        self._changed.set()

    def gone(self) -> None:
        self._gone.set()
        self._changed.set()

    # --- the loop ---

    def _run(self) -> None:
        try:
            self.dir.mkdir(parents=True, exist_ok=True)
            while not self.sim.stopping.is_set():
                with self._lock:
                    pod = self.pod
                if self._gone.is_set():
                    self._kill_all(grace=2.0)  # force-deleted: the kubelet just kills
                    return
                if pod["metadata"].get("deletionTimestamp"):
                    self._terminate(pod)
                    return
                if not self.terminal:
                    self._sync(pod)
                self._report()
                self._changed.wait(TICK)
                self._changed.clear()
        except Exception:
            log.exception("pod %s/%s: worker crashed", self.namespace, self.name)
        finally:
            # Whatever ended the loop, no process may outlive the worker that reaps it.
            self._kill_all(grace=2.0)
            shutil.rmtree(self.dir, ignore_errors=True)
            self.sim.forget(self.uid)

    def _terminate(self, pod: Obj) -> None:
        grace = pod["metadata"].get("deletionGracePeriodSeconds")
        if grace is None:
            grace = pod["spec"].get("terminationGracePeriodSeconds", 30)
        self._kill_all(grace=float(grace))
        with contextlib.suppress(ApiError):  # already gone (404) or replaced (409): nothing to finish
            self.sim.kube.delete(
                f"/api/v1/namespaces/{self.namespace}/pods/{self.name}",
                {"gracePeriodSeconds": 0, "preconditions": {"uid": self.uid}},
            )

    def _kill_all(self, grace: float) -> None:
        procs = [c.proc for c in self.containers if c.proc is not None and c.proc.alive()]
        # Signal everyone first, then wait: the grace period is the pod's, not per container.
        for proc in procs:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(proc.pid or 0, signal.SIGTERM)
        deadline = time.monotonic() + grace
        for proc in procs:
            if proc.popen is not None:
                with contextlib.suppress(subprocess.TimeoutExpired):
                    proc.popen.wait(timeout=max(0.0, deadline - time.monotonic()))
            proc.stop(grace=0)

    # --- volumes ---

    def _sync_volumes(self, pod: Obj) -> None:
        for vol in pod["spec"].get("volumes") or []:
            name = vol["name"]
            if "hostPath" in vol:
                path = Path(vol["hostPath"]["path"])
                if vol["hostPath"].get("type") == "DirectoryOrCreate":
                    path = self.sim.work_dir / "hosts" / self.node.name / path.relative_to("/")
                    path.mkdir(parents=True, exist_ok=True)
                self.volume_dirs[name] = path
                continue
            target = self.dir / "volumes" / name
            self.volume_dirs[name] = target
            payload = self._volume_payload(vol, pod)
            if payload is None:  # emptyDir and kinds with no content of their own
                target.mkdir(parents=True, exist_ok=True)
                continue
            digest = hashlib.sha256(
                json.dumps({k: [base64.b64encode(v).decode(), m] for k, (v, m) in sorted(payload.items())}).encode()
            ).hexdigest()
            if self.volume_hashes.get(name) != digest:
                write_atomic(target, payload)
                self.volume_hashes[name] = digest

    def _volume_payload(self, vol: Obj, pod: Obj) -> dict[str, tuple[bytes, int]] | None:
        if "configMap" in vol:
            return self._source_payload("configMap", vol["configMap"], vol["configMap"].get("defaultMode", 0o644))
        if "secret" in vol:
            src = dict(vol["secret"])
            src["name"] = src.get("secretName")
            return self._source_payload("secret", src, vol["secret"].get("defaultMode", 0o644))
        if "downwardAPI" in vol:
            return self._downward_payload(vol["downwardAPI"], pod, vol["downwardAPI"].get("defaultMode", 0o644))
        if "projected" in vol:
            mode = vol["projected"].get("defaultMode", 0o644)
            payload: dict[str, tuple[bytes, int]] = {}
            for i, src in enumerate(vol["projected"].get("sources") or []):
                if "configMap" in src:
                    payload.update(self._source_payload("configMap", src["configMap"], mode))
                elif "secret" in src:
                    payload.update(self._source_payload("secret", src["secret"], mode))
                elif "downwardAPI" in src:
                    payload.update(self._downward_payload(src["downwardAPI"], pod, mode))
                elif "serviceAccountToken" in src:
                    key = (vol["name"], i)
                    payload.update(self._token_payload(key, src["serviceAccountToken"], pod, mode))
                # clusterTrustBundle: alpha, and nothing of ours reads one.
            return payload
        return None

    def _token_payload(self, key: tuple[str, int], src: Obj, pod: Obj, mode: int) -> dict[str, tuple[bytes, int]]:
        """A bound service-account token from the TokenRequest API, renewed the kubelet's way.

        Bound to this pod (the API server rejects it once the pod is gone), for the source's
        audience (none: the API server's own), requested for ``expirationSeconds`` and renewed
        once 80 % of that has passed. Until the first token arrives the pod stays in
        ContainerCreating; a failed renewal keeps the old token and retries a few seconds later.
        """
        now = time.monotonic()
        cached = self.tokens.get(key)
        if cached is not None and now < cached[1]:
            return {src["path"]: (cached[0], mode)}
        account = pod["spec"].get("serviceAccountName") or "default"
        requested = int(src.get("expirationSeconds", 3600))
        spec: Obj = {
            "expirationSeconds": requested,
            "boundObjectRef": {"apiVersion": "v1", "kind": "Pod", "name": self.name, "uid": self.uid},
        }
        if src.get("audience"):
            spec["audiences"] = [src["audience"]]
        try:
            answer = self.sim.kube.create(
                f"/api/v1/namespaces/{self.namespace}/serviceaccounts/{account}/token",
                {"apiVersion": "authentication.k8s.io/v1", "kind": "TokenRequest", "spec": spec},
            )
        except (ApiError, OSError) as exc:
            if cached is not None:
                log.warning("pod %s/%s: token renewal failed, retrying: %s", self.namespace, self.name, exc)
                self.tokens[key] = (cached[0], now + 5.0)
                return {src["path"]: (cached[0], mode)}
            raise NotReadyError(
                "ContainerCreating", f'failed to fetch token for service account "{account}": {exc}'
            ) from exc
        token = str(answer["status"]["token"]).encode()
        expires = dt.datetime.fromisoformat(answer["status"]["expirationTimestamp"].replace("Z", "+00:00"))
        # The API server may extend a kube-api-access token's lifetime; renew on the requested one.
        lifetime = min(float(requested), (expires - dt.datetime.now(dt.UTC)).total_seconds())
        self.tokens[key] = (token, now + 0.8 * max(lifetime, 1.0))
        return {src["path"]: (token, mode)}

    def _source_payload(self, kind: str, src: Obj, mode: int) -> dict[str, tuple[bytes, int]]:
        store = self.sim.configmaps if kind == "configMap" else self.sim.secrets
        obj = store.get(self.namespace, src["name"])
        if obj is None:
            if src.get("optional"):
                return {}
            raise NotReadyError("ContainerCreating", f'{kind} "{src["name"]}" not found')
        files: dict[str, bytes] = {}
        if kind == "configMap":
            files.update({k: v.encode() for k, v in (obj.get("data") or {}).items()})
            files.update({k: base64.b64decode(v) for k, v in (obj.get("binaryData") or {}).items()})
        else:
            files.update({k: base64.b64decode(v) for k, v in (obj.get("data") or {}).items()})
        items = src.get("items")
        if not items:
            return {k: (v, mode) for k, v in files.items()}
        out: dict[str, tuple[bytes, int]] = {}
        for item in items:
            if item["key"] not in files:
                if src.get("optional"):
                    continue
                raise NotReadyError("ContainerCreating", f'{kind} "{src["name"]}" has no key {item["key"]!r}')
            out[item["path"]] = (files[item["key"]], item.get("mode", mode))
        return out

    def _downward_payload(self, src: Obj, pod: Obj, mode: int) -> dict[str, tuple[bytes, int]]:
        out: dict[str, tuple[bytes, int]] = {}
        for item in src.get("items") or []:
            if "fieldRef" in item:
                value = self._field(pod, item["fieldRef"]["fieldPath"])
            else:
                value = self._resource(item["resourceFieldRef"], None)
            out[item["path"]] = (value.encode(), item.get("mode", mode))
        return out

    # --- env ---

    def _field(self, pod: Obj, path: str) -> str:
        meta = pod["metadata"]
        m = re.fullmatch(r"metadata\.(labels|annotations)\['([^']+)'\]", path)
        if m:
            return str((meta.get(m.group(1)) or {}).get(m.group(2), ""))
        if path in ("metadata.labels", "metadata.annotations"):
            return "\n".join(f'{k}="{v}"' for k, v in sorted((meta.get(path.split(".")[1]) or {}).items()))
        values = {
            "metadata.name": self.name,
            "metadata.namespace": self.namespace,
            "metadata.uid": self.uid,
            "spec.nodeName": self.node.name,
            "spec.serviceAccountName": pod["spec"].get("serviceAccountName", "default"),
            "status.podIP": self.pod_ip,
            "status.podIPs": self.pod_ip,
            "status.hostIP": self.node.ip,
            "status.hostIPs": self.node.ip,
        }
        if path not in values:
            raise NotReadyError("CreateContainerConfigError", f"unsupported fieldPath {path!r}")
        return str(values[path])

    def _resource(self, ref: Obj, container: Obj | None) -> str:
        if container is None:
            container = next(c.spec for c in self.containers if c.spec["name"] == ref.get("containerName"))
        kind, _, res = ref["resource"].partition(".")
        value = ((container.get("resources") or {}).get(kind) or {}).get(res)
        if value is None:  # unset limits default to the node's allocatable, as the kubelet does
            value = self.sim.allocatable.get(res, "0")
        divisor = parse_quantity(ref.get("divisor", "1"))
        return str(int(-(-parse_quantity(value) // divisor)))

    def _env(self, pod: Obj, c: Container, mounts: list[tuple[str, Path]]) -> dict[str, str]:
        env: dict[str, str] = {
            "PATH": f"{VENV_BIN}{os.pathsep}{os.environ.get('PATH', '/usr/bin:/bin')}",
            "HOME": os.environ.get("HOME", "/root"),
            "LANG": os.environ.get("LANG", "C.UTF-8"),
            "HOSTNAME": self.name,
            "PYTHONUNBUFFERED": "1",
            "VIRTUAL_ENV": str(VENV_BIN.parent),
            "KUBERNETES_SERVICE_HOST": self.sim.kube.host,
            "KUBERNETES_SERVICE_PORT": str(self.sim.kube.port),
            "KUBERNETES_SERVICE_PORT_HTTPS": str(self.sim.kube.port),
            # podshim/sitecustomize.py pins wildcard binds to this IP (see the module docstring).
            "PYTHONPATH": str(POD_SHIM),
            "HAPPY_OBSERVATORY_POD_IP": self.pod_ip,
            "HAPPY_OBSERVATORY_MOUNTS": json.dumps([(m, str(r)) for m, r in mounts]),
            "HAPPY_OBSERVATORY_POD_DIR": str(self.dir),
        }
        for src in c.spec.get("envFrom") or []:
            prefix = src.get("prefix", "")
            ref = src.get("configMapRef") or src.get("secretRef") or {}
            store = self.sim.configmaps if "configMapRef" in src else self.sim.secrets
            obj = store.get(self.namespace, ref.get("name", ""))
            if obj is None:
                if ref.get("optional"):
                    continue
                raise NotReadyError("CreateContainerConfigError", f"envFrom {ref.get('name')!r} not found")
            for k, v in (obj.get("data") or {}).items():
                env[prefix + k] = v if "configMapRef" in src else base64.b64decode(v).decode()
        for var in c.spec.get("env") or []:
            name = var["name"]
            if "valueFrom" not in var:
                env[name] = rewrite_path(expand(var.get("value", ""), env), mounts)
                continue
            vf = var["valueFrom"]
            if "fieldRef" in vf:
                env[name] = self._field(pod, vf["fieldRef"]["fieldPath"])
            elif "resourceFieldRef" in vf:
                env[name] = self._resource(vf["resourceFieldRef"], c.spec)
            else:
                is_cm = "configMapKeyRef" in vf
                ref = vf["configMapKeyRef"] if is_cm else vf["secretKeyRef"]
                obj = (self.sim.configmaps if is_cm else self.sim.secrets).get(self.namespace, ref["name"])
                data = (obj or {}).get("data") or {}
                if ref["key"] not in data:
                    if ref.get("optional"):
                        continue
                    raise NotReadyError(
                        "CreateContainerConfigError",
                        f"couldn't find key {ref['key']} in {'ConfigMap' if is_cm else 'Secret'} "
                        f"{self.namespace}/{ref['name']}",
                    )
                env[name] = data[ref["key"]] if is_cm else base64.b64decode(data[ref["key"]]).decode()
        return env

    def _mounts(self, c: Container) -> list[tuple[str, Path]]:
        mounts = []
        for m in c.spec.get("volumeMounts") or []:
            base = self.volume_dirs.get(m["name"])
            if base is None:
                continue
            real = base / m["subPath"] if m.get("subPath") else base
            if m.get("subPathExpr"):
                real = base / expand(m["subPathExpr"], self._literal_env(c))
                real.mkdir(parents=True, exist_ok=True)  # as the kubelet creates a missing subpath
            mounts.append((str(m["mountPath"]), real))
        return sorted(mounts, key=lambda t: len(t[0]), reverse=True)

    def _literal_env(self, c: Container) -> dict[str, str]:
        """The container's literal and downward-API env: what the kubelet expands in ``subPathExpr``."""
        env: dict[str, str] = {}
        for var in c.spec.get("env") or []:
            field_ref = (var.get("valueFrom") or {}).get("fieldRef")
            if field_ref:
                env[var["name"]] = self._field(self.pod, field_ref["fieldPath"])
            elif "valueFrom" not in var:
                env[var["name"]] = expand(var.get("value", ""), env)
        return env

    def _argv(self, c: Container, env: dict[str, str], mounts: list[tuple[str, Path]]) -> list[str]:
        command = container_command(c.spec.get("command"), c.spec.get("args"))
        argv = [rewrite_path(expand(a, env), mounts) for a in command]
        exe = argv[0]
        candidate = VENV_BIN / Path(exe).name
        if candidate.exists():
            argv[0] = str(candidate)
        elif not Path(exe).is_absolute() or not Path(exe).exists():
            found = shutil.which(exe)
            if found is None:
                raise FileNotFoundError(f'exec: "{exe}": executable file not found in $PATH')
            argv[0] = found
        return argv

    # --- container lifecycle ---

    def _sync(self, pod: Obj) -> None:
        try:
            self._sync_volumes(pod)
            self.volumes_ready = True
            self.volume_error = None
        except NotReadyError as exc:
            # Before the first start: hold the pod in ContainerCreating. After it: keep running
            # on the last good files, as the kubelet does when a source disappears.
            self.volume_error = exc
        now = time.monotonic()
        init_pending = False
        for c in self.containers:
            if c.kind == "init":
                if init_pending or c.done:
                    continue
                if not c.project or (_runs_as_root(c.spec) and os.geteuid() != 0):
                    self._complete_without_process(c)
                    continue
                self._drive(c, pod, now)
                if not c.done:
                    init_pending = True
                continue
            if init_pending:
                continue
            if not c.project:
                if c.state != "running":
                    c.state, c.started_at, c.ready = "running", now_rfc3339(), True
                    c.container_id = f"sim://{self.uid[:8]}-{c.name}"
                continue
            self._drive(c, pod, now)
            self._probe(c, now)

    def _complete_without_process(self, c: Container) -> None:
        stamp = now_rfc3339()
        c.state, c.done, c.ready = "terminated", True, False
        c.terminated = {"exitCode": 0, "reason": "Completed", "startedAt": stamp, "finishedAt": stamp}

    def _drive(self, c: Container, pod: Obj, now: float) -> None:
        """Start, reap and restart one project container."""
        if c.proc is not None and c.state == "running":
            rc = c.proc.returncode()
            if rc is None:
                return
            self._exited(c, rc, now)
        if c.state == "terminated" or c.done:
            return
        if now < c.next_start:
            return
        if not self.volumes_ready:
            c.waiting_reason = self.volume_error.reason if self.volume_error else "ContainerCreating"
            c.waiting_message = self.volume_error.message if self.volume_error else ""
            return
        mounts = self._mounts(c)
        try:
            env = self._env(pod, c, mounts)
            argv = self._argv(c, env, mounts)
        except NotReadyError as exc:
            c.waiting_reason, c.waiting_message = exc.reason, exc.message
            return
        except FileNotFoundError as exc:
            # What a runtime reports for a bad command: the container fails and is retried.
            if c.started_at is not None:
                c.restart_count += 1
            c.started_at = now_rfc3339()
            c.proc = None
            c.waiting_reason, c.waiting_message = "RunContainerError", str(exc)
            self._exited(c, 128, now, reason="StartError", message=str(exc))
            return
        workdir = c.spec.get("workingDir")
        cwd = Path(rewrite_path(workdir, mounts)) if workdir else self.dir
        cwd.mkdir(parents=True, exist_ok=True)
        if c.started_at is not None:
            c.restart_count += 1
        c.proc = Process(f"{self.namespace}/{self.name}/{c.name}", argv, log=c.log_path, env=env, cwd=cwd)
        c.proc.start()
        c.container_id = f"sim://{c.proc.pid}"
        c.state, c.started_at, c.started_mono = "running", now_rfc3339(), now
        c.waiting_reason, c.waiting_message = "", ""
        c.ready = False
        c.probe_ok = c.probe_fail = c.live_fail = 0
        probe = c.spec.get("readinessProbe") or {}
        c.next_probe = now + float(probe.get("initialDelaySeconds", 0))
        live = c.spec.get("livenessProbe") or {}
        c.next_live = now + float(live.get("initialDelaySeconds", 0)) + self._period(live)

    def _exited(self, c: Container, rc: int, now: float, reason: str | None = None, message: str = "") -> None:
        finished = now_rfc3339()
        term: Obj = {
            "exitCode": rc,
            "reason": reason or ("Completed" if rc == 0 else "Error"),
            "startedAt": c.started_at,
            "finishedAt": finished,
            "containerID": c.container_id,
        }
        if message:
            term["message"] = message
        c.ready = False
        if c.kind == "init" and rc == 0:
            c.state, c.done, c.terminated = "terminated", True, term
            return
        policy = self.restart_policy if c.kind != "sidecar" else "Always"
        if policy == "Always" or (policy == "OnFailure" and rc != 0):
            if now - c.started_mono > 2 * self.sim.backoff_max:
                c.backoff = 0.0  # a long healthy run forgives earlier crashes, as the kubelet does
            c.backoff = min(self.sim.backoff_max, c.backoff * 2 if c.backoff else self.sim.backoff_initial)
            c.next_start = now + c.backoff
            c.last_state = term
            c.state = "waiting"
            c.waiting_reason = "CrashLoopBackOff"
            c.waiting_message = f"back-off {c.backoff:g}s restarting failed container={c.name} pod={self.name}"
        else:
            c.state, c.terminated = "terminated", term

    def _period(self, probe: Obj) -> float:
        return min(float(probe.get("periodSeconds", 10)), self.sim.max_probe_period)

    def _probe(self, c: Container, now: float) -> None:
        if c.state != "running":
            return
        probe = c.spec.get("readinessProbe")
        if not probe:
            c.ready = True
        elif now >= c.next_probe:
            c.next_probe = now + self._period(probe)
            if self._run_probe(c, probe):
                c.probe_ok, c.probe_fail = c.probe_ok + 1, 0
                if c.probe_ok >= int(probe.get("successThreshold", 1)):
                    c.ready = True
            else:
                c.probe_ok, c.probe_fail = 0, c.probe_fail + 1
                if c.probe_fail >= int(probe.get("failureThreshold", 3)) or not c.ready:
                    c.ready = False
        live = c.spec.get("livenessProbe")
        if live and now >= c.next_live:
            c.next_live = now + self._period(live)
            if self._run_probe(c, live):
                c.live_fail = 0
            else:
                c.live_fail += 1
                if c.live_fail >= int(live.get("failureThreshold", 3)) and c.proc is not None:
                    log.info("pod %s/%s: %s failed liveness, restarting", self.namespace, self.name, c.name)
                    c.proc.stop(grace=float(self.pod["spec"].get("terminationGracePeriodSeconds", 30)))

    def _port(self, c: Container, port: int | str) -> int:
        if isinstance(port, int) or str(port).isdigit():
            return int(port)
        for p in c.spec.get("ports") or []:
            if p.get("name") == port:
                return int(p["containerPort"])
        raise ValueError(f"no port named {port!r}")

    def _run_probe(self, c: Container, probe: Obj) -> bool:
        timeout = float(probe.get("timeoutSeconds", 1))
        try:
            if "httpGet" in probe:
                h = probe["httpGet"]
                scheme = str(h.get("scheme", "HTTP")).lower()
                url = f"{scheme}://{h.get('host') or self.pod_ip}:{self._port(c, h['port'])}{h.get('path', '/')}"
                headers = {x["name"]: x["value"] for x in h.get("httpHeaders") or []}
                req = urllib.request.Request(url, headers={"User-Agent": "kube-probe/1.34", **headers})
                with urllib.request.urlopen(req, timeout=timeout) as resp:
                    return bool(200 <= resp.status < 400)
            if "tcpSocket" in probe or "grpc" in probe:
                t = probe.get("tcpSocket") or probe["grpc"]
                with socket.create_connection(
                    (t.get("host") or self.pod_ip, self._port(c, t["port"])), timeout=timeout
                ):
                    return True
            if "exec" in probe:
                mounts = self._mounts(c)
                env = self._env(self.pod, c, mounts)
                cmd = [rewrite_path(expand(a, env), mounts) for a in probe["exec"]["command"]]
                exe = VENV_BIN / Path(cmd[0]).name
                if exe.exists():
                    cmd[0] = str(exe)
                done = subprocess.run(cmd, env=env, capture_output=True, timeout=timeout, check=False)
                return done.returncode == 0
        except Exception:
            return False
        return True

    # --- status ---

    def _condition(self, kind: str, ok: bool, reason: str = "") -> Obj:
        status = "True" if ok else "False"
        prev = self.conditions.get(kind)
        # A condition keeps its lastTransitionTime while its status holds.
        since = prev["lastTransitionTime"] if prev and prev["status"] == status else now_rfc3339()
        cond: Obj = {"type": kind, "status": status, "lastProbeTime": None, "lastTransitionTime": since}
        if reason and not ok:
            cond["reason"] = reason
        self.conditions[kind] = cond
        return cond

    def _phase(self) -> str:
        if self.terminal:
            return str((self.pod.get("status") or {}).get("phase"))
        mains = [c for c in self.containers if c.kind == "main"]
        if mains and all(c.state == "terminated" for c in mains):
            return "Succeeded" if all((c.terminated or {}).get("exitCode") == 0 for c in mains) else "Failed"
        if any(c.kind == "init" and c.state == "terminated" and not c.done for c in self.containers):
            return "Failed"
        if all(c.started_at is None for c in mains):
            return "Pending"
        return "Running"

    def _report(self) -> None:
        if self.terminal:
            return
        inits = [c for c in self.containers if c.kind != "main"]
        mains = [c for c in self.containers if c.kind == "main"]
        initialized = all(c.done or (c.kind == "sidecar" and c.state == "running") for c in inits)
        containers_ready = bool(mains) and all(c.ready for c in mains) and initialized
        phase = self._phase()
        ip = [{"ip": self.pod_ip}]
        status: Obj = {
            "phase": phase,
            "hostIP": self.node.ip,
            "hostIPs": [{"ip": self.node.ip}],
            "podIP": self.pod_ip,
            "podIPs": ip,
            "startTime": self.start_time,
            "conditions": [
                self._condition("PodReadyToStartContainers", self.volumes_ready),
                self._condition("Initialized", initialized, "ContainersNotInitialized"),
                self._condition("ContainersReady", containers_ready, "ContainersNotReady"),
                self._condition("Ready", containers_ready, "ContainersNotReady"),
                self._condition("PodScheduled", True),
            ],
            "containerStatuses": [c.status() for c in mains],
        }
        if inits:
            status["initContainerStatuses"] = [c.status() for c in inits]
        generation = self.pod["metadata"].get("generation")
        if generation is not None:  # the kubelet reports which pod spec it acted on (1.34+)
            status["observedGeneration"] = generation
            for cond in status["conditions"]:
                cond["observedGeneration"] = generation
        body = json.dumps(status, sort_keys=True)
        if body == self.last_sent:
            return
        try:
            # A merge patch replaces lists whole, so the reported set is exactly ours.
            self.sim.kube.patch(
                f"/api/v1/namespaces/{self.namespace}/pods/{self.name}/status", {"status": status}, "merge"
            )
            self.last_sent = body
        except ApiError as exc:
            if exc.status == 404:
                self._gone.set()
            else:
                log.warning("pod %s/%s: status patch failed: %s", self.namespace, self.name, exc)
        except OSError as exc:
            log.debug("pod %s/%s: status patch failed: %r", self.namespace, self.name, exc)

    def pid(self, container: str) -> int | None:
        c = next((c for c in self.containers if c.name == container), None)
        return c.proc.pid if c is not None and c.proc is not None and c.proc.alive() else None


# --- the kubelet's log endpoint -----------------------------------------------------------

KUBELET_PORT = 10250
_START_MARKER = re.compile(r"^=== \d\d:\d\d:\d\d start: .*$\n?", re.M)


def container_log(path: Path, previous: bool = False) -> tuple[str, int]:
    """One run's output from a container's log file (the current run, or the one before) and its end offset."""
    text = path.read_text(errors="replace")
    runs = _START_MARKER.split(text)[1:] or [text]
    if previous:
        if len(runs) < 2:
            raise FileNotFoundError("no previous run")
        return runs[-2], 0
    return runs[-1], len(text.encode())


class KubeletServer:
    """Serves ``/containerLogs/<ns>/<pod>/<container>`` on the node's IP, so ``kubectl logs`` works.

    The API server proxies pod logs to ``<InternalIP>:10250`` over TLS without verifying the
    kubelet's certificate (no --kubelet-certificate-authority), so a self-signed one serves.
    """

    def __init__(self, sim: NodeSimulator, node: SimNode, cert: Path, key: Path) -> None:
        self.sim = sim
        self.node = node
        handler = self._handler()
        self.httpd = http.server.ThreadingHTTPServer((node.ip, KUBELET_PORT), handler)
        self.httpd.daemon_threads = True
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.load_cert_chain(str(cert), str(key))
        self.httpd.socket = ctx.wrap_socket(self.httpd.socket, server_side=True)
        self.thread = threading.Thread(target=self.httpd.serve_forever, name=f"kubelet {node.name}", daemon=True)

    def _handler(self) -> type[http.server.BaseHTTPRequestHandler]:
        sim = self.sim

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, format: str, *args: Any) -> None:
                log.debug("kubelet: " + format, *args)

            def do_GET(self) -> None:
                url = urllib.parse.urlsplit(self.path)
                query = urllib.parse.parse_qs(url.query)
                parts = url.path.strip("/").split("/")
                if len(parts) != 4 or parts[0] != "containerLogs":
                    self.send_error(404, "only /containerLogs is simulated")
                    return
                _, ns, pod, container = parts
                path = sim.pod_log(ns, pod, container)
                try:
                    body, offset = container_log(path, previous=query.get("previous", [""])[0] == "true")
                except FileNotFoundError:
                    self.send_error(404, f"no logs for {ns}/{pod}/{container}")
                    return
                tail = query.get("tailLines", [""])[0]
                if tail.isdigit():
                    body = "".join(body.splitlines(keepends=True)[-int(tail) :]) if int(tail) else ""
                self.send_response(200)
                self.send_header("Content-Type", "text/plain")
                self.end_headers()
                self.wfile.write(body.encode())
                if query.get("follow", [""])[0] == "true":
                    self._follow(path, offset, ns, pod)

            def _follow(self, path: Path, offset: int, ns: str, pod: str) -> None:
                with contextlib.suppress(OSError), path.open("rb") as fh:
                    fh.seek(offset)
                    while not sim.stopping.is_set() and sim.worker(ns, pod) is not None:
                        chunk = fh.read()
                        if chunk:
                            self.wfile.write(chunk)
                            self.wfile.flush()
                        else:
                            time.sleep(0.2)

        return Handler

    def start(self) -> None:
        self.thread.start()

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


# --- the simulator ----------------------------------------------------------------------


@dataclass
class NodeSimulator:
    """N simulated kubelets sharing one set of watches. ``start()`` registers and readies the nodes."""

    kube: Kube
    logs_dir: Path
    work_dir: Path
    nodes: list[SimNode] = field(default_factory=default_nodes)
    capacity: dict[str, str] = field(
        default_factory=lambda: {"cpu": "4", "memory": "8Gi", "pods": "110", "ephemeral-storage": "100Gi"}
    )
    backoff_initial: float = 1.0
    backoff_max: float = 30.0
    max_probe_period: float = 2.0
    lease_interval: float = 10.0

    def __post_init__(self) -> None:
        self.stopping = threading.Event()
        self.workers: dict[str, PodWorker] = {}
        self._lock = threading.Lock()
        self._next_ip = 0
        self.ips = LoopbackIPs()
        self.kubelets: list[KubeletServer] = []
        self.by_name = {n.name: n for n in self.nodes}
        self._since: dict[tuple[str, str], str] = {}
        self.allocatable = dict(self.capacity)
        self.configmaps = Informer(self.kube, "/api/v1/configmaps", self._on_source)
        self.secrets = Informer(self.kube, "/api/v1/secrets", self._on_source)
        self.pods = Informer(self.kube, "/api/v1/pods", self._on_pod)
        self._lease_thread = threading.Thread(target=self._heartbeat, name="node leases", daemon=True)

    @property
    def tainted(self) -> list[SimNode]:
        return [n for n in self.nodes if n.tainted]

    def pod_log(self, namespace: str, pod: str, container: str) -> Path:
        """Where a project container's output goes (appended across restarts)."""
        return self.logs_dir / "pods" / f"{namespace}_{pod}_{container}.log"

    def worker(self, namespace: str, pod: str) -> PodWorker | None:
        with self._lock:
            return next((w for w in self.workers.values() if (w.namespace, w.name) == (namespace, pod)), None)

    # --- lifecycle ---

    def start(self, timeout: float = 60.0) -> None:
        started = time.monotonic()
        self.work_dir.mkdir(parents=True, exist_ok=True)
        (self.logs_dir / "pods").mkdir(parents=True, exist_ok=True)
        leased = []
        for node in self.nodes:
            preferred = [node.ip] if node.ip else []
            ip = self.ips.acquire([*preferred, *(f"127.0.1.{i}" for i in range(1, 255))])
            leased.append(replace(node, ip=ip))
        self.nodes[:] = leased
        self.by_name = {n.name: n for n in self.nodes}
        self._start_kubelets()
        for node in self.nodes:
            self._register(node)
            self._renew_lease(node)
        for informer in (self.configmaps, self.secrets):
            informer.start()
        for informer in (self.configmaps, self.secrets):
            wait_for(informer.synced.is_set, timeout=timeout, what=f"list {informer.path}")
        self.pods.start()
        self._lease_thread.start()
        # The API server taints every new node not-ready; the node-lifecycle controller lifts it
        # once it sees Ready. Until then nothing but DaemonSet pods would schedule.
        wait_for(self._all_schedulable, timeout=timeout, what="nodes without the not-ready taint", interval=0.25)
        self.startup_seconds = time.monotonic() - started

    def _start_kubelets(self) -> None:
        cert, key = self.work_dir / "kubelet.crt", self.work_dir / "kubelet.key"
        proc = subprocess.run(
            ["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
             "-keyout", str(key), "-out", str(cert), "-days", "30", "-subj", "/CN=simulated-kubelet"],
            capture_output=True, text=True, check=False,
        )  # fmt: skip
        if proc.returncode != 0:
            log.warning("no kubelet log endpoint (kubectl logs will not work): %s", proc.stderr.strip())
            return
        for node in self.nodes:
            try:
                server = KubeletServer(self, node, cert, key)
            except OSError as exc:  # the port is taken on that IP: logs stay readable from the files
                log.warning("node %s: no kubelet log endpoint on %s:%d: %s", node.name, node.ip, KUBELET_PORT, exc)
                continue
            server.start()
            self.kubelets.append(server)

    def stop(self) -> None:
        """Stop every pod process and every watch; Node objects stay (they die with the cluster)."""
        self.stopping.set()
        for kubelet in self.kubelets:
            kubelet.stop()
        for informer in (self.pods, self.configmaps, self.secrets):
            informer.stop()
        with self._lock:
            workers = list(self.workers.values())
        for w in workers:
            w.gone()
        for w in workers:
            w.thread.join(timeout=10)
            w._kill_all(grace=0)  # belt and braces if the worker thread was stuck
        self.ips.release_all()

    def forget(self, uid: str) -> None:
        with self._lock:
            worker = self.workers.pop(uid, None)
        if worker is not None and worker.pod_ip != worker.node.ip:
            self.ips.release(worker.pod_ip)

    # --- nodes and leases ---

    def _register(self, node: SimNode) -> None:
        labels = {
            "kubernetes.io/hostname": node.name,
            "kubernetes.io/os": "linux",
            "kubernetes.io/arch": "amd64",
            ZONE_LABEL: node.zone,
            "topology.kubernetes.io/region": "local",
            POOL_LABEL: node.pool,
        }
        body: Obj = {
            "apiVersion": "v1",
            "kind": "Node",
            "metadata": {"name": node.name, "labels": labels},
            "spec": {"taints": [{"key": k, "value": v, "effect": e} for k, v, e in node.taints]},
        }
        try:
            self.kube.create("/api/v1/nodes", body)
        except ApiError as exc:
            if exc.status != 409:
                raise
            self.kube.patch(f"/api/v1/nodes/{node.name}", {"metadata": {"labels": labels}})
        self._node_status(node)

    def _node_status(self, node: SimNode) -> None:
        now = now_rfc3339()

        def cond(kind: str, status: str, reason: str, message: str) -> Obj:
            return {
                "type": kind,
                "status": status,
                "reason": reason,
                "message": message,
                "lastHeartbeatTime": now,
                "lastTransitionTime": self._since.get((node.name, kind), now),
            }

        for kind in ("MemoryPressure", "DiskPressure", "PIDPressure", "Ready"):
            self._since.setdefault((node.name, kind), now)
        status = {
            "conditions": [
                cond(
                    "MemoryPressure", "False", "KubeletHasSufficientMemory", "kubelet has sufficient memory available"
                ),
                cond("DiskPressure", "False", "KubeletHasNoDiskPressure", "kubelet has no disk pressure"),
                cond("PIDPressure", "False", "KubeletHasSufficientPID", "kubelet has sufficient PID available"),
                cond("Ready", "True", "KubeletReady", "simulated kubelet is posting ready status"),
            ],
            "addresses": [{"type": "InternalIP", "address": node.ip}, {"type": "Hostname", "address": node.name}],
            "capacity": self.capacity,
            "allocatable": self.allocatable,
            "daemonEndpoints": {"kubeletEndpoint": {"Port": 10250}},
            "nodeInfo": {
                "machineID": hashlib.md5(node.name.encode()).hexdigest(),
                "systemUUID": hashlib.md5(node.name.encode()).hexdigest(),
                "bootID": str(os.getpid()),
                "kernelVersion": os.uname().release,
                "osImage": "happy-observatory simulated node",
                "containerRuntimeVersion": "sim://1.0",
                "kubeletVersion": KUBELET_VERSION,
                "kubeProxyVersion": "",
                "operatingSystem": "linux",
                "architecture": "amd64",
            },
        }
        self.kube.patch(f"/api/v1/nodes/{node.name}/status", {"status": status}, "strategic")

    def _renew_lease(self, node: SimNode) -> None:
        path = f"/apis/coordination.k8s.io/v1/namespaces/kube-node-lease/leases/{node.name}"
        spec = {
            "holderIdentity": node.name,
            "leaseDurationSeconds": LEASE_SECONDS,
            "renewTime": now_rfc3339(micro=True),
        }
        try:
            self.kube.patch(path, {"spec": spec}, "merge")
        except ApiError as exc:
            if exc.status != 404:
                raise
            uid = self.kube.get(f"/api/v1/nodes/{node.name}")["metadata"]["uid"]
            owner = {"apiVersion": "v1", "kind": "Node", "name": node.name, "uid": uid}
            self.kube.create(
                "/apis/coordination.k8s.io/v1/namespaces/kube-node-lease/leases",
                {"metadata": {"name": node.name, "ownerReferences": [owner]}, "spec": spec},
            )

    def _heartbeat(self) -> None:
        last_status = time.monotonic()
        while not self.stopping.wait(self.lease_interval):
            for node in self.nodes:
                try:
                    self._renew_lease(node)
                    if time.monotonic() - last_status > 60:
                        self._node_status(node)
                except Exception as exc:
                    log.warning("node %s: heartbeat failed: %r", node.name, exc)
            if time.monotonic() - last_status > 60:
                last_status = time.monotonic()

    def _all_schedulable(self) -> bool:
        for node in self.nodes:
            taints = self.kube.get(f"/api/v1/nodes/{node.name}").get("spec", {}).get("taints") or []
            if any(t["key"] == NOT_READY_TAINT for t in taints):
                return False
        return True

    # --- dispatch ---

    def _pod_ip_candidates(self) -> Iterator[str]:
        space = 254 * 254
        for _ in range(space):
            with self._lock:
                n = self._next_ip % space
                self._next_ip += 1  # round-robin: a freed IP is not handed out again at once
            yield f"127.0.{2 + n // 254}.{1 + n % 254}"

    def _allocate_ip(self) -> str:
        return self.ips.acquire(self._pod_ip_candidates())

    def _on_pod(self, kind: str, pod: Obj) -> None:
        node = self.by_name.get((pod.get("spec") or {}).get("nodeName", ""))
        if node is None or self.stopping.is_set():
            return
        uid = pod["metadata"]["uid"]
        with self._lock:
            worker = self.workers.get(uid)
        if kind == "DELETED":
            if worker is not None:
                worker.gone()
            return
        if worker is None:
            ip = node.ip if pod["spec"].get("hostNetwork") else self._allocate_ip()
            worker = PodWorker(self, pod, node, ip)
            with self._lock:
                self.workers[uid] = worker
            worker.thread.start()
        else:
            worker.update(pod)

    def _on_source(self, kind: str, obj: Obj) -> None:
        # A ConfigMap or Secret changed: wake the pods of its namespace to re-sync their volumes now.
        ns = obj["metadata"].get("namespace")
        with self._lock:
            workers = [w for w in self.workers.values() if w.namespace == ns]
        for w in workers:
            w._changed.set()
