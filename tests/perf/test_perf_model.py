"""The throughput model against hand calculations (written out in the comments)."""

from __future__ import annotations

from typing import NamedTuple

import pytest

from p2pdma.fabric.bdf import Bdf
from p2pdma.fabric.builder import FabricBuilder
from p2pdma.fabric.model import Fabric, HostContext, Link
from p2pdma.fabric.paths import common_bridge, segments
from p2pdma.perf import HOST, Leg, Platform, Route, TlpParams, Transfer, link_bytes_per_s, predict

GEN4_X4 = Link(16.0, 4, 16.0, 4)
GEN4_X16 = Link(16.0, 16, 16.0, 16)


class Devs(NamedTuple):
    a: Bdf
    cmb: Bdf
    nic: Bdf
    c: Bdf
    rp: Bdf
    usp: Bdf
    rp2: Bdf


def switch_fabric(*, mps_b: int = 256) -> tuple[Fabric, Devs]:
    """Root port -> Gen4 x16 switch; NVMe A and NVMe B (CMB) Gen4 x4, NIC Gen4 x16;
    a second root port with an NVMe C (Gen4 x4)."""
    b = FabricBuilder(HostContext(kernel_release="6.12.0", cpu_vendor="GenuineIntel"))
    hb = b.host_bridge()
    rp = b.root_port(hb, link=GEN4_X16)
    usp, dsps = b.switch(rp, ports=3, link=GEN4_X16)
    a = b.nvme(dsps[0], link=GEN4_X4)
    cmb = b.nvme(dsps[1], cmb_size=64 << 20, link=GEN4_X4)
    nic = b.endpoint(dsps[2], vendor=0x15B3, device=0x101B, class_code=0x020000,
                     bars=[(0, 32 << 20)], link=GEN4_X16)
    rp2 = b.root_port(hb, link=GEN4_X4)
    c = b.nvme(rp2, link=GEN4_X4)
    if mps_b != 256:
        b.update(cmb, mps=mps_b)
    f = b.build()
    return f, Devs(a, cmb, nic, c, rp, usp, rp2)


def test_link_rate_table_gen4_x4_and_gen1_x1() -> None:
    # Gen4: 16 GT/s per lane, 128b/130b: 4 lanes x 16e9 x 128/130 / 8 = 7.876923e9 B/s
    assert link_bytes_per_s(16.0, 4) == pytest.approx(4 * 16e9 * 128 / 130 / 8)
    assert link_bytes_per_s(16.0, 4) == pytest.approx(7.876923e9, rel=1e-6)
    # Gen1: 2.5 GT/s, 8b/10b: 2.5e9 x 0.8 / 8 = 250 MB/s per lane
    assert link_bytes_per_s(2.5, 1) == pytest.approx(250e6)
    # Gen3 x16: 16 x 8e9 x 128/130 / 8 = 15.75 GB/s (the table's x16 column)
    assert link_bytes_per_s(8.0, 16) == pytest.approx(15.75e9, rel=1e-3)
    with pytest.raises(ValueError):
        link_bytes_per_s(7.0, 4)


def test_tlp_efficiency_matches_spec_table() -> None:
    # 4-DW header: 24 B per TLP.  128/(128+24) = 84.2 %, 256/280 = 91.4 %, 512/536 = 95.5 %
    assert TlpParams(mps=128).efficiency() == pytest.approx(128 / 152)
    assert TlpParams(mps=256).efficiency() == pytest.approx(0.9142857)
    assert TlpParams(mps=512).efficiency() == pytest.approx(512 / 536)
    # 3-DW header (below 4 GiB) and completions: 20 B per TLP.
    assert TlpParams(mps=256, header_dw=3).efficiency() == pytest.approx(256 / 276)
    assert TlpParams(mps=256).efficiency(completion=True) == pytest.approx(256 / 276)


def test_paths_under_switch_cross_only_the_two_device_links() -> None:
    f, d = switch_fabric()
    assert common_bridge(f, d.a, d.cmb) == d.usp
    (seg,) = segments(f, d.a, d.cmb, Route.DIRECT)
    assert [(h.link.lower, h.direction.value) for h in seg.hops] == [
        (d.a, "up"), (d.cmb, "down")]
    assert not seg.root_complexes and not seg.host_memory
    # Through the root complex: also the switch's upstream link, both ways.
    (seg,) = segments(f, d.a, d.cmb, Route.ROOT_COMPLEX)
    assert [(h.link.lower, h.direction.value) for h in seg.hops] == [
        (d.a, "up"), (d.usp, "up"), (d.usp, "down"), (d.cmb, "down")]
    assert seg.root_complexes == ("pci0000:00",)


def test_gen4_x4_nvme_to_cmb_behind_switch_hand_calculation() -> None:
    f, d = switch_fabric()
    # NVMe A writes (posted, 64-bit BAR address -> 4-DW header) into B's CMB:
    #   raw   = 4 lanes x 16 GT/s x 128/130 / 8      = 7.876923 GB/s
    #   x MPS efficiency 256 / (256 + 24)           = 0.9142857
    #   => 7.876923 x 0.9142857                      = 7.201758 GB/s
    # ACK DLLPs (8 B per TLP) go the other way: 8/256 of the rate, far from limiting.
    p = predict(f, [Transfer.simple("w", d.a, d.cmb, Route.DIRECT)])
    assert p.throughput == pytest.approx(7.201758e9, rel=1e-6)
    assert p.bottleneck.startswith("link ") and p.bottleneck.endswith(" up")
    assert p.host_memory_bytes == 0
    # The same pull (NVMe B reads from A's memory): completions carry 3-DW headers,
    #   7.876923 x 256/276 = 7.306132 GB/s; requests 24 B per 512 B + ACKs back.
    p = predict(f, [Transfer.simple("r", d.a, d.cmb, Route.DIRECT, initiator="dst")])
    assert p.throughput == pytest.approx(7.306132e9, rel=1e-6)


def test_smallest_mps_on_the_path_wins() -> None:
    f, d = switch_fabric(mps_b=128)
    # 7.876923 x 128 / (128 + 24) = 6.633199 GB/s
    p = predict(f, [Transfer.simple("w", d.a, d.cmb, Route.DIRECT)])
    assert p.transfers[0].mps == [128]
    assert p.throughput == pytest.approx(6.633199e9, rel=1e-6)


def test_two_writers_share_the_cmb_link_max_min() -> None:
    f, d = switch_fabric()
    # NIC (x16) and NVMe A (x4) both write into B's CMB: B's x4 down link carries both:
    # each gets half of 7.201758 = 3.600879 GB/s.
    w = [Transfer.simple("nic", d.nic, d.cmb, Route.DIRECT),
         Transfer.simple("nvme", d.a, d.cmb, Route.DIRECT)]
    p = predict(f, w)
    assert [t.rate for t in p.transfers] == pytest.approx([3.600879e9] * 2, rel=1e-6)
    # Cap the NIC at 1 GB/s (network line rate): NVMe A takes the rest, 6.201758 GB/s.
    w[0] = Transfer.simple("nic", d.nic, d.cmb, Route.DIRECT,
                           limit_bytes_per_s=1e9)
    p = predict(f, w)
    assert [t.rate for t in p.transfers] == pytest.approx([1e9, 6.201758e9], rel=1e-6)
    assert p.transfers[0].bottleneck == "limit of nic"


def test_root_complex_forwarding_rate_is_a_platform_parameter() -> None:
    f, d = switch_fabric()
    t = [Transfer.simple("x", d.a, d.c, Route.ROOT_COMPLEX)]
    p = predict(f, t, Platform(rc_p2p_bytes_per_s=5e9))
    assert p.throughput == pytest.approx(5e9)
    assert p.bottleneck == "root-complex pci0000:00"
    p = predict(f, t, Platform(rc_p2p_bytes_per_s=None))
    assert p.throughput == pytest.approx(7.201758e9, rel=1e-6)


def test_bounce_costs_host_memory_twice_and_is_limited_by_it() -> None:
    f, d = switch_fabric()
    # Bounce A -> host -> C: A pushes (4-DW writes, 7.201758 GB/s on A's x4 link),
    # C pulls (completions, 7.306132 GB/s on C's link); host memory sees 2 B per byte.
    t = [Transfer.simple("b", d.a, d.c, Route.BOUNCE, nbytes=1 << 30)]
    p = predict(f, t)
    assert p.throughput == pytest.approx(7.201758e9, rel=1e-6)
    assert p.host_memory_bytes == 2 * (1 << 30)
    # With 10 GB/s of host memory the bounce gets 10 / 2 = 5 GB/s.
    p = predict(f, t, Platform(host_memory_bytes_per_s=10e9))
    assert p.throughput == pytest.approx(5e9)
    assert p.bottleneck == HOST


def test_pipeline_legs_run_at_one_rate() -> None:
    f, d = switch_fabric()
    # NVMe-oF write offload through A's... here: NIC -> CMB(B) then CMB(B) -> NVMe A
    # (A pulls).  B's link carries leg 1 down (256/280) and leg 2 up (completions,
    # 256/276), plus reverse ACK/request bytes of the other leg on each direction:
    #   down: r x (280/256) + r x (24/512 + 8/256)  [leg 2's read requests and ACKs]
    #       = r x (1.09375 + 0.078125) = r x 1.171875  -> r = 7.876923 / 1.171875
    #   up:   r x (276/256) + r x 8/256 = r x 1.109375 (less loaded)
    #   => r = 6.721641 GB/s
    legs = (Leg(d.nic, d.cmb, Route.DIRECT), Leg(d.cmb, d.a, Route.DIRECT,
                                                        initiator="dst"))
    p = predict(f, [Transfer("pipe", legs)])
    assert p.throughput == pytest.approx(7.876923e9 / 1.171875, rel=1e-6)
    assert p.throughput == pytest.approx(6.721641e9, rel=1e-6)


def test_assumptions_are_stated() -> None:
    f, d = switch_fabric()
    p = predict(f, [Transfer.simple("w", d.a, HOST, Route.HOST)])
    text = "\n".join(p.assumptions)
    assert "ACK DLLP" in text and "root-complex" in text and "host memory" in text
    j = p.to_json()
    assert j["bottleneck"] == p.bottleneck and j["assumptions"]
