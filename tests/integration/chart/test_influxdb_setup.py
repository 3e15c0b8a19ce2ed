"""The chart's InfluxDB setup Job, run as the chart renders it, against the bed's API server and InfluxDB.

The Job's script (``files/influxdb-setup.py``, from the rendered ConfigMap) runs on this host with
the Job's rendered environment, authenticated to the real API server as the chart's setup
ServiceAccount (a bound token) and authorised by nothing but the chart's Roles, against the bed's
real influxd (set up already, as after a first install). So the agents' write-only token, the
processors' read-write one, the Secrets in every collector namespace, the Roles' limits and the
reruns of ``helm upgrade`` are checked on real parts without a pod; ``tests/e2e/test_helm.py`` runs it
as the Job in the cluster.
"""

from __future__ import annotations

import base64
import json
import secrets
import ssl
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.env.controlplane import ControlPlane
from tests.env.fixtures import wait_until
from tests.env.influx import InfluxDB, query_as, request_as, write_as
from tests.env.kube import ApiError

pytestmark = pytest.mark.integration

CHART = Path(__file__).resolve().parents[3] / "helm" / "happy-observatory"
RELEASE = "obs"
OWNER_ANNOTATION = "observatory.happypatterns.org/agent-token-of"
PROCESSOR_SECRET = "influxdb-processor"


def authorizations(influx: InfluxDB, description_part: str) -> list[dict[str, Any]]:
    status, body = request_as(influx, influx.token, "GET", "/api/v2/authorizations")
    assert status == 200, body
    return [a for a in json.loads(body)["authorizations"] if description_part in a.get("description", "")]


@dataclass
class Rendered:
    docs: list[dict[str, Any]]

    def one(self, kind: str, name: str, namespace: str | None = None) -> dict[str, Any]:
        (doc,) = [
            d
            for d in self.docs
            if d["kind"] == kind
            and d["metadata"]["name"] == name
            and (namespace is None or d["metadata"].get("namespace") == namespace)
        ]
        return doc

    def all(self, kind: str) -> list[dict[str, Any]]:
        return [d for d in self.docs if d["kind"] == kind]


@dataclass
class Setup:
    """The chart rendered for one release namespace, its setup RBAC applied, and a way to run its Job."""

    control_plane: ControlPlane
    influx: InfluxDB
    helm: Path
    release_ns: str
    collector_ns: list[str]
    work: Path
    buckets: list[str]

    def render(self, *sets: str, typed: tuple[str, ...] = ()) -> Rendered:
        """``sets`` are strings (--set-string), ``typed`` are parsed by Helm (--set: booleans, numbers)."""
        watched, extra = self.collector_ns
        args = [
            str(self.helm), "template", RELEASE, str(CHART), "-n", self.release_ns,
            "--set", "influxdb.enabled=true",
            "--set-string", "influxdb.adminPassword=not-used-here",
            "--set-string", f"influxdb.adminToken={self.influx.token}",
            "--set-string", f"sharedConfig.data.influxdb_org={self.influx.org}",
            "--set-string", f"sharedConfig.data.influxdb_bucket={self.influx.bucket}",
            "--set", f"operator.watchNamespaces={{{watched}}}",
            "--set", f"sharedConfig.namespaces={{{extra}}}",
        ]  # fmt: skip
        for s in sets:
            args += ["--set-string", s]
        for s in typed:
            args += ["--set", s]
        done = subprocess.run(args, capture_output=True, text=True, check=False, timeout=120)
        assert done.returncode == 0, done.stderr
        docs = [d for d in yaml.safe_load_all(done.stdout) if d]
        for d in docs:
            d["metadata"].setdefault("namespace", self.release_ns)
        return Rendered(docs)

    def apply_rbac(self, rendered: Rendered) -> None:
        kube = self.control_plane.kube
        for kind in ("ServiceAccount", "Role", "RoleBinding", "Secret"):
            for doc in rendered.all(kind):
                kube.apply(doc, doc["metadata"]["namespace"])

    def account_token(self) -> str:
        answer = self.control_plane.kube.create(
            f"/api/v1/namespaces/{self.release_ns}/serviceaccounts/{RELEASE}-influxdb-setup/token",
            {"apiVersion": "authentication.k8s.io/v1", "kind": "TokenRequest", "spec": {"expirationSeconds": 600}},
        )
        return str(answer["status"]["token"])

    def run_job(self, rendered: Rendered) -> subprocess.CompletedProcess[str]:
        """The Job's container, as a process here: its script, its env (Secret references resolved), its token."""
        script = self.work / "setup.py"
        script.write_text(rendered.one("ConfigMap", f"{RELEASE}-influxdb-setup")["data"]["setup.py"])
        account = self.work / "serviceaccount"
        account.mkdir(exist_ok=True)
        (account / "token").write_text(self.account_token())
        (account / "ca.crt").write_bytes((self.control_plane.pki / "ca.crt").read_bytes())
        job = rendered.one("Job", f"{RELEASE}-influxdb-setup")
        pod = job["spec"]["template"]["spec"]
        assert pod["serviceAccountName"] == f"{RELEASE}-influxdb-setup"
        assert pod["automountServiceAccountToken"] is True
        (container,) = pod["containers"]
        env: dict[str, str] = {}
        for var in container["env"]:
            if "value" in var:
                env[var["name"]] = var["value"]
            else:
                ref = var["valueFrom"]["secretKeyRef"]
                env[var["name"]] = rendered.one("Secret", ref["name"])["stringData"][ref["key"]]
        server = urllib.parse.urlsplit(self.control_plane.server)
        env.update(
            {
                "INFLUXDB_URL": self.influx.url,  # the bed's influxd instead of the chart's Service
                "KUBERNETES_SERVICE_HOST": server.hostname or "",
                "KUBERNETES_SERVICE_PORT": str(server.port),
                "SERVICE_ACCOUNT_DIR": str(account),
                "PATH": "/usr/bin:/bin",
            }
        )
        return subprocess.run(
            ["python3", str(script)], env=env, capture_output=True, text=True, check=False, timeout=120
        )

    def secret(self, namespace: str, name: str = "influxdb-auth") -> dict[str, Any] | None:
        try:
            return self.control_plane.kube.get(f"/api/v1/namespaces/{namespace}/secrets/{name}")
        except ApiError as exc:
            if exc.status == 404:
                return None
            raise

    def token_in(self, namespace: str, name: str = "influxdb-auth") -> str:
        secret = self.secret(namespace, name)
        assert secret is not None, f"no Secret {namespace}/{name}"
        return base64.b64decode(secret["data"]["token"]).decode()

    @property
    def namespaces(self) -> list[str]:
        """The release's namespace and every namespace its collectors and rules may live in."""
        return [self.release_ns, *self.collector_ns]

    def versions(self, name: str = "influxdb-auth") -> dict[str, str]:
        """Namespace → resourceVersion of the Secret ``name`` there (unchanged: nothing was rewritten)."""
        return {ns: (self.secret(ns, name) or {})["metadata"]["resourceVersion"] for ns in self.namespaces}

    def installed_token(self, name: str = "influxdb-auth") -> tuple[Rendered, str]:
        """Render and run the Job: its Secret ``name`` must hold one token in every namespace, marked as the
        release's own. The rendered chart, and that token."""
        rendered = self.render()
        self.apply_rbac(rendered)
        done = self.run_job(rendered)
        assert done.returncode == 0, done.stdout + done.stderr
        tokens = {ns: self.token_in(ns, name) for ns in self.namespaces}
        token = tokens[self.release_ns]
        assert set(tokens.values()) == {token}, f"one {name} token, in every namespace collectors and rules may live in"
        for ns in self.namespaces:
            metadata = (self.secret(ns, name) or {})["metadata"]
            assert metadata["annotations"][OWNER_ANNOTATION] == f"{self.release_ns}/{RELEASE}"
        return rendered, token

    def bucket(self, name: str) -> str:
        """A bucket of the bed's org, deleted after the test."""
        orgs = request_as(self.influx, self.influx.token, "GET", f"/api/v2/orgs?org={self.influx.org}")[1]
        org = json.loads(orgs)
        body = json.dumps({"orgID": org["orgs"][0]["id"], "name": name, "retentionRules": []}).encode()
        status, answer = request_as(self.influx, self.influx.token, "POST", "/api/v2/buckets", body)
        assert status == 201, answer
        self.buckets.append(name)
        return name


@pytest.fixture
def setup(
    control_plane: ControlPlane, influxdb: InfluxDB, helm: Path, namespaces: Callable[..., str], tmp_path: Path
) -> Iterator[Setup]:
    made = Setup(
        control_plane,
        influxdb,
        helm,
        namespaces("release"),
        [namespaces("watched"), namespaces("extra")],
        tmp_path,
        [],
    )
    try:
        yield made
    finally:
        for a in authorizations(influxdb, f"release {made.release_ns}/{RELEASE}:"):
            request_as(influxdb, influxdb.token, "DELETE", f"/api/v2/authorizations/{a['id']}")
        for name in made.buckets:
            status, body = request_as(influxdb, influxdb.token, "GET", f"/api/v2/buckets?name={name}")
            for b in json.loads(body).get("buckets") or [] if status == 200 else []:
                request_as(influxdb, influxdb.token, "DELETE", f"/api/v2/buckets/{b['id']}")


def test_agents_get_a_write_only_token_in_every_collector_namespace(setup: Setup) -> None:
    influx = setup.influx
    rendered, token = setup.installed_token()
    assert token != influx.token, "agents never get the admin token"

    # What the token may do: write to the bucket, and nothing else.
    run = secrets.token_hex(4)
    assert write_as(influx, token, influx.bucket, f"itest.agent_token,run={run} value=1i 1") == 204
    status, body = query_as(influx, token, influx.bucket)
    assert status in (401, 403, 404), f"a Flux query with the agents' token answered {status}: {body[:300]!r}"
    assert query_as(influx, influx.token, influx.bucket)[0] == 200  # the same query with a token that may read
    other = setup.bucket(f"itest-other-{run}")
    assert write_as(influx, token, other, f"itest.agent_token,run={run} value=1i 1") in (401, 403, 404)
    assert write_as(influx, influx.token, other, f"itest.agent_token,run={run} value=1i 1") == 204
    (authorization,) = authorizations(influx, f"agents of release {setup.release_ns}/{RELEASE}:")
    assert [p["action"] for p in authorization["permissions"]] == ["write"]

    # helm upgrade runs the Job again: the same authorization and token, nothing rewritten.
    versions = setup.versions()
    again = setup.run_job(rendered)
    assert again.returncode == 0, again.stdout + again.stderr
    assert "reusing authorization" in again.stdout
    assert [a["id"] for a in authorizations(influx, f"agents of release {setup.release_ns}/{RELEASE}:")] == [
        authorization["id"]
    ]
    assert setup.versions() == versions
    # A Secret deleted since is made again, with the same token.
    setup.control_plane.kube.delete(f"/api/v1/namespaces/{setup.collector_ns[1]}/secrets/influxdb-auth")
    healed = setup.run_job(rendered)
    assert healed.returncode == 0, healed.stdout + healed.stderr
    assert setup.token_in(setup.collector_ns[1]) == token
    # The Secrets belong to the chart's Roles: helm uninstall deletes those, and the garbage collector them.
    setup.control_plane.kube.delete(
        f"/apis/rbac.authorization.k8s.io/v1/namespaces/{setup.collector_ns[0]}/roles/{RELEASE}-influxdb-agent-token"
    )
    wait_until(
        lambda: setup.secret(setup.collector_ns[0]) is None, timeout=60, what="the Secret collected with its Role"
    )
    assert setup.secret(setup.release_ns) is not None


def test_the_setup_account_reads_and_changes_only_the_agents_secret(setup: Setup) -> None:
    rendered = setup.render()
    setup.apply_rbac(rendered)
    assert setup.run_job(rendered).returncode == 0
    bearer = setup.account_token()

    def as_setup(
        method: str, path: str, body: dict[str, Any] | None = None, content: str = "application/merge-patch+json"
    ) -> int:
        request = urllib.request.Request(
            setup.control_plane.server + path,
            method=method,
            data=json.dumps(body).encode() if body is not None else None,
            headers={"Authorization": f"Bearer {bearer}", "Content-Type": content},
        )
        context = ssl.create_default_context(cafile=str(setup.control_plane.pki / "ca.crt"))
        try:
            with urllib.request.urlopen(request, timeout=10, context=context) as answer:
                return int(answer.status)
        except urllib.error.HTTPError as exc:
            return exc.code

    ns = setup.collector_ns[0]
    assert as_setup("GET", f"/api/v1/namespaces/{ns}/secrets/influxdb-auth") == 200
    assert as_setup("GET", f"/api/v1/namespaces/{ns}/secrets/{PROCESSOR_SECRET}") == 200
    assert as_setup("GET", f"/api/v1/namespaces/{setup.release_ns}/secrets/{RELEASE}-influxdb-admin") == 403
    assert as_setup("GET", f"/api/v1/namespaces/{ns}/secrets") == 403
    assert as_setup("PATCH", f"/api/v1/namespaces/{setup.release_ns}/secrets/{RELEASE}-influxdb-admin", {}) == 403
    assert as_setup("DELETE", f"/api/v1/namespaces/{ns}/secrets/influxdb-auth") == 403
    outside = setup.control_plane.kube.get("/api/v1/namespaces/default")["metadata"]["name"]
    assert as_setup("GET", f"/api/v1/namespaces/{outside}/secrets/influxdb-auth") == 403
    # Create, too, only of that name: by apply (which names it), never another Secret, never by POST.
    apply = "application/apply-patch+yaml"
    other = {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "something-else"}}
    path = f"/api/v1/namespaces/{ns}/secrets/something-else?fieldManager=itest"
    assert as_setup("PATCH", path, other, apply) == 403
    assert as_setup("POST", f"/api/v1/namespaces/{ns}/secrets", other, "application/json") == 403
    named = {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "influxdb-auth"}}
    assert as_setup("POST", f"/api/v1/namespaces/{ns}/secrets", named, "application/json") == 403
    setup.control_plane.kube.delete(f"/api/v1/namespaces/{ns}/secrets/influxdb-auth")
    assert as_setup("PATCH", f"/api/v1/namespaces/{ns}/secrets/influxdb-auth?fieldManager=itest", named, apply) == 201


def test_a_new_bucket_replaces_the_token_everywhere(setup: Setup) -> None:
    rendered = setup.render()
    setup.apply_rbac(rendered)
    assert setup.run_job(rendered).returncode == 0
    old = setup.token_in(setup.release_ns)
    processor_tokens = {ns: setup.token_in(ns, PROCESSOR_SECRET) for ns in [setup.release_ns, *setup.collector_ns]}
    bucket = f"itest-renamed-{secrets.token_hex(4)}"
    setup.buckets.append(bucket)  # the Job creates it; deleted after the test
    renamed = setup.render(f"sharedConfig.data.influxdb_bucket={bucket}")
    done = setup.run_job(renamed)
    assert done.returncode == 0, done.stdout + done.stderr
    assert f"created bucket {bucket!r}" in done.stdout
    new = {setup.token_in(ns) for ns in [setup.release_ns, *setup.collector_ns]}
    (token,) = new  # one token, the same in every namespace
    assert token != old
    assert write_as(setup.influx, token, bucket, "itest.agent_token value=1i 1") == 204
    gone = write_as(setup.influx, old, setup.influx.bucket, "itest.agent_token value=1i 1")
    assert gone == 401, f"the replaced token still answered {gone}"
    (authorization,) = authorizations(setup.influx, f"agents of release {setup.release_ns}/{RELEASE}:")
    assert authorization["token"] == token
    # The processors' token follows the bucket too: it reads and writes the new one, the old token is gone.
    old_processor = processor_tokens[setup.release_ns]
    (processor,) = {setup.token_in(ns, PROCESSOR_SECRET) for ns in [setup.release_ns, *setup.collector_ns]}
    assert processor != old_processor
    assert write_as(setup.influx, processor, bucket, "itest.processor_token value=1i 1") == 204
    assert query_as(setup.influx, processor, bucket)[0] == 200
    gone = write_as(setup.influx, old_processor, setup.influx.bucket, "itest.processor_token value=1i 1")
    assert gone == 401, f"the replaced processors' token still answered {gone}"
    assert len(authorizations(setup.influx, f"processors of release {setup.release_ns}/{RELEASE}:")) == 1


def test_a_secret_the_release_did_not_make_is_never_overwritten(setup: Setup) -> None:
    name = "agents-token"
    rendered = setup.render(f"influxdb.agentToken.secretName={name}")
    setup.apply_rbac(rendered)
    foreign = setup.collector_ns[1]
    setup.control_plane.kube.create(
        f"/api/v1/namespaces/{foreign}/secrets",
        {"metadata": {"name": name}, "stringData": {"token": "the user's own"}},
    )
    done = setup.run_job(rendered)
    assert done.returncode == 3, done.stdout + done.stderr  # the Job's podFailurePolicy fails at once
    assert f"Secret {foreign}/{name} exists and was not made by this release" in done.stderr
    assert "influxdb.agentToken.enabled=false" in done.stderr
    assert setup.token_in(foreign, name) == "the user's own"
    # Nothing half-applied: checked everywhere before anything was written.
    assert setup.secret(setup.release_ns, name) is None
    assert setup.secret(setup.collector_ns[0], name) is None
    assert authorizations(setup.influx, f"release {setup.release_ns}/{RELEASE}:") == []


def test_processors_get_a_read_write_token_on_the_bucket_only(setup: Setup) -> None:
    influx = setup.influx
    rendered, token = setup.installed_token(PROCESSOR_SECRET)
    assert token not in (influx.token, setup.token_in(setup.release_ns)), "neither the admin's nor the agents' token"

    # What a processor does: write to the bucket and read back what is there (its watermark), with Flux.
    run = secrets.token_hex(4)
    now = int(time.time())
    line = f"observatory.processor.watermark,run={run} end={now}i {now}"
    assert write_as(influx, token, influx.bucket, line) == 204
    status, body = query_as(influx, token, influx.bucket)
    assert status == 200, body[:300]
    assert run.encode() in body, "the point just written is read back with the processors' token"
    # Nothing beyond the bucket: another bucket of the same org is refused, writing and reading.
    other = setup.bucket(f"itest-other-{run}")
    assert write_as(influx, influx.token, other, f"itest.processor_token,run={run} value=1i {now}") == 204
    assert write_as(influx, token, other, f"itest.processor_token,run={run} value=1i {now}") in (401, 403, 404)
    status, body = query_as(influx, token, other)
    assert status in (401, 403, 404), f"a Flux query of another bucket answered {status}: {body[:300]!r}"
    assert query_as(influx, influx.token, other)[0] == 200  # the same query with a token that may read it
    # Nor other tokens: the authorizations API shows it neither the admin's nor the agents' token.
    status, body = request_as(influx, token, "GET", "/api/v2/authorizations")
    assert status in (401, 403) or not {influx.token, setup.token_in(setup.release_ns)} & {
        a.get("token") for a in json.loads(body).get("authorizations") or []
    }, f"the processors' token lists other tokens: {status}"
    (authorization,) = authorizations(influx, f"processors of release {setup.release_ns}/{RELEASE}:")
    bucket_id = authorization["permissions"][0]["resource"]["id"]
    assert sorted((p["action"], p["resource"]["type"], p["resource"]["id"]) for p in authorization["permissions"]) == [
        ("read", "buckets", bucket_id),
        ("write", "buckets", bucket_id),
    ]

    # helm upgrade runs the Job again: no extra token, the Secrets untouched.
    versions = setup.versions(PROCESSOR_SECRET)
    again = setup.run_job(rendered)
    assert again.returncode == 0, again.stdout + again.stderr
    mine = f"release {setup.release_ns}/{RELEASE}:"
    assert sorted(a["id"] for a in authorizations(influx, mine)) == sorted(
        [authorization["id"], *(a["id"] for a in authorizations(influx, f"agents of {mine}"))]
    )
    assert len(authorizations(influx, mine)) == 2, "one agents' and one processors' token, however often it runs"
    assert setup.versions(PROCESSOR_SECRET) == versions
    # helm uninstall deletes the Role, and the garbage collector the processors' Secret with it.
    setup.control_plane.kube.delete(
        f"/apis/rbac.authorization.k8s.io/v1/namespaces/{setup.collector_ns[0]}/roles/{RELEASE}-influxdb-agent-token"
    )
    wait_until(
        lambda: setup.secret(setup.collector_ns[0], PROCESSOR_SECRET) is None,
        timeout=60,
        what="the processors' Secret collected with its Role",
    )
    assert setup.secret(setup.release_ns, PROCESSOR_SECRET) is not None


def test_a_foreign_processor_secret_stops_the_job_before_anything_is_written(setup: Setup) -> None:
    rendered = setup.render()
    setup.apply_rbac(rendered)
    foreign = setup.collector_ns[0]
    setup.control_plane.kube.create(
        f"/api/v1/namespaces/{foreign}/secrets",
        {"metadata": {"name": PROCESSOR_SECRET}, "stringData": {"token": "the user's own"}},
    )
    done = setup.run_job(rendered)
    assert done.returncode == 3, done.stdout + done.stderr
    assert f"Secret {foreign}/{PROCESSOR_SECRET} exists and was not made by this release" in done.stderr
    assert "influxdb.processorToken.enabled=false" in done.stderr
    assert setup.token_in(foreign, PROCESSOR_SECRET) == "the user's own"
    # Not even the agents' Secret or any token: every Secret is checked before anything is written.
    assert all(setup.secret(ns) is None for ns in [setup.release_ns, *setup.collector_ns])
    assert authorizations(setup.influx, f"release {setup.release_ns}/{RELEASE}:") == []
    # Turned off, the processors' token is not made and the user's Secret is left alone; agents get theirs.
    off = setup.render(typed=("influxdb.processorToken.enabled=false",))
    setup.apply_rbac(off)
    done = setup.run_job(off)
    assert done.returncode == 0, done.stdout + done.stderr
    assert setup.token_in(foreign, PROCESSOR_SECRET) == "the user's own"
    assert setup.secret(setup.release_ns, PROCESSOR_SECRET) is None
    assert authorizations(setup.influx, f"processors of release {setup.release_ns}/{RELEASE}:") == []
    assert len(authorizations(setup.influx, f"agents of release {setup.release_ns}/{RELEASE}:")) == 1


def test_turning_the_processors_token_off_revokes_it_and_deletes_its_secrets(setup: Setup) -> None:
    influx = setup.influx
    _, token = setup.installed_token(PROCESSOR_SECRET)
    now = int(time.time())
    assert write_as(influx, token, influx.bucket, f"itest.retired,run=before value=1i {now}") == 204
    agents = setup.versions()
    # A Secret of that name the release did not make, in a namespace the chart would have written to:
    # once the token is off, it is the user's business.
    theirs = setup.collector_ns[1]
    setup.control_plane.kube.delete(f"/api/v1/namespaces/{theirs}/secrets/{PROCESSOR_SECRET}")
    setup.control_plane.kube.create(
        f"/api/v1/namespaces/{theirs}/secrets",
        {"metadata": {"name": PROCESSOR_SECRET}, "stringData": {"token": "the user's own"}},
    )

    off = setup.render(typed=("influxdb.processorToken.enabled=false",))
    setup.apply_rbac(off)
    done = setup.run_job(off)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "revoked authorization" in done.stdout, done.stdout
    # The token stops working at once, and the Secrets the release made for it are gone ...
    assert write_as(influx, token, influx.bucket, f"itest.retired,run=after value=1i {now}") in (401, 403)
    assert authorizations(influx, f"processors of release {setup.release_ns}/{RELEASE}:") == []
    assert setup.secret(setup.release_ns, PROCESSOR_SECRET) is None
    assert setup.secret(setup.collector_ns[0], PROCESSOR_SECRET) is None
    # ... but not the user's, nor anything of the agents'.
    assert setup.token_in(theirs, PROCESSOR_SECRET) == "the user's own"
    assert setup.versions() == agents
    assert len(authorizations(influx, f"agents of release {setup.release_ns}/{RELEASE}:")) == 1
    # Deleting is all the Role allows on that name: it may not make the Secret again.
    role = off.one("Role", f"{RELEASE}-influxdb-agent-token", setup.collector_ns[0])
    named = [r for r in role["rules"] if PROCESSOR_SECRET in r.get("resourceNames", [])]
    assert [sorted(r["verbs"]) for r in named] == [["delete", "get"]]
    # Run again (the next upgrade): nothing left to take back, nothing fails.
    again = setup.run_job(off)
    assert again.returncode == 0, again.stdout + again.stderr
    assert "revoked" not in again.stdout
    assert setup.token_in(theirs, PROCESSOR_SECRET) == "the user's own"
