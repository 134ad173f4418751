"""How fast p2pdma loads a big machine, against lspci and pcicrawler on the same tree.

    .venv/bin/python bench/bench_load.py [--repeat 3] [--pcicrawler PATH] [--keep DIR]

Builds a synthetic host with 1,024 NVMe endpoints (8 host bridges, one PCI
domain each, 4 root ports x a 32-port switch each: 2,120 functions), writes it
with ``write_sysfs`` and times, in this run and on the same tree:

- p2pdma ``read_sysfs`` in this process, and in a fresh interpreter (start-up
  included, as a command-line tool pays it);
- ``lspci -tv`` and ``lspci -vvv`` (pciutils, ``-A linux-sysfs -O sysfs.path=``);
- ``pcicrawler --json`` (it reads the hard-coded /sys, so it runs in a private
  mount namespace with the synthetic ``sys`` bind-mounted over /sys);
- loading the same fabric from a fabric file and from a snapshot.

Times are the best of ``--repeat`` runs; ratios are against p2pdma's in-process
``read_sysfs``, measured in the same run.  A baseline that cannot run says why.
pcicrawler is not a project dependency: install it in a throwaway venv, e.g.
``python3 -m venv /tmp/pcicrawler-venv && /tmp/pcicrawler-venv/bin/pip install pcicrawler``.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from p2pdma.fabric.builder import FabricBuilder
from p2pdma.fabric.model import Fabric, HostContext, IommuMode, Link
from p2pdma.sources.fabricfile import load_fabric_file, save_fabric_file
from p2pdma.sources.snapshot import gather, read_snapshot
from p2pdma.sources.synthetic import write_sysfs
from p2pdma.sources.sysfs import read_sysfs

GEN4_X4 = Link(16.0, 4, 16.0, 4)


def big_host(domains: int = 8, root_ports: int = 4, switch_ports: int = 32) -> Fabric:
    b = FabricBuilder(HostContext(kernel_release="6.12.48", arch="x86_64",
                                  cpu_vendor="AuthenticAMD", cpu_family=0x19, cpu_model=0x11,
                                  iommu=IommuMode.TRANSLATED, iommu_driver="amd-iommu",
                                  p2pdma_config=True, privileged=True), origin="bench")
    b.assign_iommu_groups = True
    n = 0
    for dom in range(domains):
        hb = b.host_bridge(domain=dom, bus=0, first=(0x1022, 0x14A4), numa_node=dom // 4)
        for _ in range(root_ports):
            rp = b.root_port(hb, vendor=0x1022, device=0x14AB, acs_ctrl=0x001D)
            _usp, dsps = b.switch(rp, ports=switch_ports, acs_ctrl=0x001D)
            for d in dsps:
                b.nvme(d, vendor=0x144D, device=0xA824, cmb_size=(64 << 20) if n % 4 == 0 else 0,
                       link=GEN4_X4)
                n += 1
    return b.build()


def best(fn: Callable[[], object], repeat: int) -> float:
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return min(times)


def run_cmd(cmd: list[str]) -> Callable[[], object]:
    def go() -> None:
        r = subprocess.run(cmd, capture_output=True, check=False)
        if r.returncode != 0:
            raise RuntimeError(f"exit {r.returncode}: {r.stderr.decode(errors='replace')[:300]}")
        if not r.stdout:
            raise RuntimeError("printed nothing")
    return go


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--pcicrawler", default=shutil.which("pcicrawler")
                    or "/tmp/pcicrawler-venv/bin/pcicrawler")
    ap.add_argument("--keep", metavar="DIR", help="write the tree here and keep it")
    args = ap.parse_args()

    t = time.perf_counter()
    fabric = big_host()
    build_s = time.perf_counter() - t
    eps = sum(1 for f in fabric.functions if f.nvme is not None)
    # tmpfs, like sysfs itself, keeps disk speed out of the comparison
    shm = "/dev/shm" if os.access("/dev/shm", os.W_OK) else None
    tmp = Path(args.keep) if args.keep else Path(tempfile.mkdtemp(prefix="p2pdma-bench-",
                                                                  dir=shm))
    root = tmp / "root"
    t = time.perf_counter()
    write_sysfs(fabric, root)
    write_s = time.perf_counter() - t
    print(f"fabric: {len(fabric.functions)} functions, {eps} NVMe endpoints, "
          f"{len(fabric.host_bridges)} host bridges (built in {build_s:.2f} s, "
          f"written in {write_s:.2f} s to {root})")

    results: list[tuple[str, float | None, str]] = []

    def measure(name: str, fn: Callable[[], object], note: str = "") -> None:
        try:
            fn()  # warm-up: page cache, imports; also checks it works at all
            results.append((name, best(fn, args.repeat), note))
        except Exception as e:  # a baseline tool failing is a result, not a crash
            results.append((name, None, f"could not run: {e}"))

    def ours() -> None:
        got = read_sysfs(root)
        assert got == fabric, "read_sysfs did not read back the fabric written"

    measure("p2pdma read_sysfs (in process)", ours)
    src = str(Path(__file__).resolve().parent.parent / "src")
    measure("p2pdma read_sysfs (new python)",
            run_cmd([sys.executable, "-c", "import sys; sys.path.insert(0, sys.argv[1]);"
                     "from p2pdma.sources.sysfs import read_sysfs;"
                     "print(len(read_sysfs(sys.argv[2]).functions))", src, str(root)]),
            "interpreter start-up included")
    lspci = shutil.which("lspci")
    pci_path = f"sysfs.path={root}/sys/bus/pci"
    if lspci is None:
        results.append(("lspci -tv", None, "lspci not installed (apt-get install pciutils)"))
    else:
        ver = subprocess.run([lspci, "--version"], capture_output=True, text=True).stdout.strip()
        measure("lspci -tv", run_cmd([lspci, "-A", "linux-sysfs", "-O", pci_path, "-tv"]),
                f"{ver}; looks up names in pci.ids")
        measure("lspci -tvn", run_cmd([lspci, "-A", "linux-sysfs", "-O", pci_path, "-tvn"]),
                "numeric ids, no pci.ids")
        measure("lspci -vvv", run_cmd([lspci, "-A", "linux-sysfs", "-O", pci_path, "-vvv"]),
                "decodes every capability")
    crawler = args.pcicrawler
    unshare = shutil.which("unshare")
    if not crawler or not os.access(crawler, os.X_OK):
        results.append(("pcicrawler --json", None,
                        f"pcicrawler not found at {crawler!r} (see the module docstring)"))
    elif unshare is None or os.geteuid() != 0:
        results.append(("pcicrawler --json", None,
                        "it reads the hard-coded /sys; binding the synthetic tree over /sys "
                        "needs root and unshare(1)"))
    else:
        script = 'mount --bind "$1/sys" /sys && exec "$2" --json'
        measure("pcicrawler --json",
                run_cmd([unshare, "-m", "--propagation", "private", "sh", "-c", script, "sh",
                         str(root), crawler]),
                "private mount ns, synthetic sys bound over /sys")
    ff = tmp / "fabric.toml"
    save_fabric_file(fabric, ff)
    measure("p2pdma load_fabric_file (same fabric)", lambda: load_fabric_file(ff),
            f"{ff.stat().st_size // 1024} KiB TOML")
    snap = tmp / "snap.zip"
    gather(root, snap)
    measure("p2pdma read_snapshot (same fabric)", lambda: read_snapshot(snap),
            f"{snap.stat().st_size // 1024} KiB zip, read in place")

    base = results[0][1]
    print(f"\nbest of {args.repeat} runs; ratio = time / p2pdma read_sysfs (in process)\n")
    print(f"{'reader':40} {'seconds':>9} {'ratio':>7}  notes")
    for name, secs, note in results:
        if secs is None:
            print(f"{name:40} {'-':>9} {'-':>7}  {note}")
        else:
            ratio = f"{secs / base:.2f}x" if base else "-"
            print(f"{name:40} {secs:9.3f} {ratio:>7}  {note}")
    if not args.keep:
        shutil.rmtree(tmp)
    return 0


if __name__ == "__main__":
    sys.exit(main())
