from __future__ import annotations

import pytest

from p2pdma.errors import InputError, UnknownDeviceError
from p2pdma.fabric import Acs, Bar, Bdf, Cmb, Fabric, HostBridge, PciFunction, PortType
from p2pdma.fabric.builder import FabricBuilder


def test_bdf_parse_and_format() -> None:
    b = Bdf.parse("0000:03:00.1")
    assert b == Bdf(0, 3, 0, 1)
    assert str(b) == "0000:03:00.1"
    assert Bdf.parse("03:00.1") == b
    assert Bdf.parse("10000:03:1f.7") == Bdf(0x10000, 3, 0x1F, 7)
    assert b.devfn == 1 and b.dev_id == 0x301 and b.cache_index == 0x301
    assert Bdf(2, 3, 4, 5).cache_index == (2 << 16) | (3 << 8) | (4 << 3) | 5


@pytest.mark.parametrize("bad", ["", "03:00", "0000:03:00.8", "zz:00.0", "03:20.0", "1:2:3:4.0"])
def test_bdf_parse_rejects(bad: str) -> None:
    with pytest.raises(InputError) as ei:
        Bdf.parse(bad)
    assert "DDDD:BB:DD.F" in str(ei.value) or "out of range" in str(ei.value)


def test_cmb_decode_encode_roundtrip() -> None:
    c = Cmb.encode(size=64 << 20, bar=2, offset=0)
    assert (c.size, c.bar, c.offset, c.unit) == (64 << 20, 2, 0, 1 << 20)
    assert c.flags == {"SQS": True, "CQS": False, "LISTS": False, "RDS": True, "WDS": True}
    # Hand-decoded register values: SZU=2 (1 MiB), SZ=64, WDS|RDS|SQS = 0x19.
    assert c.cmbsz == (64 << 12) | (2 << 8) | 0x19
    c2 = Cmb.encode(size=512 << 10, bar=4, offset=8 << 10, wds=False)
    assert (c2.size, c2.bar, c2.offset, c2.unit, c2.flags["WDS"]) == (
        512 << 10, 4, 8 << 10, 4096, False)


def test_bar_bus_offset_wraps_unsigned() -> None:
    b = Bar(index=0, start=0x1000_0000, size=0x1000, bus_start=0x0)
    assert b.bus_offset == (0 - 0x1000_0000) & (2**64 - 1)
    assert Bar(index=0, start=0x1000, size=0x1000).bus_offset == 0


def _tiny() -> Fabric:
    b = FabricBuilder()
    hb = b.host_bridge()
    rp = b.root_port(hb)
    _usp, dsps = b.switch(rp, ports=2)
    b.nvme(dsps[0], cmb_size=64 << 20)
    b.nvme(dsps[1])
    return b.build()


def test_builder_tree_shape_and_lookups() -> None:
    f = _tiny()
    nv0 = f.resolve("nvme0")
    nv1 = f.resolve("nvme1n1")
    assert f.get(nv0).p2pmem is not None and f.get(nv0).p2pmem.published  # type: ignore[union-attr]
    assert f.get(nv1).p2pmem is None
    hb = f.host_bridges[0]
    assert [x.bdf for x in f.root_bus_devices(hb)] == [Bdf(0, 0, 0, 0), Bdf(0, 0, 1, 0)]
    assert f.root_of(nv0).port_type is PortType.ROOT_PORT
    assert f.host_bridge_of(nv1) == hb
    rp = f.get(Bdf(0, 0, 1, 0))
    assert rp.secondary_bus == 1 and rp.subordinate_bus == 4  # covers both DSP buses


def test_unknown_device_hint_lists_neighbours() -> None:
    f = _tiny()
    with pytest.raises(UnknownDeviceError) as ei:
        f.get(Bdf(0, 3, 5, 0))
    assert "0000:03:00.0" in str(ei.value)
    with pytest.raises(UnknownDeviceError):
        f.resolve("nvme7")


def test_validate_rejects_structural_errors() -> None:
    hb = HostBridge(0, 0)
    ep = PciFunction(bdf=Bdf(0, 1, 0, 0), vendor=1, device=2, class_code=0,
                     parent=Bdf(0, 0, 1, 0))
    with pytest.raises(InputError, match=r"parent 0000:00:01\.0 is not in the fabric"):
        Fabric((ep,), (hb,)).validate()
    not_bridge = PciFunction(bdf=Bdf(0, 0, 1, 0), vendor=1, device=2, class_code=0)
    with pytest.raises(InputError, match="is not a bridge"):
        Fabric((ep, not_bridge), (hb,)).validate()
    orphan = PciFunction(bdf=Bdf(0, 5, 0, 0), vendor=1, device=2, class_code=0)
    with pytest.raises(InputError, match="no host bridge owns bus"):
        Fabric((orphan,), (hb,)).validate()
    a = PciFunction(bdf=Bdf(0, 0, 1, 0), vendor=1, device=2, class_code=0,
                    bars=(Bar(0, 0x1000, 0x1000),))
    b = PciFunction(bdf=Bdf(0, 0, 2, 0), vendor=1, device=2, class_code=0,
                    bars=(Bar(0, 0x1800, 0x1000),))
    with pytest.raises(InputError, match="overlaps"):
        Fabric((a, b), (hb,)).validate()


def test_what_if_acs_returns_new_fabric() -> None:
    f = _tiny()
    dsp = Bdf(0, 2, 0, 0)
    g = f.with_acs_control(dsp, 0x1D)
    assert g.get(dsp).acs == Acs(0x148, 0x5F, 0x1D)
    assert f.get(dsp).acs == Acs(0x148, 0x5F, 0x0)  # the original is untouched
    assert f != g
    with pytest.raises(InputError, match="no ACS capability"):
        f.with_acs_control(Bdf(0, 1, 0, 0), 0)  # the switch USP has none
