"""The sysfs ``p2pmem/allocate`` file and its mmap (spec §6.1-6.4).

Each mmap allocates fresh pages (one contiguous range of one chunk) and maps
them into a :class:`~p2pdma.emu.vma.Vma` that is a real MAP_SHARED mapping of
the BAR's memfd.  Pages go back one at a time as the VMA is unmapped.  When
the device goes away the file is removed and every VMA of it is zapped.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from p2pdma.emu import messages
from p2pdma.emu.alloc import HOLDER_MMAP_TEMP, _as_resource
from p2pdma.emu.constants import PAGE_SIZE, SZ_1T, page_align_up
from p2pdma.emu.memory import virt_to_phys
from p2pdma.emu.vma import VM_MAYSHARE, VM_READ, VM_SHARED, VM_WRITE, Vma, insert_p2p_pages
from p2pdma.errors import kerr
from p2pdma.fabric.bdf import Bdf

if TYPE_CHECKING:
    from p2pdma.emu.alloc import Resource
    from p2pdma.emu.machine import Machine

MAP_SHARED = 0x01
MAP_PRIVATE = 0x02


class AllocateFile:
    """An open file descriptor of ``/sys/bus/pci/devices/<bdf>/p2pmem/allocate``."""

    def __init__(self, machine: Machine, bdf: Bdf) -> None:
        self.m = machine
        self.bdf = bdf
        self.path = f"/sys/bus/pci/devices/{bdf}/p2pmem/allocate"
        self.size = SZ_1T  # what stat() reports, so mmap length checks pass
        self.mode = 0o660

    def read(self, n: int = 4096) -> bytes:
        raise kerr("EIO", "read() is not supported on the allocate file", where=self.path,
                   hint="mmap it with MAP_SHARED instead")

    def mmap(self, length: int, flags: int = MAP_SHARED, offset: int = 0,
             comm: str = "python") -> Vma:
        """``p2pmem_alloc_mmap``: checks in the kernel's order (§6.2)."""
        if length <= 0:
            raise kerr("EINVAL", "mmap of zero length", where=self.path)
        length = page_align_up(length)
        dev = self.m.find_device(self.bdf)
        prefix_dev = dev
        if not flags & MAP_SHARED:
            if prefix_dev is not None:
                self.m.dmesg.log(prefix_dev.log_line(messages.I2_PRIVATE.format(comm=comm)))
            raise kerr("EINVAL", "private mapping of p2pmem", where=self.path,
                       hint="map it with MAP_SHARED")
        if offset != 0:
            if prefix_dev is not None:
                self.m.dmesg.log(prefix_dev.log_line(messages.I3_OFFSET.format(comm=comm)))
            raise kerr("EINVAL", f"mapping at file offset {offset:#x}", where=self.path,
                       hint="map at offset 0; every mmap gets fresh memory")
        if dev is None:
            raise kerr("ENODEV", "the provider is gone", where=self.path)
        with dev.rcu:
            state = dev.p2pdma
            if state is None or state.pool is None or not state.allocate_file:
                raise kerr("ENODEV", "the provider's p2pmem is gone", where=self.path,
                           hint="the device was removed or unbound")
            a = state.pool.alloc_owner(length)
            if a is None:
                raise kerr("ENOMEM", f"no single chunk has {length:#x} contiguous free bytes",
                           where=self.path, hint=f"available: {state.pool.avail():#x} bytes; "
                           "map less, or unmap other buffers")
            res: Resource = _as_resource(a.owner)
            # The temporary ref of step 5, taken inside the read section.
            if not res.ref.tryget_live(HOLDER_MMAP_TEMP):
                state.pool.free(a.addr, a.size)
                raise kerr("ENODEV", "the provider is being removed", where=self.path)
        backing = dev.backings[res.bar]
        phys = virt_to_phys(a.addr)
        vma = Vma(f"{self.path}@{phys:#x}", length // PAGE_SIZE,
                  VM_SHARED | VM_MAYSHARE | VM_READ | VM_WRITE, backing=backing,
                  backing_offset=res.offset + (phys - res.phys_start))
        kvas = [a.addr + i * PAGE_SIZE for i in range(length // PAGE_SIZE)]
        try:
            insert_p2p_pages(vma, res, 0, kvas, insert_hook=self.m.insert_hook)
        except BaseException:
            vma.munmap()  # the mmap core tears the VMA down: inserted pages freed normally
            raise
        finally:
            res.ref.put(HOLDER_MMAP_TEMP)
        with dev.lock:
            if dev.p2pdma is not state or not state.allocate_file:
                # Removed while we were inserting: zap right away, as kernfs would.
                vma.zap("device removed during mmap")
                raise kerr("ENODEV", "the provider's p2pmem is gone", where=self.path)
            state.user_vmas.add(vma)
            vmas = state.user_vmas
            vma.on_empty = vmas.discard  # fully unmapped: nothing left to zap
        return vma
