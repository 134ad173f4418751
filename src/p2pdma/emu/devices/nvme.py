"""An emulated NVMe controller: CMB registers, the Linux driver's CMB registration
(spec §7.1), and namespaces backed by real (sparse) files.

The register logic is pure (:func:`plan_cmb`) so it can be checked against the
driver's steps one by one; :class:`NvmeController` applies a plan to an
emulated machine through its provider API (``add_resource``/``publish``/alloc).
"""

from __future__ import annotations

import errno
import mmap
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from p2pdma.emu.constants import SUBSECTION_SIZE
from p2pdma.emu.messages import CMB_WARN
from p2pdma.errors import InputError, P2PDMAError, kerr
from p2pdma.fabric.bdf import Bdf
from p2pdma.fabric.model import CMBSZ_RDS, CMBSZ_SQS, CMBSZ_WDS, Cmb

if TYPE_CHECKING:
    from p2pdma.emu.dma_engine import DmaEngine
    from p2pdma.emu.machine import Machine

# Controller registers (NVMe base spec): offsets in BAR0.
REG_CAP = 0x00
REG_CMBLOC = 0x38
REG_CMBSZ = 0x3C
REG_CMBMSC = 0x50
CAP_CMBS = 1 << 57  # Controller Memory Buffer Supported (NVMe 1.4)
CMBMSC_CRE = 1 << 0  # Capabilities Registers Enabled
CMBMSC_CMSE = 1 << 1  # Controller Memory Space Enable


@dataclass(frozen=True)
class CmbRegisters:
    """What the driver reads: CAP.CMBS, CMBLOC and CMBSZ."""

    cmbloc: int = 0
    cmbsz: int = 0
    cap_cmbs: bool = False

    @classmethod
    def from_cmb(cls, cmb: Cmb | None, *, cap_cmbs: bool = True) -> CmbRegisters:
        if cmb is None:
            return cls(cap_cmbs=cap_cmbs)
        return cls(cmbloc=cmb.cmbloc, cmbsz=cmb.cmbsz, cap_cmbs=cap_cmbs)

    @property
    def decoded(self) -> Cmb:
        return Cmb(self.cmbloc, self.cmbsz)


@dataclass
class CmbPlan:
    """What ``nvme_map_cmb`` does with a set of registers, step by step."""

    register: bool = False  # call pci_p2pdma_add_resource
    publish: bool = False
    bar: int | None = None
    offset: int = 0
    size: int = 0
    use_sqes: bool = False
    reason: str = ""  # why it stopped early, or what it did
    cmbmsc_writes: list[int] = field(default_factory=list)  # values written to CMBMSC


def plan_cmb(regs: CmbRegisters, bar_size: Callable[[int], int],
             bar_bus_address: Callable[[int], int], bar_start: Callable[[int], int], *,
             align: int = SUBSECTION_SIZE,
             use_cmb_sqes: bool = True) -> CmbPlan:
    """The driver's decision for one controller (spec §7.1 steps 2-11, before add_resource).

    ``bar_size``/``bar_start``/``bar_bus_address`` look up a BAR of the function
    (size 0 for an absent BAR)."""
    plan = CmbPlan()
    if regs.cap_cmbs:
        plan.cmbmsc_writes.append(CMBMSC_CRE)
    if regs.cmbsz == 0:
        plan.reason = "CMBSZ is 0: the controller has no CMB"
        return plan
    cmb = regs.decoded
    size, offset, bar = cmb.size, cmb.offset, cmb.bar
    plan.bar, plan.offset = bar, offset
    bsize = bar_size(bar) if bar <= 5 else 0
    if offset > bsize:
        plan.reason = (f"CMB offset {offset:#x} is beyond BAR{bar} (size {bsize:#x}): "
                       "not mapped")
        return plan
    if size > bsize - offset:
        size = bsize - offset  # a CMB larger than its BAR (e.g. behind a bridge) is clipped
    plan.size = size
    if size % align or bar_start(bar) % align:
        plan.reason = (f"CMB size {size:#x} or BAR{bar} start {bar_start(bar):#x} is not "
                       f"{align >> 20} MiB aligned: skipped silently (memremap_compat_align)")
        return plan
    if regs.cap_cmbs:
        plan.cmbmsc_writes.append(CMBMSC_CRE | CMBMSC_CMSE | (bar_bus_address(bar) + offset))
    plan.register = True
    plan.use_sqes = use_cmb_sqes and bool(regs.cmbsz & CMBSZ_SQS)
    plan.publish = bool(regs.cmbsz & CMBSZ_WDS) and bool(regs.cmbsz & CMBSZ_RDS)
    plan.reason = (f"registered {size >> 20} MiB of BAR{bar} at offset {offset:#x}"
                   + ("" if plan.publish else "; not published (CMBSZ lacks WDS or RDS)"))
    return plan


# ---------------------------------------------------------------------------
# Namespaces


class Namespace:
    """An NVMe namespace whose blocks live in a sparse file on disk.

    Reads and writes go straight between the file and the caller's buffer
    (``os.preadv``/``os.pwritev`` into a memoryview: one system call, no copy in
    Python).  With ``o_direct`` the file is opened ``O_DIRECT``: buffers, offsets
    and lengths must then be block aligned, as for the real device.
    """

    def __init__(self, path: str | Path, *, nsid: int = 1, size: int, lba_size: int = 512,
                 o_direct: bool = False, create: bool = True) -> None:
        if lba_size not in (512, 4096):
            raise InputError(f"LBA size {lba_size} is not 512 or 4096")
        if size <= 0 or size % lba_size:
            raise InputError(f"namespace size {size} is not a positive multiple of {lba_size}")
        self.path = Path(path)
        self.nsid = nsid
        self.size = size
        self.lba_size = lba_size
        self.o_direct = o_direct
        flags = os.O_RDWR | os.O_CLOEXEC | (os.O_CREAT if create else 0)
        if o_direct:
            flags |= getattr(os, "O_DIRECT", 0)
        try:
            self.fd = os.open(self.path, flags, 0o600)
        except OSError as e:
            raise InputError(f"cannot open namespace file {self.path}: {e.strerror}",
                             hint="O_DIRECT needs a file system that supports it (not tmpfs)"
                             if o_direct else None) from e
        if os.fstat(self.fd).st_size < size:
            os.ftruncate(self.fd, size)  # sparse: blocks appear as they are written
        self.bytes_read = 0
        self.bytes_written = 0

    @property
    def nlb(self) -> int:
        return self.size // self.lba_size

    def _check(self, offset: int, length: int) -> None:
        if offset < 0 or length < 0 or offset + length > self.size:
            raise kerr("EINVAL", f"nsid {self.nsid}: range {offset:#x}+{length:#x} is beyond "
                       f"the namespace ({self.size:#x} bytes)", where=str(self.path))
        if self.o_direct and (offset % self.lba_size or length % self.lba_size):
            raise kerr("EINVAL", f"nsid {self.nsid}: O_DIRECT needs {self.lba_size}-byte "
                       "aligned offsets and lengths", where=str(self.path))

    def read_into(self, offset: int, buf: memoryview) -> None:
        """Fill ``buf`` from the namespace at byte ``offset`` (one ``preadv``)."""
        self._check(offset, len(buf))
        done = 0
        while done < len(buf):
            n = self._io(os.preadv, buf[done:], offset + done)
            if n <= 0:  # a hole past EOF cannot happen (ftruncate), but never spin
                buf[done:] = bytes(len(buf) - done)
                break
            done += n
        self.bytes_read += len(buf)

    def write_from(self, offset: int, buf: memoryview) -> None:
        """Write ``buf`` to the namespace at byte ``offset`` (one ``pwritev``)."""
        self._check(offset, len(buf))
        done = 0
        while done < len(buf):
            done += self._io(os.pwritev, buf[done:], offset + done)
        self.bytes_written += len(buf)

    def _io(self, fn: Callable[[int, list[memoryview], int], int], buf: memoryview,
            offset: int) -> int:
        try:
            return fn(self.fd, [buf], offset)
        except OSError as e:
            name = errno.errorcode.get(e.errno or 0, "EIO")
            raise kerr(name, f"nsid {self.nsid}: {e.strerror} at {offset:#x}+{len(buf):#x}",
                       where=str(self.path),
                       hint="O_DIRECT needs block-aligned buffers" if self.o_direct else None
                       ) from e

    # The harness's own access (filling and checking a namespace is not DMA): goes
    # through a page-aligned buffer, so it works with O_DIRECT too.

    def host_write(self, offset: int, data: bytes | bytearray | memoryview) -> None:
        if not self.o_direct:
            self.write_from(offset, memoryview(data))
            return
        with mmap.mmap(-1, max(len(data), 1)) as bounce:
            bounce[:len(data)] = data
            with memoryview(bounce) as v:
                self.write_from(offset, v[:len(data)])

    def read(self, offset: int, length: int) -> bytes:
        if not self.o_direct:
            out = bytearray(length)
            self.read_into(offset, memoryview(out))
            return bytes(out)
        with mmap.mmap(-1, max(length, 1)) as bounce:
            with memoryview(bounce) as v:
                self.read_into(offset, v[:length])
            return bounce[:length]

    def flush(self) -> None:
        os.fsync(self.fd)

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


# ---------------------------------------------------------------------------
# The controller on an emulated machine

SQ_ENTRY_BYTES = 64


class NvmeController:
    """An NVMe function bound to the emulated ``nvme`` driver.

    ``probe()`` runs the driver's CMB registration against the machine (the
    registers come from the fabric's decoded CMB); I/O commands move data
    between a namespace file and any DMA address through the DMA engine.
    """

    def __init__(self, machine: Machine, bdf: Bdf, engine: DmaEngine, *,
                 cap_cmbs: bool = True, use_cmb_sqes: bool = True, io_queues: int = 2,
                 queue_depth: int = 1024, name: str | None = None) -> None:
        self.m = machine
        self.bdf = bdf
        self.engine = engine
        func = machine.fabric.get(bdf)
        ctrl = func.nvme
        self.name = name or (ctrl.name if ctrl is not None else f"nvme-{bdf}")
        cmb = ctrl.cmb if ctrl is not None else None
        self.regs = CmbRegisters.from_cmb(cmb, cap_cmbs=cap_cmbs)
        self.use_cmb_sqes = use_cmb_sqes
        self.sq_bytes = io_queues * queue_depth * SQ_ENTRY_BYTES
        self.cmbmsc = 0
        self.cmb_size = 0
        self.plan: CmbPlan | None = None
        self.sq_kva: int | None = None
        self.namespaces: dict[int, Namespace] = {}
        self.removed = False
        self._unsubscribe = machine.subscribe(self._on_event, bdf)

    def _on_event(self, ev: Any) -> None:
        # The driver's remove(): give back the CMB memory it holds so that the
        # provider's teardown (which waits for every reference) can finish.
        if getattr(ev.kind, "value", "") == "removing":
            self.removed = True
            self.release_cmb()

    @property
    def prefix(self) -> str:
        return f"nvme {self.name}"

    def probe(self) -> CmbPlan:
        """``nvme_map_cmb``: register (and maybe publish) the CMB as p2pmem."""
        if self.cmb_size:
            assert self.plan is not None
            return self.plan  # already mapped
        func = self.m.fabric.get(self.bdf)

        def size(i: int) -> int:
            b = func.bar(i)
            return b.size if b is not None and b.is_memory else 0

        def start(i: int) -> int:
            b = func.bar(i)
            return b.start if b is not None else 0

        def bus(i: int) -> int:
            b = func.bar(i)
            return b.bus_address if b is not None else 0

        plan = plan_cmb(self.regs, size, bus, start, use_cmb_sqes=self.use_cmb_sqes)
        self.plan = plan
        for v in plan.cmbmsc_writes:
            self.cmbmsc = v
        if not plan.register or plan.bar is None:
            return plan
        try:
            self.m.add_resource(self.bdf, plan.bar, plan.size, plan.offset)
        except P2PDMAError:
            self.m.dmesg.log(f"{self.prefix}: {CMB_WARN}")
            self.cmbmsc = 0  # stop decoding the CMB
            plan.register = plan.publish = False
            plan.reason = CMB_WARN
            return plan
        self.cmb_size = plan.size
        if plan.use_sqes:
            # The I/O submission queues live in the CMB and take its space.
            self.sq_kva = self.m.alloc(self.bdf, self.sq_bytes)
            if self.sq_kva is None:
                plan.use_sqes = False
        if plan.publish:
            self.m.publish(self.bdf, True)
        return plan

    def release_cmb(self) -> None:
        """The driver's remove(): give the SQ memory back."""
        if self.sq_kva is not None:
            self.m.free(self.bdf, self.sq_kva, self.sq_bytes)
            self.sq_kva = None

    def attach(self, ns: Namespace) -> Namespace:
        if ns.nsid in self.namespaces:
            raise InputError(f"{self.name}: nsid {ns.nsid} attached twice")
        self.namespaces[ns.nsid] = ns
        return ns

    def ns(self, nsid: int) -> Namespace:
        try:
            return self.namespaces[nsid]
        except KeyError:
            raise kerr("ENXIO", f"{self.name}: no namespace {nsid}", where=str(self.bdf),
                       hint=f"attached: {sorted(self.namespaces)}") from None

    def disk_name(self, nsid: int) -> str:
        return f"{self.name}n{nsid}"

    # -- I/O commands (data by DMA) ------------------------------------------------------

    def _live(self) -> None:
        if self.removed:
            raise kerr("ENODEV", f"{self.name} has been removed", where=str(self.bdf))

    def read(self, nsid: int, offset: int, dma_addr: int, length: int) -> None:
        """Read command: namespace -> memory at ``dma_addr`` (the controller writes)."""
        self._live()
        self.engine.from_namespace(self.bdf, self.ns(nsid), offset, dma_addr, length)

    def write(self, nsid: int, offset: int, dma_addr: int, length: int) -> None:
        """Write command: memory at ``dma_addr`` -> namespace (the controller reads)."""
        self._live()
        self.engine.to_namespace(self.bdf, self.ns(nsid), offset, dma_addr, length)

    def close(self) -> None:
        self._unsubscribe()
        for ns in self.namespaces.values():
            ns.close()
