"""Core layer: per-BAR providers and the map-type cache (spec §1.1-1.2, §4.1-4.2, §5.1).

This layer knows nothing about allocation (the kernel's 2025 split): a
provider is "a range of MMIO address space available to the CPU" with a bus
offset, and ``map_type`` answers whether a client may reach it.  The answer is
asked of the kernel layer through ``pci_p2pdma_map_type`` with this provider's
``MapTypeCache``: computed verbosely on first use (its messages go to dmesg),
then returned from the cache, never invalidated until release.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from p2pdma.emu import policy
from p2pdma.emu.constants import PCI_STD_NUM_BARS
from p2pdma.errors import kerr
from p2pdma.fabric.bdf import Bdf
from p2pdma.kernel import MapType, MapTypeCache, NonPciClient

if TYPE_CHECKING:
    from p2pdma.emu.alloc import Resource
    from p2pdma.emu.device import EmuPciDev
    from p2pdma.emu.machine import Machine
    from p2pdma.emu.pool import GenPool
    from p2pdma.emu.vma import Vma


@dataclass(frozen=True, eq=False)
class Provider:
    """``struct p2pdma_provider``: one memory BAR of a device."""

    owner: Bdf
    bar: int
    bus_offset: int  # bus address - CPU physical address, unsigned 64-bit

    def bus_addr_map(self, paddr: int) -> int:
        """``pci_p2pdma_bus_addr_map``: paddr + bus_offset (the v5.16+ sign)."""
        return (paddr + self.bus_offset) & 0xFFFF_FFFF_FFFF_FFFF

    def __repr__(self) -> str:
        return f"Provider({self.owner} BAR{self.bar}, bus_offset={self.bus_offset:#x})"


@dataclass(eq=False)
class P2PDmaState:
    """``struct pci_p2pdma``: exists from p2pdma_init until release."""

    device: Bdf
    map_types: MapTypeCache  # the provider's xarray
    mem: dict[int, Provider]
    pool: GenPool | None = None
    published: bool = False
    resources: list[Resource] = field(default_factory=list)
    sysfs_group: bool = False
    allocate_file: bool = False
    user_vmas: set[Vma] = field(default_factory=set)  # live mappings of ``allocate``
    # pci_p2pdma_map_type reads and fills the cache; serialise it per provider
    # device (a leaf lock: the kernel layer never calls back into the emulator).
    cache_lock: threading.Lock = field(default_factory=threading.Lock)


class CoreLayer:
    def __init__(self, machine: Machine) -> None:
        self.m = machine

    def init(self, bdf: Bdf) -> P2PDmaState:
        """``pcim_p2pdma_init``: idempotent; no pool and no sysfs group."""
        dev = self.m.device(bdf)
        if not self.m.config_p2pdma:
            raise kerr("EOPNOTSUPP", "CONFIG_PCI_P2PDMA is not set", where=str(bdf),
                       hint="the emulated kernel was configured without P2PDMA")
        if dev.non_mappable_bars:
            raise kerr("EOPNOTSUPP", "device has non-mappable BARs", where=str(bdf),
                       hint="its BARs cannot be mapped by the CPU, so they cannot be providers")
        with dev.lock:
            self.m.check_present(dev)
            if dev.p2pdma is not None:
                return dev.p2pdma
            mem = {b.index: Provider(bdf, b.index, b.bus_offset)
                   for b in dev.function.bars if b.is_memory}
            state = P2PDmaState(device=bdf, map_types=policy.new_cache(), mem=mem)
            dev.p2pdma = state
            return state

    def provider(self, bdf: Bdf, bar: int) -> Provider | None:
        """``pcim_p2pdma_provider``: None for a non-memory BAR or before init."""
        if not self.m.config_p2pdma:
            raise kerr("EOPNOTSUPP", "CONFIG_PCI_P2PDMA is not set", where=str(bdf))
        if not 0 <= bar < PCI_STD_NUM_BARS:
            raise kerr("EINVAL", f"BAR {bar} is not 0..5", where=str(bdf))
        dev = self.m.device(bdf)
        state = dev.p2pdma
        if dev.non_mappable_bars or state is None:
            # The kernel WARNs when init was never called; either way: no provider.
            return None
        return state.mem.get(bar)

    def map_type(self, provider: Provider, client: Bdf | NonPciClient) -> MapType:
        """``pci_p2pdma_map_type(provider, dev)`` with the kernel's cache semantics."""
        if not self.m.config_p2pdma:
            return policy.map_type("NOT_SUPPORTED")
        dev = self.m.find_device(provider.owner)
        state = dev.p2pdma if dev is not None else None
        if dev is None or state is None:
            return policy.map_type("NOT_SUPPORTED")
        with state.cache_lock:
            if dev.p2pdma is not state:  # released while we waited
                return policy.map_type("NOT_SUPPORTED")
            res = policy.pci_p2pdma_map_type(self.m.fabric, self.m.profile, state.map_types,
                                             provider.owner, client)
        self.m.dmesg.extend(policy.messages_of(res))
        return res.map_type

    def release(self, dev: EmuPciDev) -> None:
        """``pci_p2pdma_release``: unpublish the pointer, destroy the cache and pool."""
        with dev.lock:
            state = dev.p2pdma
            if state is None:
                return
            dev.p2pdma = None
            dev.rcu.synchronize()  # every alloc/mmap that saw the old pointer is done
            with state.cache_lock:  # no map_type is mid-lookup on this cache
                state.map_types.destroy()
            if state.pool is not None:
                state.pool.destroy()  # PoolBug if anything is still allocated
                state.pool = None
            state.sysfs_group = False
            state.allocate_file = False
