"""`make test`'s pytest step: two pytest sessions at once, so the suite takes as long as its longer half.

* ``bed``: the tests on the session's bed of real nodes (kubelets running the built image): the bed
  itself, the operator on it, and the Helm end-to-end flow.
* ``side``: everything else: unit tests, and integration tests with a control plane and InfluxDB of
  their own but no nodes (the agent and processor processes against influxd, admission, the chart,
  the dashboards' queries, the node simulator). It runs with simulated nodes, so it never needs the
  machine's real-node lock.

Most of the bed's time is spent waiting for windows, rollouts and restarts, not computing, so the
side runs in that time. Both halves together hold every test under ``tests/`` but the benchmarks
(a unit test keeps that true). Extra arguments go to both sessions. The side's output is shown after
the bed's, whole.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from tests.env.fixtures import NODES_ENV, SIMULATED

REPO = Path(__file__).resolve().parents[2]
BED = ("tests/integration/env", "tests/integration/operator", "tests/e2e")
SIDE = (
    "tests/unit",
    "tests/integration/agent",
    "tests/integration/api",
    "tests/integration/chart",
    "tests/integration/dashboards",
    "tests/integration/processor",
    "tests/integration/simulator",
)


def main(argv: list[str]) -> int:
    pytest = [sys.executable, "-m", "pytest"]
    started = time.monotonic()
    with tempfile.NamedTemporaryFile("w+", prefix="make-test-side-", suffix=".log", delete=False) as log:
        print(f"make test: the bed's tests here; the other tests at the same time, their output in {log.name}")
        side = subprocess.Popen(
            [*pytest, *SIDE, *argv],
            cwd=REPO,
            stdout=log,
            stderr=subprocess.STDOUT,
            env={**os.environ, NODES_ENV: SIMULATED},
        )
        try:
            bed = subprocess.run([*pytest, *BED, *argv], cwd=REPO, check=False).returncode
        finally:
            side_code = side.wait()
        log.seek(0)
        print(f"\n{'=' * 30} the other tests (unit; agent, processor, chart, dashboards, api, simulator) {'=' * 30}")
        sys.stdout.write(log.read())
    took = time.monotonic() - started
    print(f"make test: bed tests {'passed' if bed == 0 else 'FAILED'}, other tests "
          f"{'passed' if side_code == 0 else 'FAILED'}; {took / 60:.1f} min")  # fmt: skip
    return bed or side_code


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
