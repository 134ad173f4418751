"""User mappings of P2P pages: the VMA, its accessors, and the page-insertion helper.

Why accessors and not raw memory: the bytes behind a :class:`Vma` are real (a
MAP_SHARED mapping of the BAR's memfd), but user code reaches them only through
``read``/``write``, which check under the VMA's lock that every page touched is
still mapped and the VMA not revoked, and copy while holding that lock.
Zapping takes the same lock, marks the pages gone and closes the mapping
*before* any page goes back to the pool, so an access after revocation or
partial unmap can never touch memory that was freed or handed to someone else.
We never give out a ``memoryview`` of the mapping (it would outlive revocation).
A real ``mprotect(PROT_NONE)`` would deliver an actual SIGBUS/SIGSEGV and kill
the interpreter (and could not be made atomic with a concurrent copy), so the
emulated SIGBUS is the :class:`SigBus` exception instead.
"""

from __future__ import annotations

import mmap
import threading
from collections.abc import Callable
from typing import TYPE_CHECKING

from p2pdma.emu.alloc import HOLDER_USER_PAGE, Resource, free_page_runs
from p2pdma.emu.constants import PAGE_SIZE
from p2pdma.emu.memory import MemoryBacking, virt_to_phys
from p2pdma.errors import P2PDMAError, kerr

if TYPE_CHECKING:
    from p2pdma.emu.gup import Pin

VM_READ = 0x1
VM_WRITE = 0x2
VM_SHARED = 0x8
VM_MAYSHARE = 0x80
VM_DONTCOPY = 0x20000  # "no fork copy"
VM_DONTEXPAND = 0x40000
VM_MIXEDMAP = 0x10000000

HOLDER_INSERT_TEMP = "vma insert (temporary)"


class SigBus(P2PDMAError):
    """The emulated SIGBUS: an access to a zapped or unmapped page of a VMA."""


InsertHook = Callable[["Vma", int, int], None]  # (vma, page number, kva); raise to fail


class Vma:
    """A user mapping of P2P pages, page slots in VA order."""

    def __init__(self, name: str, npages: int, flags: int, backing: MemoryBacking | None = None,
                 backing_offset: int = 0,
                 backing_of: Callable[[Resource], MemoryBacking] | None = None) -> None:
        self.name = name
        self.flags = flags
        self.decrypted = False  # pgprot_decrypted applied (MMIO is never encrypted)
        self.length = npages * PAGE_SIZE
        self.pages: list[int | None] = [None] * npages  # kva per slot
        self.resources: list[Resource | None] = [None] * npages
        self.revoked = False
        self.revoke_reason = ""
        self.pins: set[Pin] = set()
        self._backing = backing
        self._backing_offset = backing_offset
        self._mm: mmap.mmap | None = None
        self._backing_of = backing_of  # for VMAs whose pages are not one contiguous range
        # Lock order: Vma.lock -> Resource.lock -> pool/ref leaf locks.
        self.lock = threading.RLock()
        self.on_empty: Callable[[Vma], None] | None = None

    # -- accessors (the only way user code touches the bytes) ----------------

    def _check(self, offset: int, length: int) -> None:
        if self.revoked:
            raise SigBus(f"SIGBUS: {self.name} was revoked ({self.revoke_reason})",
                         hint="the provider device went away; its memory is gone")
        if offset < 0 or length < 0 or offset + length > self.length:
            raise SigBus(f"SIGSEGV: {offset:#x}+{length:#x} is outside {self.name} "
                         f"(length {self.length:#x})")
        first, last = offset // PAGE_SIZE, (offset + max(length, 1) - 1) // PAGE_SIZE
        for i in range(first, last + 1):
            if self.pages[i] is None:
                raise SigBus(f"SIGSEGV: page {i} of {self.name} is not mapped (unmapped)")

    def _mapping(self) -> mmap.mmap | None:
        if self._mm is None and self._backing is not None:
            self._mm = self._backing.map_range(self._backing_offset, self.length)
        return self._mm

    def read(self, offset: int, length: int) -> bytes:
        with self.lock:
            self._check(offset, length)
            mm = self._mapping()
            if mm is not None:
                return mm[offset:offset + length]
            return self._slow_copy(offset, length, None)

    def write(self, offset: int, data: bytes | bytearray | memoryview) -> None:
        with self.lock:
            self._check(offset, len(data))
            mm = self._mapping()
            if mm is not None:
                mm[offset:offset + len(data)] = data
            else:
                self._slow_copy(offset, len(data), bytes(data))

    def _slow_copy(self, offset: int, length: int, data: bytes | None) -> bytes:
        out = bytearray()
        pos = 0
        while pos < length:
            i = (offset + pos) // PAGE_SIZE
            in_page = (offset + pos) % PAGE_SIZE
            n = min(PAGE_SIZE - in_page, length - pos)
            kva = self.pages[i]
            res = self.resources[i]
            assert kva is not None and res is not None
            if self._backing_of is None:
                raise SigBus(f"{self.name}: no memory behind page {i}")
            backing = self._backing_of(res)
            off = res.offset + virt_to_phys(kva) - res.phys_start + in_page
            if data is None:
                out += backing.read(off, n)
            else:
                backing.write(off, data[pos:pos + n])
            pos += n
        return bytes(out)

    def is_mapped(self, page: int) -> bool:
        with self.lock:
            return not self.revoked and self.pages[page] is not None

    def mapped_pages(self) -> int:
        with self.lock:
            return sum(p is not None for p in self.pages)

    # -- unmapping -------------------------------------------------------------

    def munmap(self, offset: int = 0, length: int | None = None) -> int:
        """Unmap whole pages of ``[offset, offset+length)``; returns pages freed now."""
        if length is None:
            length = self.length - offset
        if offset % PAGE_SIZE or offset < 0:
            raise kerr("EINVAL", f"munmap offset {offset:#x} is not page aligned",
                       where=self.name)
        first = offset // PAGE_SIZE
        last = min(self.length, offset + length + PAGE_SIZE - 1) // PAGE_SIZE
        return self._drop_pages(range(first, last), revoke_reason=None)

    def zap(self, reason: str) -> int:
        """Revocation: every PTE goes, later accesses SIGBUS.  Returns pages freed now."""
        return self._drop_pages(range(len(self.pages)), revoke_reason=reason)

    def _drop_pages(self, slots: range, revoke_reason: str | None) -> int:
        dropped: list[tuple[Resource, int]] = []
        with self.lock:
            if revoke_reason is not None and not self.revoked:
                self.revoked = True
                self.revoke_reason = revoke_reason
            for i in slots:
                kva, res = self.pages[i], self.resources[i]
                if kva is not None and res is not None:
                    self.pages[i] = None
                    self.resources[i] = None
                    dropped.append((res, kva))
            empty = all(p is None for p in self.pages)
            if (empty or self.revoked) and self._mm is not None:
                # Close before any page can be reused: no copy is running (we hold
                # the lock) and none can start (pages gone / revoked).
                self._mm.close()
                self._mm = None
        freed = 0
        for res in {id(r): r for r, _ in dropped}.values():
            freed += res.put_pages([kva for r, kva in dropped if r is res])
        if empty and self.on_empty is not None:
            self.on_empty(self)
        return freed


def insert_p2p_pages(vma: Vma, res: Resource, first_slot: int, kvas: list[int], *,
                     insert_hook: InsertHook | None = None) -> None:
    """Insert P2P pages into a VMA the way a driver with its own BAR allocator must.

    Checks and sets the VMA flags (shared only; mixed map; not copied on fork),
    applies decrypted protection, then for each page: count 0 -> 1, insert, take
    one pgmap ref for it.  A failed insert gives the not-yet-inserted pages back
    to the pool, resets that page's count without running the free callback and
    drops the temporary pgmap ref (the 7.0 fix: it used to leak); pages already
    inserted stay in the VMA for the caller's teardown to free normally.
    """
    if not vma.flags & VM_MAYSHARE:
        raise kerr("EINVAL", "P2P pages can only be inserted into a shared mapping",
                   where=vma.name, hint="map with MAP_SHARED")
    vma.flags |= VM_MIXEDMAP | VM_DONTCOPY | VM_DONTEXPAND
    vma.decrypted = True
    if not res.ref.tryget_live(HOLDER_INSERT_TEMP):
        pool_free_range(res, kvas)
        raise kerr("ENODEV", "provider is being removed", where=str(res.device),
                   hint="the device is going away; nothing new can be mapped")
    try:
        if insert_hook is None:
            _insert_all(vma, res, first_slot, kvas)
            return
        for n, kva in enumerate(kvas):
            old = res.set_page_ref(kva, 1)
            if old != 0:
                # The kernel's VM_WARN (condition fixed in 7.0): a free page must be unused.
                res.set_page_ref(kva, old)
                pool_free_range(res, kvas[n:])
                raise AssertionError(f"page {kva:#x} of {res.device} has count {old} "
                                     "while free")
            try:
                with vma.lock:
                    if insert_hook is not None:
                        insert_hook(vma, first_slot + n, kva)
                    if vma.revoked:
                        raise kerr("EFAULT", "VMA was revoked while pages were inserted",
                                   where=vma.name)
                    if vma.pages[first_slot + n] is not None:
                        raise kerr("EBUSY", f"page {first_slot + n} is already mapped",
                                   where=vma.name)
                    vma.pages[first_slot + n] = kva
                    vma.resources[first_slot + n] = res
            except BaseException:
                res.set_page_ref(kva, 0)  # no free callback: the range is freed below
                pool_free_range(res, kvas[n:])
                raise
            res.ref.get(HOLDER_USER_PAGE)
    finally:
        res.ref.put(HOLDER_INSERT_TEMP)


def _insert_all(vma: Vma, res: Resource, first_slot: int, kvas: list[int]) -> None:
    """The same steps for a whole range at once when no insert hook can fail them."""
    with vma.lock:
        taken = [i for i in range(first_slot, first_slot + len(kvas))
                 if vma.pages[i] is not None]
    if taken:
        pool_free_range(res, kvas)
        raise kerr("EBUSY", f"page {taken[0]} is already mapped", where=vma.name)
    busy = res.claim_free_pages(kvas)
    if busy is not None:
        pool_free_range(res, kvas)
        raise AssertionError(f"page {busy:#x} of {res.device} is in use while free")
    with vma.lock:
        if vma.revoked:
            for kva in kvas:
                res.set_page_ref(kva, 0)
            pool_free_range(res, kvas)
            raise kerr("EFAULT", "VMA was revoked while pages were inserted", where=vma.name)
        vma.pages[first_slot:first_slot + len(kvas)] = kvas
        vma.resources[first_slot:first_slot + len(kvas)] = [res] * len(kvas)
    res.ref.get(HOLDER_USER_PAGE, len(kvas))


def pool_free_range(res: Resource, kvas: list[int]) -> None:
    """Give pages that never reached a VMA back to the pool (contiguous runs at once)."""
    free_page_runs(res.pool, sorted(kvas))
