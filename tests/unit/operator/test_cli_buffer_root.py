"""Where agents keep their buffers on the node: from a flag or the environment; a relative path is refused by name."""

from __future__ import annotations

import pytest

from observatory_operator import cli


def test_the_buffer_root_defaults_to_var_lib_observatory() -> None:
    assert cli._parser().parse_args([]).agent_buffer_root == "/var/lib/observatory"


def test_the_buffer_root_from_the_flag_and_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    assert cli._parser().parse_args(["--agent-buffer-root", "/data/obs"]).agent_buffer_root == "/data/obs"
    monkeypatch.setenv("OBSERVATORY_AGENT_BUFFER_ROOT", "/srv/obs")
    assert cli._parser().parse_args([]).agent_buffer_root == "/srv/obs"


@pytest.mark.parametrize("bad", ["var/lib/observatory", "/var/lib/../etc"])
def test_a_relative_or_climbing_buffer_root_is_refused_naming_the_flag(
    bad: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit):
        cli._parser().parse_args(["--agent-buffer-root", bad])
    assert f"--agent-buffer-root: {bad!r}: a directory on the node must be an absolute path" in capsys.readouterr().err
