"""Helpers for the host tests: a synthetic sysfs/procfs tree builder."""

from __future__ import annotations

import gzip
import os
import random
from dataclasses import dataclass
from pathlib import Path

from p2pdma.fabric.bdf import Bdf
from p2pdma.fabric.builder import FabricBuilder
from p2pdma.fabric.model import HostContext
from p2pdma.sources.synthetic import write_sysfs

TIB = 1 << 40
M = 1 << 20


def write_random(path: Path, size: int, seed: int = 1) -> bytes:
    data = random.Random(seed).randbytes(size)
    path.write_bytes(data)
    return data


@dataclass
class FakeTree:
    """A synthetic ``root/sys``/``root/proc`` tree, built up by the tests."""

    root: Path

    def device(
        self,
        bdf: str,
        *,
        cls: int = 0x020000,
        driver: str | None = "mlx5_core",
        resources: dict[int, tuple[int, int]] | None = None,
        parent: str = "pci0000:00",
    ) -> Path:
        real = self.root / "sys/devices" / parent / bdf
        real.mkdir(parents=True, exist_ok=True)
        (real / "class").write_text(f"0x{cls:06x}\n")
        lines = []
        for i in range(13):
            start, size = (resources or {}).get(i, (0, 0))
            end = start + size - 1 if size else 0
            flags = 0x40200 if size else 0
            lines.append(f"0x{start:016x} 0x{end:016x} 0x{flags:016x}")
        (real / "resource").write_text("\n".join(lines) + "\n")
        if driver:
            drv = self.root / "sys/bus/pci/drivers" / driver
            drv.mkdir(parents=True, exist_ok=True)
            (real / "driver").symlink_to(os.path.relpath(drv, real))
        devs = self.root / "sys/bus/pci/devices"
        devs.mkdir(parents=True, exist_ok=True)
        (devs / bdf).symlink_to(os.path.relpath(real, devs))
        return real

    def p2pmem(
        self,
        bdf: str,
        *,
        size: int,
        available: int,
        published: int = 1,
        allocate: bool = True,
        allocate_size: int = TIB,
    ) -> Path:
        d = self.root / "sys/bus/pci/devices" / bdf / "p2pmem"
        d.mkdir(parents=True, exist_ok=True)
        (d / "size").write_text(f"{size}\n")
        (d / "available").write_text(f"{available}\n")
        (d / "published").write_text(f"{published}\n")
        if allocate:
            # A sparse regular file of the kernel attribute's size; it stands in for the
            # kernel's file only where a test says it checks our own mmap call sequence.
            with open(d / "allocate", "wb") as f:
                f.truncate(allocate_size)
            os.chmod(d / "allocate", 0o660)
        return d

    def nvme(self, bdf: str, name: str, *, cmbloc: int | None, cmbsz: int | None) -> Path:
        dev = self.root / "sys/bus/pci/devices" / bdf
        ctrl = dev.resolve() / "nvme" / name
        ctrl.mkdir(parents=True, exist_ok=True)
        if cmbloc is not None and cmbsz is not None:
            (ctrl / "cmb").write_text(f"cmbloc : x{cmbloc:08x}\ncmbsz  : x{cmbsz:08x}\n")
        cls = self.root / "sys/class/nvme"
        cls.mkdir(parents=True, exist_ok=True)
        (cls / name).symlink_to(os.path.relpath(ctrl, cls))
        (ctrl / "device").symlink_to(os.path.relpath(dev.resolve(), ctrl))
        return ctrl

    def namespace(self, ctrl: Path, name: str, dev: str, *, lbs: int = 512) -> Path:
        ns = ctrl / name
        (ns / "queue").mkdir(parents=True, exist_ok=True)
        (ns / "queue/logical_block_size").write_text(f"{lbs}\n")
        (ns / "dev").write_text(f"{dev}\n")
        self._link_block(ns, name, dev)
        return ns

    def _link_block(self, real: Path, name: str, dev: str) -> None:
        by_dev = self.root / "sys/dev/block"
        by_dev.mkdir(parents=True, exist_ok=True)
        (by_dev / dev).symlink_to(os.path.relpath(real, by_dev))
        cls = self.root / "sys/class/block"
        cls.mkdir(parents=True, exist_ok=True)
        (cls / name).symlink_to(os.path.relpath(real, cls))

    def partition(self, disk: Path, name: str, dev: str) -> Path:
        p = disk / name
        p.mkdir(parents=True, exist_ok=True)
        (p / "partition").write_text("1\n")
        (p / "dev").write_text(f"{dev}\n")
        self._link_block(p, name, dev)
        return p

    def release(self, text: str) -> None:
        d = self.root / "proc/sys/kernel"
        d.mkdir(parents=True, exist_ok=True)
        (d / "osrelease").write_text(text + "\n")

    def config(self, text: str, *, gz: bool = True, release: str | None = None) -> Path:
        if gz:
            path = self.root / "proc/config.gz"
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(gzip.compress(text.encode()))
        else:
            path = self.root / "boot" / f"config-{release}"
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text)
        return path

    def mountinfo(self, lines: list[str]) -> None:
        d = self.root / "proc/self"
        d.mkdir(parents=True, exist_ok=True)
        (d / "mountinfo").write_text("\n".join(lines) + "\n")


class Machine:
    """A q35-like Intel machine: nvme0 (64 MiB CMB) and nvme1 under one switch on root port
    1, nvme2 alone on root port 2; host bridge 8086:29c0 is on no whitelist."""

    def __init__(self, root: Path) -> None:
        b = FabricBuilder(host=HostContext(kernel_release="6.12.117", cpu_vendor="GenuineIntel",
                                           cpu_family=6, arch="x86_64"))
        hb = b.host_bridge(first=(0x8086, 0x29C0))
        rp1 = b.root_port(hb)
        _, dsps = b.switch(rp1, ports=2)
        self.provider = b.nvme(dsps[0], cmb_size=64 * M)
        self.peer = b.nvme(dsps[1])
        rp2 = b.root_port(hb)
        self.far = b.nvme(rp2)
        self.fabric = b.build()
        self.root = root
        write_sysfs(self.fabric, root)
        alloc = root / "sys/bus/pci/devices" / str(self.provider) / "p2pmem" / "allocate"
        with open(alloc, "wb") as f:  # stand-in: see the module docstring
            f.truncate(TIB)

    def ns_dir(self, bdf: Bdf) -> Path:
        name = self.fabric.get(bdf).nvme.name  # type: ignore[union-attr]
        return (self.root / "sys/bus/pci/devices" / str(bdf)).resolve() / "nvme" / name / (
            f"{name}n1")

    def route_files_to(self, bdf: Bdf, some_file: Path) -> None:
        """Make the (real) file system holding ``some_file`` look like ``bdf``'s namespace."""
        dev = os.stat(some_file).st_dev
        link = self.root / "sys/dev/block" / f"{os.major(dev)}:{os.minor(dev)}"
        link.parent.mkdir(parents=True, exist_ok=True)
        link.unlink(missing_ok=True)
        link.symlink_to(os.path.relpath(self.ns_dir(bdf), link.parent))
