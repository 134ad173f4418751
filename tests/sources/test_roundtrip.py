"""Round trips: fabric file == write_sysfs->read_sysfs == write_sysfs->gather->read_snapshot."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sources_strategies import fabrics, fast_tempdir

from p2pdma.fabric.bdf import Bdf
from p2pdma.fabric.builder import FabricBuilder
from p2pdma.fabric.model import (
    Acs,
    Bar,
    Cmb,
    Fabric,
    HostContext,
    IommuMode,
    Link,
    NvmeController,
    PortType,
)
from p2pdma.fabric.serial import fabric_from_dict, fabric_to_dict
from p2pdma.samples import load_sample, sample_names
from p2pdma.sources import pciconfig
from p2pdma.sources.fabricfile import dumps_fabric, loads_fabric
from p2pdma.sources.snapshot import gather, read_snapshot
from p2pdma.sources.synthetic import (
    sysfs_canonical,
    sysfs_losses,
    unprivileged_view,
    write_sysfs,
)
from p2pdma.sources.sysfs import read_sysfs

SETTINGS = settings(max_examples=25, deadline=None,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


def three_ways(f: Fabric) -> tuple[Fabric, Fabric, Fabric]:
    with fast_tempdir() as d:
        via_file = loads_fabric(dumps_fabric(f))
        write_sysfs(f, Path(d) / "root")
        via_sysfs = read_sysfs(Path(d) / "root")
        gather(Path(d) / "root", Path(d) / "snap.zip")
        via_snap = read_snapshot(Path(d) / "snap.zip")
    return via_file, via_sysfs, via_snap


@pytest.mark.parametrize("name", sample_names())
def test_samples_round_trip_three_ways(name: str) -> None:
    f = load_sample(name)
    assert sysfs_canonical(f) == f
    assert sysfs_losses(f) == []
    a, b, c = three_ways(f)
    assert a == f
    assert b == f
    assert c == f


@given(fabrics())
@SETTINGS
def test_random_fabrics_round_trip_three_ways(f: Fabric) -> None:
    assert sysfs_canonical(f) == f, sysfs_losses(f)
    assert fabric_from_dict(fabric_to_dict(f)) == f
    a, b, c = three_ways(f)
    assert a == f
    assert b == f
    assert c == f
    # facts that equality covers, spelled out once so a failure is readable
    for g in (b, c):
        assert [x.bdf for x in g.functions] == [x.bdf for x in f.functions]
        assert g.host_bridges == f.host_bridges


@given(fabrics(max_hbs=2))
@SETTINGS
def test_unprivileged_tree_reads_as_unprivileged_view(f: Fabric) -> None:
    with fast_tempdir() as d:
        write_sysfs(f, d, unprivileged=True)
        got = read_sysfs(d)
    assert got == unprivileged_view(f)
    for fn in got.functions:
        if fn.port_type is PortType.UNKNOWN:
            assert fn.acs is None and fn.acs_unknown and "64 bytes" in fn.acs_unknown
        else:
            # no capability list at all: conventional PCI, so no ACS is a known fact
            assert fn.port_type is PortType.NOT_PCIE and fn.acs_unknown is None
    if got.functions:
        assert got.host.privileged is False


def _wild(data: st.DataObject) -> Fabric:
    """A builder fabric with facts sysfs cannot carry as given."""
    b = FabricBuilder(HostContext(iommu=IommuMode.OFF, iommu_driver="dmar",
                                  cpu_vendor="  AuthenticAMD "))
    hb = b.host_bridge()
    rp = b.root_port(hb)
    e = b.endpoint(rp, bars=[(0, 1 << 14), (1, 1 << 20)])
    b.update(rp, secondary_bus=b._nodes[rp].func.secondary_bus)
    f = b.build()
    fn = f.get(e)
    bars = (Bar(0, fn.bars[0].start, fn.bars[0].size, is_64bit=True,
                bus_start=data.draw(st.sampled_from([None, 0, 0x1234, 0x1000_0000]))),
            Bar(1, fn.bars[1].start, fn.bars[1].size, is_64bit=True),
            Bar(3, 0x9000, 0, is_memory=False, is_64bit=True))
    return f.replace_function(
        e, mps=data.draw(st.sampled_from([None, 300, 128, 8192])),
        acs_unknown=data.draw(st.sampled_from([None, "whatever text"])),
        acs=None, bars=bars,
        nvme=NvmeController("nvme7", Cmb(0, 0), ("zzz", "nvme7n2", "nvme7n1", "nvme7n1")),
        link=Link()).replace_function(
        rp, acs=Acs(data.draw(st.sampled_from([0x101, 0xFFC, 0x148])), 0x5F, 0x1D))


@given(st.data())
@settings(max_examples=20, deadline=None)
def test_uncarried_facts_read_back_canonical(data: st.DataObject) -> None:
    f = _wild(data)
    canon = sysfs_canonical(f)
    assert sysfs_canonical(canon) == canon  # idempotent
    with fast_tempdir() as d:
        write_sysfs(f, d)
        got = read_sysfs(d)
    assert got == canon
    e = next(x for x in got.functions if x.nvme is not None)
    assert e.nvme is not None and e.nvme.cmb is None
    assert e.nvme.namespaces == ("nvme7n1", "nvme7n2")
    assert e.link is None
    assert got.host.iommu_driver is None and got.host.cpu_vendor == "AuthenticAMD"
    # BAR 0's upper half is BAR 1: its bus address cannot be in config space
    assert e.bars[0].bus_start is None and [b.index for b in e.bars] == [0, 1]
    if f != canon:
        assert sysfs_losses(f)


def test_acs_unknown_on_pcie_with_256_bytes_and_known_absent_on_conventional() -> None:
    b = FabricBuilder(HostContext())
    hb = b.host_bridge()
    rp = b.root_port(hb)
    e = b.endpoint(rp)
    conv = b.endpoint(hb, port_type=PortType.NOT_PCIE)
    b.update(conv, mps=None, mps_supported=None)
    f = b.build().replace_function(e, acs_unknown="x")
    with fast_tempdir() as d:
        write_sysfs(f, d)
        cfg = (Path(d) / "sys/bus/pci/devices" / str(e) / "config").read_bytes()
        assert len(cfg) == 256
        got = read_sysfs(d)
    ge = got.get(e)
    assert ge.port_type is PortType.ENDPOINT
    assert ge.acs is None and ge.acs_unknown == pciconfig.acs_unknown_reason(256)
    assert "extended" in ge.acs_unknown
    gc = got.get(conv)
    assert gc.port_type is PortType.NOT_PCIE and gc.acs is None and gc.acs_unknown is None
    assert got.get(rp).acs == Acs(0x148, 0x5F, 0)


def test_vf_and_bus_offset_survive() -> None:
    b = FabricBuilder(HostContext())
    hb = b.host_bridge()
    rp = b.root_port(hb)
    pf = b.endpoint(rp, bars=[(0, 1 << 20)])
    pff = b._nodes[pf].func
    vf = b.add(Bdf(0, pf.bus, 0, 1), vendor=0x15B3, device=0x101C, class_code=0x020000,
               parent=rp, physfn=pf, bars=[(0, 1 << 14)])
    f = b.build()
    f = f.replace_function(pf, bars=(dataclasses.replace(pff.bars[0], bus_start=0x8000_0000),))
    with fast_tempdir() as d:
        write_sysfs(f, d)
        got = read_sysfs(d)
    assert got.get(vf).physfn == pf and got.get(vf).parent == rp
    assert got.get(pf).bars[0].bus_start == 0x8000_0000
    assert got.get(pf).bars[0].bus_offset == (0x8000_0000 - pff.bars[0].start) % 2**64
