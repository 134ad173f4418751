"""dma-buf export of BAR ranges, VFIO style (spec §7.3, §8.2).

The exporter is a pool-less provider (core layer only): the buffer is a list
of (CPU physical, length) ranges of one BAR.  Importers must attach with
``peer2peer``; mapping goes through ``dma_buf_phys_vec_to_sgt`` (the kernel
layer decides the map type).  On memory-decoding off, reset or removal the
buffer is revoked and every attachment gets ``move_notify`` (it must unmap);
removal revokes for good.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

from p2pdma.emu.constants import PAGE_SIZE, U64_MASK
from p2pdma.emu.core import Provider
from p2pdma.emu.dma import SgTable
from p2pdma.emu.events import DeviceEvent, EventKind
from p2pdma.errors import kerr
from p2pdma.fabric.bdf import Bdf

if TYPE_CHECKING:
    from p2pdma.emu.machine import Machine

VFIO_PCI_ROM_REGION_INDEX = 6
DMA_IOVA_USE_SWIOTLB = 1 << 63

MoveNotify = Callable[["DmaBufAttachment"], None]


class DmaBufAttachment:
    def __init__(self, buf: DmaBuf, importer: Bdf, peer2peer: bool,
                 move_notify: MoveNotify | None) -> None:
        self.buf = buf
        self.importer = importer
        self.peer2peer = peer2peer
        self.move_notify = move_notify
        self.mapped: list[SgTable] = []
        self.notified = 0

    def map(self) -> SgTable:
        """``map_dma_buf``: -ENODEV while revoked."""
        with self.buf.lock:
            if self.buf.revoked:
                raise kerr("ENODEV", "dma-buf is revoked", where=self.buf.name,
                           hint="wait for move_notify's restore (reset done / memory on)")
            sgt = self.buf.m.dma.dma_buf_phys_vec_to_sgt(self.importer, self.buf.provider,
                                                        self.buf.phys_vec, self.buf.size)
            self.mapped.append(sgt)
            return sgt

    def unmap(self, sgt: SgTable) -> None:
        with self.buf.lock:
            if sgt in self.mapped:
                self.mapped.remove(sgt)
                self.buf.m.dma.dma_buf_free_sgt(self.importer, sgt)

    def detach(self) -> None:
        for sgt in list(self.mapped):
            self.unmap(sgt)
        with self.buf.lock:
            if self in self.buf.attachments:
                self.buf.attachments.remove(self)


class DmaBuf:
    def __init__(self, machine: Machine, bdf: Bdf, provider: Provider,
                 phys_vec: list[tuple[int, int]], name: str) -> None:
        self.m = machine
        self.bdf = bdf
        self.provider = provider
        self.phys_vec = phys_vec
        self.size = sum(n for _, n in phys_vec)
        self.name = name
        self.revoked = not machine.device(bdf).memory_decoding
        self.dead = False  # revoked for good (cleanup / removal)
        self.attachments: list[DmaBufAttachment] = []
        self.lock = threading.RLock()  # after Machine/EmuPciDev locks, before leaves
        self.violations: list[str] = []  # importers that kept mappings past move_notify
        self._unsubscribe = machine.subscribe(self._on_event, bdf)

    def attach(self, importer: Bdf, *, peer2peer: bool,
               move_notify: MoveNotify | None = None) -> DmaBufAttachment:
        if not peer2peer:
            raise kerr("EOPNOTSUPP", "importer does not allow peer-to-peer", where=self.name,
                       hint="the importer must set allow_peer2peer to map device MMIO")
        with self.lock:
            if self.revoked:
                raise kerr("ENODEV", "dma-buf is revoked", where=self.name)
            att = DmaBufAttachment(self, importer, peer2peer, move_notify)
            self.attachments.append(att)
            return att

    def revoke(self, *, permanent: bool = False) -> None:
        """``dma_buf_move_notify`` to every attachment; they must unmap."""
        with self.lock:
            was = self.revoked
            self.revoked = True
            self.dead = self.dead or permanent
            targets = list(self.attachments)
        if was and not permanent:
            return
        for att in targets:
            att.notified += 1
            if att.move_notify is not None:
                att.move_notify(att)
            if att.mapped:
                # The provider contract: every mapping gone before remove() returns.
                self.violations.append(f"{att.importer} kept {len(att.mapped)} mapping(s)")
                for sgt in list(att.mapped):
                    att.unmap(sgt)

    def restore(self) -> None:
        with self.lock:
            if self.dead or not self.m.device(self.bdf).memory_decoding:
                return
            self.revoked = False
            targets = list(self.attachments)
        for att in targets:
            if att.move_notify is not None:
                att.move_notify(att)

    def close(self) -> None:
        self.revoke(permanent=True)
        self._unsubscribe()

    def _on_event(self, ev: DeviceEvent) -> None:
        if ev.kind in (EventKind.REMOVING, EventKind.REMOVED):
            self.close()
        elif ev.kind is EventKind.RESET_PREPARE:
            self.revoke()
        elif ev.kind is EventKind.RESET_DONE:
            self.restore()
        elif ev.kind is EventKind.MEMORY_DECODING:
            if ev.detail == "off":
                self.revoke()
            else:
                self.restore()


def vfio_dmabuf_export(machine: Machine, bdf: Bdf, region_index: int,
                       ranges: Sequence[tuple[int, int]], *, flags: int = 0,
                       has_get_dmabuf_phys: bool = True) -> DmaBuf:
    """``VFIO_DEVICE_FEATURE_DMA_BUF`` (GET): validation in VFIO's order."""
    where = f"vfio {bdf} region {region_index}"
    if not has_get_dmabuf_phys or not machine.profile.per_bar_provider:
        raise kerr("EOPNOTSUPP", "this VFIO driver cannot export dma-bufs", where=where,
                   hint="BAR dma-buf export needs the v6.19+ provider core")
    if not ranges or flags != 0:
        raise kerr("EINVAL", "need at least one range and flags == 0", where=where)
    if region_index >= VFIO_PCI_ROM_REGION_INDEX or region_index < 0:
        raise kerr("ENODEV", "only BAR regions 0..5 can be exported", where=where)
    total = 0
    for off, length in ranges:
        if length <= 0 or off % PAGE_SIZE or length % PAGE_SIZE:
            raise kerr("EINVAL", f"range {off:#x}+{length:#x} is empty or not page aligned",
                       where=where, hint="offsets and lengths must be multiples of 4 KiB")
        total += length
        if total > U64_MASK:
            raise kerr("EINVAL", "total length overflows", where=where)
    if total & DMA_IOVA_USE_SWIOTLB:
        raise kerr("EINVAL", "total length collides with DMA_IOVA_USE_SWIOTLB", where=where)
    dev = machine.find_device(bdf)
    if dev is None:
        raise kerr("ENODEV", "device registration is gone", where=where)
    machine.p2pdma_init(bdf)  # vfio-pci enables P2P by default at probe
    provider = machine.provider(bdf, region_index)
    if provider is None:
        raise kerr("EINVAL", "region is not a memory BAR", where=where)
    bar = dev.function.bar(region_index)
    assert bar is not None
    phys_vec: list[tuple[int, int]] = []
    for off, length in ranges:
        if off + length > U64_MASK:
            raise kerr("EOVERFLOW", f"range {off:#x}+{length:#x} overflows", where=where)
        if off + length > bar.size:
            raise kerr("EINVAL", f"range {off:#x}+{length:#x} ends past the BAR "
                       f"(size {bar.size:#x})", where=where)
        phys_vec.append((bar.start + off, length))
    if machine.find_device(bdf) is None:
        raise kerr("ENODEV", "device registration is gone", where=where)
    return DmaBuf(machine, bdf, provider, phys_vec, f"dmabuf:{bdf}/bar{region_index}")
