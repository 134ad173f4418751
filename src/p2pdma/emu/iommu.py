"""IOMMU domains: one per IOMMU group when the host translates DMA.

IOVAs are handed out upwards from ``IOVA_BASE`` (never reused: the space is
2^40 bytes, far more than any test maps), and translate page-granularly back
to CPU physical addresses.  A device access to an IOVA that is not mapped is
an IOMMU fault.
"""

from __future__ import annotations

import bisect
import threading
from dataclasses import dataclass

from p2pdma.emu.constants import IOVA_BASE, IOVA_LIMIT, PAGE_MASK, PAGE_SIZE, page_align_up
from p2pdma.errors import kerr


@dataclass(frozen=True)
class IovaRange:
    iova: int  # page aligned
    size: int  # page multiple
    phys: int  # page aligned CPU physical address it translates to


class IommuDomain:
    def __init__(self, name: str) -> None:
        self.name = name
        self._next = IOVA_BASE
        self._starts: list[int] = []
        self._ranges: list[IovaRange] = []
        self._lock = threading.Lock()  # leaf
        self._linked: dict[int, list[int]] = {}  # first page of a linked range -> all pages

    def map(self, phys: int, size: int) -> int:
        """Map ``[phys, phys+size)``; returns the IOVA of ``phys`` (same page offset)."""
        base = phys & PAGE_MASK
        span = page_align_up(phys + size) - base
        with self._lock:
            iova = self._next
            if iova + span > IOVA_LIMIT:
                raise kerr("ENOMEM", "IOVA space exhausted", where=self.name)
            self._next += span
            self._starts.append(iova)
            self._ranges.append(IovaRange(iova, span, base))
        return iova + (phys - base)

    def map_ranges(self, ranges: list[tuple[int, int]]) -> int:
        """One contiguous IOVA range linking several physical ranges (dma_iova_link)."""
        total = sum(page_align_up(p + n) - (p & PAGE_MASK) for p, n in ranges)
        with self._lock:
            start = self._next
            if start + total > IOVA_LIMIT:
                raise kerr("ENOMEM", "IOVA space exhausted", where=self.name)
            self._next += total
            at = start
            self._linked[start] = []
            for p, n in ranges:
                base = p & PAGE_MASK
                span = page_align_up(p + n) - base
                self._starts.append(at)
                self._ranges.append(IovaRange(at, span, base))
                self._linked[start].append(at)
                at += span
        return start + (ranges[0][0] & ~PAGE_MASK if ranges else 0)

    def unmap(self, iova: int) -> None:
        """Unmap the range that starts at ``iova``'s page; an unknown IOVA is a driver bug."""
        page = iova & PAGE_MASK
        with self._lock:
            for start in self._linked.pop(page, [page]):
                i = bisect.bisect_left(self._starts, start)
                if i == len(self._starts) or self._starts[i] != start:
                    raise kerr("EINVAL", f"unmap of IOVA {iova:#x} that is not mapped",
                               where=self.name)
                del self._starts[i]
                del self._ranges[i]

    def translate(self, iova: int) -> tuple[int, int]:
        """(CPU physical address, bytes left in that mapping) for ``iova``."""
        with self._lock:
            i = bisect.bisect_right(self._starts, iova) - 1
            r = self._ranges[i] if i >= 0 else None
        if r is None or not r.iova <= iova < r.iova + r.size:
            raise kerr("EFAULT", f"IOMMU fault: IOVA {iova:#x} is not mapped", where=self.name,
                       hint="the device used a DMA address nobody mapped for it")
        return r.phys + (iova - r.iova), r.iova + r.size - iova

    def mapped_bytes(self) -> int:
        with self._lock:
            return sum(r.size for r in self._ranges)


__all__ = ["PAGE_SIZE", "IommuDomain", "IovaRange"]
