"""An emulated GPU: a large-BAR P2PDMA provider with "kernels" that touch its memory.

The GPU registers (a window of) its largest memory BAR as p2pmem and publishes
it, as a GPU driver exposing device memory to P2P would.  Its kernels run on
the BAR's real bytes as the GPU itself, addressed by the driver's kernel
address (an internal access: no DMA mapping, no link), at C speed (zlib,
bytes.translate).
"""

from __future__ import annotations

import zlib
from typing import TYPE_CHECKING

from p2pdma.emu.constants import SUBSECTION_SIZE
from p2pdma.errors import kerr
from p2pdma.fabric.bdf import Bdf

if TYPE_CHECKING:
    from p2pdma.emu.dma_engine import DmaEngine
    from p2pdma.emu.machine import Machine

INVERT = bytes(255 - i for i in range(256))  # a byte-wise "kernel": bitwise NOT


class Gpu:
    def __init__(self, machine: Machine, bdf: Bdf, engine: DmaEngine, *,
                 bar: int | None = None, size: int = 0, publish: bool = True) -> None:
        self.m = machine
        self.bdf = bdf
        self.engine = engine
        func = machine.fabric.get(bdf)
        bars = [b for b in func.bars if b.is_memory]
        if not bars:
            raise kerr("ENODEV", "GPU has no memory BAR", where=str(bdf))
        chosen = max(bars, key=lambda b: b.size) if bar is None else func.bar(bar)
        if chosen is None:
            raise kerr("EINVAL", f"GPU has no BAR{bar}", where=str(bdf))
        self.bar = chosen.index
        # Register a 2 MiB multiple (the hotplug subsection), at most the BAR.
        want = size or chosen.size
        want = min(want, chosen.size) // SUBSECTION_SIZE * SUBSECTION_SIZE
        self.resource = machine.add_resource(bdf, self.bar, want, 0)
        if publish:
            machine.publish(bdf, True)

    def copy_in(self, src_dma: int, kva: int, length: int) -> None:
        """The GPU's copy engine pulls ``length`` bytes from ``src_dma`` (mapped for the
        GPU) into its own memory at ``kva``."""
        self.engine.copy(self.bdf, src_dma, kva, length, dst_local=True)

    def checksum(self, kva: int, length: int, crc: int = 0) -> int:
        """A reduction kernel: CRC-32 of a buffer in this GPU's memory (continuing ``crc``).
        ``kva`` is the driver's address of the buffer (from the GPU's p2pmem)."""
        with self.engine.access(self.bdf, kva, length, to_memory=False, local=True) as views:
            for v in views:
                crc = zlib.crc32(v, crc)
        return crc

    def transform(self, kva: int, length: int, table: bytes = INVERT) -> None:
        """A map kernel: every byte through ``table`` (256 entries), in place."""
        if len(table) != 256:
            raise kerr("EINVAL", "a byte map needs 256 entries", where=str(self.bdf))
        with self.engine.access(self.bdf, kva, length, to_memory=True, local=True) as views:
            for v in views:
                v[:] = bytes(v).translate(table)
