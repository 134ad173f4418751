"""Allocation layer: ZONE_DEVICE pages, the p2pmem pool and the kernel API (spec §4.3-4.7).

Sits on the core layer: ``add_resource`` first calls ``CoreLayer.init`` and
takes the BAR's provider, then creates the pool (first call) and one pagemap
(:class:`Resource`) per registered window, each with its own percpu ref that is
registered as the gen_pool chunk owner.

Page reference counts are kept sparsely (only pages with a non-zero count), so
a 64 GiB BAR costs nothing until its pages are used.  When a page's count drops
to zero the free callback (``folio_free``) returns exactly one page to the pool
and drops one pgmap ref (§6.3).
"""

from __future__ import annotations

import random
import threading
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from p2pdma.emu import messages, policy
from p2pdma.emu.constants import PAGE_SHIFT, PAGE_SIZE, SUBSECTION_SIZE
from p2pdma.emu.core import P2PDmaState, Provider
from p2pdma.emu.memory import phys_to_virt
from p2pdma.emu.pool import GenPool
from p2pdma.emu.refs import PercpuRef
from p2pdma.errors import kerr
from p2pdma.fabric.bdf import Bdf
from p2pdma.kernel import NonPciClient

Client = Bdf | NonPciClient

if TYPE_CHECKING:
    from p2pdma.emu.machine import Machine

HOLDER_KERNEL = "pci_alloc_p2pmem"
HOLDER_USER_PAGE = "user page"
HOLDER_MMAP_TEMP = "allocate mmap (temporary)"


@dataclass(eq=False)
class Resource:
    """``struct pci_p2pdma_pagemap``: one registered window of one BAR."""

    device: Bdf
    provider: Provider
    bar: int
    offset: int
    size: int
    phys_start: int  # CPU physical
    bus_start: int  # PCI bus address of the first byte
    ref: PercpuRef
    pool: GenPool
    # page index (from phys_start) -> reference count; absent means 0
    page_refs: dict[int, int] = field(default_factory=dict)
    # Leaf-ish: held while changing page counts; may call pool.free and ref.put.
    lock: threading.Lock = field(default_factory=threading.Lock)
    torn_down: bool = False

    @property
    def kva_start(self) -> int:
        return phys_to_virt(self.phys_start)

    def contains_phys(self, phys: int) -> bool:
        return self.phys_start <= phys < self.phys_start + self.size

    def contains_kva(self, kva: int) -> bool:
        return self.kva_start <= kva < self.kva_start + self.size

    def page_index(self, kva: int) -> int:
        return (kva - self.kva_start) >> PAGE_SHIFT

    def page_ref_count(self, kva: int) -> int:
        with self.lock:
            return self.page_refs.get(self.page_index(kva), 0)

    def set_page_ref(self, kva: int, count: int) -> int:
        """Set a free page's count (mmap step 6); returns the previous value."""
        with self.lock:
            i = self.page_index(kva)
            old = self.page_refs.get(i, 0)
            if count:
                self.page_refs[i] = count
            else:
                self.page_refs.pop(i, None)
            return old

    def get_page(self, kva: int) -> None:
        with self.lock:
            i = self.page_index(kva)
            c = self.page_refs.get(i, 0)
            if c <= 0:
                raise AssertionError(f"get_page on free page {kva:#x} of {self.device}")
            self.page_refs[i] = c + 1

    def put_page(self, kva: int) -> bool:
        """Drop one page reference; the last one frees the page.  True if freed."""
        with self.lock:
            i = self.page_index(kva)
            c = self.page_refs.get(i, 0)
            if c <= 0:
                raise AssertionError(f"put_page on free page {kva:#x} of {self.device}")
            if c > 1:
                self.page_refs[i] = c - 1
                return False
            del self.page_refs[i]
            # folio_free: exactly one page back to the pool, one pgmap ref dropped.
            self.pool.free(kva, PAGE_SIZE)
        self.ref.put(HOLDER_USER_PAGE)
        return True

    def claim_free_pages(self, kvas: list[int]) -> int | None:
        """Set the count of every page 0 -> 1, all or none.  Returns None on success,
        else the first page whose count was not 0 (and changes nothing)."""
        with self.lock:
            idx = [self.page_index(kva) for kva in kvas]
            for kva, i in zip(kvas, idx, strict=True):
                if self.page_refs.get(i, 0):
                    return kva
            for i in idx:
                self.page_refs[i] = 1
        return None

    def put_pages(self, kvas: list[int]) -> int:
        """``put_page`` of many pages under one lock (munmap, zap, unpin); returns how
        many reached zero and went back to the pool, each exactly as ``put_page``."""
        freed: list[int] = []
        with self.lock:
            for kva in kvas:
                i = self.page_index(kva)
                c = self.page_refs.get(i, 0)
                if c <= 0:
                    raise AssertionError(f"put_page on free page {kva:#x} of {self.device}")
                if c > 1:
                    self.page_refs[i] = c - 1
                else:
                    del self.page_refs[i]
                    freed.append(kva)
            free_page_runs(self.pool, sorted(freed))
        if freed:
            self.ref.put(HOLDER_USER_PAGE, len(freed))
        return len(freed)

    def pages_in_use(self) -> int:
        with self.lock:
            return len(self.page_refs)


@dataclass
class Sgl:
    """A scatterlist from ``alloc_sgl``: always exactly one entry (kva, length)."""

    entries: list[tuple[int, int]]

    @property
    def nents(self) -> int:
        return len(self.entries)


class AllocLayer:
    def __init__(self, machine: Machine) -> None:
        self.m = machine

    # -- registration ------------------------------------------------------------

    def add_resource(self, bdf: Bdf, bar: int, size: int = 0, offset: int = 0) -> Resource:
        """``pci_p2pdma_add_resource`` with the kernel's validation order (§4.3)."""
        where = f"{bdf} BAR{bar}"
        if not self.m.config_p2pdma:
            raise kerr("EOPNOTSUPP", "CONFIG_PCI_P2PDMA is not set", where=where,
                       hint="build the emulated kernel with P2PDMA (host p2pdma_config)")
        dev = self.m.device(bdf)
        b = dev.function.bar(bar)
        if b is None or not b.is_memory:
            raise kerr("EINVAL", "BAR is not a memory BAR", where=where,
                       hint="pass the index of a memory BAR (see `p2pdma topo`)")
        if offset >= b.size:
            raise kerr("EINVAL", f"offset {offset:#x} is not inside the BAR (size {b.size:#x})",
                       where=where, hint="use an offset below the BAR size")
        if size == 0:
            size = b.size - offset
        if size + offset > b.size:
            raise kerr("EINVAL", f"{offset:#x}+{size:#x} runs past the end of the BAR "
                       f"(size {b.size:#x})", where=where, hint="shrink size or offset")
        with dev.lock:
            self.m.check_present(dev)
            state = self.m.core.init(bdf)
            if state.pool is None:
                state.pool = GenPool(PAGE_SHIFT, name=f"p2pmem {bdf}")
                state.sysfs_group = True
                state.allocate_file = self.m.profile.userspace_allocate  # v6.2+
            prov = state.mem.get(bar)
            if prov is None:
                raise kerr("EINVAL", "no provider for this BAR", where=where)
            phys = b.start + offset
            # devm_memremap_pages: subsection alignment and no overlap.
            if phys % SUBSECTION_SIZE or size % SUBSECTION_SIZE:
                raise kerr("EINVAL", f"range {phys:#x}+{size:#x} is not aligned to the "
                           f"{SUBSECTION_SIZE >> 20} MiB memory-hotplug subsection",
                           where=where, hint="register a 2 MiB-aligned start and size "
                           "(memremap_compat_align on x86-64)")
            for r in state.resources:
                if r.phys_start < phys + size and phys < r.phys_start + r.size:
                    # memremap_pages refuses a conflicting pagemap (WARN, -ENOMEM).
                    raise kerr("ENOMEM", f"range {phys:#x}+{size:#x} overlaps the registered "
                               f"range {r.phys_start:#x}+{r.size:#x}", where=where,
                               hint="each window of a BAR can be registered once")
            ref = PercpuRef(f"pgmap {bdf} {phys:#x}")
            res = Resource(device=bdf, provider=prov, bar=bar, offset=offset, size=size,
                           phys_start=phys, bus_start=b.bus_address + offset, ref=ref,
                           pool=state.pool)
            state.pool.add_owner(res.kva_start, res.bus_start, size, owner=res)
            state.resources.append(res)
            self.m.dma.register_pagemap(res)
        self.m.dmesg.log(dev.log_line(messages.I1_ADDED.format(start=phys,
                                                              end=phys + size - 1)))
        return res

    def publish(self, bdf: Bdf, publish: bool = True) -> None:
        """``pci_p2pmem_publish``: silently ignored without p2pdma state."""
        dev = self.m.find_device(bdf)
        if dev is None:
            return
        with dev.lock:
            if dev.p2pdma is not None:
                dev.p2pdma.published = publish

    def has_p2pmem(self, bdf: Bdf) -> bool:
        """``pci_has_p2pmem``: state and published (and, per profile, a pool)."""
        dev = self.m.find_device(bdf)
        state = dev.p2pdma if dev is not None else None
        if state is None or not state.published:
            return False
        return state.pool is not None or not self.m.profile.has_p2pmem_needs_pool

    # -- allocation ----------------------------------------------------------------

    def alloc(self, bdf: Bdf, size: int) -> int | None:
        """``pci_alloc_p2pmem``: a kernel virtual address, or None."""
        if not self.m.config_p2pdma:
            return None
        dev = self.m.find_device(bdf)
        if dev is None:
            return None
        with dev.rcu:
            state = dev.p2pdma
            if state is None or state.pool is None:
                return None
            a = state.pool.alloc_owner(size)
            if a is None:
                return None
            res = _as_resource(a.owner)
            if not res.ref.tryget_live(HOLDER_KERNEL):
                state.pool.free(a.addr, a.size)  # dying pgmap: give the range back
                return None
            return a.addr

    def free(self, bdf: Bdf, kva: int, size: int) -> None:
        """``pci_free_p2pmem``: no validation beyond the pool's own BUG checks."""
        state = self._state(bdf)
        if state is None or state.pool is None:
            raise kerr("ENODEV", f"free of {kva:#x}: device has no p2pmem pool", where=str(bdf))
        owner = state.pool.free_owner(kva, size)
        _as_resource(owner).ref.put(HOLDER_KERNEL)

    def virt_to_bus(self, bdf: Bdf, kva: int | None) -> int:
        """``pci_p2pmem_virt_to_bus``: 0 for NULL/no state; -1 (all ones) if foreign."""
        if not kva or not self.m.config_p2pdma:
            return 0
        dev = self.m.find_device(bdf)
        if dev is None:
            return 0
        with dev.rcu:
            state = dev.p2pdma
            if state is None or state.pool is None:
                return 0
            v = state.pool.virt_to_phys(kva)
        return 0xFFFF_FFFF_FFFF_FFFF if v < 0 else v

    def alloc_sgl(self, bdf: Bdf, length: int) -> Sgl | None:
        kva = self.alloc(bdf, length)
        if kva is None:
            return None
        return Sgl([(kva, length)])

    def free_sgl(self, bdf: Bdf, sgl: Sgl) -> None:
        for kva, length in sgl.entries:
            self.free(bdf, kva, length)
        sgl.entries = []

    # -- sysfs -----------------------------------------------------------------------

    def sysfs_read(self, bdf: Bdf, attr: str) -> str:
        """``/sys/bus/pci/devices/<bdf>/p2pmem/<attr>`` for size/available/published."""
        dev = self.m.find_device(bdf)
        state = dev.p2pdma if dev is not None else None
        if state is None or not state.sysfs_group:
            raise kerr("ENOENT", f"p2pmem/{attr}: no such file", where=str(bdf),
                       hint="the p2pmem directory exists only after add_resource")
        pool = state.pool
        if attr == "size":
            return f"{pool.size() if pool else 0}\n"
        if attr == "available":
            return f"{pool.avail() if pool else 0}\n"
        if attr == "published":
            return f"{int(state.published)}\n"
        raise kerr("ENOENT", f"p2pmem/{attr}: no such file", where=str(bdf),
                   hint="files: size, available, published, allocate")

    def sysfs_files(self, bdf: Bdf) -> list[str]:
        dev = self.m.find_device(bdf)
        state = dev.p2pdma if dev is not None else None
        if state is None or not state.sysfs_group:
            return []
        files = ["available", "published", "size"]
        if state.allocate_file:
            files.insert(0, "allocate")
        return files

    # -- choosing a provider -----------------------------------------------------------

    def find_many(self, clients: Sequence[Client],
                  rng: random.Random | None = None) -> Bdf | None:
        """``pci_p2pmem_find_many``: asks the kernel layer; fills provider caches."""
        if not self.m.config_p2pdma or not clients:
            return None
        fabric = self.m.fabric
        # Every candidate's distance_many writes its provider's cache (spec §2.9).
        res = policy.find_many(fabric, self.m.profile, list(clients), rng=rng or self.m.rng,
                               has_p2pmem=self.has_p2pmem, caches=self.m.cache_of)
        self.m.dmesg.extend(policy.messages_of(res))
        return res.choice

    def _state(self, bdf: Bdf) -> P2PDmaState | None:
        dev = self.m.find_device(bdf)
        return dev.p2pdma if dev is not None else None


def free_page_runs(pool: GenPool, kvas: list[int]) -> None:
    """Give sorted pages back to ``pool``, one ``free`` per contiguous run."""
    if not kvas:
        return
    run_start = prev = kvas[0]
    for kva in kvas[1:]:
        if kva != prev + PAGE_SIZE:
            pool.free(run_start, prev - run_start + PAGE_SIZE)
            run_start = kva
        prev = kva
    pool.free(run_start, prev - run_start + PAGE_SIZE)


def _as_resource(owner: object) -> Resource:
    if not isinstance(owner, Resource):
        raise AssertionError(f"p2pmem chunk owner {owner!r} is not a pagemap")
    return owner
