"""VFIO-style dma-buf export with revocation (§7.3), VMA exporter/importer (§8.1),
and the insertion helper for drivers with their own BAR allocator."""

from __future__ import annotations

import pytest

from p2pdma.emu import (
    DmaBufAttachment,
    Importer,
    Machine,
    SigBus,
    Vma,
    VmaExporter,
    insert_p2p_pages,
    vfio_dmabuf_export,
)
from p2pdma.emu.constants import PAGE_SIZE
from p2pdma.emu.vma import VM_DONTCOPY, VM_MAYSHARE, VM_MIXEDMAP, VM_SHARED
from p2pdma.errors import KernelError
from p2pdma.fabric.model import ACS_CR, ACS_RR

from .conftest import MiB, Topo, cmb_machine, make_topo


def errno(fn: object, *a: object, **kw: object) -> str:
    with pytest.raises(KernelError) as e:
        fn(*a, **kw)  # type: ignore[operator]
    return e.value.errno_name


def test_vfio_export_validation(machine: Machine, topo: Topo) -> None:
    g = topo.gpu
    assert errno(vfio_dmabuf_export, machine, g, 0, [(0, PAGE_SIZE)],
                 has_get_dmabuf_phys=False) == "EOPNOTSUPP"
    assert errno(vfio_dmabuf_export, machine, g, 0, []) == "EINVAL"
    assert errno(vfio_dmabuf_export, machine, g, 0, [(0, PAGE_SIZE)], flags=1) == "EINVAL"
    assert errno(vfio_dmabuf_export, machine, g, 6, [(0, PAGE_SIZE)]) == "ENODEV"
    assert errno(vfio_dmabuf_export, machine, g, 0, [(0, 0)]) == "EINVAL"
    assert errno(vfio_dmabuf_export, machine, g, 0, [(100, PAGE_SIZE)]) == "EINVAL"
    assert errno(vfio_dmabuf_export, machine, g, 0, [(1 << 63, 1 << 63)]) == "EINVAL"
    assert errno(vfio_dmabuf_export, machine, g, 2, [(0, PAGE_SIZE)]) == "EINVAL"  # no BAR2
    assert errno(vfio_dmabuf_export, machine, g, 0, [(16 * MiB, PAGE_SIZE)]) == "EINVAL"
    assert errno(vfio_dmabuf_export, machine, g, 0,
                 [((1 << 64) - PAGE_SIZE, 2 * PAGE_SIZE)]) == "EOVERFLOW"
    buf = vfio_dmabuf_export(machine, g, 1, [(0, MiB), (4 * MiB, MiB)])
    assert buf.size == 2 * MiB and not buf.revoked


def test_dmabuf_attach_map_revoke_on_reset_and_removal(machine: Machine, topo: Topo) -> None:
    buf = vfio_dmabuf_export(machine, topo.gpu, 1, [(0, MiB)])
    assert errno(buf.attach, topo.nvme, peer2peer=False) == "EOPNOTSUPP"
    notes: list[str] = []

    def move_notify(att: DmaBufAttachment) -> None:
        notes.append("revoked" if att.buf.revoked else "restored")
        for sgt in list(att.mapped):
            att.unmap(sgt)

    att = buf.attach(topo.gpu, peer2peer=True, move_notify=move_notify)
    sgt = att.map()
    bar = machine.device(topo.gpu).function.bar(1)
    assert bar is not None and sgt.entries[0].dma_address == bar.bus_address
    machine.reset_device(topo.gpu)
    assert notes == ["revoked", "restored"] and att.mapped == []
    machine.set_memory_decoding(topo.gpu, False)
    assert errno(att.map) == "ENODEV"
    assert errno(buf.attach, topo.gpu, peer2peer=True) == "ENODEV"
    machine.set_memory_decoding(topo.gpu, True)
    att.map()
    machine.remove_device(topo.gpu, timeout=1)
    assert buf.dead and buf.revoked and att.mapped == [] and buf.violations == []
    assert errno(att.map) == "ENODEV"


def test_dmabuf_starts_revoked_without_memory_decoding(machine: Machine, topo: Topo) -> None:
    machine.set_memory_decoding(topo.gpu, False)
    buf = vfio_dmabuf_export(machine, topo.gpu, 1, [(0, MiB)])
    assert buf.revoked


def test_exporter_importer_invalidation_and_stable_answers(topo: Topo) -> None:
    m = Machine(topo.fabric)
    exp = VmaExporter(m, topo.nvme, 2, 0, 8 * MiB)
    vma = exp.mmap()
    seen: list[tuple[int, int]] = []
    imp = Importer(m, topo.nic, on_invalidate=lambda s, e: seen.append((s, e)))
    m.memory.write_phys(exp.phys_start + PAGE_SIZE, b"exported")
    addr = imp.map(vma, PAGE_SIZE, 2 * PAGE_SIZE)
    assert imp.read(addr, 8) == b"exported"
    # ACS turned on under the pair: the cached decision keeps the mapping working.
    m.set_acs_control(topo.dsp1, ACS_RR | ACS_CR)
    assert imp.map(vma, 0, PAGE_SIZE) == exp.provider.bus_addr_map(exp.phys_start)
    vma.invalidate(0, PAGE_SIZE)  # the exporter moves page 0: importer must unmap
    assert seen == [(0, PAGE_SIZE)] and vma.live_mappings(topo.nic) == 1  # the other range
    # A forgetful importer (no unmap in its callback) is caught.
    vma.p2p_map(topo.gpu, 0, PAGE_SIZE)
    vma.register_notifier(topo.gpu, lambda v, s, e: None)
    with pytest.raises(KernelError, match="survived invalidation"):
        vma.invalidate(0, PAGE_SIZE)
    vma.p2p_unmap(topo.gpu, 0, PAGE_SIZE)
    # Removal of the exporter invalidates for good.
    imp.map(vma, 0, PAGE_SIZE)
    m.remove_device(topo.nvme, timeout=1)
    assert not vma.valid and vma.live_mappings() == 0
    assert errno(vma.p2p_map, topo.nic, 0, PAGE_SIZE) == "ENODEV"


def test_exporter_refuses_unreachable_importer() -> None:
    t = make_topo(host_bridge=(0x8086, 0x4C43))
    m = Machine(t.fabric)
    vma = VmaExporter(m, t.nvme, 2, 0, MiB).mmap()
    assert errno(vma.p2p_map, t.gpu, 0, PAGE_SIZE) == "EREMOTEIO"


def test_insert_helper_for_own_bar_allocator(topo: Topo) -> None:
    """An RDMA-style driver hands out pages from its own allocator (raw pool pages, as the
    allocate mmap does); from then on each page lives and dies with its mapping."""
    m = cmb_machine(topo)
    res = m.device(topo.nvme).p2pdma.resources[0]  # type: ignore[union-attr]
    kvas = [res.pool.alloc(PAGE_SIZE) for _ in range(3)]
    private = Vma("rdma-uar", 3, 0)
    assert errno(insert_p2p_pages, private, res, 0, kvas) == "EINVAL"
    vma = Vma("rdma-uar", 3, VM_SHARED | VM_MAYSHARE,
              backing_of=lambda r: m.device(r.device).backings[r.bar])
    insert_p2p_pages(vma, res, 0, [k for k in kvas if k])
    assert vma.flags & VM_MIXEDMAP and vma.flags & VM_DONTCOPY and vma.decrypted
    assert res.ref.count == 3 and res.pages_in_use() == 3
    vma.write(PAGE_SIZE - 2, b"xyzw")  # crosses pages that are not one mapping
    assert m.memory.read_virt(kvas[1], 2) == b"zw"
    vma.zap("driver close")
    with pytest.raises(SigBus):
        vma.read(0, 1)
    assert res.ref.count == 0 and res.pages_in_use() == 0
    assert int(m.sysfs_read(topo.nvme, "available")) == 64 * MiB


def test_vfio_export_needs_the_6_19_provider_core() -> None:
    t = make_topo(release="6.12")
    m = Machine(t.fabric)
    assert errno(vfio_dmabuf_export, m, t.gpu, 1, [(0, PAGE_SIZE)]) == "EOPNOTSUPP"


def test_insert_into_an_occupied_slot_is_ebusy(topo: Topo) -> None:
    m = cmb_machine(topo)
    res = m.device(topo.nvme).p2pdma.resources[0]  # type: ignore[union-attr]
    vma = Vma("drv", 2, VM_SHARED | VM_MAYSHARE)
    insert_p2p_pages(vma, res, 0, [res.pool.alloc(PAGE_SIZE)])
    assert errno(insert_p2p_pages, vma, res, 0, [res.pool.alloc(PAGE_SIZE)]) == "EBUSY"
    assert res.pages_in_use() == 1 and res.ref.count == 1  # the refused page went back
    assert int(m.sysfs_read(topo.nvme, "available")) == 64 * MiB - PAGE_SIZE
    vma.munmap()
    assert res.ref.count == 0
