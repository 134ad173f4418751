"""An importer maps an exporter's VMA peer-to-peer and is invalidated (spec §8.1).

A GPU driver exports part of its 64 GiB BAR through a VMA; an RDMA NIC imports
it (the exporter asks the kernel layer whether the NIC may reach it and fills
DMA addresses).  The GPU migrates a page: the importer's invalidation callback
unmaps, and it maps again.  Finally the GPU is unplugged: invalidated for good.

    python examples/vma_importer.py
"""

from __future__ import annotations

from p2pdma.emu import Importer, Machine, VmaExporter
from p2pdma.errors import KernelError
from p2pdma.samples import load_sample


def main() -> None:
    m = Machine(load_sample("xeon-2s"))
    gpu = m.fabric.by_vendor_device(0x10DE, 0x20B5)[0].bdf
    nic = m.fabric.by_vendor_device(0x15B3, 0x101B)[0].bdf

    exporter = VmaExporter(m, gpu, bar=1, offset=0, length=64 << 20)
    vma = exporter.mmap()
    m.memory.write_phys(exporter.phys_start, b"tensor shard 0")

    importer = Importer(m, nic, on_invalidate=lambda s, e: print(
        f"  importer {nic}: invalidated {s:#x}-{e:#x}, unmapped"))
    addr = importer.map(vma, 0, 2 << 20)
    print(f"{nic} imported 2 MiB of {gpu} BAR1 at DMA {addr:#x}: "
          f"{importer.read(addr, 14)!r}")

    print("GPU migrates the first page:")
    vma.invalidate(0, 4096)
    addr = importer.map(vma, 0, 2 << 20)
    print(f"  re-mapped at {addr:#x}: {importer.read(addr, 14)!r}")

    print("GPU unplugged:")
    importer.unmap(vma, 0, 2 << 20)
    importer.map(vma, 0, 4096)
    m.remove_device(gpu, timeout=2.0)
    try:
        vma.p2p_map(nic, 0, 4096)
    except KernelError as e:
        print("  map after removal ->", str(e).splitlines()[0])
    print(f"  invalidations seen by the importer: {importer.invalidations}")
    m.close()


if __name__ == "__main__":
    main()
