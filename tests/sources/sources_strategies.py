"""Hypothesis strategies: random but realistic fabrics built with FabricBuilder."""

from __future__ import annotations

import dataclasses
import os
import tempfile

from hypothesis import strategies as st

from p2pdma.fabric.bdf import Bdf
from p2pdma.fabric.builder import FabricBuilder
from p2pdma.fabric.model import Acs, Bar, Fabric, HostContext, IommuMode, Link, PortType
from p2pdma.sources import pciconfig

SHM = "/dev/shm"
FAST_TMP: str | None = SHM if os.path.isdir(SHM) and os.access(SHM, os.W_OK) else None


def fast_tempdir() -> tempfile.TemporaryDirectory[str]:
    """Synthetic trees are many small files: keep them in memory when possible."""
    return tempfile.TemporaryDirectory(prefix="p2pdma-test-", dir=FAST_TMP)


acs_cap = st.one_of(st.none(), st.integers(0, 0x7F))
acs_ctrl = st.integers(0, 0x7F)
links = st.sampled_from([Link(16.0, 16, 16.0, 16), Link(8.0, 4, 5.0, 2), Link(32.0, 8, 32.0, 8),
                         Link(2.5, 1, 2.5, 1), Link(64.0, 16, 16.0, 0)])


@st.composite
def hosts(draw: st.DrawFn) -> HostContext:
    iommu = draw(st.sampled_from([None, *IommuMode]))
    drv = draw(st.sampled_from([None, "dmar", "amd-iommu", "virtio-iommu"]))
    return HostContext(
        kernel_release=draw(st.sampled_from([None, "6.12.48", "6.8.0-45-generic", "5.15.0"])),
        cmdline=draw(st.sampled_from([None, "", "iommu=pt quiet", "pci=disable_acs_redir=x"])),
        arch=draw(st.sampled_from([None, "x86_64", "aarch64"])),
        cpu_vendor=draw(st.sampled_from([None, "GenuineIntel", "AuthenticAMD", "HygonGenuine"])),
        cpu_family=draw(st.one_of(st.none(), st.integers(0, 0x1A))),
        cpu_model=draw(st.one_of(st.none(), st.integers(0, 255))),
        iommu=iommu,
        iommu_driver=None if iommu is IommuMode.OFF else drv,
        p2pdma_config=draw(st.sampled_from([None, True, False])),
    )


@st.composite
def fabrics(draw: st.DrawFn, *, max_hbs: int = 3) -> Fabric:
    """A canonical fabric: ``sysfs_canonical(F) == F`` holds for what this draws."""
    b = FabricBuilder(draw(hosts()), origin="<hypothesis>")
    b.assign_iommu_groups = draw(st.booleans())
    eps: list[Bdf] = []

    def below(port: Bdf, depth: int) -> None:
        what = draw(st.sampled_from(["none", "endpoint", "nvme", "multi", "switch"]
                                    if depth < 2 else ["none", "endpoint", "nvme"]))
        if what == "endpoint":
            eps.append(b.endpoint(port, bars=[(0, 1 << 14), (2, 1 << 20)],
                                  driver=draw(st.sampled_from([None, "mlx5_core", "vfio-pci"])),
                                  link=draw(links), numa_node=draw(st.one_of(st.none(),
                                                                           st.integers(0, 3)))))
        elif what == "nvme":
            eps.append(b.nvme(port, cmb_size=draw(st.sampled_from([0, 64 << 20, 512 << 10])),
                              cmb_bar=draw(st.sampled_from([2, 4])),
                              wds=draw(st.booleans())))
        elif what == "multi":
            eps.append(b.endpoint(port, fn=0, vendor=0x10DE, device=0x20B5, class_code=0x030200))
            eps.append(b.endpoint(port, fn=1, vendor=0x10DE, device=0x1AEF, class_code=0x040300))
        elif what == "switch":
            _usp, dsps = b.switch(port, ports=draw(st.integers(1, 3)), acs_cap=draw(acs_cap),
                                  acs_ctrl=draw(acs_ctrl), link=draw(links))
            for d in dsps:
                below(d, depth + 1)

    for _ in range(draw(st.integers(1, max_hbs))):
        domain = draw(st.sampled_from([0, 0, 1, 0x10000]))
        hb = b.host_bridge(domain=domain,
                           first=draw(st.sampled_from([(0x8086, 0x09A2), (0x1022, 0x14A4),
                                                       None])),
                           numa_node=draw(st.one_of(st.none(), st.integers(0, 3))))
        for _ in range(draw(st.integers(0, 3))):
            rp = b.root_port(hb, acs_cap=draw(acs_cap), acs_ctrl=draw(acs_ctrl), link=draw(links))
            below(rp, 0)
        if draw(st.booleans()):
            eps.append(b.endpoint(hb, vendor=0x8086, device=0x0B25, class_code=0x088000))
    # SR-IOV: VFs next to a single-function PF
    want_vfs = draw(st.booleans())
    if eps and want_vfs:
        pf: Bdf = draw(st.sampled_from(eps))
        node = b._nodes[pf].func
        if not node.multifunction and not any(
                o.domain == pf.domain and o.bus == pf.bus and o.dev == pf.dev and o != pf
                for o in b._nodes):
            for k in range(1, draw(st.integers(1, 3)) + 1):
                b.add(Bdf(pf.domain, pf.bus, pf.dev, k), vendor=node.vendor, device=0x101C,
                      class_code=node.class_code, parent=node.parent, physfn=pf,
                      bars=[(0, 1 << 14)], port_type=PortType.ENDPOINT, mps=256,
                      mps_supported=512)
    # p2pmem on some non-NVMe endpoint, ACS and port-type variety
    for e in eps:
        f = b._nodes[e].func
        if f.p2pmem is None and draw(st.integers(0, 4)) == 0:
            size = draw(st.sampled_from([2 << 20, 64 << 20]))
            b.set_p2pmem(e, size=size, available=draw(st.integers(0, size)),
                         published=draw(st.booleans()), allocate=draw(st.booleans()))
        choice = draw(st.integers(0, 9))
        if choice == 0:
            b.update(e, acs=Acs(draw(st.sampled_from([0x100, 0x148, 0x2A0])),
                                draw(st.integers(0, 0xFFFF)), draw(st.integers(0, 0xFFFF))))
        elif choice == 1:
            b.update(e, acs_unknown=pciconfig.acs_unknown_reason(pciconfig.CONVENTIONAL))
        elif choice == 2:
            b.update(e, port_type=PortType.UNKNOWN, mps=None, mps_supported=None,
                     acs_unknown=pciconfig.acs_unknown_reason(pciconfig.UNPRIVILEGED))
        elif choice == 3:
            b.update(e, port_type=PortType.NOT_PCIE, mps=None, mps_supported=None,
                     link=None)
        elif choice == 4:
            # a bus address that differs from the CPU address (a host bridge offset)
            bars = tuple(dataclasses.replace(x, bus_start=x.start - 0x40_0000_0000)
                         if x.start > 0x40_0000_0000 and x.is_64bit else x
                         for x in f.bars)
            b.update(e, bars=bars)
        elif choice == 5:
            b.update(e, bars=(*f.bars, Bar(5, 0xE000, 0x20, is_memory=False))
                     if all(x.index < 4 for x in f.bars) else f.bars)
    fab = b.build()
    priv = any(pciconfig.config_length(f) > pciconfig.UNPRIVILEGED for f in fab.functions)
    cfg = fab.host.p2pdma_config
    if any(f.p2pmem is not None for f in fab.functions):
        cfg = True
    return fab.with_host(privileged=priv if fab.functions else None, p2pdma_config=cfg)
