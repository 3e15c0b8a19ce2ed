"""Imported by project pods' Python processes (the node simulator puts this dir on PYTHONPATH).

Two things a container gets from its own namespaces, emulated for a process on the host:

* Network: every pod has its own network namespace in a cluster, so two pods may both bind
  ``0.0.0.0:8080``. Here all pods share the host's, so a wildcard IPv4 bind is pinned to the
  pod's own loopback IP, and a wildcard IPv6 bind reports EADDRNOTAVAIL (asyncio then serves
  IPv4 only).
* Mounts: a container sees its volumes at their mountPaths. Here ``open``, ``os.open``,
  ``os.stat``/``lstat``, ``os.listdir``/``scandir`` and ``os.access`` map a path under a
  mountPath to the materialised directory, so paths written into config files work too.
  So do ``ssl.SSLContext.load_verify_locations``/``load_cert_chain``: in-cluster clients
  (the kubernetes client, kopf's aiohttp session) hand the fixed
  ``/var/run/secrets/kubernetes.io/serviceaccount/ca.crt`` to OpenSSL, which opens it in C.
  Other C-level file access is not mapped (nor child programs').
"""

from __future__ import annotations

import builtins
import errno
import io
import json
import os
import socket
import ssl
from typing import Any

_POD_IP = os.environ.get("HAPPY_OBSERVATORY_POD_IP")
# Paths under the pod's own directory are already materialised (args and env are rewritten
# before the process starts): mapping them again would send a rewritten
# ``<bed>/volumes/config/agent.json`` into the ``/tmp`` emptyDir when the bed lives in /tmp.
_POD_DIR = os.environ.get("HAPPY_OBSERVATORY_POD_DIR", "").rstrip("/")
_MOUNTS: list[tuple[str, str]] = [
    (str(m).rstrip("/"), str(r)) for m, r in json.loads(os.environ.get("HAPPY_OBSERVATORY_MOUNTS", "[]")) if m != "/"
]

if _POD_IP:
    _original_bind = socket.socket.bind

    def _bind(self: socket.socket, address: Any) -> None:
        if isinstance(address, tuple) and address and address[0] in ("", "0.0.0.0", "::"):
            if self.family == socket.AF_INET:
                address = (_POD_IP, *address[1:])
            elif self.family == socket.AF_INET6:
                raise OSError(errno.EADDRNOTAVAIL, "simulated pod network is IPv4-only")
        _original_bind(self, address)

    socket.socket.bind = _bind  # type: ignore[method-assign,assignment]


def _map(path: Any) -> Any:
    if isinstance(path, int):
        return path
    try:
        text = os.fspath(path)
    except TypeError:
        return path
    if not isinstance(text, str) or not text.startswith("/"):
        return path
    if _POD_DIR and (text == _POD_DIR or text.startswith(_POD_DIR + "/")):
        return path
    for mount, real in _MOUNTS:
        if text == mount or text.startswith(mount + "/"):
            return real + text[len(mount) :]
    return path


def _wrap(fn: Any) -> Any:
    def mapped(*args: Any, **kwargs: Any) -> Any:
        if args:
            args = (_map(args[0]), *args[1:])
        elif "path" in kwargs:
            kwargs["path"] = _map(kwargs["path"])
        elif "file" in kwargs:
            kwargs["file"] = _map(kwargs["file"])
        return fn(*args, **kwargs)

    mapped.__name__ = getattr(fn, "__name__", "mapped")
    mapped.__doc__ = getattr(fn, "__doc__", None)
    return mapped


if _MOUNTS:
    _open = _wrap(builtins.open)
    builtins.open = _open
    io.open = _open
    for _name in ("open", "stat", "lstat", "listdir", "scandir", "access"):
        setattr(os, _name, _wrap(getattr(os, _name)))

    _load_verify = ssl.SSLContext.load_verify_locations
    _load_chain = ssl.SSLContext.load_cert_chain

    def _load_verify_locations(
        self: ssl.SSLContext, cafile: Any = None, capath: Any = None, cadata: Any = None
    ) -> None:
        _load_verify(self, _map(cafile), _map(capath), cadata)

    def _load_cert_chain(self: ssl.SSLContext, certfile: Any, keyfile: Any = None, password: Any = None) -> None:
        _load_chain(self, _map(certfile), _map(keyfile), password)

    ssl.SSLContext.load_verify_locations = _load_verify_locations  # type: ignore[method-assign]
    ssl.SSLContext.load_cert_chain = _load_cert_chain  # type: ignore[method-assign,assignment]
