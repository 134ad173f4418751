"""GUP-like pinning of user P2P pages (spec §6.5).

- Without ``FOLL_PCI_P2PDMA`` a P2P page is refused: -EREMOTEIO (the slow path's
  answer; the fast path falls back to it).
- ``FOLL_LONGTERM | FOLL_PCI_P2PDMA`` is refused up front: -EOPNOTSUPP.
A pin holds one extra reference on each page, so a page whose PTE is zapped
(munmap, revocation) stays allocated until the pin is released; device removal
waits for that (and can name the holder).
"""

from __future__ import annotations

import itertools
import threading
from typing import TYPE_CHECKING

from p2pdma.emu.constants import PAGE_SIZE
from p2pdma.emu.memory import virt_to_phys
from p2pdma.errors import kerr

if TYPE_CHECKING:
    from p2pdma.emu.alloc import Resource
    from p2pdma.emu.vma import Vma

FOLL_WRITE = 0x01
FOLL_LONGTERM = 0x100
FOLL_PCI_P2PDMA = 0x400  # the enum value of later kernels (0x100000 as a 6.2 #define)

_ids = itertools.count(1)
# Every pin not yet released, so a stuck removal can say who holds its pages.
_live_pins: set[Pin] = set()
_live_lock = threading.Lock()


def live_pins() -> list[Pin]:
    with _live_lock:
        return list(_live_pins)


class Pin:
    """Pinned pages of one VMA range (pin_user_pages result)."""

    def __init__(self, vma: Vma, holder: str, pages: list[tuple[Resource, int]]) -> None:
        self.id = next(_ids)
        self.vma = vma
        self.holder = holder
        self.pages = pages  # (resource, kva) in VA order
        self._lock = threading.Lock()
        self.released = False

    @property
    def phys_pages(self) -> list[int]:
        return [virt_to_phys(kva) for _, kva in self.pages]

    def unpin(self) -> None:
        """unpin_user_pages: the end of the in-flight I/O.  Idempotent."""
        with self._lock:
            if self.released:
                return
            self.released = True
        with self.vma.lock:
            self.vma.pins.discard(self)
        with _live_lock:
            _live_pins.discard(self)
        for res in {id(r): r for r, _ in self.pages}.values():
            res.put_pages([kva for r, kva in self.pages if r is res])

    def __repr__(self) -> str:
        return f"Pin(#{self.id} {self.holder!r}, {len(self.pages)} pages of {self.vma.name})"


def pin_user_pages(vma: Vma, offset: int, length: int, flags: int, holder: str) -> Pin:
    """Pin the pages covering ``[offset, offset+length)`` of ``vma``."""
    if flags & FOLL_LONGTERM and flags & FOLL_PCI_P2PDMA:
        raise kerr("EOPNOTSUPP", "long-term pins of P2P memory are not supported",
                   where=vma.name, hint="P2P pages may only be pinned for the duration of "
                   "one I/O (e.g. O_DIRECT), not for RDMA MRs or io_uring fixed buffers")
    if not flags & FOLL_PCI_P2PDMA:
        raise kerr("EREMOTEIO", "the buffer is P2P memory and this path cannot carry it",
                   where=vma.name, hint="only O_DIRECT I/O to a P2P-capable block device "
                   "(FOLL_PCI_P2PDMA) may pin these pages")
    if length <= 0 or offset < 0 or offset + length > vma.length:
        raise kerr("EFAULT", f"pin of {offset:#x}+{length:#x} is outside the mapping",
                   where=vma.name)
    first, last = offset // PAGE_SIZE, (offset + length - 1) // PAGE_SIZE
    with vma.lock:
        if vma.revoked:
            raise kerr("EFAULT", "the mapping was revoked", where=vma.name)
        pages: list[tuple[Resource, int]] = []
        for i in range(first, last + 1):
            kva, res = vma.pages[i], vma.resources[i]
            if kva is None or res is None:
                raise kerr("EFAULT", f"page {i} is not mapped", where=vma.name)
            pages.append((res, kva))
        for res, kva in pages:
            res.get_page(kva)
        pin = Pin(vma, holder, pages)
        vma.pins.add(pin)
    with _live_lock:
        _live_pins.add(pin)
    return pin
