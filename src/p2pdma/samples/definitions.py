"""How the bundled samples are built.  ``python -m p2pdma.samples.definitions`` rewrites
the TOML files next to this module.

IDs are those of real parts (Intel Ice Lake-SP root complex 8086:09a2 and root
port 8086:347a, Broadcom PEX880xx 1000:c010, Eideticom NoLoad 1de5:3000 with a
CMB, Samsung PM1733 144d:a824, Mellanox ConnectX-6 15b3:101b, NVIDIA A100
10de:20b5, AMD Genoa 1022:14a4/14ab, Intel Rocket Lake 8086:4c43, QEMU devices
1b36:000c/0010 and TI XIO3130 104c:8232/8233 as QEMU emulates them).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from p2pdma.fabric.builder import FabricBuilder
from p2pdma.fabric.model import Fabric, HostContext, IommuMode, Link, PortType

GEN4_X16 = Link(16.0, 16, 16.0, 16)
GEN4_X4 = Link(16.0, 4, 16.0, 4)
GEN3_X4 = Link(8.0, 4, 8.0, 4)
IOMMU_ACS = 0x001D  # SV|RR|CR|UF: what Linux sets on ACS-capable ports with an IOMMU


def xeon_2s() -> Fabric:
    # Socket 1's switch ports had ACS redirect turned off on the command line (6.12
    # semantics, spec §13.2: the firmware value with RR|CR|EC cleared -> 0x0000).
    cmdline = "intel_iommu=on pci=disable_acs_redir=0000:82:00.0;0000:82:01.0"
    b = FabricBuilder(HostContext(kernel_release="6.12.48", cmdline=cmdline,
                                  arch="x86_64", cpu_vendor="GenuineIntel", cpu_family=6,
                                  cpu_model=106, iommu=IommuMode.TRANSLATED,
                                  iommu_driver="dmar", p2pdma_config=True, privileged=True),
                      origin="sample:xeon-2s")
    b.assign_iommu_groups = True
    icx = (0x8086, 0x09A2)
    b.host_bridge(bus=0x00, first=icx, numa_node=0)
    for socket, bus in ((0, 0x16), (0, 0x30), (1, 0x80)):
        hb = b.host_bridge(bus=bus, first=icx, numa_node=socket)
        rp = b.root_port(hb, dev=2, device=0x347A, acs_ctrl=IOMMU_ACS, link=GEN4_X16,
                         numa_node=socket)
        if bus == 0x30:
            b.nvme(rp, vendor=0x144D, device=0xA824, cmb_size=0, link=GEN4_X4, numa_node=socket)
            continue
        _usp, dsps = b.switch(rp, ports=4 if bus == 0x16 else 2, vendor=0x1000, device=0xC010,
                             acs_ctrl=IOMMU_ACS if bus == 0x16 else 0, link=GEN4_X16)
        b.nvme(dsps[0], vendor=0x1DE5, device=0x3000, cmb_size=256 << 20, cmb_bar=4,
               sq_in_cmb=128 << 10, link=GEN4_X4, numa_node=socket)
        nic_port = dsps[1]
        if bus == 0x16:
            b.nvme(dsps[1], vendor=0x144D, device=0xA824, link=GEN4_X4, numa_node=socket)
            nic_port = dsps[2]
            b.endpoint(dsps[3], vendor=0x10DE, device=0x20B5, class_code=0x030200,
                       bars=[(0, 16 << 20), (1, 64 << 30), (3, 32 << 20)], driver="nvidia",
                       link=GEN4_X16, numa_node=socket)
        b.endpoint(nic_port, vendor=0x15B3, device=0x101B, class_code=0x020000,
                   bars=[(0, 32 << 20)], driver="mlx5_core", link=GEN4_X16, numa_node=socket)
    return b.build()


def epyc() -> Fabric:
    b = FabricBuilder(HostContext(kernel_release="6.8.0-45-generic", cmdline="iommu=pt",
                                  arch="x86_64", cpu_vendor="AuthenticAMD", cpu_family=0x19,
                                  cpu_model=0x11, iommu=IommuMode.PASSTHROUGH,
                                  iommu_driver="amd-iommu", p2pdma_config=True, privileged=True),
                      origin="sample:epyc")
    b.assign_iommu_groups = True
    genoa = (0x1022, 0x14A4)
    hb0 = b.host_bridge(bus=0x00, first=genoa, numa_node=0)
    for i in range(2):
        rp = b.root_port(hb0, dev=1, fn=1 + i, vendor=0x1022, device=0x14AB,
                         acs_ctrl=IOMMU_ACS, link=GEN4_X4)
        b.nvme(rp, vendor=0x1DE5, device=0x3000, cmb_size=64 << 20, cmb_bar=2, link=GEN4_X4,
               numa_node=0)
    hb1 = b.host_bridge(bus=0x40, first=genoa, numa_node=0)
    rp = b.root_port(hb1, dev=1, fn=1, vendor=0x1022, device=0x14AB, acs_ctrl=IOMMU_ACS,
                     link=GEN4_X16)
    b.endpoint(rp, vendor=0x15B3, device=0x101B, class_code=0x020000, bars=[(0, 32 << 20)],
               driver="mlx5_core", link=GEN4_X16, numa_node=0)
    rp = b.root_port(hb1, dev=1, fn=2, vendor=0x1022, device=0x14AB, acs_ctrl=IOMMU_ACS,
                     link=GEN4_X4)
    b.nvme(rp, vendor=0x144D, device=0xA824, link=GEN4_X4, numa_node=0)
    return b.build()


def desktop() -> Fabric:
    b = FabricBuilder(HostContext(kernel_release="6.12.57", cmdline="quiet splash",
                                  arch="x86_64", cpu_vendor="GenuineIntel", cpu_family=6,
                                  cpu_model=167, iommu=IommuMode.OFF, p2pdma_config=True,
                                  privileged=True),
                      origin="sample:desktop")
    hb = b.host_bridge(bus=0, first=(0x8086, 0x4C43))
    rp1 = b.root_port(hb, dev=1, device=0x4C01, acs_cap=None, link=GEN4_X16)
    b.endpoint(rp1, vendor=0x10DE, device=0x2684, class_code=0x030000,
               bars=[(0, 16 << 20), (1, 32 << 30), (3, 32 << 20)], driver="nvidia",
               link=GEN4_X16)
    rp2 = b.root_port(hb, dev=6, device=0x4C09, acs_cap=None, link=GEN4_X4)
    b.nvme(rp2, vendor=0x144D, device=0xA80C, link=GEN4_X4)
    rp3 = b.root_port(hb, dev=0x1C, device=0x43BC, acs_cap=0x005F, link=Link(8.0, 4, 8.0, 4))
    b.endpoint(rp3, vendor=0x10DE, device=0x2684, class_code=0x030000,
               bars=[(0, 16 << 20), (1, 32 << 30), (3, 32 << 20)], driver="nvidia",
               link=Link(8.0, 16, 8.0, 4))
    b.endpoint(hb, dev=0x17, vendor=0x8086, device=0x43D2, class_code=0x010601,
               bars=[(5, 8 << 10)], driver="ahci")
    return b.build()


def qemu_q35() -> Fabric:
    b = FabricBuilder(HostContext(kernel_release="6.12.117", cmdline="console=ttyS0 quiet",
                                  arch="x86_64", cpu_vendor="AuthenticAMD", cpu_family=15,
                                  cpu_model=107, iommu=IommuMode.OFF, p2pdma_config=True,
                                  privileged=True),
                      origin="sample:qemu-q35")
    hb = b.host_bridge(bus=0, first=(0x8086, 0x29C0), first_type=PortType.NOT_PCIE)
    link = Link(2.5, 1, 2.5, 1)
    rp1 = b.root_port(hb, dev=2, vendor=0x1B36, device=0x000C, acs_cap=0x005F, link=link)
    _usp, dsps = b.switch(rp1, ports=2, vendor=0x104C, device=0x8232, acs_cap=None, link=link)
    # The x3130 pair really has distinct ids: 8232 upstream, 8233 downstream.
    for d in dsps:
        b.update(d, device=0x8233, subsystem_device=0x8233)
    b.nvme(dsps[0], cmb_size=64 << 20, sq_in_cmb=128 << 10, link=link)
    b.nvme(dsps[1], cmb_size=64 << 20, sq_in_cmb=128 << 10, link=link)
    rp2 = b.root_port(hb, dev=3, vendor=0x1B36, device=0x000C, acs_cap=0x005F, link=link)
    b.nvme(rp2, cmb_size=64 << 20, sq_in_cmb=128 << 10, link=link)
    b.nvme(hb, dev=4, cmb_size=0)
    return b.build()


DEFINITIONS: dict[str, Callable[[], Fabric]] = {
    "xeon-2s": xeon_2s,
    "epyc": epyc,
    "desktop": desktop,
    "qemu-q35": qemu_q35,
}


def render_sample(name: str) -> str:
    from p2pdma.samples import SAMPLES
    from p2pdma.sources.fabricfile import dumps_fabric

    header = (f"# Sample fabric {name!r}: {SAMPLES[name]}\n"
              "# Generated by `python -m p2pdma.samples.definitions`; edit the definitions,\n"
              "# not this file.\n")
    return header + dumps_fabric(DEFINITIONS[name](), description=SAMPLES[name])


def main() -> None:
    here = Path(__file__).parent
    for name in DEFINITIONS:
        (here / f"{name}.toml").write_text(render_sample(name), encoding="utf-8")
        print(f"wrote {name}.toml")


if __name__ == "__main__":
    main()
