"""Sets up the chart's bundled InfluxDB: org, bucket, admin user and token, the agents' and the processors' tokens.

Runs as a Helm hook Job after install and upgrade, with the project image's Python and only its
standard library. Idempotent:

1. Setup (``POST /api/v2/setup``) when InfluxDB is new; when it says it is set up already (by an
   earlier run, or by the official image's DOCKER_INFLUXDB_INIT_* entrypoint), the admin token
   must still work. The bucket is created when it is missing (renamed in the values).
2. With ``INFLUXDB_AGENT_TOKEN_SECRET`` set (``influxdb.agentToken.enabled``): one authorization
   whose only permission is ``write`` on the bucket, found again by its description, so a re-run
   reuses it (it is replaced when its permission no longer matches the bucket, or InfluxDB no
   longer shows its token). Its token goes into that Secret (key ``token``) in every namespace of
   ``INFLUXDB_AGENT_TOKEN_NAMESPACES``, through the Kubernetes API as the Job's ServiceAccount,
   which may create, get and patch that one name there and nothing else (see ``store``). A
   Secret of that name that this release did not create is never overwritten: every namespace is
   checked before anything is written, and the Job fails naming it.
3. With ``INFLUXDB_PROCESSOR_TOKEN_SECRET`` set too (``influxdb.processorToken.enabled``): the same
   for the processors' token, which may read and write the bucket (a processor reads its watermark
   back and writes roll-ups) and nothing else. Both are kinds of one mechanism (``KINDS``).
4. With ``INFLUXDB_PROCESSOR_TOKEN_RETIRED_SECRET`` set instead (``processorToken`` turned off): what
   an earlier run made for the processors is taken back. Its authorization is deleted (the token
   stops working) and so are the Secrets of that name this release made; one it did not make is
   left alone (the user manages it now). The Role may only get and delete that one name.

Every failure names what was wrong. Exit code 3 means retrying cannot help (the Job's
podFailurePolicy fails at once); anything else is retried while InfluxDB is starting.
"""

import base64
import dataclasses
import json
import os
import ssl
import sys
import time
import urllib.error
import urllib.parse
import urllib.request

URL = os.environ["INFLUXDB_URL"].rstrip("/")
TOKEN = os.environ["INFLUXDB_ADMIN_TOKEN"]
ORG = os.environ["INFLUXDB_ORG"]
BUCKET = os.environ["INFLUXDB_BUCKET"]
NAMESPACES = [n for n in os.environ.get("INFLUXDB_AGENT_TOKEN_NAMESPACES", "").split(",") if n]
ROLE = os.environ.get("INFLUXDB_AGENT_TOKEN_ROLE", "")
"""The Role in each namespace that lets the Job write the Secret: also its owner, so it goes with the Role."""
OWNER = os.environ.get("INFLUXDB_AGENT_TOKEN_OWNER", "")
"""``<release namespace>/<release>``: names the authorization and marks the Secrets this release owns."""
SERVICE_ACCOUNT = os.environ.get("SERVICE_ACCOUNT_DIR", "/var/run/secrets/kubernetes.io/serviceaccount")
OWNER_ANNOTATION = "observatory.happypatterns.org/agent-token-of"
PERMANENT = 3
"""Exit code for failures a retry cannot fix (the Job fails at once)."""


@dataclasses.dataclass(frozen=True)
class Kind:
    """A token the Job makes and stores: who it is for, what it may do on the bucket, where it goes."""

    who: str
    """Names the authorization and the log lines: ``agents``, ``processors``."""
    actions: tuple[str, ...]
    """What it may do on the bucket, and on nothing else."""
    secret: str
    """The Secret's name in every namespace of ``NAMESPACES``."""
    values: str
    """The chart value that turns it on, named when a foreign Secret is in the way."""
    scope: str
    """Ends the authorization's description."""

    @property
    def description(self) -> str:
        # Stable for the release: what the authorization grants may change (a new bucket), its name not.
        return f"happy-observatory {self.who} of release {OWNER}: {self.scope}"


def _processors(secret: str) -> Kind:
    # A processor reads its watermark back from the bucket at start, then writes roll-ups there.
    return Kind("processors", ("read", "write"), secret, "influxdb.processorToken", "read-write on the bucket")


KINDS = [
    kind
    for kind in (
        Kind(
            "agents", ("write",), os.environ.get("INFLUXDB_AGENT_TOKEN_SECRET", ""), "influxdb.agentToken", "write-only"
        ),
        _processors(os.environ.get("INFLUXDB_PROCESSOR_TOKEN_SECRET", "")),
    )
    if kind.secret
]
RETIRED = [k for k in (_processors(os.environ.get("INFLUXDB_PROCESSOR_TOKEN_RETIRED_SECRET", "")),) if k.secret]
"""Kinds turned off: what an earlier run made for them is revoked and deleted."""
if not URL.startswith(("http://", "https://")):
    sys.exit(f"INFLUXDB_URL must be an http(s) URL, got {URL!r}")


def fail(message: str) -> None:
    print(message, file=sys.stderr)
    sys.exit(PERMANENT)


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


def set_up() -> None:
    if call("GET", "/api/v2/setup").get("allowed"):
        call(
            "POST",
            "/api/v2/setup",
            {
                "username": os.environ.get("INFLUXDB_ADMIN_USER", "admin"),
                "password": os.environ["INFLUXDB_ADMIN_PASSWORD"],
                "org": ORG,
                "bucket": BUCKET,
                "token": TOKEN,
            },
        )
        print(f"set up org {ORG!r} with bucket {BUCKET!r}")
        return
    try:
        call("GET", "/api/v2/orgs", token=TOKEN)
    except urllib.error.HTTPError as exc:
        fail(f"InfluxDB is set up already but influxdb.adminToken is refused ({exc.code}): was it changed?")
    print("already set up; the admin token works")


# --- the agents' and the processors' tokens -------------------------------------------------------


def lookup(path: str, key: str, **query: str) -> list:
    """A listing filtered by name; InfluxDB answers a name it does not know with 404, which is none."""
    try:
        return call("GET", f"{path}?{urllib.parse.urlencode(query)}", token=TOKEN).get(key) or []
    except urllib.error.HTTPError as exc:
        if exc.code != 404:
            raise
        return []


def org_and_bucket() -> tuple[str, str]:
    orgs = lookup("/api/v2/orgs", "orgs", org=ORG)
    if not orgs:
        fail(f"InfluxDB has no org {ORG!r} (sharedConfig.data.influxdb_org) and was set up already")
    org_id = orgs[0]["id"]
    buckets = lookup("/api/v2/buckets", "buckets", orgID=org_id, name=BUCKET)
    if buckets:
        return org_id, buckets[0]["id"]
    created = call("POST", "/api/v2/buckets", {"orgID": org_id, "name": BUCKET, "retentionRules": []}, token=TOKEN)
    print(f"created bucket {BUCKET!r} (sharedConfig.data.influxdb_bucket)")
    return org_id, created["id"]


def _grants(authorization: dict) -> list[tuple[str, str, str]]:
    return sorted(
        (p["action"], p["resource"]["type"], p["resource"].get("id") or "") for p in authorization["permissions"]
    )


def authorizations_of(kind: Kind, org_id: str) -> list[dict]:
    """The org's authorizations this release made for ``kind`` (found by their description)."""
    listed = call("GET", "/api/v2/authorizations?" + urllib.parse.urlencode({"orgID": org_id}), token=TOKEN)
    return [a for a in listed.get("authorizations") or [] if a.get("description") == kind.description]


def authorization_token(kind: Kind, org_id: str, bucket_id: str) -> str:
    """The token of the kind's one authorization, which may do its actions on the bucket only; created when missing."""
    description = kind.description
    bucket = {"type": "buckets", "id": bucket_id, "orgID": org_id}
    permissions = [{"action": a, "resource": bucket} for a in kind.actions]
    mine = authorizations_of(kind, org_id)
    grants = sorted((a, "buckets", bucket_id) for a in kind.actions)
    usable = [a for a in mine if a.get("status") == "active" and a.get("token") and _grants(a) == grants]
    keep = usable[0] if usable else None
    for stale in mine:  # another bucket's, inactive, its token no longer shown, or a duplicate
        if stale is not keep:
            call("DELETE", f"/api/v2/authorizations/{stale['id']}", token=TOKEN)
            print(f"{kind.who}' token: deleted authorization {stale['id']}, which does not fit")
    if keep is not None:
        print(f"{kind.who}' token: reusing authorization {keep['id']} ({description!r})")
        return str(keep["token"])
    wanted = {"orgID": org_id, "description": description, "permissions": permissions}
    created = call("POST", "/api/v2/authorizations", wanted, token=TOKEN)
    print(f"{kind.who}' token: created authorization {created['id']} ({description!r})")
    return str(created["token"])


def kube(method: str, path: str, body: dict | None = None, content_type: str = "application/json") -> tuple[int, dict]:
    """One request to the API server as the Job's ServiceAccount: (status, body); never raises on a 4xx."""
    host, port = os.environ["KUBERNETES_SERVICE_HOST"], os.environ["KUBERNETES_SERVICE_PORT"]
    with open(os.path.join(SERVICE_ACCOUNT, "token")) as f:
        bearer = f.read().strip()
    context = ssl.create_default_context(cafile=os.path.join(SERVICE_ACCOUNT, "ca.crt"))
    request = urllib.request.Request(
        f"https://{host}:{port}{path}",
        method=method,
        data=json.dumps(body).encode() if body is not None else None,
        headers={"Authorization": f"Bearer {bearer}", "Content-Type": content_type, "Accept": "application/json"},
    )
    try:
        with urllib.request.urlopen(request, timeout=10, context=context) as response:  # noqa: S310
            return response.status, json.loads(response.read() or b"{}")
    except urllib.error.HTTPError as exc:
        if exc.code >= 500:
            raise
        return exc.code, json.loads(exc.read() or b"{}")


def _secret_path(namespace: str, name: str = "") -> str:
    return f"/api/v1/namespaces/{namespace}/secrets" + (f"/{name}" if name else "")


def check_secrets(kind: Kind) -> dict[str, dict | None]:
    """Each namespace's current Secret (None: absent); fails before any write when one is not this release's."""
    current: dict[str, dict | None] = {}
    for namespace in NAMESPACES:
        status, body = kube("GET", _secret_path(namespace, kind.secret))
        if status == 404:
            current[namespace] = None
            continue
        if status != 200:
            fail(f"cannot read Secret {namespace}/{kind.secret} ({status}): {body.get('message', body)}")
        owner = ((body.get("metadata") or {}).get("annotations") or {}).get(OWNER_ANNOTATION)
        if owner != OWNER:
            fail(
                f"Secret {namespace}/{kind.secret} exists and was not made by this release's setup Job "
                f"(annotation {OWNER_ANNOTATION}={owner!r}, not {OWNER!r}); it is left as it is. Delete it to "
                f"let the chart store the {kind.who}' token there, set {kind.values}.secretName to another name, "
                f"or set {kind.values}.enabled=false to keep managing it yourself"
            )
        current[namespace] = body
    return current


def owner_reference(namespace: str) -> dict:
    """The Helm-managed Role in ``namespace``: owning the Secret, helm uninstall takes the token away too.

    No blockOwnerDeletion: that would need update on the Role's finalizers, which the Job has no use for.
    """
    status, role = kube("GET", f"/apis/rbac.authorization.k8s.io/v1/namespaces/{namespace}/roles/{ROLE}")
    if status != 200:
        fail(f"cannot read Role {namespace}/{ROLE} ({status}): {role.get('message', role)}")
    uid = role["metadata"]["uid"]
    return {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "Role", "name": ROLE, "uid": uid}


def store(kind: Kind, token: str, current: dict[str, dict | None]) -> None:
    """Server-side apply of the Secret: a PATCH naming it, so the Role can limit even create to that name.

    The API server authorises a create through apply as ``create`` *with* the object's name, which a
    POST cannot offer (RBAC's resourceNames never match a POST). An existing Secret is applied with
    its resourceVersion: if anything changed it since ``check_secrets``, the apply is refused
    (409) rather than overwriting what was not checked, and the Job's retry checks again.
    """
    encoded = base64.b64encode(token.encode()).decode()
    for namespace, secret in current.items():
        owner = owner_reference(namespace)
        if (
            secret is not None
            and (secret.get("data") or {}).get("token") == encoded
            and owner in secret["metadata"].get("ownerReferences", [])
        ):
            print(f"Secret {namespace}/{kind.secret}: holds the {kind.who}' token already")
            continue
        metadata: dict = {
            "name": kind.secret,
            "namespace": namespace,
            "labels": {
                "app.kubernetes.io/part-of": "happy-observatory",
                "app.kubernetes.io/component": f"influxdb-{kind.who.rstrip('s')}-token",
                "app.kubernetes.io/instance": OWNER.split("/", 1)[-1],
            },
            "annotations": {OWNER_ANNOTATION: OWNER},
            "ownerReferences": [owner],
        }
        if secret is not None:
            metadata["resourceVersion"] = secret["metadata"]["resourceVersion"]
        applied = {"apiVersion": "v1", "kind": "Secret", "type": "Opaque", "metadata": metadata}
        query = urllib.parse.urlencode({"fieldManager": "happy-observatory-influxdb-setup", "force": "true"})
        status, answer = kube(
            "PATCH",
            f"{_secret_path(namespace, kind.secret)}?{query}",
            {**applied, "data": {"token": encoded}},
            "application/apply-patch+yaml",  # JSON is YAML
        )
        if status == 409:
            sys.exit(f"Secret {namespace}/{kind.secret} changed while the Job ran; retrying checks it again")
        if status not in (200, 201):
            fail(f"cannot write Secret {namespace}/{kind.secret} ({status}): {answer.get('message', answer)}")
        done = "created" if secret is None else "updated"
        print(f"Secret {namespace}/{kind.secret}: {done} with the {kind.who}' token")


def retire(kind: Kind, org_id: str) -> None:
    """A kind turned off: delete its authorizations (found by description) and the Secrets this release made."""
    for made in authorizations_of(kind, org_id):
        call("DELETE", f"/api/v2/authorizations/{made['id']}", token=TOKEN)
        print(f"{kind.who}' token: revoked authorization {made['id']} ({kind.values}.enabled is false)")
    for namespace in NAMESPACES:
        status, body = kube("GET", _secret_path(namespace, kind.secret))
        if status == 404:
            continue
        if status != 200:
            fail(f"cannot read Secret {namespace}/{kind.secret} ({status}): {body.get('message', body)}")
        if ((body.get("metadata") or {}).get("annotations") or {}).get(OWNER_ANNOTATION) != OWNER:
            print(f"Secret {namespace}/{kind.secret}: not made by this release; left alone")
            continue
        status, body = kube("DELETE", _secret_path(namespace, kind.secret))
        if status not in (200, 202, 404):
            fail(f"cannot delete Secret {namespace}/{kind.secret} ({status}): {body.get('message', body)}")
        print(f"Secret {namespace}/{kind.secret}: deleted ({kind.values}.enabled is false)")


def main() -> None:
    wait_healthy(time.monotonic() + 240)
    set_up()
    if not KINDS:
        return
    current = {kind: check_secrets(kind) for kind in KINDS}  # every Secret checked before anything is written
    org_id, bucket_id = org_and_bucket()
    for kind in KINDS:
        store(kind, authorization_token(kind, org_id, bucket_id), current[kind])
    for kind in RETIRED:
        retire(kind, org_id)


if __name__ == "__main__":
    main()
