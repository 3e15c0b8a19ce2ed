"""The simulator's pure pieces, no cluster: atomic volume writer, path rewrite, $(VAR), IP leases, podshim."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

from tests.env.nodesim import POD_SHIM, LoopbackIPs, container_command, expand, rewrite_path, write_atomic


def test_atomic_writer_swaps_data_and_keeps_user_paths_stable(tmp_path: Path) -> None:
    vol = tmp_path / "vol"
    write_atomic(vol, {"a.json": (b"1", 0o644), "dir/b": (b"2", 0o600)})
    first = os.readlink(vol / "..data")
    assert os.readlink(vol / "a.json") == "..data/a.json"
    assert (vol / "a.json").read_text() == "1"
    assert (vol / "dir" / "b").read_text() == "2"
    write_atomic(vol, {"a.json": (b"3", 0o644)})
    assert os.readlink(vol / "..data") != first
    assert (vol / "a.json").read_text() == "3"
    assert not (vol / "dir").exists()  # a key that went away goes away
    assert sorted(p.name for p in vol.iterdir() if p.name.startswith("..")) == sorted(
        ["..data", os.readlink(vol / "..data")]
    )  # the old timestamped dir is gone


def test_mount_path_rewrite_rule() -> None:
    mounts = [("/etc/observatory/agent", Path("/x/cfg")), ("/host", Path("/")), ("/etc/observatory", Path("/x/o"))]
    assert rewrite_path("/etc/observatory/agent/agent.json", mounts) == "/x/cfg/agent.json"
    assert rewrite_path("/etc/observatory/shared", mounts) == "/x/o/shared"
    assert rewrite_path("--config=/etc/observatory/agent/agent.json", mounts) == "--config=/x/cfg/agent.json"
    assert rewrite_path("/host/proc", mounts) == "/proc"
    assert rewrite_path("/etc/observatoryX", mounts) == "/etc/observatoryX"
    assert rewrite_path("relative/etc/observatory", mounts) == "relative/etc/observatory"


def test_dependent_env_expansion() -> None:
    assert expand("$(A)-$(B) $$(A) $(MISSING)", {"A": "a", "B": "b"}) == "a-b $(A) $(MISSING)"


def test_loopback_ip_leases_are_exclusive_and_stale_ones_are_taken_over(tmp_path: Path) -> None:
    one, two = LoopbackIPs(tmp_path), LoopbackIPs(tmp_path)
    candidates = ["127.0.9.1", "127.0.9.2"]
    assert one.acquire(candidates) == "127.0.9.1"
    assert two.acquire(candidates) == "127.0.9.2"
    (tmp_path / "127.0.9.3").write_text("999999999")  # a dead owner's lease
    assert two.acquire(["127.0.9.1", "127.0.9.3"]) == "127.0.9.3"
    one.release_all()
    assert two.acquire(["127.0.9.1"]) == "127.0.9.1"


def test_podshim_pins_wildcard_binds_and_maps_mounted_paths(tmp_path: Path) -> None:
    (tmp_path / "settings.json").write_text('{"ok": true}')
    code = (
        "import json, os, pathlib, socket\n"
        "s = socket.socket(); s.bind(('0.0.0.0', 0)); print(s.getsockname()[0]); s.close()\n"
        "print(json.loads(pathlib.Path('/etc/demo/settings.json').read_text())['ok'])\n"
        "print(os.listdir('/etc/demo'), os.path.exists('/etc/demo/settings.json'))\n"
    )
    env = {
        **os.environ,
        "PYTHONPATH": str(POD_SHIM),
        "HAPPY_OBSERVATORY_POD_IP": "127.0.9.9",
        "HAPPY_OBSERVATORY_MOUNTS": json.dumps([["/etc/demo", str(tmp_path)]]),
    }
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    assert out.stdout.splitlines() == ["127.0.9.9", "True", "['settings.json'] True"]
    # Outside a simulated pod nothing changes.
    with socket.socket() as sock:
        sock.bind(("0.0.0.0", 0))
        assert sock.getsockname()[0] == "0.0.0.0"


def test_command_and_args_combine_with_the_images_entrypoint_and_cmd() -> None:
    # docker/Dockerfile: ENTRYPOINT [] and CMD ["observatory-agent", "run"].
    assert container_command(None, None) == ["observatory-agent", "run"]
    assert container_command(None, ["observatory-processor", "run"]) == ["observatory-processor", "run"]
    assert container_command(["observatory-operator"], None) == ["observatory-operator"]
    assert container_command(["python"], ["-c", "pass"]) == ["python", "-c", "pass"]
