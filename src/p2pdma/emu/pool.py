"""A gen_pool (lib/genalloc) with the semantics P2PDMA relies on (spec §4.4).

- Chunks are added at the *head*: allocation tries the newest chunk first.
- Inside a chunk: first fit, lowest free run of ``nbits`` pages.
- One allocation never spans two chunks; chunks with ``avail < size`` are skipped.
- ``free`` of an address outside every chunk, or of bits that are not
  allocated, is a kernel BUG: it raises :class:`PoolBug`.
- ``destroy`` with anything still allocated is a BUG too.

Each chunk keeps one byte per page (0 free, 1 used) in a ``bytearray``.  The
first-fit search is ``bytearray.find`` of a run of zero bytes (a C-speed scan)
starting at a hint below which every page is known to be used, so the cost of
an alloc/free pair does not grow with the pool size.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from typing import NamedTuple

_FREE = 0
_USED = 1


class PoolBug(AssertionError):
    """What the kernel would BUG() on: a foreign free, a double free, destroy with users."""


@dataclass
class Chunk:
    start_addr: int  # "virt" in gen_pool terms: kernel virtual address
    phys_addr: int  # for p2pmem: the PCI bus address (spec §4.3 step 11)
    size: int
    owner: object | None
    order: int
    bitmap: bytearray = field(repr=False, default_factory=bytearray)
    avail: int = 0
    hint: int = 0  # every page below ``hint`` is in use

    @property
    def end_addr(self) -> int:  # exclusive
        return self.start_addr + self.size

    @property
    def nbits(self) -> int:
        return self.size >> self.order

    def contains(self, addr: int) -> bool:
        return self.start_addr <= addr < self.end_addr


class Allocation(NamedTuple):  # a tuple: cheap to create on the hot path
    addr: int
    size: int  # rounded up to whole pages
    owner: object | None


class GenPool:
    """Thread-safe gen_pool.  ``order`` is min_alloc_order (PAGE_SHIFT for p2pmem)."""

    def __init__(self, order: int = 12, name: str = "gen_pool") -> None:
        self.order = order
        self.name = name
        self._chunks: list[Chunk] = []  # index 0 = head = newest
        self._lock = threading.Lock()  # leaf lock: nothing is called while holding it

    # -- chunks --------------------------------------------------------------

    def add_owner(self, virt: int, phys: int, size: int, owner: object | None = None) -> Chunk:
        unit = 1 << self.order
        if size <= 0 or size % unit or virt % unit:
            raise ValueError(f"{self.name}: chunk {virt:#x}+{size:#x} is not {unit}-aligned")
        nbits = size >> self.order
        chunk = Chunk(virt, phys, size, owner, self.order, bytearray(nbits), size)
        with self._lock:
            for c in self._chunks:
                if c.start_addr < virt + size and virt < c.end_addr:
                    raise ValueError(f"{self.name}: chunk {virt:#x} overlaps chunk "
                                     f"{c.start_addr:#x}")
            self._chunks.insert(0, chunk)
        return chunk

    def chunks(self) -> list[Chunk]:
        """Chunks in allocation order (newest first)."""
        with self._lock:
            return list(self._chunks)

    # -- alloc / free ----------------------------------------------------------

    def alloc_owner(self, size: int) -> Allocation | None:
        """First fit; None when no single chunk has a free run big enough."""
        if size <= 0:
            return None
        nbits = (size + (1 << self.order) - 1) >> self.order
        rounded = nbits << self.order
        with self._lock:
            for c in self._chunks:
                if c.avail < rounded:
                    continue
                bit = _find_free_run(c, nbits)
                if bit < 0:
                    continue
                c.bitmap[bit:bit + nbits] = b"\x01" * nbits
                c.avail -= rounded
                if bit == c.hint:
                    nxt = c.bitmap.find(_FREE, bit + nbits)
                    c.hint = c.nbits if nxt < 0 else nxt
                return Allocation(c.start_addr + (bit << self.order), rounded, c.owner)
        return None

    def alloc(self, size: int) -> int:
        """gen_pool_alloc: the address, or 0 on failure."""
        a = self.alloc_owner(size)
        return 0 if a is None else a.addr

    def free_owner(self, addr: int, size: int) -> object | None:
        """Return ``[addr, addr+size)``; the chunk's owner is handed back."""
        nbits = (size + (1 << self.order) - 1) >> self.order
        with self._lock:
            for c in self._chunks:
                if c.contains(addr):
                    off = addr - c.start_addr
                    if off & ((1 << self.order) - 1):
                        raise PoolBug(f"{self.name}: free of unaligned address {addr:#x}")
                    bit = off >> self.order
                    if bit + nbits > c.nbits:
                        raise PoolBug(f"{self.name}: free of {addr:#x}+{size:#x} runs past "
                                      f"the end of its chunk")
                    if c.bitmap.find(_FREE, bit, bit + nbits) >= 0:
                        raise PoolBug(f"{self.name}: free of {addr:#x}+{size:#x} includes "
                                      "pages that are not allocated (double free?)")
                    c.bitmap[bit:bit + nbits] = bytes(nbits)
                    c.avail += nbits << self.order
                    c.hint = min(c.hint, bit)
                    return c.owner
        raise PoolBug(f"{self.name}: free of {addr:#x}, which is in no chunk of this pool")

    def free(self, addr: int, size: int) -> None:
        self.free_owner(addr, size)

    # -- queries ---------------------------------------------------------------

    def size(self) -> int:
        with self._lock:
            return sum(c.size for c in self._chunks)

    def avail(self) -> int:
        with self._lock:
            return sum(c.avail for c in self._chunks)

    def virt_to_phys(self, addr: int) -> int:
        """``chunk.phys + (addr - chunk.start)``, or -1 (all ones) if foreign."""
        with self._lock:
            for c in self._chunks:
                if c.contains(addr):
                    return c.phys_addr + (addr - c.start_addr)
        return -1

    def chunk_of(self, addr: int) -> Chunk | None:
        with self._lock:
            for c in self._chunks:
                if c.contains(addr):
                    return c
        return None

    def largest_free_run(self) -> int:
        """Bytes of the largest run any single allocation could get (diagnostics)."""
        best = 0
        with self._lock:
            for c in self._chunks:
                for run in c.bitmap[c.hint:].split(b"\x01"):
                    best = max(best, len(run) << self.order)
        return best

    def destroy(self) -> None:
        with self._lock:
            for c in self._chunks:
                if c.avail != c.size:
                    raise PoolBug(f"{self.name}: destroyed with {c.size - c.avail:#x} bytes "
                                  f"still allocated in chunk {c.start_addr:#x}")
            self._chunks.clear()


def _find_free_run(c: Chunk, nbits: int) -> int:
    if nbits == 1:
        return c.bitmap.find(_FREE, c.hint)
    return c.bitmap.find(bytes(nbits), c.hint)
