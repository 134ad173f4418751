"""Spec §13: facts observed on a real 6.12.117 kernel."""

from __future__ import annotations

import pytest
from kfabrics import INTEL, A, topology_t

from p2pdma.fabric.bdf import Bdf
from p2pdma.fabric.builder import FabricBuilder
from p2pdma.fabric.model import Fabric, HostContext, PortType
from p2pdma.kernel import PROFILES, MapType, calc_map_type_and_dist, cpu_rule, find_many
from p2pdma.kernel.engine import acs_list_text

P612 = PROFILES["6.11"]  # 6.12.117 maps here


def nested(levels_p: int, levels_c: int) -> tuple[Fabric, Bdf, Bdf]:
    """Provider and client below two stacks of nested switches, every downstream port
    redirecting: the ACS set has levels_p + levels_c + 2 devices."""
    b = FabricBuilder(INTEL)
    hb = b.host_bridge(first=(0x8086, 0x4C43))
    rp = b.root_port(hb, dev=1)
    _, top = b.switch(rp, ports=2, acs_ctrl=0x1D)
    ends = []
    for port, levels in ((top[0], levels_p), (top[1], levels_c)):
        for _ in range(levels):
            _, d = b.switch(port, ports=1, acs_ctrl=0x1D)
            port = d[0]
        ends.append(b.endpoint(port, driver="nvme"))
    return b.build(), ends[0], ends[1]


def test_w2_overflow_ten_devices_flags_danger() -> None:
    f, p, c = nested(4, 4)
    r = calc_map_type_and_dist(f, P612, p, c, verbose=True)
    assert len(r.acs_redirect) == 10
    w2 = next(m for m in r.messages if m.id == "W2")
    listed = w2.text.split("pci=disable_acs_redir=")[1]
    assert len(listed) == 127
    assert listed == "".join(f"{b};" for b in r.acs_redirect)[:127]
    assert r.danger is not None and "crashes" in r.danger
    # the non-verbose evaluation is flagged too: the danger is in evaluating it verbosely
    assert calc_map_type_and_dist(f, P612, p, c, verbose=False).danger is not None
    # [LEON] guards the overflow
    assert calc_map_type_and_dist(f, PROFILES["leon"], p, c, verbose=True).danger is None


def test_nine_devices_are_fine() -> None:
    f, p, c = nested(4, 3)
    r = calc_map_type_and_dist(f, P612, p, c, verbose=True)
    assert len(r.acs_redirect) == 9 and r.danger is None
    listed = next(m for m in r.messages if m.id == "W2").text.split("=")[-1]
    assert len(listed) == 116 and not listed.endswith(";")


def test_acs_list_before_514_uses_a_page() -> None:
    bdfs = [Bdf(0, i, 0, 0) for i in range(12)]
    text, over = acs_list_text(PROFILES["5.11"], bdfs)
    assert not over and text.count(";") == 11
    assert acs_list_text(PROFILES["5.14"], bdfs)[1]


@pytest.mark.parametrize("vendor,family,arch,allowed", [
    ("AuthenticAMD", 0x17, "x86_64", True), ("AuthenticAMD", 0x19, "x86_64", True),
    ("AuthenticAMD", 0x1A, "x86_64", True), ("AuthenticAMD", 0x16, "x86_64", False),
    ("AuthenticAMD", 15, "x86_64", False), ("HygonGenuine", 0x18, "x86_64", False),
    ("GenuineIntel", 6, "x86_64", False), (None, None, "aarch64", False),
])
def test_cpu_family_table(vendor: str | None, family: int | None, arch: str,
                          allowed: bool) -> None:
    h = HostContext(arch=arch, cpu_vendor=vendor, cpu_family=family)
    assert cpu_rule(PROFILES["6.11"], h).value is allowed
    assert cpu_rule(PROFILES["5.8"], h).value is False  # no CPU rule before v5.9


def test_unknown_cpu_is_not_guessed() -> None:
    f = topology_t(host=HostContext())
    r = calc_map_type_and_dist(f, P612, A, Bdf(0, 5, 0, 0), verbose=True)
    assert r.map_type is MapType.UNKNOWN
    assert r.unknown is not None and r.unknown.startswith("unknown because")
    assert set(r.possible) == {MapType.NOT_SUPPORTED, MapType.THRU_HOST_BRIDGE}
    # a whitelisted host bridge makes the CPU irrelevant
    g = topology_t(host=HostContext(), hb_id=(0x8086, 0x09A2))
    assert calc_map_type_and_dist(g, P612, A, Bdf(0, 5, 0, 0),
                                  verbose=False).map_type is MapType.THRU_HOST_BRIDGE


def test_unreadable_acs_gives_unknown_with_both_outcomes() -> None:
    f = topology_t()
    dsp = Bdf(0, 2, 0, 0)
    g = f.replace_function(dsp, acs=None, acs_unknown="config space beyond 0x40 needs root")
    r = calc_map_type_and_dist(g, P612, A, Bdf(0, 3, 0, 1), verbose=True)
    assert r.map_type is MapType.UNKNOWN and dsp in r.acs_unreadable
    assert "BUS_ADDR" in (r.unknown or "") and "NOT_SUPPORTED" in (r.unknown or "")
    # on a no-common path the provider side is evaluated but not used: still known
    assert calc_map_type_and_dist(g, P612, A, Bdf(0, 5, 0, 0),
                                  verbose=False).map_type is MapType.NOT_SUPPORTED


def vf_fabric() -> tuple[Fabric, Bdf, Bdf, Bdf, Bdf]:
    b = FabricBuilder(INTEL)
    hb = b.host_bridge(first=(0x8086, 0x4C43))
    rp = b.root_port(hb, dev=1, acs_ctrl=0)
    pf = b.endpoint(rp, driver="mlx5_core")
    vf = b.add(Bdf(0, 1, 0, 2), vendor=0x15B3, device=0x101C, class_code=0x020000,
               parent=rp, physfn=pf)
    rciep = b.endpoint(hb, dev=5, driver="qat")
    rvf = b.add(Bdf(0, 0, 5, 1), vendor=0x8086, device=0x4941, class_code=0x0B4000,
                physfn=rciep, port_type=PortType.RC_INTEGRATED_ENDPOINT)
    return b.build(), pf, vf, rciep, rvf


def test_vf_pf_distance_two() -> None:
    f, pf, vf, rciep, rvf = vf_fabric()
    r = calc_map_type_and_dist(f, P612, vf, pf, verbose=False)
    assert r.dist == 2 and r.map_type is MapType.BUS_ADDR
    assert r.common_upstream == Bdf(0, 0, 1, 0)
    assert r.provider_chain == (vf, Bdf(0, 0, 1, 0))  # the PF itself is not on the VF's chain
    # VFs of a root-complex integrated device: no upstream bridge
    rr = calc_map_type_and_dist(f, P612, rvf, rciep, verbose=False)
    assert rr.provider_chain == (rvf,) and rr.common_upstream is None and rr.dist == 2


def test_second_host_bridge_dsp_first_no_representative_no_w4() -> None:
    def build(dev: int) -> tuple[Fabric, Bdf, Bdf]:
        b = FabricBuilder(INTEL)
        b.host_bridge(first=(0x8086, 0x4C43))
        hb1 = b.host_bridge(bus=0x80, first=None)
        port = Bdf(0, 0x80, dev, 0)
        b._bridge(None, port, vendor=0x1B36, device=0x000E, port_type=PortType.DOWNSTREAM_PORT,
                  acs_cap=0x5F, acs_ctrl=0x1D, link=None)
        sec = b._nodes[port].func.secondary_bus
        assert sec is not None and hb1.bus == 0x80
        p = b.endpoint(port, driver="nvme")
        c = b.endpoint(port, fn=1, driver="nvme")
        return b.build(), p, c

    f, p, c = build(2)
    r = calc_map_type_and_dist(f, P612, p, c, verbose=True)
    assert r.map_type is MapType.NOT_SUPPORTED
    assert r.whitelist is not None and r.whitelist.lookups[0].representative is None
    assert [m.id for m in r.messages] == ["W1", "W2", "W3"]  # no W4
    # the same port at devfn 00.0 is the representative: W4 names it
    f0, p0, c0 = build(0)
    r0 = calc_map_type_and_dist(f0, P612, p0, c0, verbose=True)
    assert [m.id for m in r0.messages] == ["W1", "W2", "W4", "W3"]
    assert str(r0.messages[2]) == "pci 0000:80:00.0: Host bridge not in P2PDMA whitelist: 1b36:000e"


def test_w4_during_nonverbose_find_many() -> None:
    import random
    f = topology_t(dsp_ctrl={0: 0x1D})
    r = find_many(f, P612, [Bdf(0, 3, 0, 1)], rng=random.Random(0))
    assert [m.id for m in r.messages] == ["W4", "W4"]  # A and B both take the ACS branch


def test_enumeration_order_bus_by_bus_vfs_last() -> None:
    from p2pdma.kernel.topology import topology
    f = vf_fabric()[0]
    order = [str(f.functions[i].bdf) for i in topology(f).enum_order]
    # root bus devices in devfn order, then the child bus, then the VFs (per PF, in order)
    # (the PF 00:05.0 is enumerated before 01:00.0, so its VF comes first)
    assert order == ["0000:00:00.0", "0000:00:01.0", "0000:00:05.0", "0000:01:00.0",
                     "0000:00:05.1", "0000:01:00.2"]
