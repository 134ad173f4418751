#!/usr/bin/env python3
"""Benchmark: `p2pdma matrix` on a 1,024-endpoint synthetic host, against `lspci -tv`
and `pcicrawler --json` listing the same tree, all measured in this run.

    .venv/bin/python bench/bench_matrix.py [--endpoints 1024] [--pcicrawler PATH] [--repeat 3]

The host is built with FabricBuilder (4 PCI domains x 4 root ports x a 16-port
switch x 4-function endpoints, ACS redirect on some switch ports), written to disk
as a sysfs tree (p2pdma.sources.write_sysfs) and as a fabric file.  The matrix is
timed end to end from disk: read_sysfs + the full endpoints x endpoints verdict
matrix (1024 x 1024 = 1,048,576 pairs) + text rendering.

lspci reads the tree through `-O sysfs.path=`.  pcicrawler hard-codes /sys, so it
runs under `unshare -m` with the synthetic sys bind-mounted over /sys (needs root
and permission to create a mount namespace; skipped with a note otherwise).
pcicrawler is not a dependency: install it in a throwaway venv and pass its path.

Target: the matrix's wall time below pcicrawler's listing time.  Ratios are
printed; nothing here asserts a time.
"""

from __future__ import annotations

import argparse
import io
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "src"))

from p2pdma.fabric.builder import FabricBuilder  # noqa: E402
from p2pdma.fabric.model import Fabric, HostContext, IommuMode  # noqa: E402
from p2pdma.kernel.profiles import resolve_profile  # noqa: E402


def synthetic_host(endpoints: int) -> Fabric:
    host = HostContext(kernel_release="6.12.117", arch="x86_64", cpu_vendor="GenuineIntel",
                       cpu_family=6, iommu=IommuMode.TRANSLATED, privileged=True)
    b = FabricBuilder(host, origin="bench:synthetic")
    per_domain = 256
    made = 0
    domain = 0
    while made < endpoints:
        hb = b.host_bridge(domain=domain, bus=0, first=(0x8086, 0x09A2))
        for rp_n in range(4):
            rp = b.root_port(hb, dev=1 + rp_n, acs_ctrl=0x1D)
            _, dsps = b.switch(rp, ports=16, vendor=0x1000, device=0xC010,
                               acs_ctrl=0x1D if rp_n % 2 else 0)
            for d in dsps:
                for fn in range(4):
                    if made >= endpoints or made >= (domain + 1) * per_domain:
                        break
                    if fn == 0:
                        b.nvme(d, vendor=0x1DE5, device=0x3000, cmb_size=16 << 20, cmb_bar=4)
                    else:
                        b.endpoint(d, fn=fn, vendor=0x15B3, device=0x101B,
                                   class_code=0x020000, bars=[(0, 1 << 20)], driver="mlx5_core")
                    made += 1
        domain += 1
    return b.build()


def timed(fn: Callable[[], object], repeat: int) -> float:
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def matrix_from(loader: Callable[[], Fabric]) -> Callable[[], object]:
    from p2pdma.cli.check import Context
    from p2pdma.cli.matrix import build, render_text
    from p2pdma.render.term import Style

    def run() -> object:
        fabric = loader()
        choice = resolve_profile(fabric.host.kernel_release)
        ctx = Context(fabric, choice, [])
        m = build(ctx, False)
        out = io.StringIO()
        out.write(render_text(ctx, m, Style(False)))
        assert len(m.providers) * len(m.clients) > 0
        return m
    return run


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--endpoints", type=int, default=1024)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--pcicrawler", default=shutil.which("pcicrawler")
                    or "/tmp/pcicrawler-venv/bin/pcicrawler")
    a = ap.parse_args()

    from p2pdma.sources.fabricfile import load_fabric_file, save_fabric_file
    from p2pdma.sources.synthetic import write_sysfs
    from p2pdma.sources.sysfs import read_sysfs

    fabric = synthetic_host(a.endpoints)
    tmp = Path(tempfile.mkdtemp(prefix="p2pdma-bench-"))
    try:
        root = tmp / "root"
        write_sysfs(fabric, root)
        ffile = tmp / "host.toml"
        save_fabric_file(fabric, ffile)
        n_ep = sum(1 for f in fabric.functions if not f.is_bridge and f.class_code >> 16 != 6)
        print(f"synthetic host: {len(fabric.functions)} functions, {n_ep} endpoints, "
              f"{len(fabric.host_bridges)} host bridges; matrix {n_ep} x {n_ep} = "
              f"{n_ep * n_ep:,} pairs; repeat {a.repeat}, median times")

        results: dict[str, float] = {}
        results["p2pdma matrix (sysfs)"] = timed(matrix_from(lambda: read_sysfs(root)), a.repeat)
        results["p2pdma matrix (fabric file)"] = timed(
            matrix_from(lambda: load_fabric_file(ffile)), a.repeat)
        fab = read_sysfs(root)
        results["  of which the matrix alone"] = timed(
            lambda: matrix_from(lambda: fab)(), a.repeat)

        lspci = shutil.which("lspci")
        if lspci:
            cmd = [lspci, "-tv", "-A", "linux-sysfs", "-O", f"sysfs.path={root}/sys/bus/pci"]
            results["lspci -tv"] = timed(
                lambda: subprocess.run(cmd, check=True, capture_output=True), a.repeat)
        else:
            print("note: lspci not found (apt-get install pciutils)")
        pc = a.pcicrawler
        if pc and Path(pc).exists():
            script = f"mount --bind {root}/sys /sys && exec {pc} --json"
            cmd = ["unshare", "-m", "sh", "-c", script]
            probe = subprocess.run(cmd, capture_output=True, text=True)
            if probe.returncode == 0 and probe.stdout.strip().startswith("{"):
                results["pcicrawler --json"] = timed(
                    lambda: subprocess.run(cmd, check=True, capture_output=True), a.repeat)
            else:
                print(f"note: pcicrawler could not run ({probe.returncode}): "
                      f"{probe.stderr.strip()[:200]}")
        else:
            print("note: pcicrawler not found; install it in a throwaway venv "
                  "(python3 -m venv /tmp/pc && /tmp/pc/bin/pip install pcicrawler) and pass "
                  "--pcicrawler /tmp/pc/bin/pcicrawler")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)

    base_name = "pcicrawler --json" if "pcicrawler --json" in results else "lspci -tv"
    base = results.get(base_name)
    print(f"{'what':32} {'seconds':>9}  ratio vs {base_name}")
    for name, t in results.items():
        ratio = f"{t / base:8.2f}x" if base else "     n/a"
        print(f"{name:32} {t:9.3f}  {ratio}")
    if "pcicrawler --json" in results:
        m = results["p2pdma matrix (sysfs)"]
        verdict = "below" if m < results["pcicrawler --json"] else "ABOVE"
        print(f"target: matrix from sysfs {verdict} pcicrawler's listing time")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
