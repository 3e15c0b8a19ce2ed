"""Container images for the bed's real nodes, built locally with podman (no registry is reachable).

* ``base``: Debian bookworm minbase with python3 (``mmdebstrap``), imported as
  ``localhost/python:3.11-bookworm`` — the project Dockerfile's ``PYTHON_IMAGE`` here.
* ``uv``: the uv binary this machine installed with pip, in a ``FROM scratch`` image
  (``localhost/uv:<version>``) — the Dockerfile's ``UV_IMAGE`` here.
* ``project``: ``docker/Dockerfile`` itself, built with those two as build arguments and tagged
  as the image users pull (``ghcr.io/happy-patterns-org/happy-observatory:<version>``), so pods
  of the operator's default image run it.
* ``pause``: the sandbox image, ``gcc -static`` of Kubernetes' own ``build/pause/linux/pause.c``.
* ``influxdb``: the influxd the bed builds, on the base image, for the chart's optional InfluxDB.
* ``stand-in``: a tiny Go server answering the kubelet's probes (``standin/main.go``), the image
  the operator's tests use when the agent's own progress is beside the point.

Each is built only when missing (podman keeps its layer cache; the base tarball is cached under
``~/.cache/happy-observatory/images/`` keyed by what goes into it). ``save()`` writes an image
as a docker-archive once per image ID, which ``load`` imports into a node's containerd.

    python3 tests/env/images.py            # every image that is missing
    python3 tests/env/images.py project    # just these
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import os
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
sys.path.insert(0, str(REPO))  # `python3 tests/env/images.py` runs before `uv sync`, from any cwd

from tests.env import build  # noqa: E402

SUITE = "bookworm"
BASE_PACKAGES = ("python3", "python3-venv", "ca-certificates", "passwd")
BASE_REF = "localhost/python:3.11-bookworm"
PAUSE_REF = "localhost/pause:3.10"
STAND_IN_REF = "localhost/observatory-stand-in:1"
PROJECT_REPO = "ghcr.io/happy-patterns-org/happy-observatory"
DEBIAN_MIRROR = "http://deb.debian.org/debian"
# Paths a runtime image never needs: keeps the base at a third of its size.
_EXCLUDES = ("/usr/share/doc/*", "/usr/share/man/*", "/usr/share/info/*", "/usr/share/locale/*")


class ImageError(RuntimeError):
    """An image could not be built; the message names the step and the log."""


def project_version() -> str:
    text = (REPO / "pyproject.toml").read_text()
    found = re.search(r'^version\s*=\s*"([^"]+)"', text, re.M)
    if not found:
        raise ImageError("pyproject.toml names no version")
    return found.group(1)


def project_ref() -> str:
    return f"{PROJECT_REPO}:{project_version()}"


def influxdb_ref() -> str:
    return f"localhost/influxdb:{build.read_versions()['INFLUXDB_VERSION'].lstrip('v')}"


def uv_binary() -> Path:
    found = shutil.which("uv") or str(Path.home() / ".local" / "bin" / "uv")
    if not Path(found).is_file():
        raise ImageError("uv is not installed (make bootstrap installs it)")
    return Path(found).resolve()


def uv_ref() -> str:
    out = subprocess.run([str(uv_binary()), "--version"], capture_output=True, text=True, check=True).stdout
    return f"localhost/uv:{out.split()[1]}"


def _images_dir() -> Path:
    path = build.cache_root() / "images"
    path.mkdir(parents=True, exist_ok=True)
    return path


def _log() -> Path:
    logs = build.cache_root() / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    return logs / "images.log"


def _run(cmd: list[str], *, step: str, cwd: Path | None = None, env: dict[str, str] | None = None) -> str:
    started = time.monotonic()
    print(f"  · {step}", flush=True)
    with _log().open("a") as fh:
        fh.write(f"\n$ {' '.join(cmd)}\n")
        fh.flush()
        proc = subprocess.run(cmd, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=fh, text=True, check=False)
        fh.write(proc.stdout)
    if proc.returncode != 0:
        tail = "\n".join(_log().read_text().splitlines()[-25:])
        raise ImageError(f"{step} failed (exit {proc.returncode}); log: {_log()}\n{tail}")
    print(f"    done in {time.monotonic() - started:.0f}s", flush=True)
    return proc.stdout


def podman() -> str:
    found = shutil.which("podman")
    if not found:
        raise ImageError("podman is not installed: `make env` installs it (apt-get install podman)")
    return found


# Every podman call the bed makes: runc (crun fails on this VM's cgroup v1/v2 hybrid) and no
# rlimit raises (processes here lack CAP_SYS_RESOURCE).
def _podman(*args: str) -> list[str]:
    return [podman(), "--runtime", "runc", *args]


def image_id(ref: str) -> str | None:
    proc = subprocess.run(
        _podman("image", "inspect", "--format", "{{.Id}}", ref), capture_output=True, text=True, check=False
    )
    if proc.returncode != 0:
        return None
    return proc.stdout.strip() or None


def _label(ref: str, key: str) -> str | None:
    proc = subprocess.run(_podman("image", "inspect", ref), capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        return None
    labels = (json.loads(proc.stdout)[0].get("Labels")) or {}
    value = labels.get(key)
    return str(value) if value is not None else None


def _import(tar: Path, ref: str, changes: list[str], step: str) -> None:
    args = ["import"]
    for change in changes:
        args += ["--change", change]
    _run(_podman(*args, str(tar), ref), step=step)


# --- the images ---------------------------------------------------------------------------


def _base_key() -> str:
    return hashlib.sha256(json.dumps([SUITE, BASE_PACKAGES, _EXCLUDES]).encode()).hexdigest()[:12]


def ensure_base() -> str:
    key = _base_key()
    if _label(BASE_REF, "happy-observatory.base") == key:
        return BASE_REF
    tar = _images_dir() / f"base-{SUITE}-{key}.tar"
    if not tar.is_file():
        if shutil.which("mmdebstrap") is None:
            raise ImageError("mmdebstrap is not installed: `make env` installs it")
        tmp = tar.with_suffix(".partial")
        cmd = [
            "mmdebstrap",
            "--variant=minbase",
            "--format=tar",
            f"--include={','.join(BASE_PACKAGES)}",
            '--aptopt=Acquire::Languages "none"',
            *[f"--dpkgopt=path-exclude={p}" for p in _EXCLUDES],
            "--customize-hook=rm -rf $1/var/lib/apt/lists/* $1/var/cache/apt/*",
            SUITE,
            str(tmp),
            DEBIAN_MIRROR,
        ]
        _run(cmd, step=f"mmdebstrap {SUITE} minbase + {', '.join(BASE_PACKAGES)}")
        tmp.replace(tar)
    _import(tar, BASE_REF, [f"LABEL happy-observatory.base={key}", 'CMD ["/bin/bash"]'], step=f"import {BASE_REF}")
    return BASE_REF


def _tar_of(files: dict[str, tuple[Path | bytes, int]], out: Path) -> Path:
    """A rootfs tarball: archive path → (source file or content, mode)."""
    with tarfile.open(out, "w") as tf:
        dirs: set[str] = set()
        for arc, (src, mode) in sorted(files.items()):
            parts = arc.split("/")[:-1]
            for i in range(1, len(parts) + 1):
                d = "/".join(parts[:i])
                if d and d not in dirs:
                    info = tarfile.TarInfo(d)
                    info.type, info.mode = tarfile.DIRTYPE, 0o755
                    tf.addfile(info)
                    dirs.add(d)
            data = src.read_bytes() if isinstance(src, Path) else src
            info = tarfile.TarInfo(arc)
            info.size, info.mode = len(data), mode
            tf.addfile(info, io.BytesIO(data))
    return out


def ensure_uv() -> str:
    ref = uv_ref()
    if image_id(ref):
        return ref
    with tempfile.TemporaryDirectory() as tmp:
        tar = _tar_of({"uv": (uv_binary(), 0o755)}, Path(tmp) / "uv.tar")
        _import(tar, ref, [], step=f"import {ref} (the pip-installed uv binary)")
    return ref


def _kubernetes_module_dir() -> Path:
    version = build.read_versions()["KUBERNETES_VERSION"]
    env = {**os.environ, "GOFLAGS": "-mod=mod", "GOTOOLCHAIN": "local"}
    with tempfile.TemporaryDirectory() as tmp:
        out = _run(
            ["go", "mod", "download", "-json", f"k8s.io/kubernetes@{version}"],
            cwd=Path(tmp),
            env=env,
            step=f"locate k8s.io/kubernetes@{version} sources",
        )
    return Path(json.loads(out)["Dir"])


def ensure_pause() -> str:
    if image_id(PAUSE_REF):
        return PAUSE_REF
    source = _kubernetes_module_dir() / "build" / "pause" / "linux" / "pause.c"
    with tempfile.TemporaryDirectory() as tmp:
        binary = Path(tmp) / "pause"
        _run(
            ["gcc", "-Os", "-static", "-Wall", "-DVERSION=v3.10-happy-observatory", "-o", str(binary), str(source)],
            step="gcc -static pause.c (Kubernetes' own)",
        )
        _run(["strip", str(binary)], step="strip pause")
        tar = _tar_of({"pause": (binary, 0o755)}, Path(tmp) / "pause.tar")
        _import(tar, PAUSE_REF, ['ENTRYPOINT ["/pause"]'], step=f"import {PAUSE_REF}")
    return PAUSE_REF


def _stand_in_key() -> str:
    return hashlib.sha256((HERE / "standin" / "main.go").read_bytes()).hexdigest()[:12]


def ensure_stand_in() -> str:
    key = _stand_in_key()
    if _label(STAND_IN_REF, "happy-observatory.source") == key:
        return STAND_IN_REF
    with tempfile.TemporaryDirectory() as tmp:
        binary = Path(tmp) / "observatory-agent"
        env = {**os.environ, "CGO_ENABLED": "0", "GOTOOLCHAIN": "local", "GO111MODULE": "off"}
        _run(
            ["go", "build", "-trimpath", "-ldflags", "-s -w", "-o", str(binary), str(HERE / "standin" / "main.go")],
            env=env,
            step="go build the stand-in agent",
        )
        # Also as chown: the agent pod's init container runs `chown UID:GID DIR` with the agent's image.
        files = {"usr/local/bin/observatory-agent": (binary, 0o755), "usr/local/bin/chown": (binary, 0o755)}
        tar = _tar_of(files, Path(tmp) / "standin.tar")
        _import(
            tar,
            STAND_IN_REF,
            [
                f"LABEL happy-observatory.source={key}",
                "ENV PATH=/usr/local/bin",
                "USER 65532:65532",
                'CMD ["observatory-agent", "run"]',
            ],
            step=f"import {STAND_IN_REF}",
        )
    return STAND_IN_REF


def ensure_project(*, force: bool = False) -> str:
    """``docker/Dockerfile`` built with the local base and uv images (podman's layer cache makes a rebuild quick)."""
    base, uv = ensure_base(), ensure_uv()
    ref = project_ref()
    certs = "/etc/ssl/certs"
    args = [
        "build",
        "--network",
        "host",
        "--ulimit",
        "nofile=1024:1024",
        "--ulimit",
        "nproc=1024:1024",
        "-v",
        f"{certs}:{certs}:ro",
        "--build-arg",
        f"PYTHON_IMAGE={base}",
        "--build-arg",
        f"UV_IMAGE={uv}",
        "--build-arg",
        "UV_NATIVE_TLS=1",
        "--build-arg",
        f"SSL_CERT_FILE={certs}/ca-certificates.crt",
        "-f",
        str(REPO / "docker" / "Dockerfile"),
        "-t",
        ref,
        str(REPO),
    ]
    uv_cache = Path(os.environ.get("UV_CACHE_DIR") or Path.home() / ".cache" / "uv")
    if uv_cache.is_dir():
        # The host's package cache: a cold image build then downloads nothing it already has.
        args[1:1] = ["-v", f"{uv_cache}:/root/.cache/uv"]
    if force:
        args.insert(1, "--no-cache")
    _run(_podman(*args), step=f"podman build docker/Dockerfile → {ref}")
    return ref


def ensure_influxdb() -> str:
    ref = influxdb_ref()
    influxd = build.binary("influxdb", "influxd")
    key = hashlib.sha256(influxd.read_bytes()).hexdigest()[:12] if influxd.is_file() else ""
    if key and _label(ref, "happy-observatory.influxd") == key:
        return ref
    build.ensure(["influxdb"])
    key = hashlib.sha256(influxd.read_bytes()).hexdigest()[:12]
    base = ensure_base()
    with tempfile.TemporaryDirectory() as tmp:
        ctx = Path(tmp)
        shutil.copy2(influxd, ctx / "influxd")
        (ctx / "Containerfile").write_text(
            f"FROM {base}\n"
            "RUN groupadd --gid 1000 influxdb && useradd --uid 1000 --gid 1000 --home-dir /var/lib/influxdb2"
            " --no-create-home influxdb && mkdir -p /var/lib/influxdb2 && chown influxdb:influxdb /var/lib/influxdb2\n"
            "COPY influxd /usr/bin/influxd\n"
            "ENV INFLUXD_BOLT_PATH=/var/lib/influxdb2/influxd.bolt INFLUXD_ENGINE_PATH=/var/lib/influxdb2/engine"
            " INFLUXD_SQLITE_PATH=/var/lib/influxdb2/influxd.sqlite INFLUXD_REPORTING_DISABLED=true\n"
            f"LABEL happy-observatory.influxd={key}\n"
            "USER 1000:1000\nWORKDIR /var/lib/influxdb2\nEXPOSE 8086\n"
            'ENTRYPOINT ["influxd"]\n'
        )
        _run(
            _podman("build", "--network", "none", "--ulimit", "nofile=1024:1024", "-t", ref, str(ctx)),
            step=f"podman build {ref} from the bed's influxd",
        )
    return ref


BUILDERS: dict[str, Callable[[], str]] = {
    "base": ensure_base,
    "uv": ensure_uv,
    "pause": ensure_pause,
    "stand-in": ensure_stand_in,
    "project": ensure_project,
    "influxdb": ensure_influxdb,
}
NODE_IMAGES = ("pause", "stand-in", "project", "influxdb")
"""What every real node gets loaded."""


def ensure(names: list[str] | tuple[str, ...] = tuple(BUILDERS)) -> dict[str, str]:
    return {name: BUILDERS[name]() for name in names}


def save(ref: str) -> Path:
    """A docker-archive of ``ref``, written once per image ID (what a node's containerd imports)."""
    ident = image_id(ref)
    if ident is None:
        raise ImageError(f"image {ref} does not exist; build it first")
    safe = re.sub(r"[^A-Za-z0-9_.-]+", "_", ref)
    out = _images_dir() / f"{safe}-{ident[:12]}.tar"
    if not out.is_file():
        for stale in _images_dir().glob(f"{safe}-*.tar"):
            stale.unlink()
        tmp = out.with_suffix(".partial")
        tmp.unlink(missing_ok=True)
        _run(_podman("save", "--format", "docker-archive", "-o", str(tmp), ref), step=f"podman save {ref}")
        tmp.replace(out)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("images", nargs="*", help=f"any of {', '.join(BUILDERS)} (default: all)")
    parser.add_argument("--rebuild", action="store_true", help="project: build without podman's layer cache")
    args = parser.parse_args(argv)
    names = args.images or list(BUILDERS)
    unknown = [n for n in names if n not in BUILDERS]
    if unknown:
        parser.error(f"unknown image(s) {unknown}; choose from {list(BUILDERS)}")
    try:
        for name in names:
            ref = ensure_project(force=True) if name == "project" and args.rebuild else BUILDERS[name]()
            print(f"✓ {name}: {ref} ({(image_id(ref) or '')[:12]})", flush=True)
    except ImageError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
