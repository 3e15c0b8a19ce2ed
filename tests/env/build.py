"""Build the test environment's binaries from upstream sources into a versioned cache.

Only package registries are reachable from these machines, so the control plane (kube-apiserver,
the controller-manager, the scheduler), the node components (kubelet, kube-proxy, CoreDNS,
crictl), kubectl, etcd, Helm and influxd are compiled from the Go module proxy (and, for
influxd's flux core, crates.io); container images come from ``images.py``. Each component lands in
``$HAPPY_OBSERVATORY_CACHE/<component>-<version>/bin`` and is built only when a binary is
missing, so CI rebuilds nothing on a warm machine.

Only the standard library is used: this runs before ``uv sync``.

    python3 tests/env/build.py            # everything that is missing
    python3 tests/env/build.py etcd helm  # just these
    python3 tests/env/build.py --print-paths
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

HERE = Path(__file__).resolve().parent
VERSIONS_FILE = HERE / "versions.env"


class BuildError(RuntimeError):
    """A component could not be built; the message says which step failed and where the log is."""


def read_versions(path: Path = VERSIONS_FILE) -> dict[str, str]:
    versions: dict[str, str] = {}
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        key, _, value = line.partition("=")
        versions[key.strip()] = value.strip()
    return versions


def cache_root() -> Path:
    default = Path.home() / ".cache" / "happy-observatory"
    return Path(os.environ.get("HAPPY_OBSERVATORY_CACHE", str(default)))


@dataclass(frozen=True)
class Component:
    name: str
    version: str
    binaries: tuple[str, ...]

    @property
    def bindir(self) -> Path:
        return cache_root() / f"{self.name}-{self.version}" / "bin"

    def missing(self) -> list[str]:
        return [b for b in self.binaries if not (self.bindir / b).is_file()]


def components(versions: dict[str, str] | None = None) -> dict[str, Component]:
    v = versions or read_versions()
    return {
        "kubernetes": Component(
            "kubernetes",
            v["KUBERNETES_VERSION"],
            ("kube-apiserver", "kube-controller-manager", "kube-scheduler", "kubectl", "kubelet", "kube-proxy"),
        ),
        "etcd": Component("etcd", v["ETCD_VERSION"], ("etcd",)),
        "helm": Component("helm", v["HELM_VERSION"], ("helm",)),
        "coredns": Component("coredns", v["COREDNS_VERSION"], ("coredns",)),
        "cri-tools": Component("cri-tools", v["CRI_TOOLS_VERSION"], ("crictl",)),
        "influxdb": Component("influxdb", v["INFLUXDB_VERSION"], ("influxd",)),
        "actionlint": Component("actionlint", v["ACTIONLINT_VERSION"], ("actionlint",)),
        "helm-docs": Component("helm-docs", v["HELM_DOCS_VERSION"], ("helm-docs",)),
    }


def binary(component: str, name: str | None = None) -> Path:
    """Path of a built binary (it may not exist yet)."""
    comp = components()[component]
    return comp.bindir / (name or comp.binaries[0])


# --- running steps ----------------------------------------------------------------------


def _log_path(comp: Component) -> Path:
    logs = cache_root() / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    return logs / f"{comp.name}-{comp.version}.log"


def _run(cmd: list[str], *, cwd: Path, env: dict[str, str], log: Path, step: str) -> str:
    started = time.monotonic()
    print(f"  · {step}", flush=True)
    with log.open("a") as fh:
        fh.write(f"\n$ (cd {cwd} && {' '.join(cmd)})\n")
        fh.flush()
        proc = subprocess.run(cmd, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=fh, text=True, check=False)
        fh.write(proc.stdout)
    if proc.returncode != 0:
        tail = "\n".join(log.read_text().splitlines()[-25:])
        raise BuildError(
            f"{step} failed (exit {proc.returncode}) after {time.monotonic() - started:.0f}s; full log: {log}\n{tail}"
        )
    print(f"    done in {time.monotonic() - started:.0f}s", flush=True)
    return proc.stdout


def _go_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    env = dict(os.environ)
    # Never let the go command fetch another toolchain: fail loudly instead.
    env.setdefault("GOTOOLCHAIN", "local")
    env["GOFLAGS"] = "-mod=mod"
    env.update(extra or {})
    return env


def _module_gomod(module: str, version: str, cwd: Path, env: dict[str, str], log: Path) -> str:
    out = _run(
        ["go", "mod", "download", "-json", f"{module}@{version}"],
        cwd=cwd,
        env=env,
        log=log,
        step=f"download {module}@{version}",
    )
    info = json.loads(out)
    return Path(info["GoMod"]).read_text()


_REPLACE_LINE = re.compile(r"^\s*(?:replace\s+)?(\S+)(?:\s+(v\S+))?\s+=>\s+(\S+)(?:\s+(v\S+))?\s*$")


def _replaces(gomod: str) -> list[tuple[str, str, str | None]]:
    """(module, target, target_version) for every replace directive in a go.mod."""
    out: list[tuple[str, str, str | None]] = []
    in_block = False
    for raw in gomod.splitlines():
        line = raw.split("//", 1)[0].rstrip()
        if line.strip().startswith("replace ("):
            in_block = True
            continue
        if in_block and line.strip() == ")":
            in_block = False
            continue
        if in_block or line.strip().startswith("replace "):
            m = _REPLACE_LINE.match(line)
            if m:
                out.append((m.group(1), m.group(3), m.group(4)))
    return out


def _wrapper_module(
    comp: Component,
    module: str,
    local_version: str,
    *,
    work: Path,
    env: dict[str, str],
    log: Path,
) -> None:
    """A throwaway module that requires ``module`` and mirrors its replace directives.

    Upstream go.mod files replace their sibling modules with local paths (kubernetes'
    staging tree, etcd's api/client/pkg), which `go install pkg@version` refuses. Pointing
    each local replace at the published module of ``local_version`` makes the build work.
    """
    _run(["go", "mod", "init", f"build.local/{comp.name}"], cwd=work, env=env, log=log, step="go mod init")
    gomod = _module_gomod(module, comp.version, work, env, log)
    args = ["go", "mod", "edit", f"-require={module}@{comp.version}"]
    for mod, target, target_version in _replaces(gomod):
        if target.startswith(".") and not re.search(rf"^\s*(?:require\s+)?{re.escape(mod)}\s+v", gomod, re.M):
            continue  # a sibling the module does not require (etcd's tests/, its root)
        if target.startswith("."):
            args.append(f"-replace={mod}={mod}@{local_version}")
        elif target_version:
            args.append(f"-replace={mod}={target}@{target_version}")
    _run(args, cwd=work, env=env, log=log, step=f"mirror {len(args) - 4} replace directives")
    go_line = re.search(r"^go\s+(\S+)", gomod, re.M)
    if go_line:
        _run(["go", "mod", "edit", f"-go={go_line.group(1)}"], cwd=work, env=env, log=log, step="go version")


def _install(staging: Path, comp: Component) -> None:
    final = comp.bindir.parent
    if final.exists():
        shutil.rmtree(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    os.replace(staging, final)


# --- components -------------------------------------------------------------------------


def build_kubernetes(comp: Component, work: Path, log: Path) -> None:
    env = _go_env({"CGO_ENABLED": "0"})
    major, minor, _ = comp.version.lstrip("v").split(".")
    staging_version = f"v0.{minor}.{comp.version.split('.')[2]}"
    _wrapper_module(comp, "k8s.io/kubernetes", staging_version, work=work, env=env, log=log)
    stamp = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    ldflags = []
    for pkg in ("k8s.io/component-base/version", "k8s.io/client-go/pkg/version"):
        ldflags += [
            f"-X {pkg}.gitVersion={comp.version}",
            f"-X {pkg}.gitMajor={major}",
            f"-X {pkg}.gitMinor={minor}",
            f"-X {pkg}.gitTreeState=clean",
            f"-X {pkg}.buildDate={stamp}",
        ]
    out = work / "out" / "bin"
    out.mkdir(parents=True)
    pkgs = [f"k8s.io/kubernetes/cmd/{b}" for b in comp.binaries]
    _run(
        [
            "go",
            "build",
            "-trimpath",
            "-ldflags",
            " ".join(["-s", "-w", *ldflags]),
            "-o",
            str(out) + "/",
            *pkgs,
        ],
        cwd=work,
        env=env,
        log=log,
        step=f"go build {' '.join(comp.binaries)} (the long one: ~20-40 min on 2 cores)",
    )
    _install(work / "out", comp)


def build_etcd(comp: Component, work: Path, log: Path) -> None:
    env = _go_env({"CGO_ENABLED": "0"})
    _wrapper_module(comp, "go.etcd.io/etcd/server/v3", comp.version, work=work, env=env, log=log)
    out = work / "out" / "bin"
    out.mkdir(parents=True)
    _run(
        [
            "go",
            "build",
            "-trimpath",
            "-ldflags",
            "-s -w",
            "-o",
            str(out / "etcd"),
            "go.etcd.io/etcd/server/v3",
        ],
        cwd=work,
        env=env,
        log=log,
        step="go build etcd",
    )
    _install(work / "out", comp)


def _go_install(comp: Component, work: Path, log: Path, package: str, ldflags: str = "-s -w") -> None:
    """``go install package@version`` for modules without local replace directives (no wrapper needed)."""
    out = work / "out" / "bin"
    out.mkdir(parents=True)
    env = _go_env({"CGO_ENABLED": "0", "GOBIN": str(out)})
    env.pop("GOFLAGS")
    _run(
        ["go", "install", "-trimpath", "-ldflags", ldflags, f"{package}@{comp.version}"],
        cwd=work,
        env=env,
        log=log,
        step=f"go install {package}@{comp.version}",
    )
    _install(work / "out", comp)


def build_helm(comp: Component, work: Path, log: Path) -> None:
    major = comp.version.lstrip("v").split(".")[0]
    module = "helm.sh/helm" if major == "2" else f"helm.sh/helm/v{major}"
    ldflags = f"-s -w -X {module}/internal/version.version={comp.version}"
    _go_install(comp, work, log, f"{module}/cmd/helm", ldflags)


def build_influxdb(comp: Component, work: Path, log: Path) -> None:
    tools = work / "tools"
    tools.mkdir()
    env = _go_env({"CGO_ENABLED": "1"})
    _wrapper_module(comp, "github.com/influxdata/influxdb/v2", comp.version, work=work, env=env, log=log)
    gomod = (work / "go.mod").read_text()
    upstream = _module_gomod("github.com/influxdata/influxdb/v2", comp.version, work, env, log)
    pkgconfig = re.search(r"github.com/influxdata/pkg-config\s+(v\S+)", upstream)
    if not pkgconfig:
        raise BuildError(f"influxdb {comp.version}'s go.mod names no github.com/influxdata/pkg-config")
    tool_env = _go_env({"GOBIN": str(tools), "CGO_ENABLED": "0"})
    tool_env.pop("GOFLAGS")
    _run(
        ["go", "install", f"github.com/influxdata/pkg-config@{pkgconfig.group(1)}"],
        cwd=work,
        env=tool_env,
        log=log,
        step=f"go install pkg-config wrapper {pkgconfig.group(1)}",
    )
    # The wrapper builds flux's Rust core with cargo when cgo asks for `pkg-config flux`.
    # Flux pins an old toolchain that rustup cannot fetch here, and newer rustc turns some
    # of its lints into errors: use the installed stable toolchain with lints capped.
    env["PATH"] = f"{tools}{os.pathsep}{env['PATH']}"
    env["RUSTUP_TOOLCHAIN"] = os.environ.get("RUSTUP_TOOLCHAIN", "stable")
    env["RUSTFLAGS"] = "--cap-lints warn"
    # The wrapper passes `--target`, and then RUSTFLAGS skips host artifacts; but flux's
    # build script compiles flux-core for the host with the `strict` feature (deny(warnings)),
    # which fails on newer rustc. A rustc wrapper caps lints for host and target alike.
    wrapper = tools / "rustc-cap-lints"
    wrapper.write_text('#!/bin/sh\ncase " $* " in *" --cap-lints "*) exec "$@" ;; esac\nexec "$@" --cap-lints warn\n')
    wrapper.chmod(0o755)
    env["RUSTC_WRAPPER"] = str(wrapper)
    env["PKG_CONFIG"] = str(tools / "pkg-config")
    del gomod
    out = work / "out" / "bin"
    out.mkdir(parents=True)
    _run(
        [
            "go",
            "build",
            "-trimpath",
            "-tags",
            # No `assets`: that tag needs UI files generated by a download step outside the module.
            "sqlite_foreign_keys,sqlite_json",
            "-ldflags",
            f"-s -w -X main.version={comp.version.lstrip('v')}",
            "-o",
            str(out / "influxd"),
            "github.com/influxdata/influxdb/v2/cmd/influxd",
        ],
        cwd=work,
        env=env,
        log=log,
        step="go build influxd with flux's Rust core (~15-30 min on 2 cores)",
    )
    _install(work / "out", comp)


GO_TOOLS = {
    "coredns": "github.com/coredns/coredns",
    "cri-tools": "sigs.k8s.io/cri-tools/cmd/crictl",
    "actionlint": "github.com/rhysd/actionlint/cmd/actionlint",
    "helm-docs": "github.com/norwoodj/helm-docs/cmd/helm-docs",
}
"""Components that are one `go install` of a module's command: the bed's cluster DNS and CRI client, developer tools."""


def build_go_tool(comp: Component, work: Path, log: Path) -> None:
    _go_install(comp, work, log, GO_TOOLS[comp.name])


BUILDERS = {
    "kubernetes": build_kubernetes,
    "etcd": build_etcd,
    "helm": build_helm,
    "coredns": build_go_tool,
    "cri-tools": build_go_tool,
    "influxdb": build_influxdb,
    "actionlint": build_go_tool,
    "helm-docs": build_go_tool,
}


def ensure(names: list[str]) -> None:
    comps = components()
    for name in names:
        comp = comps[name]
        missing = comp.missing()
        if not missing:
            print(f"✓ {comp.name} {comp.version}: cached in {comp.bindir}", flush=True)
            continue
        log = _log_path(comp)
        log.write_text(f"building {comp.name} {comp.version}; missing {missing}\n")
        print(f"▶ building {comp.name} {comp.version} (missing {', '.join(missing)}); log: {log}", flush=True)
        started = time.monotonic()
        cache_root().mkdir(parents=True, exist_ok=True)
        work = Path(tempfile.mkdtemp(prefix=f"build-{comp.name}-", dir=cache_root()))
        try:
            BUILDERS[name](comp, work, log)
        finally:
            shutil.rmtree(work, ignore_errors=True)
        still = comp.missing()
        if still:
            raise BuildError(f"{comp.name} {comp.version}: build finished but {still} are missing; log: {log}")
        print(f"✓ {comp.name} {comp.version} built in {time.monotonic() - started:.0f}s", flush=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("components", nargs="*", help=f"any of {', '.join(BUILDERS)} (default: all)")
    parser.add_argument("--print-paths", action="store_true", help="print each component's bin dir and exit")
    args = parser.parse_args(argv)
    names = args.components or list(BUILDERS)
    unknown = [n for n in names if n not in BUILDERS]
    if unknown:
        parser.error(f"unknown component(s) {unknown}; choose from {list(BUILDERS)}")
    if args.print_paths:
        for name in names:
            print(f"{name}\t{components()[name].bindir}")
        return 0
    for tool in ("go",):
        if shutil.which(tool) is None:
            print(
                f"error: `{tool}` is not on PATH; the test environment is built from sources with it",
                file=sys.stderr,
            )
            return 2
    try:
        ensure(names)
    except BuildError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
