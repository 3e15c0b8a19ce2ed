"""A real Kubernetes control plane on loopback: etcd, kube-apiserver, controller-manager, scheduler.

Binaries come from ``tests/env/build.py``'s cache. TLS is real (a throwaway CA signs the
API server's serving certificate; the admin kubeconfig trusts that CA), authorization is
RBAC, and the admin authenticates with a static token in ``system:masters``. Every
component logs to ``<logs_dir>/<component>.log``; ``stop()`` takes every process group down.

    cp = ControlPlane(Path("/tmp/bed"))
    cp.start()          # ~10 s with cached binaries
    cp.kubeconfig       # admin kubeconfig
    cp.stop()
"""

from __future__ import annotations

import base64
import secrets
import shutil
import ssl
import subprocess
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

import yaml

from tests.env import build
from tests.env.kube import Kube
from tests.env.procs import Process, free_port, wait_for

SERVICE_CIDR = "10.96.0.0/16"
AUDIT_POLICY = {
    "apiVersion": "audit.k8s.io/v1",
    "kind": "Policy",
    "omitStages": ["RequestReceived"],
    "rules": [
        # The bed itself (tests, controllers, simulated nodes) is the admin: not what tests audit.
        {"level": "None", "users": ["admin"]},
        # Everyone else (operators under their ServiceAccounts, pods): who sent which verb, and the answer.
        {"level": "Metadata"},
    ],
}
"""The API server's audit policy: tests replay ``ControlPlane.audit_log`` to see what an operator really sent."""
ISSUER = "https://kubernetes.default.svc.cluster.local"


def _openssl(*args: str, cwd: Path) -> None:
    proc = subprocess.run(["openssl", *args], cwd=cwd, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"openssl {' '.join(args)} failed: {proc.stderr.strip()}")


def make_pki(pki: Path, extra_ips: tuple[str, ...] = ()) -> None:
    """CA, API server serving cert (loopback + in-cluster names + ``extra_ips``) and the service-account key pair."""
    pki.mkdir(parents=True, exist_ok=True)
    # EC keys: generation is instant, which matters for a bed that starts on every test run.
    _openssl(
        "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
        "-keyout", "ca.key", "-out", "ca.crt", "-days", "30", "-subj", "/CN=happy-observatory-test-ca",
        "-addext", "basicConstraints=critical,CA:TRUE",
        "-addext", "keyUsage=critical,keyCertSign,cRLSign,digitalSignature",
        cwd=pki,
    )  # fmt: skip
    names = ["localhost", "kubernetes", "kubernetes.default", "kubernetes.default.svc"]
    names.append("kubernetes.default.svc.cluster.local")
    issue_cert(pki, "apiserver", "kube-apiserver", ips=("127.0.0.1", "10.96.0.1", *extra_ips), dns=tuple(names))
    _openssl("genpkey", "-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-out", "sa.key", cwd=pki)
    _openssl("pkey", "-in", "sa.key", "-pubout", "-out", "sa.pub", cwd=pki)


def issue_cert(
    pki: Path,
    name: str,
    common_name: str,
    *,
    orgs: tuple[str, ...] = (),
    ips: tuple[str, ...] = (),
    dns: tuple[str, ...] = (),
) -> tuple[Path, Path]:
    """A key and a certificate signed by the bed's CA: serving when it names addresses, else a client's.

    Client certificates are how Kubernetes components authenticate: the common name is the user
    (``system:node:node-1``), the organisations its groups (``system:nodes``).
    """
    subject = f"/CN={common_name}" + "".join(f"/O={o}" for o in orgs)
    sans = [f"IP:{ip}" for ip in ips] + [f"DNS:{d}" for d in dns]
    usage = "serverAuth" if sans else "clientAuth"
    ext = pki / f"{name}.ext"
    ext.write_text(
        (f"subjectAltName={','.join(sans)}\n" if sans else "")
        + f"extendedKeyUsage={usage}\nkeyUsage=critical,digitalSignature,keyEncipherment\n"
    )
    _openssl(
        "req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
        "-keyout", f"{name}.key", "-out", f"{name}.csr", "-subj", subject,
        cwd=pki,
    )  # fmt: skip
    _openssl(
        "x509", "-req", "-in", f"{name}.csr", "-CA", "ca.crt", "-CAkey", "ca.key", "-CAcreateserial",
        "-days", "30", "-extfile", ext.name, "-out", f"{name}.crt",
        cwd=pki,
    )  # fmt: skip
    return pki / f"{name}.crt", pki / f"{name}.key"


def write_kubeconfig(
    path: Path,
    server: str,
    ca: Path,
    token: str | None = None,
    user: str = "admin",
    *,
    cert: tuple[Path, Path] | None = None,
) -> None:
    """A kubeconfig for ``server`` authenticating with a bearer ``token`` or a client ``cert`` (crt, key)."""
    credentials: dict[str, Any] = {"token": token} if token is not None else {}
    if cert is not None:
        credentials = {"client-certificate": str(cert[0]), "client-key": str(cert[1])}
    config: dict[str, Any] = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [
            {
                "name": "happy-observatory",
                "cluster": {
                    "server": server,
                    "certificate-authority-data": base64.b64encode(ca.read_bytes()).decode(),
                },
            }
        ],
        "users": [{"name": user, "user": credentials}],
        "contexts": [{"name": "happy-observatory", "context": {"cluster": "happy-observatory", "user": user}}],
        "current-context": "happy-observatory",
    }
    path.write_text(yaml.safe_dump(config))
    path.chmod(0o600)


class ControlPlane:
    """etcd + kube-apiserver + kube-controller-manager + kube-scheduler, started and stopped together."""

    def __init__(self, root: Path | None = None, logs_dir: Path | None = None, *, address: str = "127.0.0.1") -> None:
        """``address``: where the API server listens and advertises itself. Loopback for simulated
        nodes; for real nodes an address their pods can reach (their loopback is their own), which
        also turns on what real kubelets need: the ``kubernetes`` Service's endpoints, a client
        certificate for the API server's calls to kubelets, and NodeRestriction."""
        self.address = address
        self._own_root = root is None
        self.root = Path(tempfile.mkdtemp(prefix="happy-observatory-cp-")) if root is None else root
        self.logs_dir = logs_dir or self.root / "logs"
        self.kubeconfig = self.root / "kubeconfig"
        self.pki = self.root / "pki"
        self.audit_log = self.logs_dir / "audit.log"
        """JSON lines, one per request stage, of every user but the bed's admin (``AUDIT_POLICY``)."""
        self.token = secrets.token_hex(16)
        self.server = ""
        self.processes: list[Process] = []
        self._api_client: Any = None
        self._kube: Kube | None = None

    # --- lifecycle ------------------------------------------------------------------------

    def start(self, timeout: float = 90.0) -> None:
        started = time.monotonic()
        build.ensure(["etcd", "kubernetes"])
        self.root.mkdir(parents=True, exist_ok=True)
        self.logs_dir.mkdir(parents=True, exist_ok=True)
        make_pki(self.pki, extra_ips=(self.address,) if self.address != "127.0.0.1" else ())
        try:
            self._start_etcd_and_apiserver(timeout)
            self._start_controllers(timeout)
        except BaseException:
            self.stop()
            raise
        self.startup_seconds = time.monotonic() - started

    def _start_etcd_and_apiserver(self, timeout: float) -> None:
        etcd_client, etcd_peer, api_port = free_port(), free_port(), free_port(self.address)
        etcd_dir = self.root / "etcd"
        etcd = Process(
            "etcd",
            [
                build.binary("etcd"),
                "--name=etcd0",
                f"--data-dir={etcd_dir}",
                f"--listen-client-urls=http://127.0.0.1:{etcd_client}",
                f"--advertise-client-urls=http://127.0.0.1:{etcd_client}",
                f"--listen-peer-urls=http://127.0.0.1:{etcd_peer}",
                f"--initial-advertise-peer-urls=http://127.0.0.1:{etcd_peer}",
                f"--initial-cluster=etcd0=http://127.0.0.1:{etcd_peer}",
                "--unsafe-no-fsync",
                "--log-level=warn",
            ],
            log=self.logs_dir / "etcd.log",
        )
        self._launch(etcd)
        tokens = self.root / "tokens.csv"
        tokens.write_text(f'{self.token},admin,admin-uid,"system:masters"\n')
        audit_policy = self.root / "audit-policy.yaml"
        audit_policy.write_text(yaml.safe_dump(AUDIT_POLICY))
        self.server = f"https://{self.address}:{api_port}"
        apiserver = Process(
            "kube-apiserver",
            [
                build.binary("kubernetes", "kube-apiserver"),
                f"--etcd-servers=http://127.0.0.1:{etcd_client}",
                f"--cert-dir={self.pki}",
                f"--tls-cert-file={self.pki / 'apiserver.crt'}",
                f"--tls-private-key-file={self.pki / 'apiserver.key'}",
                f"--client-ca-file={self.pki / 'ca.crt'}",
                f"--secure-port={api_port}",
                f"--bind-address={self.address}",
                f"--advertise-address={self.address}",
                f"--service-cluster-ip-range={SERVICE_CIDR}",
                "--authorization-mode=Node,RBAC",
                f"--token-auth-file={tokens}",
                f"--service-account-issuer={ISSUER}",
                f"--service-account-key-file={self.pki / 'sa.pub'}",
                f"--service-account-signing-key-file={self.pki / 'sa.key'}",
                "--allow-privileged=true",
                # Nodes serve logs, exec and port-forward on their InternalIP; their Hostname does not resolve.
                "--kubelet-preferred-address-types=InternalIP",
                *self._node_flags(),
                # One client, a handful of objects: fairness queues only cost start-up time.
                "--enable-priority-and-fairness=false",
                "--profiling=false",
                f"--audit-policy-file={audit_policy}",
                f"--audit-log-path={self.audit_log}",
                "--audit-log-format=json",
                "--audit-log-maxsize=0",  # one file for the whole session: tests replay all of it
                "--v=1",
            ],
            log=self.logs_dir / "kube-apiserver.log",
        )
        # etcd comes up in well under a second; the API server retries its connection anyway.
        wait_for(lambda: self._etcd_healthy(etcd_client), timeout=timeout, what="etcd /health")
        self._launch(apiserver)
        write_kubeconfig(self.kubeconfig, self.server, self.pki / "ca.crt", self.token)
        kube = self.kube
        wait_for(
            lambda: self._alive_or_raise() and kube.request("GET", "/readyz", timeout=5) is not None,
            timeout=timeout,
            what=f"kube-apiserver /readyz (log: {apiserver.log})",
            interval=0.25,
        )

    def _node_flags(self) -> list[str]:
        if self.address == "127.0.0.1":
            # Simulated nodes: nothing in a pod needs the `kubernetes` Service, which cannot point at loopback.
            return ["--endpoint-reconciler-type=none"]
        crt, key = issue_cert(
            self.pki, "apiserver-kubelet-client", "kube-apiserver-kubelet-client", orgs=("system:masters",)
        )
        return [
            # Pods reach the API server through the `kubernetes` Service, kept current by this lease.
            "--endpoint-reconciler-type=lease",
            # Logs, exec and port-forward: the API server authenticates to kubelets with this certificate.
            f"--kubelet-client-certificate={crt}",
            f"--kubelet-client-key={key}",
            # A kubelet may only change its own Node and the pods bound to it.
            "--enable-admission-plugins=NodeRestriction",
        ]

    def _start_controllers(self, timeout: float) -> None:
        cm_port, sched_port = free_port(), free_port()
        kc = str(self.kubeconfig)
        common = [
            f"--kubeconfig={kc}",
            f"--authentication-kubeconfig={kc}",
            f"--authorization-kubeconfig={kc}",
            "--leader-elect=false",
            "--bind-address=127.0.0.1",
        ]
        cm = Process(
            "kube-controller-manager",
            [
                build.binary("kubernetes", "kube-controller-manager"),
                *common,
                f"--secure-port={cm_port}",
                f"--cert-dir={self.root / 'controller-manager'}",
                f"--service-account-private-key-file={self.pki / 'sa.key'}",
                f"--root-ca-file={self.pki / 'ca.crt'}",
                f"--cluster-signing-cert-file={self.pki / 'ca.crt'}",
                f"--cluster-signing-key-file={self.pki / 'ca.key'}",
                # No cloud, no CIDR allocation: those controllers would only log errors.
                "--controllers=*,-nodeipam,-cloud-node-lifecycle,-service-lb-controller,-node-route-controller",
                "--v=1",
            ],
            log=self.logs_dir / "kube-controller-manager.log",
        )
        sched = Process(
            "kube-scheduler",
            [
                build.binary("kubernetes", "kube-scheduler"),
                *common,
                f"--secure-port={sched_port}",
                "--v=1",
            ],
            log=self.logs_dir / "kube-scheduler.log",
        )
        self._launch(cm)
        self._launch(sched)
        for name, port in (("kube-controller-manager", cm_port), ("kube-scheduler", sched_port)):
            wait_for(
                lambda port=port: self._alive_or_raise() and self._healthz(port),  # type: ignore[misc]
                timeout=timeout,
                what=f"{name} /healthz (log: {self.logs_dir / (name + '.log')})",
                interval=0.25,
            )

    def _launch(self, proc: Process) -> None:
        self.processes.append(proc)
        proc.start()

    def _alive_or_raise(self) -> bool:
        for proc in self.processes:
            if not proc.alive():
                raise RuntimeError(f"{proc.name} exited with {proc.returncode()}; log {proc.log}:\n{proc.tail()}")
        return True

    @staticmethod
    def _etcd_healthy(port: int) -> bool:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2) as resp:
            return b'"true"' in resp.read()

    @staticmethod
    def _healthz(port: int) -> bool:
        # The components serve /healthz with self-signed certificates: nothing to verify.
        ctx = ssl.create_default_context()
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
        with urllib.request.urlopen(f"https://127.0.0.1:{port}/healthz", timeout=2, context=ctx) as resp:
            return bool(resp.status == 200)

    def stop(self) -> None:
        """Stop in reverse order (controllers, API server, etcd); safe to call twice."""
        for proc in reversed(self.processes):
            proc.stop(grace=5.0)
        self.processes.clear()
        if self._api_client is not None:
            self._api_client.close()
            self._api_client = None
        if self._own_root:
            shutil.rmtree(self.root, ignore_errors=True)

    def running(self) -> bool:
        return bool(self.processes) and all(p.alive() for p in self.processes)

    # --- clients --------------------------------------------------------------------------

    @property
    def kube(self) -> Kube:
        """The bed's own small JSON client (plain dicts; see tests/env/kube.py)."""
        if self._kube is None:
            self._kube = Kube(self.server, self.token, self.pki / "ca.crt")
        return self._kube

    @property
    def api_client(self) -> Any:
        """A ``kubernetes.client.ApiClient`` for the admin kubeconfig."""
        if self._api_client is None:
            from kubernetes import config

            self._api_client = config.new_client_from_config(config_file=str(self.kubeconfig))  # type: ignore[no-untyped-call]
        return self._api_client

    @property
    def kubectl_path(self) -> Path:
        return build.binary("kubernetes", "kubectl")

    def kubectl(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        """Run the built kubectl (same minor as the API server) against this control plane."""
        return subprocess.run(
            [str(self.kubectl_path), f"--kubeconfig={self.kubeconfig}", *args],
            capture_output=True,
            text=True,
            check=check,
        )

    def __enter__(self) -> ControlPlane:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
