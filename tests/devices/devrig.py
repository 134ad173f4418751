"""Small fabrics for the device, engine and orchestrator tests (imported by conftest)."""

from __future__ import annotations

from dataclasses import dataclass

from p2pdma.fabric.bdf import Bdf
from p2pdma.fabric.builder import FabricBuilder
from p2pdma.fabric.model import Fabric, HostContext, IommuMode, Link

GEN4_X4 = Link(16.0, 4, 16.0, 4)
GEN4_X16 = Link(16.0, 16, 16.0, 16)


@dataclass
class Rig:
    fabric: Fabric
    nic: Bdf
    nvme: Bdf  # no CMB: the namespace
    cmb: Bdf  # NVMe with a 64 MiB CMB: the provider
    gpu: Bdf
    far: Bdf  # an NVMe on another root port (no CMB)
    far_nic: Bdf  # a NIC on a third root port


def build_rig(*, iommu: IommuMode = IommuMode.OFF, acs_ctrl: int = 0,
              host_bridge: tuple[int, int] = (0x8086, 0x09A2)) -> Rig:
    """One switch below a root port with a NIC, an NVMe, an NVMe with a CMB and a GPU;
    a second root port with another NVMe.  ACS off by default: P2P under the switch
    is BUS_ADDR."""
    b = FabricBuilder(HostContext(kernel_release="6.12.0", arch="x86_64",
                                  cpu_vendor="GenuineIntel", cpu_family=6, cpu_model=106,
                                  iommu=iommu, p2pdma_config=True, privileged=True))
    hb = b.host_bridge(first=host_bridge)
    rp = b.root_port(hb, link=GEN4_X16)
    _usp, dsps = b.switch(rp, ports=4, link=GEN4_X16, acs_ctrl=acs_ctrl)
    nic = b.endpoint(dsps[0], vendor=0x15B3, device=0x101B, class_code=0x020000,
                     bars=[(0, 32 << 20)], driver="mlx5_core", link=GEN4_X16)
    nvme = b.nvme(dsps[1], link=GEN4_X4)
    cmb = b.nvme(dsps[2], cmb_size=64 << 20, link=GEN4_X4, sq_in_cmb=128 << 10)
    gpu = b.endpoint(dsps[3], vendor=0x10DE, device=0x20B5, class_code=0x030200,
                     bars=[(0, 16 << 20), (1, 1 << 30)], driver="nvidia", link=GEN4_X16)
    rp2 = b.root_port(hb, link=GEN4_X4)
    far = b.nvme(rp2, link=GEN4_X4)
    rp3 = b.root_port(hb, link=GEN4_X16)
    far_nic = b.endpoint(rp3, vendor=0x15B3, device=0x101B, class_code=0x020000,
                         bars=[(0, 32 << 20)], driver="mlx5_core", link=GEN4_X16)
    return Rig(b.build(), nic, nvme, cmb, gpu, far, far_nic)
