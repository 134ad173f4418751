"""DMA mapping of host and P2P memory (spec §5.2-5.4).

Per entry the map type comes from the page's provider through the core layer
(the kernel layer decides; the provider's cache remembers):
- NONE (host RAM) and THRU_HOST_BRIDGE: a normal mapping of the *CPU physical*
  address: an IOVA from the client's IOMMU domain, or the address itself;
- BUS_ADDR: ``paddr + bus_offset``, marked as a bus address, IOMMU bypassed
  (the switch routes it), so unmap skips it;
- anything else: -EREMOTEIO (``dma_map_sg`` turns it into 0).
"""

from __future__ import annotations

import bisect
import enum
import threading
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from p2pdma.emu import policy
from p2pdma.emu.constants import SG_MAX_SEGMENT, U64_MASK
from p2pdma.emu.core import Provider
from p2pdma.errors import KernelError, kerr
from p2pdma.fabric.bdf import Bdf
from p2pdma.kernel import MapType

if TYPE_CHECKING:
    from p2pdma.emu.alloc import Resource
    from p2pdma.emu.machine import Machine


class Direction(enum.Enum):
    BIDIRECTIONAL = 0
    TO_DEVICE = 1
    FROM_DEVICE = 2


class MapKind(enum.Enum):
    BUS = "bus"  # P2P bus address, IOMMU bypassed
    IOVA = "iova"  # translated by the client's IOMMU domain
    DIRECT = "direct"  # the CPU physical address (no IOMMU, or passthrough)


@dataclass
class P2PMapState:
    """``struct pci_p2pdma_map_state``: the last provider seen and its map type."""

    mem: Provider | None = None
    map: MapType | None = None


@dataclass
class DmaMapping:
    dev: Bdf
    dma_addr: int
    length: int
    phys: int
    kind: MapKind
    map_type: MapType  # what the kernel layer decided for this segment


@dataclass
class SgEntry:
    phys: int  # CPU physical address of the data (page + offset)
    length: int
    dma_address: int = 0
    dma_length: int = 0
    bus_address: bool = False  # sg_dma_mark_bus_address


@dataclass
class SgTable:
    entries: list[SgEntry]
    nents: int = 0  # mapped entries
    orig_nents: int = 0
    mapped_to: Bdf | None = None
    _iovas: list[int] = field(default_factory=list)  # linked IOVA ranges to unmap
    _maps: list[DmaMapping] = field(default_factory=list)  # per-entry mappings to undo

    @classmethod
    def from_ranges(cls, ranges: Sequence[tuple[int, int]]) -> SgTable:
        return cls([SgEntry(p, n) for p, n in ranges], orig_nents=len(ranges))


class DmaLayer:
    def __init__(self, machine: Machine) -> None:
        self.m = machine
        self._lock = threading.Lock()  # leaf: the pagemap index and bus-map registry
        self._pm_starts: list[int] = []
        self._pagemaps: list[Resource] = []
        # client -> live BUS_ADDR ranges (a multiset): the device-side P2P route
        self._bus_maps: dict[Bdf, Counter[tuple[int, int]]] = {}

    # -- which pages are P2P pages ----------------------------------------------

    def register_pagemap(self, res: Resource) -> None:
        with self._lock:
            i = bisect.bisect_left(self._pm_starts, res.phys_start)
            self._pm_starts.insert(i, res.phys_start)
            self._pagemaps.insert(i, res)

    def forget_pagemap(self, res: Resource) -> None:
        with self._lock:
            if res in self._pagemaps:
                i = self._pagemaps.index(res)
                del self._pm_starts[i]
                del self._pagemaps[i]

    def pagemap_of(self, phys: int) -> Resource | None:
        """``is_pci_p2pdma_page``: the pagemap a CPU physical address belongs to."""
        with self._lock:
            i = bisect.bisect_right(self._pm_starts, phys) - 1
            res = self._pagemaps[i] if i >= 0 else None
        return res if res is not None and res.contains_phys(phys) else None

    # -- state helpers ---------------------------------------------------------------

    def p2pdma_state(self, state: P2PMapState, dev: Bdf, phys: int) -> MapType:
        """``pci_p2pdma_state``: NONE for non-P2P pages; the provider's type otherwise."""
        res = self.pagemap_of(phys) if self.m.config_p2pdma else None
        if res is None:
            return policy.map_type("NONE")
        if state.mem is not res.provider or state.map is None:
            state.mem = res.provider
            state.map = self.m.core.map_type(res.provider, dev)
        return state.map

    # -- single mappings ----------------------------------------------------------------

    def map_phys(self, dev: Bdf, phys: int, size: int,
                 direction: Direction = Direction.BIDIRECTIONAL,
                 state: P2PMapState | None = None) -> DmaMapping:
        """Map one physically contiguous range for ``dev``; -EREMOTEIO if P2P cannot."""
        st = state or P2PMapState()
        mt = self.p2pdma_state(st, dev, phys)
        return self._map_one(dev, phys, size, mt, st.mem)

    def _map_one(self, dev: Bdf, phys: int, size: int, mt: MapType,
                 provider: Provider | None) -> DmaMapping:
        name = policy.type_name(mt)
        if name == "BUS_ADDR" and provider is not None:
            if self.m.profile.bus_offset_added:
                bus = provider.bus_addr_map(phys)
            else:  # before v5.16 the offset was subtracted (spec §5.2)
                bus = (phys - provider.bus_offset) & U64_MASK
            with self._lock:
                self._bus_maps.setdefault(dev, Counter())[(bus, bus + size)] += 1
            return DmaMapping(dev, bus, size, phys, MapKind.BUS, mt)
        if name in ("NONE", "THRU_HOST_BRIDGE"):
            dom = self.m.iommu_domain(dev)
            if dom is None:
                return DmaMapping(dev, phys, size, phys, MapKind.DIRECT, mt)
            return DmaMapping(dev, dom.map(phys, size), size, phys, MapKind.IOVA, mt)
        raise kerr("EREMOTEIO", f"{phys:#x}+{size:#x} cannot be reached by P2P DMA "
                   f"(map type {name})", where=str(dev),
                   hint="see dmesg for why (ACS, host bridge whitelist); "
                        "`p2pdma why` explains the pair")

    def unmap(self, mapping: DmaMapping) -> None:
        if mapping.kind is MapKind.BUS:
            key = (mapping.dma_addr, mapping.dma_addr + mapping.length)
            with self._lock:
                ranges = self._bus_maps.get(mapping.dev)
                if ranges is None or ranges[key] <= 0:
                    raise kerr("EINVAL", f"unmap of bus address {mapping.dma_addr:#x} that "
                               "is not mapped", where=str(mapping.dev))
                ranges[key] -= 1
                if ranges[key] == 0:
                    del ranges[key]
        elif mapping.kind is MapKind.IOVA:
            dom = self.m.iommu_domain(mapping.dev)
            assert dom is not None
            dom.unmap(mapping.dma_addr)

    # -- scatter-gather ----------------------------------------------------------------------

    def map_sgtable(self, dev: Bdf, sgt: SgTable,
                    direction: Direction = Direction.BIDIRECTIONAL) -> None:
        """``dma_map_sgtable``: all or nothing; -EREMOTEIO for an unreachable P2P entry."""
        st = P2PMapState()
        done: list[DmaMapping] = []
        try:
            for e in sgt.entries:
                mt = self.p2pdma_state(st, dev, e.phys)
                mp = self._map_one(dev, e.phys, e.length, mt, st.mem)
                done.append(mp)
        except KernelError:
            for mp in done:
                self.unmap(mp)
            raise
        for e, mp in zip(sgt.entries, done, strict=True):
            e.dma_address, e.dma_length = mp.dma_addr, mp.length
            e.bus_address = mp.kind is MapKind.BUS
        sgt.nents = len(done)
        sgt.mapped_to = dev
        sgt._maps = done

    def map_sg(self, dev: Bdf, sgt: SgTable,
               direction: Direction = Direction.BIDIRECTIONAL) -> int:
        """``dma_map_sg_attrs``: the number of mapped entries, 0 on any error."""
        try:
            self.map_sgtable(dev, sgt, direction)
        except KernelError:
            return 0
        return sgt.nents

    def unmap_sgtable(self, dev: Bdf, sgt: SgTable) -> None:
        done, sgt._maps = sgt._maps, []
        for mp in done:  # bus-address entries are skipped by the real unmap; we drop the route
            self.unmap(mp)
        for e in sgt.entries:
            e.dma_address = e.dma_length = 0
            e.bus_address = False
        sgt.nents = 0
        sgt.mapped_to = None

    # -- dma-buf ----------------------------------------------------------------------------

    def dma_buf_phys_vec_to_sgt(self, dev: Bdf, provider: Provider | None,
                                phys_vec: Sequence[tuple[int, int]], size: int) -> SgTable:
        """``dma_buf_phys_vec_to_sgt`` (§5.4): DMA ranges only, no pages."""
        if provider is None:
            raise kerr("EINVAL", "dma-buf mapping without a provider", where=str(dev))
        mt = self.m.core.map_type(provider, dev)
        name = policy.type_name(mt)
        out: list[SgEntry] = []
        iovas: list[int] = []
        bus_maps: list[DmaMapping] = []
        if name == "BUS_ADDR":
            for p, n in phys_vec:
                mp = self._map_one(dev, p, n, mt, provider)
                bus_maps.append(mp)
                out += _split(p, mp.dma_addr, n)
        elif name == "THRU_HOST_BRIDGE":
            dom = self.m.iommu_domain(dev)
            if dom is not None:
                iova = dom.map_ranges(list(phys_vec))  # one contiguous IOVA range
                iovas.append(iova)
                out += _split(phys_vec[0][0] if phys_vec else 0, iova, size)
            else:
                for p, n in phys_vec:
                    out += _split(p, p, n)
        else:
            raise kerr("EINVAL", f"dma-buf of {provider.owner} cannot be mapped for this "
                       f"device (map type {name})", where=str(dev),
                       hint="the importer cannot reach the exporter's BAR peer-to-peer")
        for e in out:
            e.phys = 0  # no CPU list: the table carries DMA addresses only
        return SgTable(out, nents=len(out), orig_nents=0, mapped_to=dev, _iovas=iovas,
                       _maps=bus_maps)

    def dma_buf_free_sgt(self, dev: Bdf, sgt: SgTable) -> None:
        dom = self.m.iommu_domain(dev) if sgt._iovas else None
        for iova in sgt._iovas:
            assert dom is not None
            dom.unmap(iova)
        for mp in sgt._maps:
            self.unmap(mp)
        sgt._maps = []
        sgt.entries = []
        sgt.nents = 0
        sgt._iovas = []

    # -- the device side ---------------------------------------------------------------------

    def resolve_device_access(self, dev: Bdf, dma_addr: int,
                              length: int) -> list[tuple[str, int, int]]:
        """Where a DMA of ``dma_addr`` by ``dev`` lands: [(space, address, bytes)].

        A live BUS_ADDR mapping of ``dev`` is routed peer-to-peer (bus space);
        otherwise a translating IOMMU translates (or faults); otherwise the
        address is a CPU physical address.
        """
        out: list[tuple[str, int, int]] = []
        pos = 0
        dom = self.m.iommu_domain(dev) if self.m.iommu_translates else None
        while pos < length:
            addr = dma_addr + pos
            n = length - pos
            routed = self._bus_route(dev, addr)
            if routed is not None:
                n = min(length - pos, routed - addr)
                out.append(("bus", addr, n))
            elif dom is not None:
                phys, left = dom.translate(addr)
                out.append(("cpu", phys, min(n, left)))
                n = min(n, left)
            else:
                out.append(("cpu", addr, n))
            pos += n
        return out

    def _bus_route(self, dev: Bdf, addr: int) -> int | None:
        """End of the live BUS_ADDR range of ``dev`` containing ``addr``, if any."""
        with self._lock:
            ranges = self._bus_maps.get(dev)
            if not ranges:
                return None
            ends = [end for (start, end) in ranges if start <= addr < end]
        return max(ends) if ends else None


def _split(phys: int, dma: int, length: int) -> list[SgEntry]:
    """Entries of at most SG_MAX_SEGMENT bytes (0xFFFFF000 with 4 KiB pages)."""
    out = []
    pos = 0
    while pos < length:
        n = min(SG_MAX_SEGMENT, length - pos)
        out.append(SgEntry(phys + pos, n, dma + pos, n, False))
        pos += n
    return out
