"""Sets up the chart's bundled InfluxDB once: org, bucket, admin user and token (POST /api/v2/setup).

Runs as a Helm hook Job after install and upgrade, with the project image's Python and only its
standard library. Idempotent: when InfluxDB says it is set up already (by an earlier run, or by the
official image's DOCKER_INFLUXDB_INIT_* entrypoint), it checks the admin token works and stops.
Every failure names what was wrong; the Job's backoff retries while InfluxDB is starting.
"""

import json
import os
import sys
import time
import urllib.error
import urllib.request

URL = os.environ["INFLUXDB_URL"].rstrip("/")
TOKEN = os.environ["INFLUXDB_ADMIN_TOKEN"]
if not URL.startswith(("http://", "https://")):
    sys.exit(f"INFLUXDB_URL must be an http(s) URL, got {URL!r}")


def call(method: str, path: str, body: dict | None = None, token: str | None = None) -> dict:
    request = urllib.request.Request(  # noqa: S310 - an http(s) URL, checked above
        URL + path,
        method=method,
        data=json.dumps(body).encode() if body is not None else None,
        headers={"Content-Type": "application/json", **({"Authorization": f"Token {token}"} if token else {})},
    )
    with urllib.request.urlopen(request, timeout=10) as response:  # noqa: S310 - as above
        raw = response.read()
    return json.loads(raw) if raw else {}


def wait_healthy(deadline: float) -> None:
    while True:
        try:
            if call("GET", "/health").get("status") == "pass":
                return
        except (OSError, ValueError) as exc:
            last = exc
        if time.monotonic() > deadline:
            sys.exit(f"InfluxDB at {URL} not healthy: {last!r}")
        time.sleep(2)


def main() -> None:
    wait_healthy(time.monotonic() + 240)
    if call("GET", "/api/v2/setup").get("allowed"):
        call(
            "POST",
            "/api/v2/setup",
            {
                "username": os.environ.get("INFLUXDB_ADMIN_USER", "admin"),
                "password": os.environ["INFLUXDB_ADMIN_PASSWORD"],
                "org": os.environ["INFLUXDB_ORG"],
                "bucket": os.environ["INFLUXDB_BUCKET"],
                "token": TOKEN,
            },
        )
        print(f"set up org {os.environ['INFLUXDB_ORG']!r} with bucket {os.environ['INFLUXDB_BUCKET']!r}")
        return
    try:
        call("GET", "/api/v2/orgs", token=TOKEN)
    except urllib.error.HTTPError as exc:
        sys.exit(f"InfluxDB is set up already but influxdb.adminToken is refused ({exc.code}): was it changed?")
    print("already set up; the admin token works")


if __name__ == "__main__":
    main()
