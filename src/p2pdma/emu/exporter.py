"""Peer-to-peer through a VMA: the exporter/importer model of the 2019 RFC (spec §8.1).

Not merged upstream, modelled because it makes the contract explicit: the
*exporting* driver owns policy (it asks the kernel layer, through the core
layer's ``map_type``, whether the importer may reach its BAR) and fills DMA
addresses; an importer registers an invalidation callback that may fire at any
time and must then ``p2p_unmap``.  While the VMA stays valid a mapping that
succeeded once succeeds again (the provider's map-type cache makes the answer
stable even if ACS changes under it).
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from p2pdma.emu import policy
from p2pdma.emu.constants import PAGE_SIZE
from p2pdma.emu.dma import DmaMapping
from p2pdma.emu.events import DeviceEvent, EventKind
from p2pdma.errors import kerr
from p2pdma.fabric.bdf import Bdf

if TYPE_CHECKING:
    from p2pdma.emu.machine import Machine

Invalidate = Callable[["ExportedVma", int, int], None]  # (vma, start, end)


@dataclass
class _ImportedRange:
    importer: Bdf
    start: int
    end: int
    mapping: DmaMapping


class ExportedVma:
    """A process's mapping of an exporter's BAR range, with ``p2p_map``/``p2p_unmap`` ops."""

    def __init__(self, exporter: VmaExporter) -> None:
        self.exporter = exporter
        self.length = exporter.length
        self.valid = True
        self._ranges: list[_ImportedRange] = []
        self._notifiers: list[tuple[Bdf, Invalidate]] = []
        self.lock = threading.RLock()

    def register_notifier(self, importer: Bdf, callback: Invalidate) -> Callable[[], None]:
        entry = (importer, callback)
        with self.lock:
            self._notifiers.append(entry)

        def unregister() -> None:
            with self.lock:
                if entry in self._notifiers:
                    self._notifiers.remove(entry)

        return unregister

    def p2p_map(self, importer: Bdf, start: int, end: int, write: bool = False) -> int:
        """Exporter decides and fills the DMA address of ``[start, end)`` for ``importer``."""
        if start < 0 or end > self.length or start >= end or start % PAGE_SIZE:
            raise kerr("EINVAL", f"range {start:#x}-{end:#x} is not inside the VMA",
                       where=self.exporter.name)
        with self.lock:
            if not self.valid:
                raise kerr("ENODEV", "the VMA is no longer valid (exporter gone)",
                           where=self.exporter.name)
            phys = self.exporter.phys_start + start
            mt = self.exporter.m.map_type(self.exporter.provider, importer)
            if not mt.supported:
                raise kerr("EREMOTEIO", f"{importer} cannot reach {self.exporter.bdf} "
                           f"peer-to-peer (map type {policy.type_name(mt)})",
                           where=self.exporter.name, hint="see dmesg for the reason")
            mp = self.exporter.m.dma._map_one(importer, phys, end - start, mt,
                                              self.exporter.provider)
            self._ranges.append(_ImportedRange(importer, start, end, mp))
            return mp.dma_addr

    def p2p_unmap(self, importer: Bdf, start: int, end: int) -> None:
        with self.lock:
            for r in list(self._ranges):
                if r.importer == importer and r.start == start and r.end == end:
                    self._ranges.remove(r)
                    self.exporter.m.dma.unmap(r.mapping)
                    return
        raise kerr("EINVAL", f"{importer} has no mapping {start:#x}-{end:#x}",
                   where=self.exporter.name)

    def live_mappings(self, importer: Bdf | None = None) -> int:
        with self.lock:
            return sum(1 for r in self._ranges if importer is None or r.importer == importer)

    def invalidate(self, start: int = 0, end: int | None = None, *, destroy: bool = False) -> None:
        """mmu_notifier invalidate: importers overlapping ``[start, end)`` must unmap."""
        end = self.length if end is None else end
        with self.lock:
            if destroy:
                self.valid = False
            hit = {r.importer for r in self._ranges if r.start < end and start < r.end}
            targets = [cb for imp, cb in self._notifiers if imp in hit or destroy]
        for cb in targets:  # outside our lock: the callback calls p2p_unmap
            cb(self, start, end)
        with self.lock:
            left = [r for r in self._ranges if r.start < end and start < r.end]
        if left:
            raise kerr("EBUSY", f"{len(left)} importer mapping(s) survived invalidation",
                       where=self.exporter.name,
                       hint="an importer's invalidation callback must call p2p_unmap")


class VmaExporter:
    """An exporting driver: one BAR range it lets processes mmap and peers import."""

    def __init__(self, machine: Machine, bdf: Bdf, bar: int, offset: int, length: int) -> None:
        self.m = machine
        self.bdf = bdf
        machine.p2pdma_init(bdf)
        prov = machine.provider(bdf, bar)
        dev = machine.device(bdf)
        b = dev.function.bar(bar)
        if prov is None or b is None or offset + length > b.size or length <= 0:
            raise kerr("EINVAL", f"BAR{bar} range {offset:#x}+{length:#x} cannot be exported",
                       where=str(bdf))
        self.provider = prov
        self.phys_start = b.start + offset
        self.length = length
        self.name = f"p2p-vma {bdf} BAR{bar}+{offset:#x}"
        self.vmas: list[ExportedVma] = []
        self._unsub = machine.subscribe(self._on_event, bdf)

    def mmap(self) -> ExportedVma:
        vma = ExportedVma(self)
        self.vmas.append(vma)
        return vma

    def _on_event(self, ev: DeviceEvent) -> None:
        if ev.kind in (EventKind.REMOVING, EventKind.RESET_PREPARE):
            for vma in self.vmas:
                vma.invalidate(destroy=ev.kind is EventKind.REMOVING)


class Importer:
    """An importing device (e.g. an RDMA NIC) that maps VMAs through the exporter."""

    def __init__(self, machine: Machine, bdf: Bdf,
                 on_invalidate: Callable[[int, int], None] | None = None) -> None:
        self.m = machine
        self.bdf = bdf
        self.invalidations = 0
        self._user_cb = on_invalidate
        self._mapped: dict[tuple[int, int, int], ExportedVma] = {}
        self._notified: set[int] = set()  # ids of VMAs our notifier is registered on
        self._lock = threading.Lock()

    def map(self, vma: ExportedVma, start: int, end: int, write: bool = False) -> int:
        with self._lock:
            first = id(vma) not in self._notified
            self._notified.add(id(vma))
        if first:  # one mmu_notifier per VMA, registered before the first mapping
            vma.register_notifier(self.bdf, self._invalidate)
        addr = vma.p2p_map(self.bdf, start, end, write)
        with self._lock:
            self._mapped[(id(vma), start, end)] = vma
        return addr

    def unmap(self, vma: ExportedVma, start: int, end: int) -> None:
        with self._lock:
            self._mapped.pop((id(vma), start, end), None)
        vma.p2p_unmap(self.bdf, start, end)

    def _invalidate(self, vma: ExportedVma, start: int, end: int) -> None:
        self.invalidations += 1
        with self._lock:
            hits = [(k, v) for k, v in self._mapped.items()
                    if v is vma and k[1] < end and start < k[2]]
        for (_, s, e), v in hits:
            self.unmap(v, s, e)
        if self._user_cb is not None:
            self._user_cb(start, end)

    def read(self, dma_addr: int, length: int) -> bytes:
        return self.m.dma_read(self.bdf, dma_addr, length)
