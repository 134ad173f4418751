"""Boot one oracle guest under QEMU (TCG) and collect the kernel's verdicts.

The guest is the cached kernel plus a busybox initramfs holding ``data/init.sh`` as
``/init`` and the oracle module.  A per-run host directory is shared writable over
virtio-9p (mount tag ``out``); the guest writes ``results.txt`` (the module's answers
and the kernel messages printed while answering), ``sysfs.tar`` (the captured sysfs
files) and its dmesg there, then powers off.  QEMU always runs under ``timeout``.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import re
import shutil
import stat
import subprocess
import tarfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from p2pdma.oracle.kbuild import KernelBuild, OracleError, cache_root, data_file
from p2pdma.oracle.topology import NINEP_SLOT, Topology, qemu_device_args

BUSYBOX = Path("/bin/busybox")
QEMU = "qemu-system-x86_64"
DONE_MARK = "P2PDMA-ORACLE-DONE"
FAIL_MARK = "P2PDMA-ORACLE-FAIL"

#: lines of the kernel log that belong to P2PDMA decisions or provider setup
P2PDMA_LINE = re.compile(
    r"peer-to-peer|P2PDMA|p2pdma|ACS redirect|disable_acs_redir|whitelist", re.IGNORECASE
)
#: a message printed for a device (``nvme 0000:03:00.0: ...``) or by the subsystem itself;
#: anything else printed while a query ran (clocksource switches, ...) is unrelated noise
DEVICE_LINE = re.compile(r"^(\S+ [0-9a-f]{4}:[0-9a-f]{2}:[0-9a-f]{2}\.[0-7]: |pci-p2pdma: )")


def _cpio_newc(entries: list[tuple[str, int, bytes, int]]) -> bytes:
    """A newc cpio archive; entries are (name, mode, data, rdev as major<<8|minor)."""
    out = io.BytesIO()

    def pad(n: int) -> None:
        out.write(b"\0" * ((4 - n % 4) % 4))

    for ino, (name, mode, data, rdev) in enumerate([*entries, ("TRAILER!!!", 0, b"", 0)], 1):
        nm = name.encode() + b"\0"
        hdr = "070701" + "".join(
            f"{v:08x}"
            for v in (ino, mode, 0, 0, 1, 0, len(data), 0, 0, rdev >> 8, rdev & 0xFF,
                      len(nm), 0)
        )
        out.write(hdr.encode() + nm)
        pad(110 + len(nm))
        out.write(data)
        pad(len(data))
    return out.getvalue()


def build_initramfs(module: Path) -> Path:
    """The guest initramfs (cached by the hash of its contents)."""
    if not BUSYBOX.is_file():
        raise OracleError(
            "busybox is not installed", where=str(BUSYBOX),
            hint="apt-get install --no-install-recommends busybox-static",
        )
    init = data_file("init.sh").encode()
    bb = BUSYBOX.read_bytes()
    ko = module.read_bytes()
    h = hashlib.sha256(init + b"\0" + bb + b"\0" + ko).hexdigest()[:16]
    path = cache_root() / "initramfs" / f"oracle-{h}.cpio.gz"
    if path.is_file():
        return path
    d, f, c = stat.S_IFDIR | 0o755, stat.S_IFREG, stat.S_IFCHR | 0o600
    entries = [(n, d, b"", 0) for n in ("bin", "dev", "proc", "sys", "out", "capture", "host")]
    entries += [
        ("dev/console", c, b"", (5 << 8) | 1),
        ("bin/busybox", f | 0o755, bb, 0),
        ("bin/sh", stat.S_IFLNK | 0o777, b"busybox", 0),
        ("init", f | 0o755, init, 0),
        ("p2pdma_oracle.ko", f | 0o644, ko, 0),
    ]
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_bytes(gzip.compress(_cpio_newc(entries), mtime=0))
    tmp.rename(path)
    return path


@dataclass
class GuestRun:
    """Raw outcome of one boot."""

    topology: Topology
    outdir: Path
    seconds: float
    console: str
    qemu_args: list[str]
    results: dict[str, Any] = field(default_factory=dict)


#: pcie.0 slot of the optional read-only share of the host's / (for guest commands)
HOST_SLOT = 0x1D


def qemu_command(topo: Topology, kb: KernelBuild, initramfs: Path, outdir: Path,
                 *, host_share: bool = False) -> list[str]:
    disk_dir = None
    if host_share:
        (outdir / "disks").mkdir(exist_ok=True)
        disk_dir = str(outdir / "disks")
    dev_args, _ = qemu_device_args(topo, disk_dir)
    if host_share:
        dev_args = [
            "-fsdev", "local,id=hostfs,path=/,security_model=none,readonly=on,multidevs=remap",
            "-device", f"virtio-9p-pci,fsdev=hostfs,mount_tag=host,bus=pcie.0,addr={HOST_SLOT:#x}",
            *dev_args,
        ]
    append = f"console=ttyS0 quiet panic=-1 rdinit=/init {topo.cmdline()}".strip()
    return [
        QEMU, "-M", "q35", "-accel", "tcg", "-cpu", topo.cpu, "-smp", "2", "-m", "1024",
        "-nodefaults", "-display", "none", "-serial", "stdio", "-no-reboot",
        "-kernel", str(kb.bzimage), "-initrd", str(initramfs), "-append", append,
        "-fsdev", f"local,id=outfs,path={outdir},security_model=none",
        "-device", f"virtio-9p-pci,fsdev=outfs,mount_tag=out,bus=pcie.0,addr={NINEP_SLOT:#x}",
        *dev_args,
    ]


def boot(topo: Topology, kb: KernelBuild, initramfs: Path, outdir: Path,
         *, timeout: float = 300.0, commands: str | None = None) -> GuestRun:
    """Boot ``topo`` once; raises :class:`OracleError` unless the guest finished.

    ``commands`` (a shell script) runs after the oracle queries, chrooted into the
    host's ``/`` shared read-only (guest /proc, /sys, /dev, a tmpfs /run mounted in it for scratch;
    the writable share at ``/mnt``); namespaces are then file-backed.  Its output is
    ``commands.out`` in ``outdir`` (last line ``rc <exit status>``).
    """
    if shutil.which(QEMU) is None:
        raise OracleError(
            f"{QEMU} not found", hint="apt-get install --no-install-recommends qemu-system-x86"
        )
    if outdir.exists():
        shutil.rmtree(outdir)
    outdir.mkdir(parents=True)
    if commands is not None:
        (outdir / "commands.sh").write_text(commands)
    cmd = qemu_command(topo, kb, initramfs, outdir, host_share=commands is not None)
    t0 = time.monotonic()
    proc = subprocess.run(
        ["timeout", "-k", "5", str(int(timeout)), *cmd],
        stdin=subprocess.DEVNULL, capture_output=True, text=True, errors="replace", check=False,
    )
    secs = time.monotonic() - t0
    console = proc.stdout + proc.stderr
    (outdir / "console.txt").write_text(console)
    (outdir / "qemu-cmd.json").write_text(json.dumps(cmd, indent=1))
    if DONE_MARK not in console:
        why = "timed out" if proc.returncode in (124, 137) else f"exit {proc.returncode}"
        fail = [ln for ln in console.splitlines() if FAIL_MARK in ln]
        raise OracleError(
            f"guest {topo.name} did not finish ({why}): "
            + (fail[0] if fail else "\n".join(console.splitlines()[-15:])),
            where=str(outdir / "console.txt"),
            hint="run the printed qemu command by hand to watch the boot",
        )
    run = GuestRun(topo, outdir, secs, console, cmd)
    run.results = parse_results((outdir / "results.txt").read_text())
    return run


# ---------------------------------------------------------------------- parsing

def _messages(lines: list[str]) -> tuple[list[str], list[str]]:
    """(P2PDMA messages, unrelated lines) of one query's kernel log, in order."""
    ours: list[str] = []
    other: list[str] = []
    for ln in lines:
        if not ln.strip():
            continue
        (ours if DEVICE_LINE.match(ln) else other).append(ln.rstrip())
    return ours, other


def _unique(lines: list[str]) -> list[str]:
    return list(dict.fromkeys(lines))


def parse_results(text: str) -> dict[str, Any]:
    """Turn ``results.txt`` into the verdict JSON (lists of records, BDF strings)."""
    pairs: list[dict[str, Any]] = []
    many: list[dict[str, Any]] = []
    finds: list[dict[str, Any]] = []
    done = False
    lines = text.splitlines()
    i = 0
    while i < len(lines):
        head = lines[i]
        i += 1
        if head == "@@ done":
            done = True
            continue
        if not head.startswith("@@ "):
            continue
        kind, _, arg = head[3:].partition(" ")
        body: list[str] = []
        while i < len(lines) and lines[i] != "@@ dmesg":
            body.append(lines[i])
            i += 1
        i += 1
        msgs: list[str] = []
        while i < len(lines) and lines[i] != "@@ end":
            msgs.append(lines[i])
            i += 1
        i += 1
        args = arg.split()
        messages, noise = _messages(msgs)
        errors = [b for b in body if b.startswith("error") or "sh:" in b]
        if kind == "distance":
            calcs = []
            ret: int | None = None
            for b in body:
                f = b.split()
                if f and f[0] == "calc":
                    calcs.append({"provider": f[1], "client": f[2], "map_type": int(f[3]),
                                  "dist": int(f[4])})
                elif f and f[0] == "distance":
                    ret = int(f[1])
            rec = {"provider": args[1], "clients": args[2:], "verbose": args[0] == "1",
                   "calcs": calcs, "distance": ret, "messages": messages,
                   "other_messages": noise, "errors": errors}
            if len(args) == 3:
                pairs.append(rec)
            else:
                many.append(rec)
        elif kind == "find":
            cands: dict[str, int] = {}
            chosen: list[str] = []
            for b in body:
                f = b.split()
                if f and f[0] == "candidate":
                    cands[f[1]] = int(f[2])
                elif f and f[0] == "chosen":
                    chosen.append(f[1])
            finds.append({"clients": args[1:], "rounds": int(args[0]), "candidates": cands,
                          "chosen": sorted(chosen),
                          # the candidate pass and every round print: keep each line once
                          "messages": _unique(messages), "other_messages": noise,
                          "errors": errors})
    if not done:
        raise OracleError("results.txt is incomplete (no '@@ done' line)",
                          hint="the guest stopped early; see console.txt")
    return {"pairs": pairs, "distance_many": many, "find_many": finds}


def extract_sysfs(run: GuestRun, dest: Path) -> None:
    """Unpack the guest's captured sysfs tree (``root/sys``, ``root/proc``) into ``dest``."""
    dest.mkdir(parents=True, exist_ok=True)
    with tarfile.open(run.outdir / "sysfs.tar") as tf:
        tf.extractall(dest, filter="data")  # our own guest's archive


def p2pdma_lines(dmesg: str) -> list[str]:
    return [ln.rstrip() for ln in dmesg.splitlines()
            if P2PDMA_LINE.search(ln) and "command line" not in ln.lower()]
