"""The emulated machine: a Fabric brought to life with real memory and kernel state.

Build it from any :class:`~p2pdma.fabric.model.Fabric` (a sample, a fabric file,
a builder fabric).  Every memory BAR is backed by a sparse memfd, visible at its
CPU physical address and at its PCI bus address; host RAM is another memfd;
IOMMU domains (one per IOMMU group) translate IOVAs when the host context says
the IOMMU translates.  On top sit the two P2PDMA layers of the kernel's 2025
split: the *core* (``p2pdma_init``, per-BAR ``provider``, ``map_type`` with the
map-type cache) and the optional *allocation* layer (``add_resource``, the
p2pmem pool, ``alloc``/``free``/``virt_to_bus``, the sysfs ``allocate`` mmap).
Every decision is asked of :mod:`p2pdma.kernel`.

Usage::

    from p2pdma.emu import Machine, MAP_SHARED, FOLL_PCI_P2PDMA
    from p2pdma.samples import load_sample

    m = Machine(load_sample("qemu-q35"))
    nvme, client = m.resolve("nvme0"), m.resolve("nvme1")
    m.add_resource(nvme, bar=2, size=64 << 20)        # the CMB; logs I1 to m.dmesg
    m.publish(nvme)
    kva = m.alloc(nvme, 8192)                         # kernel virtual address
    bus = m.virt_to_bus(nvme, kva)                    # what a peer puts on the wire
    m.memory.write_virt(kva, b"hello")                # CPU store into the BAR
    prov = m.provider(nvme, 2)
    print(m.map_type(prov, client))                   # MapType.BUS_ADDR (via the kernel layer)
    dma = m.dma.map_phys(client, m.kva_to_phys(kva), 8192)   # dma.kind == "bus"
    assert m.dma_read(client, dma.dma_addr, 5) == b"hello"   # the device's view
    m.dma.unmap(dma)
    m.free(nvme, kva, 8192)

    vma = m.open_allocate(nvme).mmap(1 << 20, MAP_SHARED)    # "userspace" p2pmem
    vma.write(0, b"data")                             # real bytes in the BAR memfd
    pin = m.pin_user_pages(vma, 0, 4096, FOLL_PCI_P2PDMA, holder="O_DIRECT read")
    pin.unpin()
    m.subscribe(lambda ev: print(ev))                 # ADDED / REMOVING / REMOVED ...
    m.remove_device(nvme, timeout=2.0)                # zaps vma: vma.read() -> SigBus

Locking (outermost first): ``Machine._lock`` (topology) -> ``EmuPciDev.lock``
(one device's p2pdma state) -> ``Vma.lock`` -> ``Resource.lock`` (page counts)
-> leaf locks (gen_pool, percpu ref, IOMMU domain, memory backing, dmesg,
event bus, cache lock).  Nothing waits (for refs or pins) while holding a lock,
and event listeners run with no emulator lock held.
"""

from __future__ import annotations

import dataclasses
import random
import threading
import time
from collections.abc import Callable, Sequence

from p2pdma.emu import enable, policy
from p2pdma.emu.alloc import AllocLayer, Resource, Sgl
from p2pdma.emu.constants import PAGE_SHIFT, RAM_BASE
from p2pdma.emu.core import CoreLayer, Provider
from p2pdma.emu.device import DeviceState, EmuPciDev
from p2pdma.emu.dma import DmaLayer
from p2pdma.emu.dmesg import Dmesg
from p2pdma.emu.events import DeviceEvent, EventBus, EventKind, Listener
from p2pdma.emu.gup import Pin, live_pins, pin_user_pages
from p2pdma.emu.iommu import IommuDomain
from p2pdma.emu.memory import MemoryBacking, PhysicalMemory, Region, phys_to_virt, virt_to_phys
from p2pdma.emu.pool import GenPool
from p2pdma.emu.usermap import AllocateFile
from p2pdma.emu.vma import InsertHook, Vma
from p2pdma.errors import InputError, kerr
from p2pdma.fabric.bdf import Bdf
from p2pdma.fabric.model import Fabric, IommuMode, PciFunction
from p2pdma.kernel import KernelProfile, MapType, MapTypeCache, NonPciClient


class Machine:
    """An emulated machine built from ``fabric``.

    ``profile`` overrides the kernel version whose behaviour is emulated (default:
    the fabric's kernel release, else the newest profile); ``rng`` breaks
    find_many ties (seeded, so runs repeat); ``ram_size`` bytes of host RAM.
    Use as a context manager (or call :meth:`close`) to release the memfds.
    """

    def __init__(self, fabric: Fabric, *, profile: str | None = None,
                 rng: random.Random | None = None, ram_size: int = 1 << 30,
                 dmesg_capacity: int = 4096) -> None:
        self._fabric = fabric
        choice = policy.resolve_profile(fabric.host.kernel_release, profile)
        self._profile: KernelProfile = choice.profile
        self.profile_reason = choice.reason
        self.rng = rng or random.Random(0)  # the kernel's tie-break, made reproducible
        self._lock = threading.RLock()
        self.dmesg = Dmesg(dmesg_capacity)
        self.events = EventBus()
        self.memory = PhysicalMemory()
        self.devices: dict[Bdf, EmuPciDev] = {}
        self._domains: dict[object, IommuDomain] = {}
        self.core = CoreLayer(self)
        self.alloc_layer = AllocLayer(self)
        self.dma = DmaLayer(self)
        self.insert_hook: InsertHook | None = None  # fault injection for vm_insert_page
        self.teardown_log: list[tuple[Bdf, str]] = []
        for f in fabric.functions:
            self._attach(f)
        # Host RAM (bounce buffers, other non-P2P pages) in the first gap above 4 GiB.
        self.ram = MemoryBacking("host RAM", ram_size)
        self.ram_base = self._free_cpu_range(ram_size)
        self.memory.cpu.add(Region(self.ram_base, ram_size, self.ram, tag="RAM"))
        self.ram_pool = GenPool(PAGE_SHIFT, name="host RAM")
        self.ram_pool.add_owner(phys_to_virt(self.ram_base), self.ram_base, ram_size)

    def _free_cpu_range(self, size: int) -> int:
        base = RAM_BASE
        for r in self.memory.cpu.regions():
            if r.end <= base:
                continue
            if r.start >= base + size:
                break
            base = (r.end + RAM_BASE - 1) // RAM_BASE * RAM_BASE
        return base

    def __enter__(self) -> Machine:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- facts and state -------------------------------------------------------------

    @property
    def fabric(self) -> Fabric:
        """The machine's *current* fabric (live ACS changes, hot-plug applied)."""
        return self._fabric

    @property
    def profile(self) -> KernelProfile:
        """The kernel behaviour emulated (``profile_reason`` says why this one)."""
        return self._profile

    @property
    def config_p2pdma(self) -> bool:
        return self._fabric.host.p2pdma_config is not False

    def resolve(self, text: str) -> Bdf:
        return self._fabric.resolve(text)

    def device(self, bdf: Bdf) -> EmuPciDev:
        dev = self.devices.get(bdf)
        if dev is None or dev.state is DeviceState.REMOVED:
            raise kerr("ENODEV", "no such PCI device", where=str(bdf),
                       hint="it was never there or has been removed")
        return dev

    def find_device(self, bdf: Bdf) -> EmuPciDev | None:
        dev = self.devices.get(bdf)
        return dev if dev is not None and dev.state is not DeviceState.REMOVED else None

    def check_present(self, dev: EmuPciDev) -> None:
        if dev.state is not DeviceState.PRESENT:
            raise kerr("ENODEV", f"device is {dev.state.value}", where=dev.name,
                       hint="it is being hot-unplugged")

    def _attach(self, f: PciFunction) -> EmuPciDev:
        dev = EmuPciDev(f.bdf, f)
        try:
            for b in f.bars:
                if not b.is_memory or b.size == 0:
                    continue
                backing = MemoryBacking(f"{f.bdf} BAR{b.index}", b.size)
                dev.backings[b.index] = backing
                self.memory.cpu.add(Region(b.start, b.size, backing, owner=f.bdf,
                                           bar=b.index))
                self.memory.bus.add(Region(b.bus_address, b.size, backing, owner=f.bdf,
                                           bar=b.index))
        except BaseException:  # e.g. a BAR overlapping another: leave no half device
            self.memory.cpu.remove_owner(f.bdf)
            self.memory.bus.remove_owner(f.bdf)
            for backing in dev.backings.values():
                backing.close()
            raise
        self.devices[f.bdf] = dev
        return dev

    # -- IOMMU and host RAM -----------------------------------------------------------

    @property
    def iommu_translates(self) -> bool:
        return self._fabric.host.iommu is IommuMode.TRANSLATED

    def iommu_domain(self, bdf: Bdf) -> IommuDomain | None:
        """The DMA domain of ``bdf``'s IOMMU group, or None (no translation)."""
        if not self.iommu_translates:
            return None
        dev = self.device(bdf)
        group = dev.function.iommu_group
        key: object = ("group", group) if group is not None else ("dev", bdf)
        with self._lock:
            dom = self._domains.get(key)
            if dom is None:
                dom = IommuDomain(f"iommu group {group}" if group is not None
                                  else f"iommu domain of {bdf}")
                self._domains[key] = dom
            return dom

    def alloc_ram(self, size: int) -> int:
        """Host RAM pages (e.g. a bounce buffer); returns the CPU physical address."""
        kva = self.ram_pool.alloc(size)
        if not kva:
            raise kerr("ENOMEM", f"no {size:#x} bytes of host RAM left",
                       hint="free bounce buffers, or build the Machine with a larger ram_size")
        return virt_to_phys(kva)

    def free_ram(self, phys: int, size: int) -> None:
        self.ram_pool.free(phys_to_virt(phys), size)

    @staticmethod
    def kva_to_phys(kva: int) -> int:
        return virt_to_phys(kva)

    @staticmethod
    def phys_to_kva(phys: int) -> int:
        return phys_to_virt(phys)

    # -- the device's view of memory -------------------------------------------------

    def dma_read(self, bdf: Bdf, dma_addr: int, length: int) -> bytes:
        """What device ``bdf`` reads when it issues a DMA read of ``dma_addr``."""
        out = bytearray()
        for space, addr, n in self.dma.resolve_device_access(bdf, dma_addr, length):
            out += (self.memory.read_bus(addr, n) if space == "bus"
                    else self.memory.read_phys(addr, n))
        return bytes(out)

    def dma_write(self, bdf: Bdf, dma_addr: int, data: bytes | bytearray | memoryview) -> None:
        view = memoryview(bytes(data))
        pos = 0
        for space, addr, n in self.dma.resolve_device_access(bdf, dma_addr, len(view)):
            if space == "bus":
                self.memory.write_bus(addr, view[pos:pos + n])
            else:
                self.memory.write_phys(addr, view[pos:pos + n])
            pos += n

    # -- core layer --------------------------------------------------------------------

    def p2pdma_init(self, bdf: Bdf) -> None:
        self.core.init(bdf)

    def provider(self, bdf: Bdf, bar: int) -> Provider | None:
        return self.core.provider(bdf, bar)

    def map_type(self, provider: Provider, client: Bdf | NonPciClient) -> MapType:
        return self.core.map_type(provider, client)

    def distance_many(self, provider: Bdf, clients: Sequence[Bdf | NonPciClient], *,
                      verbose: bool = False,
                      log: bool = True) -> int:
        """``pci_p2pdma_distance_many``; its calls fill ``provider``'s cache."""
        if not self.config_p2pdma:
            return -1
        res = policy.distance_many(self._fabric, self.profile, provider, list(clients),
                                   verbose=verbose, caches=self.cache_of)
        if log:
            self.dmesg.extend(policy.messages_of(res))
        if res.distance is None:
            raise InputError(f"distance unknown: {res.unknown}", where=str(provider),
                             hint="a fact the kernel needs (ACS Control) is unreadable in "
                                  "this fabric")
        return res.distance

    def cache_of(self, bdf: Bdf) -> MapTypeCache | None:
        """The provider's map-type cache (None without p2pdma state): every calc writes it."""
        dev = self.find_device(bdf)
        state = dev.p2pdma if dev is not None else None
        return state.map_types if state is not None else None

    def distance(self, provider: Bdf, client: Bdf | NonPciClient, *,
                 verbose: bool = False) -> int:
        return self.distance_many(provider, [client], verbose=verbose)

    # -- allocation layer ------------------------------------------------------------------

    def add_resource(self, bdf: Bdf, bar: int, size: int = 0, offset: int = 0) -> Resource:
        return self.alloc_layer.add_resource(bdf, bar, size, offset)

    def publish(self, bdf: Bdf, publish: bool = True) -> None:
        self.alloc_layer.publish(bdf, publish)

    def has_p2pmem(self, bdf: Bdf) -> bool:
        return self.alloc_layer.has_p2pmem(bdf)

    def alloc(self, bdf: Bdf, size: int) -> int | None:
        return self.alloc_layer.alloc(bdf, size)

    def free(self, bdf: Bdf, kva: int, size: int) -> None:
        self.alloc_layer.free(bdf, kva, size)

    def virt_to_bus(self, bdf: Bdf, kva: int | None) -> int:
        return self.alloc_layer.virt_to_bus(bdf, kva)

    def alloc_sgl(self, bdf: Bdf, length: int) -> Sgl | None:
        return self.alloc_layer.alloc_sgl(bdf, length)

    def free_sgl(self, bdf: Bdf, sgl: Sgl) -> None:
        self.alloc_layer.free_sgl(bdf, sgl)

    def find_many(self, clients: Sequence[Bdf | NonPciClient],
                  rng: random.Random | None = None) -> Bdf | None:
        return self.alloc_layer.find_many(clients, rng)

    def find(self, client: Bdf | NonPciClient) -> Bdf | None:
        return self.alloc_layer.find_many([client])

    def sysfs_read(self, bdf: Bdf, attr: str) -> str:
        return self.alloc_layer.sysfs_read(bdf, attr)

    def enable_store(self, page: str) -> enable.EnableResult:
        return enable.enable_store(self, page)

    @staticmethod
    def enable_show(use: bool, p2p_dev: Bdf | None, config: bool = True) -> str:
        return enable.enable_show(use, p2p_dev, config=config)

    def open_allocate(self, bdf: Bdf) -> AllocateFile:
        """open() of ``p2pmem/allocate``: ENOENT unless the file exists."""
        dev = self.find_device(bdf)
        state = dev.p2pdma if dev is not None else None
        if state is None or not state.allocate_file:
            raise kerr("ENOENT", "p2pmem/allocate: no such file", where=str(bdf),
                       hint="it exists only while the device has a p2pmem pool")
        return AllocateFile(self, bdf)

    def pin_user_pages(self, vma: Vma, offset: int, length: int, flags: int,
                       holder: str) -> Pin:
        return pin_user_pages(vma, offset, length, flags, holder)

    # -- topology changes ---------------------------------------------------------------

    def subscribe(self, listener: Listener, bdf: Bdf | None = None) -> Callable[[], None]:
        return self.events.subscribe(listener, bdf)

    def set_acs_control(self, bdf: Bdf, control: int) -> None:
        """``setpci ECAP_ACS+6.w=...``: the live register changes; caches do not."""
        with self._lock:
            self.device(bdf)
            self._fabric = self._fabric.with_acs_control(bdf, control)
            self.devices[bdf].function = self._fabric.get(bdf)
        self.events.emit(DeviceEvent(EventKind.ACS_CHANGED, bdf, f"{control:#06x}"))

    def set_memory_decoding(self, bdf: Bdf, enabled: bool) -> None:
        """PCI_COMMAND_MEMORY on/off (VFIO revokes its dma-bufs when it goes off)."""
        dev = self.device(bdf)
        dev.memory_decoding = enabled
        self.events.emit(DeviceEvent(EventKind.MEMORY_DECODING, bdf,
                                     "on" if enabled else "off"))

    def reset_device(self, bdf: Bdf) -> None:
        """A function-level reset: listeners revoke before, restore after."""
        self.device(bdf)
        self.events.emit(DeviceEvent(EventKind.RESET_PREPARE, bdf))
        self.events.emit(DeviceEvent(EventKind.RESET_DONE, bdf))

    def add_device(self, function: PciFunction) -> Bdf:
        """Hot-add ``function`` (its parent must exist); BARs get fresh zeroed memory."""
        with self._lock:
            if self.find_device(function.bdf) is not None:
                raise kerr("EBUSY", "a device with this address is present",
                           where=str(function.bdf))
            fabric = dataclasses.replace(self._fabric,
                                         functions=(*self._fabric.functions, function))
            fabric.validate()
            self._attach(function)
            self._fabric = fabric
        self.events.emit(DeviceEvent(EventKind.ADDED, function.bdf))
        return function.bdf

    def remove_device(self, bdf: Bdf, timeout: float = 5.0) -> None:
        """Hot-unplug ``bdf`` (and everything below it) with the kernel's teardown (§4.8).

        Listeners see ``REMOVING`` first (drivers give back what they hold).  Then,
        per resource in reverse order: user mappings zapped, pgmap ref killed, wait
        for every reference and pin; then release (cache, pool, sysfs).  If refs are
        still held after ``timeout`` seconds this raises EBUSY naming the holders,
        and the device stays half-removed; call again to keep waiting.
        """
        deadline = time.monotonic() + timeout
        with self._lock:
            dev = self.device(bdf)
        with dev.removal_lock:
            self._remove_locked(dev, deadline)

    def _remove_locked(self, dev: EmuPciDev, deadline: float) -> None:
        bdf = dev.bdf
        with self._lock:
            if dev.state is DeviceState.REMOVED:  # another remover finished it
                raise kerr("ENODEV", "device is already removed", where=str(bdf))
            first = dev.state is DeviceState.PRESENT
            dev.state = DeviceState.REMOVING
            below = [c for c in self._fabric.children(bdf)
                     if self.find_device(c) is not None]
        for child in below:
            self.remove_device(child, max(0.0, deadline - time.monotonic()))
        if first:
            self.events.emit(DeviceEvent(EventKind.REMOVING, bdf))
        self._teardown(dev, deadline)
        with self._lock:
            dev.state = DeviceState.REMOVED
            del self.devices[bdf]
            self._fabric = dataclasses.replace(
                self._fabric,
                functions=tuple(f for f in self._fabric.functions if f.bdf != bdf))
            self.memory.cpu.remove_owner(bdf)
            self.memory.bus.remove_owner(bdf)
        for backing in dev.backings.values():
            backing.close()
        self.events.emit(DeviceEvent(EventKind.REMOVED, bdf))

    def _teardown(self, dev: EmuPciDev, deadline: float) -> None:
        state = dev.p2pdma
        if state is None:
            return
        log = self.teardown_log
        for res in reversed(state.resources):
            if res.torn_down:
                continue
            # 1: remove the allocate file -> every user mapping of it is zapped.
            with dev.lock:
                state.allocate_file = False
                vmas = list(state.user_vmas)
            for vma in vmas:
                vma.zap(f"{dev.bdf} removed")
            log.append((dev.bdf, f"zap user mappings ({len(vmas)})"))
            # 2: memunmap_pages: kill the ref, wait for every user to go.
            res.ref.kill()
            log.append((dev.bdf, f"kill pgmap ref {res.phys_start:#x}"))
            if not res.ref.wait_for_zero(max(0.0, deadline - time.monotonic())):
                raise kerr("EBUSY", f"removal is waiting for {res.ref.count} references "
                           f"to {res.phys_start:#x}+{res.size:#x}: {self.holders(dev.bdf)}",
                           where=str(dev.bdf), hint="free allocations and unpin pages "
                           "(end in-flight I/O), then call remove_device again")
            log.append((dev.bdf, f"pgmap refs drained {res.phys_start:#x}"))
            # 3: the pagemap wrapper goes.
            res.torn_down = True
            self.dma.forget_pagemap(res)
        log.append((dev.bdf, "release: p2pdma state unpublished"))
        had_pool = state.pool is not None
        self.core.release(dev)
        log.append((dev.bdf, "map-type cache destroyed"))
        if had_pool:
            log.append((dev.bdf, "pool destroyed, p2pmem sysfs group removed"))

    def holders(self, bdf: Bdf) -> dict[str, int]:
        """Who holds references to ``bdf``'s p2pmem (kernel allocs, user pages, pins)."""
        dev = self.find_device(bdf) or self.devices.get(bdf)
        out: dict[str, int] = {}
        state = dev.p2pdma if dev is not None else None
        if state is None:
            return out
        for res in state.resources:
            for holder, n in res.ref.holders().items():
                out[holder] = out.get(holder, 0) + n
        for pin in live_pins():
            if any(r in state.resources for r, _ in pin.pages):
                key = f"GUP pin by {pin.holder}"
                out[key] = out.get(key, 0) + len(pin.pages)
        return out

    def close(self) -> None:
        """Release all memory (memfds) of the machine."""
        for dev in list(self.devices.values()):
            for b in dev.backings.values():
                b.close()
        self.ram.close()
