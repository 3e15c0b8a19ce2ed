"""Debian-packaged tools the checks compare against or validate with (node_exporter, promtool, prometheus).

``ensure_debian_tool("promtool", "prometheus")`` returns the binary's path, installing the
package with apt-get when it is missing and this process may (root). Services the package
would start are refused through a temporary ``policy-rc.d``, and any process of the package
that still appears during the install is stopped, so an install leaves nothing running.

    python3 -m tests.env.tools            # installs them all (and, as root, what real nodes need)
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

NODE_EXPORTER = ("prometheus-node-exporter", "prometheus-node-exporter")
PROMTOOL = ("promtool", "prometheus")
PROMETHEUS = ("prometheus", "prometheus")
REAL_NODES = (
    ("containerd", "containerd"),
    ("runc", "runc"),
    ("/usr/lib/cni/bridge", "containernetworking-plugins"),
    ("podman", "podman"),
    ("mmdebstrap", "mmdebstrap"),
    ("iptables", "iptables"),
    ("conntrack", "conntrack"),
)
"""What the bed's real nodes run on (binary or path, Debian package): runtime, CNI, image building, netfilter."""
_POLICY = Path("/usr/sbin/policy-rc.d")


class ToolMissingError(RuntimeError):
    """The tool is not installed and could not be installed here."""


def _which(binary: str) -> str | None:
    if binary.startswith("/"):
        return binary if Path(binary).is_file() else None
    return shutil.which(binary) or shutil.which(binary, path="/usr/bin:/usr/sbin:/bin:/sbin")


@contextlib.contextmanager
def _no_service_starts() -> Iterator[None]:
    # Debian's invoke-rc.d asks policy-rc.d first; exit 101 means "do not start anything".
    created = False
    if not _POLICY.exists():
        _POLICY.write_text("#!/bin/sh\nexit 101\n")
        _POLICY.chmod(0o755)
        created = True
    try:
        yield
    finally:
        if created:
            _POLICY.unlink(missing_ok=True)


def _pids_running(exe_names: set[str]) -> set[int]:
    pids = set()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        with contextlib.suppress(OSError):
            if Path(os.readlink(entry / "exe")).name in exe_names:
                pids.add(int(entry.name))
    return pids


def _apt(*args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    return subprocess.run(["apt-get", *args], capture_output=True, text=True, env=env, check=False)


def ensure_debian_tool(binary: str, package: str) -> str:
    """The path of ``binary``; installs Debian's ``package`` first when it is missing."""
    found = _which(binary)
    if found:
        return found
    if os.geteuid() != 0 or shutil.which("apt-get") is None:
        raise ToolMissingError(
            f"{binary} is not installed and cannot be installed here (needs root and apt-get): "
            f"run `apt-get install -y {package}`"
        )
    # Daemons the package may start (prometheus itself; node_exporter for its own package; containerd).
    daemons = {Path(binary).name, "prometheus", "prometheus-node-exporter", "containerd"}
    before = _pids_running(daemons)
    with _no_service_starts():
        result = _apt("install", "-y", "--no-install-recommends", package)
        if result.returncode != 0:  # an image without package lists: fetch them once and retry
            _apt("update")
            result = _apt("install", "-y", "--no-install-recommends", package)
    for pid in _pids_running(daemons) - before:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
    found = _which(binary)
    if result.returncode != 0 or not found:
        tail = "\n".join((result.stdout + result.stderr).strip().splitlines()[-15:])
        raise ToolMissingError(f"apt-get install {package} did not provide {binary}:\n{tail}")
    return found


def node_exporter() -> str:
    return ensure_debian_tool(*NODE_EXPORTER)


def promtool() -> str:
    return ensure_debian_tool(*PROMTOOL)


def prometheus() -> str:
    """Prometheus itself (the same package as promtool), run by tests as their own process, never as a service."""
    return ensure_debian_tool(*PROMETHEUS)


if __name__ == "__main__":
    for tool in (NODE_EXPORTER, PROMTOOL):
        try:
            print(ensure_debian_tool(*tool))
        except ToolMissingError as exc:
            sys.exit(str(exc))
    if os.geteuid() != 0:
        print("not root: the bed will simulate its nodes (real kubelets and containerd need root)")
    else:
        for tool in REAL_NODES:
            try:
                print(ensure_debian_tool(*tool))
            except ToolMissingError as exc:
                sys.exit(str(exc))
