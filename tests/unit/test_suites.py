"""`make test` runs two pytest sessions at once (tests/env/suites.py): together they hold every test."""

from __future__ import annotations

import tomllib
from pathlib import Path

from tests.env.suites import BED, REPO, SIDE


def test_every_test_file_is_in_exactly_one_half_of_make_test() -> None:
    testpaths = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["pytest"]["ini_options"]["testpaths"]
    files = sorted(f.relative_to(REPO) for top in testpaths for f in (REPO / top).rglob("test_*.py"))
    assert len(files) > 50, files  # the walk found the suite
    for f in files:
        halves = [h for h in (*BED, *SIDE) if f.is_relative_to(h)]
        assert len(halves) == 1, f"{f}: in {halves or 'neither half'} of tests/env/suites.py"


def test_the_bed_half_is_what_needs_real_nodes_and_the_other_half_never_asks_for_them() -> None:
    for half in SIDE:
        for f in (REPO / half).rglob("*.py"):
            text = f.read_text() if f != Path(__file__) else ""
            for needs in ("require_real_nodes", "whole_bed"):
                assert needs not in text, f"{f.relative_to(REPO)} uses {needs}: it belongs in the bed half"
    assert any("require_real_nodes" in f.read_text() for half in BED for f in (REPO / half).rglob("*.py"))
