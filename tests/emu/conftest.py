"""Fabrics and machines for the emulator tests (real kernel layer underneath)."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from dataclasses import dataclass

import pytest

from p2pdma.emu import Machine
from p2pdma.fabric.bdf import Bdf
from p2pdma.fabric.builder import FabricBuilder
from p2pdma.fabric.model import Fabric, HostContext, IommuMode

MiB = 1 << 20
GiB = 1 << 30


@dataclass
class Topo:
    fabric: Fabric
    nvme: Bdf  # CMB in BAR 2 (64 MiB), below switch port 0
    nic: Bdf  # below switch port 1 (same switch as nvme)
    gpu: Bdf  # own root port: BAR 1 is 8 GiB
    dsp0: Bdf
    dsp1: Bdf
    rp1: Bdf


def make_topo(*, iommu: IommuMode = IommuMode.OFF, host_bridge: tuple[int, int] = (0x8086, 0x09A2),
              switch_acs: int = 0, bus_offset: int = 0, config: bool | None = True,
              release: str | None = "7.2") -> Topo:
    b = FabricBuilder(HostContext(kernel_release=release, arch="x86_64",
                                  cpu_vendor="GenuineIntel", cpu_family=6, iommu=iommu,
                                  p2pdma_config=config), origin="test")
    b.assign_iommu_groups = True
    hb = b.host_bridge(first=host_bridge)
    rp1 = b.root_port(hb)
    _usp, dsps = b.switch(rp1, ports=2, acs_ctrl=switch_acs)
    nvme = b.nvme(dsps[0], cmb_size=64 * MiB, cmb_bar=2)
    nic = b.endpoint(dsps[1], vendor=0x15B3, device=0x101B, class_code=0x020000,
                     bars=[(0, 32 * MiB)], driver="mlx5_core")
    rp2 = b.root_port(hb)
    gpu = b.endpoint(rp2, vendor=0x10DE, device=0x20B5, class_code=0x030200,
                     bars=[(0, 16 * MiB), (1, 8 * GiB)], driver="nvidia")
    fabric = b.build()
    if bus_offset:
        f = fabric.get(nvme)
        bars = tuple(dataclasses.replace(x, bus_start=x.start + bus_offset) for x in f.bars)
        fabric = fabric.replace_function(nvme, bars=bars)
    return Topo(fabric, nvme, nic, gpu, dsps[0], dsps[1], rp1)


@pytest.fixture
def topo() -> Topo:
    return make_topo()


@pytest.fixture
def machine(topo: Topo) -> Iterator[Machine]:
    m = Machine(topo.fabric)
    yield m
    m.close()


def cmb_machine(topo: Topo, **kw: object) -> Machine:
    """A machine whose NVMe registered and published its whole 64 MiB CMB."""
    m = Machine(topo.fabric, **kw)  # type: ignore[arg-type]
    m.add_resource(topo.nvme, 2)
    m.publish(topo.nvme)
    return m
