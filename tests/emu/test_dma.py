"""DMA mapping outcomes per map type (§5.2-5.4)."""

from __future__ import annotations

import pytest

from p2pdma.emu import Machine, MapKind, SgTable
from p2pdma.emu.constants import PAGE_SIZE, SG_MAX_SEGMENT
from p2pdma.errors import KernelError
from p2pdma.fabric.model import IommuMode
from p2pdma.kernel import MapType

from .conftest import GiB, MiB, cmb_machine, make_topo


def test_bus_addr_adds_bus_offset_and_bypasses_iommu() -> None:
    t = make_topo(iommu=IommuMode.TRANSLATED, bus_offset=0x4000_0000)
    m = cmb_machine(t)
    kva = m.alloc(t.nvme, 2 * PAGE_SIZE)
    assert kva is not None
    phys = m.kva_to_phys(kva)
    m.memory.write_phys(phys, b"cmb-data")
    mp = m.dma.map_phys(t.nic, phys, 2 * PAGE_SIZE)
    assert mp.kind is MapKind.BUS and mp.map_type is MapType.BUS_ADDR
    assert mp.dma_addr == phys + 0x4000_0000 == m.virt_to_bus(t.nvme, kva)
    assert m.dma_read(t.nic, mp.dma_addr, 8) == b"cmb-data"
    dom = m.iommu_domain(t.nic)
    assert dom is not None and dom.mapped_bytes() == 0  # the IOMMU never saw it
    m.dma.unmap(mp)
    with pytest.raises(KernelError):
        m.dma_read(t.nic, mp.dma_addr, 8)  # no route any more: IOMMU fault


def test_thru_host_bridge_with_iommu_gets_an_iova() -> None:
    t = make_topo(iommu=IommuMode.TRANSLATED)
    m = cmb_machine(t)
    kva = m.alloc(t.nvme, PAGE_SIZE)
    assert kva is not None
    phys = m.kva_to_phys(kva)
    m.memory.write_phys(phys + 8, b"via-rc")
    mp = m.dma.map_phys(t.gpu, phys + 8, 6)  # gpu is on another root port (whitelisted)
    assert mp.map_type is MapType.THRU_HOST_BRIDGE and mp.kind is MapKind.IOVA
    assert mp.dma_addr != phys + 8
    assert m.dma_read(t.gpu, mp.dma_addr, 6) == b"via-rc"
    m.dma_write(t.gpu, mp.dma_addr, b"VIA-RC")
    assert m.memory.read_phys(phys + 8, 6) == b"VIA-RC"
    m.dma.unmap(mp)
    with pytest.raises(KernelError, match="IOMMU fault"):
        m.dma_read(t.gpu, mp.dma_addr, 1)


def test_thru_host_bridge_without_iommu_uses_cpu_address() -> None:
    t = make_topo(iommu=IommuMode.OFF, bus_offset=0x1000_0000)
    m = cmb_machine(t)
    kva = m.alloc(t.nvme, PAGE_SIZE)
    assert kva is not None
    mp = m.dma.map_phys(t.gpu, m.kva_to_phys(kva), PAGE_SIZE)
    assert mp.kind is MapKind.DIRECT and mp.dma_addr == m.kva_to_phys(kva)  # not the bus addr


def test_host_ram_is_map_none() -> None:
    t = make_topo(iommu=IommuMode.TRANSLATED)
    m = Machine(t.fabric)
    phys = m.alloc_ram(3 * PAGE_SIZE)
    mp = m.dma.map_phys(t.nic, phys, 3 * PAGE_SIZE)
    assert mp.map_type is MapType.NONE and mp.kind is MapKind.IOVA
    m.dma_write(t.nic, mp.dma_addr + PAGE_SIZE, b"bounce")
    assert m.memory.read_phys(phys + PAGE_SIZE, 6) == b"bounce"
    m.dma.unmap(mp)
    m.free_ram(phys, 3 * PAGE_SIZE)


def test_not_supported_is_eremoteio_and_map_sg_zero() -> None:
    t = make_topo(host_bridge=(0x8086, 0x4C43))  # not whitelisted: cross-RP fails
    m = cmb_machine(t)
    kva = m.alloc(t.nvme, PAGE_SIZE)
    assert kva is not None
    phys = m.kva_to_phys(kva)
    with pytest.raises(KernelError) as e:
        m.dma.map_phys(t.gpu, phys, PAGE_SIZE)
    assert e.value.errno_name == "EREMOTEIO"
    ram = m.alloc_ram(PAGE_SIZE)
    sgt = SgTable.from_ranges([(ram, PAGE_SIZE), (phys, PAGE_SIZE)])
    assert m.dma.map_sg(t.gpu, sgt) == 0
    with pytest.raises(KernelError) as e:
        m.dma.map_sgtable(t.gpu, sgt)
    assert e.value.errno_name == "EREMOTEIO"
    assert sgt.nents == 0
    # The nic shares the switch: the same table maps, P2P entry as a bus address.
    m.dma.map_sgtable(t.nic, sgt)
    assert sgt.nents == 2
    assert [e.bus_address for e in sgt.entries] == [False, True]
    m.dma.unmap_sgtable(t.nic, sgt)


def test_dma_buf_sgt_bus_addr_splits_at_uint_max_page() -> None:
    t = make_topo(host_bridge=(0x8086, 0x4C43))
    m = Machine(t.fabric)
    m.p2pdma_init(t.gpu)
    prov = m.provider(t.gpu, 1)
    bar = m.device(t.gpu).function.bar(1)
    assert prov is not None and bar is not None
    # The gpu as its own importer: provider == client -> BUS_ADDR, dist 0.
    sgt = m.dma.dma_buf_phys_vec_to_sgt(t.gpu, prov, [(bar.start, 5 * GiB)], 5 * GiB)
    assert [e.dma_length for e in sgt.entries] == [SG_MAX_SEGMENT, 5 * GiB - SG_MAX_SEGMENT]
    assert sgt.entries[1].dma_address == bar.bus_address + SG_MAX_SEGMENT
    assert sgt.orig_nents == 0 and all(e.phys == 0 for e in sgt.entries)
    m.dma.dma_buf_free_sgt(t.gpu, sgt)
    with pytest.raises(KernelError) as e:
        m.dma.dma_buf_phys_vec_to_sgt(t.nic, prov, [(bar.start, MiB)], MiB)
    assert e.value.errno_name == "EINVAL"  # NOT_SUPPORTED -> -EINVAL here


def test_dma_buf_sgt_thru_host_bridge_one_iova_range() -> None:
    t = make_topo(iommu=IommuMode.TRANSLATED)
    m = Machine(t.fabric)
    m.p2pdma_init(t.gpu)
    prov = m.provider(t.gpu, 1)
    bar = m.device(t.gpu).function.bar(1)
    assert prov is not None and bar is not None
    ranges = [(bar.start + 8 * PAGE_SIZE, PAGE_SIZE), (bar.start, 2 * PAGE_SIZE)]
    m.memory.write_phys(bar.start + 8 * PAGE_SIZE, b"A" * PAGE_SIZE)
    m.memory.write_phys(bar.start, b"B")
    sgt = m.dma.dma_buf_phys_vec_to_sgt(t.nvme, prov, ranges, 3 * PAGE_SIZE)
    assert len(sgt.entries) == 1 and sgt.entries[0].dma_length == 3 * PAGE_SIZE
    iova = sgt.entries[0].dma_address
    assert m.dma_read(t.nvme, iova + PAGE_SIZE - 1, 2) == b"AB"  # contiguous for the device
    m.dma.dma_buf_free_sgt(t.nvme, sgt)
    dom = m.iommu_domain(t.nvme)
    assert dom is not None and dom.mapped_bytes() == 0


def test_pre_6_0_cache_only_lookup_and_old_bus_offset_sign() -> None:
    """v5.14: mapping fails until a distance was computed (§5.6); offset subtracted (§5.2)."""
    t = make_topo(bus_offset=0x1000_0000, release="5.15")
    m = cmb_machine(t)
    kva = m.alloc(t.nvme, PAGE_SIZE)
    assert kva is not None
    phys = m.kva_to_phys(kva)
    with pytest.raises(KernelError) as e:
        m.dma.map_phys(t.nic, phys, PAGE_SIZE)
    assert e.value.errno_name == "EREMOTEIO" and "UNKNOWN" in str(e.value)
    assert m.distance(t.nvme, t.nic) == 4  # fills the cache
    mp = m.dma.map_phys(t.nic, phys, PAGE_SIZE)
    assert mp.dma_addr == phys - 0x1000_0000


def test_no_allocate_file_before_6_2() -> None:
    t = make_topo(release="6.1")
    m = cmb_machine(t)
    assert m.alloc_layer.sysfs_files(t.nvme) == ["available", "published", "size"]
    with pytest.raises(KernelError) as e:
        m.open_allocate(t.nvme)
    assert e.value.errno_name == "ENOENT"
