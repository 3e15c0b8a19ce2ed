"""The operator process: the kubernetes client stays out of it (kopf would load it: ~9 MB), credentials still load."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import yaml


def test_the_operator_process_loads_no_kubernetes_client() -> None:
    probe = (
        "import sys, observatory_operator.cli\n"
        "print(sorted(m for m, v in sys.modules.items() if m.startswith('kubernetes') and v is not None))"
    )
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "[]", done.stdout


def test_a_kubeconfig_token_and_ca_are_the_credentials(tmp_path: Path) -> None:
    config = {
        "apiVersion": "v1",
        "kind": "Config",
        "current-context": "bed",
        "contexts": [{"name": "bed", "context": {"cluster": "c", "user": "u", "namespace": "ns"}}],
        "clusters": [{"name": "c", "cluster": {"server": "https://127.0.0.1:6443", "certificate-authority": "/ca"}}],
        "users": [{"name": "u", "user": {"token": "t0k3n"}}],
    }
    path = tmp_path / "kubeconfig"
    path.write_text(yaml.safe_dump(config))
    probe = (
        "from observatory_operator.kube import client\n"
        "info = client.login()\n"
        "print(info.server, info.as_http_headers()['Authorization'], info.ca_path)"
    )
    env = {**os.environ, "KUBECONFIG": str(path)}
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True, env=env)
    assert done.stdout.split() == ["https://127.0.0.1:6443", "Bearer", "t0k3n", "/ca"]
