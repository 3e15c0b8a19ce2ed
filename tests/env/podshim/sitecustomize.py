"""Imported by project pods' Python processes (the node simulator puts this dir on PYTHONPATH).

In a cluster every pod has its own network namespace, so binding ``0.0.0.0:8080`` in two pods
is fine. Here all pods share the host's, so a wildcard IPv4 bind is pinned to the pod's own
loopback IP, and a wildcard IPv6 bind reports EADDRNOTAVAIL (asyncio then serves IPv4 only).
"""

from __future__ import annotations

import errno
import os
import socket
from typing import Any

_POD_IP = os.environ.get("HAPPY_OBSERVATORY_POD_IP")

if _POD_IP:
    _original_bind = socket.socket.bind

    def _bind(self: socket.socket, address: Any) -> None:
        if isinstance(address, tuple) and address and address[0] in ("", "0.0.0.0", "::"):
            if self.family == socket.AF_INET:
                address = (_POD_IP, *address[1:])
            elif self.family == socket.AF_INET6:
                raise OSError(errno.EADDRNOTAVAIL, "simulated pod network is IPv4-only")
        _original_bind(self, address)

    socket.socket.bind = _bind  # type: ignore[method-assign]
