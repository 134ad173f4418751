"""The DMA engine: real bytes, per-link accounting along the kernel's route, refusals."""

from __future__ import annotations

import zlib

import pytest
from devrig import Rig, build_rig

from p2pdma.emu.devices import NvmeController
from p2pdma.emu.dma_engine import DmaEngine
from p2pdma.emu.machine import Machine
from p2pdma.errors import KernelError
from p2pdma.fabric.bdf import Bdf
from p2pdma.fabric.model import Fabric, IommuMode
from p2pdma.perf import Direction, LinkId

MiB = 1 << 20


def _link(fabric: Fabric, bdf: Bdf) -> LinkId:
    """The link above ``bdf``."""
    parent = fabric.get(bdf).parent
    assert parent is not None
    return LinkId(bdf, parent)


def test_bus_addr_write_crosses_only_the_two_device_links(rig: Rig, machine: Machine) -> None:
    eng = DmaEngine(machine)
    NvmeController(machine, rig.cmb, eng).probe()
    kva = machine.alloc(rig.cmb, MiB)
    assert kva is not None
    mp = machine.dma.map_phys(rig.nic, machine.kva_to_phys(kva), MiB)
    assert mp.kind.value == "bus"  # the kernel said BUS_ADDR: ACS is off under the switch
    data = bytes(range(256)) * 4096
    eng.write(rig.nic, mp.dma_addr, data)
    assert machine.memory.read_virt(kva, MiB) == data  # the bytes are in the CMB's memory
    t = eng.traffic
    assert t.link_bytes(_link(rig.fabric, rig.nic), Direction.UP) == MiB
    assert t.link_bytes(_link(rig.fabric, rig.cmb), Direction.DOWN) == MiB
    assert len(t.links) == 2 and t.host_memory_bytes == 0 and not t.root_complexes
    assert t.by_map_type == {"BUS_ADDR": MiB}
    # The device reads it back (completions flow the other way).
    assert eng.read(rig.nic, mp.dma_addr + 4096, 16) == data[4096:4112]
    assert t.link_bytes(_link(rig.fabric, rig.cmb), Direction.UP) == 16


def test_acs_redirect_goes_through_the_root_complex() -> None:
    rig = build_rig(acs_ctrl=0x001D)  # SV|RR|CR|UF on the downstream ports
    m = Machine(rig.fabric, ram_size=16 << 20)
    try:
        eng = DmaEngine(m)
        NvmeController(m, rig.cmb, eng).probe()
        kva = m.alloc(rig.cmb, 8192)
        assert kva is not None
        mp = m.dma.map_phys(rig.nic, m.kva_to_phys(kva), 8192)
        eng.write(rig.nic, mp.dma_addr, b"z" * 8192)
        dsp = rig.fabric.get(rig.nic).parent
        assert dsp is not None
        usp = rig.fabric.get(dsp).parent
        assert usp is not None
        t = eng.traffic
        assert t.by_map_type == {"THRU_HOST_BRIDGE": 8192}
        assert t.link_bytes(_link(rig.fabric, usp), Direction.UP) == 8192
        assert t.link_bytes(_link(rig.fabric, usp), Direction.DOWN) == 8192
        assert t.root_complexes == {"pci0000:00": 8192}
    finally:
        m.close()


def test_host_memory_access_counts_host_traffic(rig: Rig, machine: Machine) -> None:
    eng = DmaEngine(machine)
    phys = machine.alloc_ram(MiB)
    mp = machine.dma.map_phys(rig.nvme, phys, MiB)
    eng.write(rig.nvme, mp.dma_addr, b"a" * MiB)
    eng.read(rig.nvme, mp.dma_addr, MiB)
    t = eng.traffic
    assert (t.host_memory_written, t.host_memory_read) == (MiB, MiB)
    nvme_link = _link(rig.fabric, rig.nvme)
    assert t.link_bytes(nvme_link, Direction.UP) == MiB
    assert t.link_bytes(nvme_link, Direction.DOWN) == MiB
    assert machine.memory.read_phys(phys, 4) == b"aaaa"


def test_refuses_what_the_kernel_refuses_with_eremoteio() -> None:
    # Host bridge 8086:4c43 (desktop) is not whitelisted and the CPU rule does not
    # apply to it: P2P between the two root ports is NOT_SUPPORTED.
    rig = build_rig(host_bridge=(0x8086, 0x4C43))
    m = Machine(rig.fabric, ram_size=16 << 20)
    try:
        eng = DmaEngine(m)
        NvmeController(m, rig.cmb, eng).probe()
        kva = m.alloc(rig.cmb, 4096)
        assert kva is not None
        # A device that forges the CPU address of the peer BAR: the engine asks the
        # kernel (via the core layer) and refuses, before a byte moves.
        with pytest.raises(KernelError) as e:
            eng.write(rig.far, m.kva_to_phys(kva), b"x" * 4096)
        assert e.value.errno_name == "EREMOTEIO"
        assert m.memory.read_virt(kva, 4) == bytes(4)
        assert eng.traffic.operations == 0
    finally:
        m.close()


def test_iommu_translated_host_buffer(rig: Rig) -> None:
    rig = build_rig(iommu=IommuMode.TRANSLATED)
    m = Machine(rig.fabric, ram_size=16 << 20)
    try:
        eng = DmaEngine(m)
        phys = m.alloc_ram(3 * 4096)
        mp = m.dma.map_phys(rig.nvme, phys + 100, 8000)
        assert mp.kind.value == "iova" and mp.dma_addr != phys + 100
        eng.write(rig.nvme, mp.dma_addr, b"q" * 8000)
        assert m.memory.read_phys(phys + 100, 8000) == b"q" * 8000
    finally:
        m.close()


def test_copy_engine_between_two_bars(rig: Rig, machine: Machine) -> None:
    from p2pdma.emu.devices import Gpu

    eng = DmaEngine(machine)
    NvmeController(machine, rig.cmb, eng).probe()
    gpu = Gpu(machine, rig.gpu, eng, size=4 * MiB)
    a = machine.alloc(rig.cmb, 65536)
    g = machine.alloc(rig.gpu, 65536)
    assert a is not None and g is not None
    machine.memory.write_virt(a, b"\x01\x02" * 32768)
    src = machine.dma.map_phys(rig.gpu, machine.kva_to_phys(a), 65536)
    dst = machine.virt_to_bus(rig.gpu, g)
    eng.copy(rig.gpu, src.dma_addr, dst, 65536)
    assert machine.memory.read_virt(g, 65536) == b"\x01\x02" * 32768
    gpu.transform(g, 65536)  # bitwise NOT in the GPU's own memory
    assert machine.memory.read_virt(g, 4) == b"\xfe\xfd\xfe\xfd"
    assert gpu.checksum(g, 65536) == zlib.crc32(b"\xfe\xfd" * 32768)
    with pytest.raises(KernelError) as e:  # a GPU kernel cannot touch a peer's memory
        gpu.checksum(a, 4096)
    assert e.value.errno_name == "EFAULT"
    # The GPU touching its own memory crosses no link.
    assert eng.traffic.by_map_type["INTERNAL"] == 3 * 65536

