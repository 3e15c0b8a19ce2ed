"""ServiceMonitor labels reach the operator's settings from flags and the environment; a malformed one is refused."""

from __future__ import annotations

import pytest

from observatory_operator import cli


def test_labels_from_repeated_flags() -> None:
    args = cli._parser().parse_args(["--servicemonitor-label", "release=kps", "--servicemonitor-label", "team=sre"])
    assert dict(args.servicemonitor_label) == {"release": "kps", "team": "sre"}


def test_labels_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OBSERVATORY_SERVICEMONITOR_LABELS", "release=kps, team=sre")
    assert dict(cli._parser().parse_args([]).servicemonitor_label) == {"release": "kps", "team": "sre"}


def test_a_label_without_a_value_is_refused_naming_it(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        cli._parser().parse_args(["--servicemonitor-label", "release"])
    assert "--servicemonitor-label: 'release': a label is KEY=VALUE" in capsys.readouterr().err
