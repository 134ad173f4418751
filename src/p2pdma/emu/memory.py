"""Real bytes behind the emulated machine: BAR memory, host RAM, address spaces.

Every memory BAR is backed by its own ``memfd`` sized with ``ftruncate`` and
mapped lazily on first touch, so a 64 GiB GPU BAR costs nothing until bytes
are written (tmpfs files are sparse and MAP_SHARED file pages are not charged
against overcommit).  The memfd is also what user mappings of p2pmem map, so a
byte written through a "userspace" mapping is the byte the device sees.

Two address spaces index the same backing:
- CPU physical: ``Bar.start`` (what the CPU and ``virt_to_phys`` use);
- PCI bus: ``Bar.bus_address`` (what a peer device puts on the wire).
"""

from __future__ import annotations

import bisect
import mmap
import os
import threading
import weakref
from dataclasses import dataclass, field

from p2pdma.emu.constants import PAGE_OFFSET, PAGE_SIZE
from p2pdma.errors import kerr
from p2pdma.fabric.bdf import Bdf


class MemoryBacking:
    """A sparse shared-memory file plus a lazily created mapping of all of it."""

    def __init__(self, name: str, size: int) -> None:
        self.name = name
        self.size = size
        self.fd = os.memfd_create(name, os.MFD_CLOEXEC)
        # Machines dropped without close() must not leak descriptors.
        self._finalizer = weakref.finalize(self, os.close, self.fd)
        try:
            os.ftruncate(self.fd, size)
        except OSError:
            self._finalizer()
            raise
        self._map: mmap.mmap | None = None
        self._closed = False
        # Guards creation and close of the mapping and every copy through it, so
        # a copy can never run against a mapping that is being closed.
        self.lock = threading.Lock()

    def mapping_locked(self) -> mmap.mmap:
        """The whole-file mapping (created on first touch).  The caller must hold
        ``self.lock`` for as long as it uses the result: close() takes the same lock,
        so a copy can never run against a mapping being closed."""
        if self._closed:
            raise kerr("ENODEV", f"memory of {self.name} is gone (device removed)",
                       hint="the device was hot-unplugged; re-add it to use this memory")
        if self._map is None:
            self._map = mmap.mmap(self.fd, self.size, mmap.MAP_SHARED,
                                  mmap.PROT_READ | mmap.PROT_WRITE)
        return self._map

    def _check(self, offset: int, length: int) -> None:
        if offset < 0 or length < 0 or offset + length > self.size:
            raise kerr("EFAULT", f"access {offset:#x}+{length:#x} outside {self.name} "
                       f"(size {self.size:#x})")

    def read(self, offset: int, length: int) -> bytes:
        self._check(offset, length)
        with self.lock:
            return self.mapping_locked()[offset:offset + length]

    def write(self, offset: int, data: bytes | bytearray | memoryview) -> None:
        self._check(offset, len(data))
        with self.lock:
            self.mapping_locked()[offset:offset + len(data)] = data

    def map_range(self, offset: int, length: int) -> mmap.mmap:
        """A fresh MAP_SHARED mapping of ``[offset, offset+length)`` of the file."""
        self._check(offset, length)
        with self.lock:
            if self._closed:
                raise kerr("ENODEV", f"memory of {self.name} is gone (device removed)")
            return mmap.mmap(self.fd, length, mmap.MAP_SHARED,
                             mmap.PROT_READ | mmap.PROT_WRITE, offset=offset)

    def close(self) -> None:
        with self.lock:
            if self._closed:
                return
            self._closed = True
            if self._map is not None:
                self._map.close()
                self._map = None
            self._finalizer()

    @property
    def closed(self) -> bool:
        return self._closed


@dataclass
class Region:
    """One contiguous range of an address space and what backs it."""

    start: int
    size: int
    backing: MemoryBacking
    backing_offset: int = 0
    owner: Bdf | None = None  # None: host RAM
    bar: int | None = None
    tag: str = ""

    @property
    def end(self) -> int:  # exclusive
        return self.start + self.size


@dataclass
class AddressSpace:
    """Non-overlapping regions sorted by start; lookups by bisection."""

    name: str
    _starts: list[int] = field(default_factory=list)
    _regions: list[Region] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def add(self, region: Region) -> None:
        with self._lock:
            i = bisect.bisect_left(self._starts, region.start)
            prev = self._regions[i - 1] if i > 0 else None
            nxt = self._regions[i] if i < len(self._regions) else None
            if (prev and prev.end > region.start) or (nxt and region.end > nxt.start):
                raise kerr("EBUSY", f"{self.name}: range {region.start:#x}+{region.size:#x} "
                           "overlaps an existing region")
            self._starts.insert(i, region.start)
            self._regions.insert(i, region)

    def remove_owner(self, owner: Bdf) -> None:
        with self._lock:
            keep = [r for r in self._regions if r.owner != owner]
            self._regions = keep
            self._starts = [r.start for r in keep]

    def find(self, addr: int, length: int = 1) -> Region | None:
        with self._lock:
            i = bisect.bisect_right(self._starts, addr) - 1
            if i < 0:
                return None
            r = self._regions[i]
        if addr + max(length, 1) <= r.end:
            return r
        return None

    def regions(self) -> list[Region]:
        with self._lock:
            return list(self._regions)


class PhysicalMemory:
    """Reads and writes by CPU physical, PCI bus or kernel virtual address."""

    def __init__(self) -> None:
        self.cpu = AddressSpace("CPU physical address space")
        self.bus = AddressSpace("PCI bus address space")

    def _resolve(self, space: AddressSpace, addr: int, length: int) -> tuple[Region, int]:
        r = space.find(addr, length)
        if r is None:
            raise kerr("EFAULT", f"nothing decodes {space.name} {addr:#x}+{length:#x}",
                       hint="the address is outside every BAR and host RAM (unassigned, "
                            "or the device was removed)")
        return r, r.backing_offset + (addr - r.start)

    def read_phys(self, phys: int, length: int) -> bytes:
        r, off = self._resolve(self.cpu, phys, length)
        return r.backing.read(off, length)

    def write_phys(self, phys: int, data: bytes | bytearray | memoryview) -> None:
        r, off = self._resolve(self.cpu, phys, len(data))
        r.backing.write(off, data)

    def read_bus(self, bus_addr: int, length: int) -> bytes:
        r, off = self._resolve(self.bus, bus_addr, length)
        return r.backing.read(off, length)

    def write_bus(self, bus_addr: int, data: bytes | bytearray | memoryview) -> None:
        r, off = self._resolve(self.bus, bus_addr, len(data))
        r.backing.write(off, data)

    def read_virt(self, kva: int, length: int) -> bytes:
        return self.read_phys(virt_to_phys(kva), length)

    def write_virt(self, kva: int, data: bytes | bytearray | memoryview) -> None:
        self.write_phys(virt_to_phys(kva), data)

    def region_of_phys(self, phys: int) -> Region | None:
        return self.cpu.find(phys)


def phys_to_virt(phys: int) -> int:
    """Kernel direct-map address of a CPU physical address."""
    return PAGE_OFFSET + phys


def virt_to_phys(kva: int) -> int:
    if kva < PAGE_OFFSET:
        raise kerr("EFAULT", f"{kva:#x} is not a kernel direct-map address",
                   hint="pass the address pci_alloc_p2pmem / alloc returned")
    return kva - PAGE_OFFSET


__all__ = ["PAGE_SIZE", "AddressSpace", "MemoryBacking", "PhysicalMemory", "Region",
           "phys_to_virt", "virt_to_phys"]
