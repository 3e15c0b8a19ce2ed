"""Stable input hashes: one sha256 over everything that shapes an agent or processor pod; only real changes roll it."""

from __future__ import annotations

import hashlib
from typing import Any

from observatory_operator.objects import canonical_json


def config_hash(rendered_agent_config: str, pod_template: dict[str, Any]) -> str:
    """sha256 hex of the rendered config (``agent.json``, ``processor.json``) and the pod template (without the hash
    annotation itself).

    The shared-config ConfigMap's content is deliberately not an input: agents reload it in place,
    so an org-wide default changing must not restart every agent in the cluster.
    """
    digest = hashlib.sha256()
    digest.update(b"agent.json\0")
    digest.update(rendered_agent_config.encode())
    digest.update(b"\0pod-template\0")
    digest.update(canonical_json(pod_template).encode())
    return digest.hexdigest()
