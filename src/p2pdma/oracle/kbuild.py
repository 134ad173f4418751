"""Build (and cache) the guest kernels the oracle boots.

A kernel is a pinned Debian ``linux-source-<series>`` package, configured from
``allnoconfig`` plus the fragment in ``data/p2pdma-guest.config``.  Builds are cached
under ``${P2PDMA_CACHE:-/var/cache/p2pdma}/kernels/<series>-<version>-<hash>/``,
where the hash covers the fragment and the build recipe, so a second call returns
at once.  The out-of-tree oracle module is built against the same tree and cached
next to it, keyed by the hash of its source.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import re
import shutil
import subprocess
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from p2pdma.errors import P2PDMAError

Log = Callable[[str], None]

#: Bump when the build steps change in a way that changes the result.
RECIPE_VERSION = "2"


class OracleError(P2PDMAError):
    """The QEMU oracle could not build, boot or read a guest."""


@dataclass(frozen=True)
class KernelSpec:
    """One pinned kernel source package."""

    series: str
    package: str
    version: str
    profile: str  # the p2pdma kernel profile name this kernel is compared against

    @property
    def tarball(self) -> str:
        return f"usr/src/{self.package}.tar.xz"


KERNELS: dict[str, KernelSpec] = {
    "6.12": KernelSpec("6.12", "linux-source-6.12", "6.12.117-1~deb12u1", "6.12"),
    "6.1": KernelSpec("6.1", "linux-source-6.1", "6.1.192-2", "6.1"),
}


@dataclass(frozen=True)
class KernelBuild:
    """A finished, cached kernel build."""

    spec: KernelSpec
    root: Path  # cache directory of this build
    tree: Path  # the configured and built source tree
    bzimage: Path
    release: str  # `uname -r` of the built kernel, e.g. 6.12.117
    build_seconds: float  # 0.0 when it came from the cache


def cache_root() -> Path:
    """``$P2PDMA_CACHE``, else /var/cache/p2pdma for root (kept across CI runs on
    the same machine), else the user's cache directory."""
    env = os.environ.get("P2PDMA_CACHE")
    if env:
        return Path(env)
    if os.geteuid() == 0:
        return Path("/var/cache/p2pdma")
    xdg = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(xdg) / "p2pdma"


def data_file(name: str) -> str:
    return resources.files("p2pdma.oracle").joinpath("data", name).read_text()


def fragment_text(series: str | None = None) -> str:
    """The config fragment: the common part plus ``p2pdma-guest-<series>.config`` if any."""
    text = data_file("p2pdma-guest.config")
    if series is not None:
        extra = resources.files("p2pdma.oracle").joinpath("data", f"p2pdma-guest-{series}.config")
        if extra.is_file():
            text += extra.read_text()
    return text


def parse_fragment(text: str) -> dict[str, str]:
    """``CONFIG_X`` → value (``y``, ``m``, a string) or ``n`` for 'is not set' lines."""
    out: dict[str, str] = {}
    for raw in text.splitlines():
        line = raw.strip()
        m = re.fullmatch(r"# (CONFIG_\w+) is not set", line)
        if m:
            out[m.group(1)] = "n"
            continue
        if not line or line.startswith("#"):
            continue
        key, sep, value = line.partition("=")
        if not sep or not key.startswith("CONFIG_"):
            raise OracleError(
                f"malformed config fragment line {raw!r}",
                where="p2pdma/oracle/data/p2pdma-guest.config",
                hint="use CONFIG_NAME=value or '# CONFIG_NAME is not set'",
            )
        out[key] = value
    return out


def missing_options(fragment: dict[str, str], config_text: str) -> list[str]:
    """Options requested by the fragment that olddefconfig dropped or changed."""
    have = parse_fragment(config_text)
    bad = []
    for key, want in sorted(fragment.items()):
        got = have.get(key, "n")
        if got != want:
            bad.append(f"{key}: wanted {want}, got {got}")
    return bad


def build_key(spec: KernelSpec, fragment: str) -> str:
    h = hashlib.sha256((RECIPE_VERSION + "\n" + spec.version + "\n" + fragment).encode())
    return f"{spec.series}-{spec.version.replace('~', '_')}-{h.hexdigest()[:12]}"


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def _run(cmd: list[str], *, cwd: Path, log_path: Path, what: str) -> None:
    with open(log_path, "a") as log:
        log.write(f"\n$ {' '.join(cmd)}\n")
        log.flush()
        proc = subprocess.run(cmd, cwd=cwd, stdout=log, stderr=subprocess.STDOUT, check=False)
    if proc.returncode != 0:
        tail = log_path.read_text(errors="replace").splitlines()[-25:]
        raise OracleError(
            f"{what} failed (exit {proc.returncode}):\n" + "\n".join(tail),
            where=str(log_path),
            hint="see the full log; build deps: flex bison bc libelf-dev libssl-dev "
            "xz-utils make gcc",
        )


def fetch_source_deb(spec: KernelSpec, log: Log = print) -> Path:
    """The pinned ``linux-source`` .deb, downloaded once into the cache."""
    dl = cache_root() / "dl"
    dl.mkdir(parents=True, exist_ok=True)
    name = f"{spec.package}_{spec.version}_all.deb"
    deb = dl / name
    if deb.is_file():
        return deb
    if shutil.which("apt-get") is None:
        raise OracleError(
            f"cannot download {spec.package}={spec.version}: apt-get not found",
            hint=f"place {name} in {dl}",
        )
    log(f"oracle: downloading {spec.package}={spec.version}")

    def download() -> subprocess.CompletedProcess[str]:
        return subprocess.run(["apt-get", "download", f"{spec.package}={spec.version}"],
                              cwd=dl, capture_output=True, text=True, check=False)

    proc = download()
    if (proc.returncode != 0 or not deb.is_file()) and os.geteuid() == 0:
        # A fresh machine may have stale or no package lists: refresh once, retry.
        log("oracle: refreshing the package lists (apt-get update)")
        subprocess.run(["apt-get", "update", "-qq"], capture_output=True, check=False)
        proc = download()
    if proc.returncode != 0 or not deb.is_file():
        raise OracleError(
            f"the archive no longer offers {spec.package} version {spec.version} "
            f"(pinned by p2pdma.oracle.kbuild.KERNELS['{spec.series}']): "
            f"{proc.stderr.strip()[-400:]}",
            where=f"apt-get download {spec.package}={spec.version}",
            hint=f"run 'apt-get update'; if the version is gone, pin the one "
            f"'apt-cache policy {spec.package}' lists and re-run the oracle",
        )
    return deb


def _unpack(deb: Path, spec: KernelSpec, dest: Path, log_path: Path) -> Path:
    dest.mkdir(parents=True, exist_ok=True)
    with open(log_path, "a") as logf:
        fsys = subprocess.Popen(["dpkg-deb", "--fsys-tarfile", str(deb)], stdout=subprocess.PIPE)
        assert fsys.stdout is not None
        tar = subprocess.run(
            ["tar", "-x", "-C", str(dest), "./" + spec.tarball],
            stdin=fsys.stdout,
            stdout=logf,
            stderr=subprocess.STDOUT,
            check=False,
        )
        fsys.stdout.close()
        fsys.wait()
    inner = dest / spec.tarball
    if tar.returncode != 0 or not inner.is_file():
        raise OracleError(
            f"{deb.name} does not contain {spec.tarball}",
            where=str(deb),
            hint="delete the .deb from the cache and retry",
        )
    _run(["tar", "-xJf", str(inner), "-C", str(dest)], cwd=dest, log_path=log_path,
         what="unpacking the kernel source")
    inner.unlink()
    tree = dest / spec.package
    if not (tree / "Makefile").is_file():
        raise OracleError(f"unexpected layout in {spec.tarball}", where=str(dest))
    return tree


def _jobs() -> str:
    return str(max(1, os.cpu_count() or 1))


def ensure_kernel(series: str = "6.12", *, log: Log = print) -> KernelBuild:
    """Return the cached build for ``series``, building it first if needed."""
    spec = KERNELS.get(series)
    if spec is None:
        raise OracleError(
            f"unknown kernel series {series!r}",
            hint="choose one of: " + ", ".join(KERNELS),
        )
    fragment = fragment_text(series)
    root = cache_root() / "kernels" / build_key(spec, fragment)
    with _locked(cache_root() / "locks" / f"{root.name}.lock"):
        done = root / "done"
        tree = root / spec.package
        if done.is_file():
            return KernelBuild(spec, root, tree, tree / "arch/x86/boot/bzImage",
                               done.read_text().strip(), 0.0)
        log(f"oracle: building kernel {spec.package} {spec.version} in {root}")
        t0 = time.monotonic()
        if root.exists():
            shutil.rmtree(root)
        root.mkdir(parents=True)
        log_path = root / "build.log"
        deb = fetch_source_deb(spec, log)
        tree = _unpack(deb, spec, root, log_path)
        (root / "fragment.config").write_text(fragment)
        make = ["make", "-j", _jobs()]
        _run(["make", "allnoconfig"], cwd=tree, log_path=log_path, what="make allnoconfig")
        _run(["scripts/kconfig/merge_config.sh", "-m", ".config", str(root / "fragment.config")],
             cwd=tree, log_path=log_path, what="merge_config.sh")
        _run(["make", "olddefconfig"], cwd=tree, log_path=log_path, what="make olddefconfig")
        bad = missing_options(parse_fragment(fragment), (tree / ".config").read_text())
        if bad:
            raise OracleError(
                "kernel options requested by the fragment did not survive olddefconfig:\n  "
                + "\n  ".join(bad),
                where=str(tree / ".config"),
                hint="add the options they depend on to p2pdma/oracle/data/p2pdma-guest.config",
            )
        log("oracle: config verified; compiling bzImage + modules (several minutes)")
        _run([*make, "bzImage", "modules"], cwd=tree, log_path=log_path, what="kernel build")
        release = (tree / "include/config/kernel.release").read_text().strip()
        secs = time.monotonic() - t0
        (root / "build-seconds").write_text(f"{secs:.1f}\n")
        done.write_text(release + "\n")
        log(f"oracle: kernel {release} built in {secs:.0f} s")
        return KernelBuild(spec, root, tree, tree / "arch/x86/boot/bzImage", release, secs)


def ensure_module(kb: KernelBuild, *, log: Log = print) -> Path:
    """Build the oracle module (``p2pdma_oracle.ko``) against ``kb``; cached by source hash."""
    names = ["p2pdma_oracle.c", "Kbuild"]
    texts = [data_file(n) for n in names]
    h = hashlib.sha256("\0".join(texts).encode()).hexdigest()[:12]
    out = kb.root / f"module-{h}"
    ko = out / "p2pdma_oracle.ko"
    with _locked(cache_root() / "locks" / f"{kb.root.name}-module.lock"):
        if ko.is_file():
            return ko
        if out.exists():
            shutil.rmtree(out)
        out.mkdir(parents=True)
        for n, t in zip(names, texts, strict=True):
            (out / n).write_text(t)
        log("oracle: building p2pdma_oracle.ko")
        _run(["make", "-C", str(kb.tree), f"M={out}", "modules"], cwd=out,
             log_path=out / "build.log", what="oracle module build")
        if not ko.is_file():
            raise OracleError("module build produced no p2pdma_oracle.ko", where=str(out))
        return ko
