"""Review: adversarial cases re-derived from the spec (§2-§3, §5.1, §2.12, §13).

Passing tests pin behaviour the review confirmed.  Tests marked
``xfail(strict=True, reason="BUG: ...")`` demonstrate a divergence from the
kernel (or from the "honest about unknowns" rule) that is still in src/.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import random
from pathlib import Path
from typing import Any

import pytest
from kfabrics import A1, AMD19, DSP0, DSP1, INTEL, USP, A, B, C, D, E, topology_t

from p2pdma.cli import check, find
from p2pdma.fabric.bdf import Bdf
from p2pdma.fabric.builder import FabricBuilder
from p2pdma.fabric.model import ACS_RR, Acs, Fabric, HostContext, IommuMode, P2PMem, PortType
from p2pdma.kernel import (
    PROFILES,
    KernelProfile,
    MapType,
    MapTypeCache,
    NonPciClient,
    calc_map_type_and_dist,
    distance_many,
    find_many,
    pci_p2pdma_map_type,
    profile_for_version,
)
from p2pdma.kernel.matrix import compute_matrix
from p2pdma.kernel.whatif import WhatIf, apply_whatif
from p2pdma.sources.fabricfile import save_fabric_file

P = PROFILES["pci-next"]
LEON = PROFILES["leon"]
W2_PREFIX = ("to disable ACS redirect for this path, add the kernel parameter: "
             "pci=disable_acs_redir=")
HOST_OFF = HostContext(kernel_release="6.12.117", arch="x86_64", cpu_vendor="GenuineIntel",
                       cpu_family=6, iommu=IommuMode.OFF)


def ids(r: Any) -> list[str]:
    return [m.id for m in r.messages]


def w2_list(r: Any) -> str:
    (w2,) = [m.text for m in r.messages if m.id == "W2"]
    assert w2.startswith(W2_PREFIX)
    return str(w2[len(W2_PREFIX):])


# ---------------------------------------------------------------------------
# §2.4 ACS set: provider side up to and including the common ancestor, then the
# client side below it; the endpoints' own ACS counts.


def test_acs_set_order_provider_side_includes_common_ancestor() -> None:
    f = topology_t(dsp_ctrl={0: 0x000C, 1: 0x000C}, usp_ctrl=0x0004, usp_cap=0x005F)
    ab = calc_map_type_and_dist(f, P, A, B, verbose=True)
    assert ab.acs_redirect == (DSP0, USP, DSP1)
    assert w2_list(ab) == "0000:02:00.0;0000:01:00.0;0000:02:01.0"
    ba = calc_map_type_and_dist(f, P, B, A, verbose=True)
    assert ba.acs_redirect == (DSP1, USP, DSP0)
    assert w2_list(ba) == "0000:02:01.0;0000:01:00.0;0000:02:00.0"
    assert ids(ab) == ids(ba) == ["W1", "W2", "W4", "W3"]


def test_provider_equals_client_own_acs_counts() -> None:
    f = topology_t()
    assert calc_map_type_and_dist(f, P, A, A, verbose=True).map_type is MapType.BUS_ADDR
    g = f.replace_function(A, acs=Acs(0x148, 0x005F, 0x0004))
    r = calc_map_type_and_dist(g, P, A, A, verbose=True)
    assert (r.map_type, r.dist, r.acs_redirect) == (MapType.NOT_SUPPORTED, 0, (A,))
    assert w2_list(r) == "0000:03:00.0"
    assert ids(r) == ["W1", "W2", "W4", "W3"]


@pytest.mark.parametrize("redirecting", [A, A1])
def test_multifunction_own_acs_counts_both_directions(redirecting: Bdf) -> None:
    f = topology_t().replace_function(redirecting, acs=Acs(0x148, 0x005F, 0x001D))
    for p, c in ((A, A1), (A1, A)):
        r = calc_map_type_and_dist(f, P, p, c, verbose=False)
        assert (r.map_type, r.dist, r.acs_redirect) == (MapType.NOT_SUPPORTED, 2, (redirecting,))
    amd = f.with_host(cpu_vendor="AuthenticAMD", cpu_family=0x17)
    assert calc_map_type_and_dist(amd, P, A, A1, verbose=False).map_type \
        is MapType.THRU_HOST_BRIDGE


def test_vf_own_acs_counts_but_pf_is_not_on_its_chain() -> None:
    b = FabricBuilder(INTEL)
    hb = b.host_bridge(first=(0x8086, 0x4C43))
    rp = b.root_port(hb, dev=1)
    pf = b.endpoint(rp, driver="mlx5_core", acs=Acs(0x148, 0x005F, 0x001D))
    vf = b.add(Bdf(0, 1, 0, 2), vendor=0x15B3, device=0x101C, class_code=0x020000,
               parent=rp, physfn=pf, acs=Acs(0x148, 0x005F, 0))
    f = b.build()
    r = calc_map_type_and_dist(f, P, vf, pf, verbose=False)
    # chain(vf) = [vf, rp]; chain(pf) = [pf, rp]: pf's own ACS is on the client side
    assert r.provider_chain == (vf, rp) and r.dist == 2
    assert r.acs_redirect == (pf,) and r.map_type is MapType.NOT_SUPPORTED
    g = f.replace_function(pf, acs=Acs(0x148, 0x005F, 0))
    assert calc_map_type_and_dist(g, P, vf, pf, verbose=False).map_type is MapType.BUS_ADDR


def test_rciep_root_bus_vs_root_port() -> None:
    f = topology_t()
    assert calc_map_type_and_dist(f, P, D, D, verbose=True).map_type is MapType.BUS_ADDR
    r = calc_map_type_and_dist(f, P, D, C, verbose=True)
    assert (r.map_type, r.dist, ids(r)) == (MapType.NOT_SUPPORTED, 3, ["W3"])
    w = topology_t(hb_id=(0x8086, 0x09A2))
    assert calc_map_type_and_dist(w, P, D, A, verbose=True).map_type is MapType.THRU_HOST_BRIDGE


# ---------------------------------------------------------------------------
# §2.5 / §2.8: representative, W4 gating, cross-host-bridge short-circuit


@pytest.mark.parametrize("version,allowed", [
    ("5.13", False), ("5.18.19", False), ("5.19", True), ("6.12.117", True)])
def test_root_port_at_devfn_01_is_representative_from_519(version: str, allowed: bool) -> None:
    builder = FabricBuilder(INTEL)
    hb = builder.host_bridge(first=None)
    rp1 = builder.root_port(hb, dev=1, vendor=0x8086, device=0x2030)
    rp2 = builder.root_port(hb, dev=2)
    x, y = builder.endpoint(rp1), builder.endpoint(rp2)
    f = builder.build()
    r = calc_map_type_and_dist(f, profile_for_version(version), x, y, verbose=True)
    assert r.map_type is (MapType.THRU_HOST_BRIDGE if allowed else MapType.NOT_SUPPORTED)
    assert "W4" not in ids(r)


def test_no_representative_no_w4_even_on_acs_path() -> None:
    b = FabricBuilder(INTEL)
    b.host_bridge(first=None)
    # first root-bus device: a switch-like port at devfn 02.0 (neither 00.0 nor a root port)
    port = Bdf(0, 0, 2, 0)
    b._bridge(None, port, vendor=0x1B36, device=0x000E, port_type=PortType.DOWNSTREAM_PORT,
              acs_cap=0x005F, acs_ctrl=0x001D, link=None)
    x = b.endpoint(port, fn=0)
    y = b.endpoint(port, fn=1)
    f = b.build()
    r = calc_map_type_and_dist(f, P, x, y, verbose=True)
    assert r.map_type is MapType.NOT_SUPPORTED and ids(r) == ["W1", "W2", "W3"]


def test_w4_independent_of_verbose_in_pci_but_not_in_leon() -> None:
    f = topology_t(dsp_ctrl={0: 0x001D})
    assert ids(calc_map_type_and_dist(f, P, A, A1, verbose=False)) == ["W4"]
    assert ids(calc_map_type_and_dist(f, LEON, A, A1, verbose=False)) == []
    assert ids(calc_map_type_and_dist(f, LEON, A, A1, verbose=True)) == ["W1", "W2", "W4", "W3"]
    # no common ancestor: [PCI] never W4; [LEON] W4 when verbose
    assert ids(calc_map_type_and_dist(f, P, A, C, verbose=True)) == ["W3"]
    assert ids(calc_map_type_and_dist(f, LEON, A, C, verbose=True)) == ["W4", "W3"]
    # find_many is non-verbose: W4 appears in [PCI] only, once per provider (A and B)
    r = find_many(f, P, [A1], rng=random.Random(1))
    assert [str(m) for m in r.messages] == [
        "pci 0000:00:00.0: Host bridge not in P2PDMA whitelist: 8086:4c43"] * 2
    assert find_many(f, LEON, [A1], rng=random.Random(1)).messages == ()


@pytest.mark.parametrize("hb0,hb1,w4_on", [
    ((0x8086, 0x4C43), (0x8086, 0x4C43), "0000:00:00.0"),  # host_a fails: host_b not looked at
    ((0x8086, 0x2F00), (0x8086, 0x4C43), None),  # REQ_SAME: false, silent, host_b skipped
    ((0x8086, 0x09A2), (0x8086, 0x4C43), "0000:80:00.0"),  # host_a passes, host_b warns
])
def test_leon_cross_host_bridge_short_circuit(hb0: tuple[int, int], hb1: tuple[int, int],
                                              w4_on: str | None) -> None:
    f = topology_t(hb_id=hb0, second_hb=hb1)
    r = calc_map_type_and_dist(f, LEON, A, E, verbose=True)
    assert r.map_type is MapType.NOT_SUPPORTED
    w4 = [str(m.device) for m in r.messages if m.id == "W4"]
    assert w4 == ([w4_on] if w4_on else [])
    assert ids(calc_map_type_and_dist(f, P, A, E, verbose=True)) == ["W3"]


# ---------------------------------------------------------------------------
# §2.7 / §13.1: W2 formatting and the overflow


def _nested(n_nested: int) -> tuple[Fabric, Bdf, Bdf]:
    """Provider below n nested switches (every port redirecting), client one DSP away."""
    b = FabricBuilder(INTEL)
    hb = b.host_bridge(first=(0x8086, 0x4C43))
    rp = b.root_port(hb, dev=1)
    usp0, (d0, d1) = b.switch(rp, ports=2, acs_ctrl=0x001D, usp_acs_cap=0x005F)
    b.update(usp0, acs=Acs(0x148, 0x005F, 0x001D))
    port = d0
    for _ in range(n_nested):
        usp, dsps = b.switch(port, ports=1, acs_ctrl=0x001D, usp_acs_cap=0x005F)
        b.update(usp, acs=Acs(0x148, 0x005F, 0x001D))
        port = dsps[0]
    provider = b.nvme(port, cmb_size=64 << 20)
    client = b.endpoint(d1, driver="nvme")
    return b.build(), provider, client


def test_w2_nine_entries_fit_eleven_overflow() -> None:
    f9, p9, c9 = _nested(3)
    r9 = calc_map_type_and_dist(f9, P, p9, c9, verbose=True)
    assert len(r9.acs_redirect) == 9 and r9.danger is None
    lst = w2_list(r9)
    assert len(lst) == 9 * 13 - 1 and not lst.endswith(";") and lst.count(";") == 8
    f11, p11, c11 = _nested(4)
    r11 = calc_map_type_and_dist(f11, P, p11, c11, verbose=True)
    assert len(r11.acs_redirect) == 11 and r11.danger is not None
    assert len(w2_list(r11)) == 127 and w2_list(r11).endswith(";0000:01:00")
    rl = calc_map_type_and_dist(f11, LEON, p11, c11, verbose=True)
    assert rl.danger is None and len(w2_list(rl)) == 127


# ---------------------------------------------------------------------------
# §2.10 distance_many


def test_distance_many_verbose_all_vs_nonverbose_stop_and_w5() -> None:
    f = topology_t()
    nowhere = NonPciClient("ib0", "ib ib0")
    v = distance_many(f, P, A, [C, B, nowhere], verbose=True)
    assert v.distance == -1 and [p.client for p in v.pairs] == [C, B]
    assert ids(v) == ["W3", "W5"] and str(v.messages[-1]) == (
        "ib ib0: cannot be used for peer-to-peer DMA as it is not a PCI device")
    q = distance_many(f, P, A, [C, B, nowhere], verbose=False)
    assert q.distance == -1 and [p.client for p in q.pairs] == [C] and q.messages == ()
    below = NonPciClient("nvme0n1", "block nvme0n1", pci_parent=B)
    assert distance_many(f, P, A, [B, below, A1], verbose=True).distance == 4 + 4 + 2


# ---------------------------------------------------------------------------
# §2.6 CPU rule and the AMD table history


@pytest.mark.parametrize("version,hb_dev,host,expect", [
    ("5.5", 0x1450, INTEL, MapType.THRU_HOST_BRIDGE),  # table entry, any CPU
    ("5.7", 0x15D0, AMD19, MapType.NOT_SUPPORTED),  # 15d0 only from 5.8; no CPU rule yet
    ("5.8", 0x1630, INTEL, MapType.THRU_HOST_BRIDGE),
    ("5.9", 0x1450, INTEL, MapType.NOT_SUPPORTED),  # entries removed
    ("5.9", 0x4C43, AMD19, MapType.THRU_HOST_BRIDGE),
])
def test_amd_history(version: str, hb_dev: int, host: HostContext, expect: MapType) -> None:
    f = topology_t(host=host, hb_id=(0x8086 if hb_dev == 0x4C43 else 0x1022, hb_dev))
    r = calc_map_type_and_dist(f, profile_for_version(version), A, C, verbose=False)
    assert r.map_type is expect


@pytest.mark.parametrize("vendor,family,arch,ok", [
    ("AuthenticAMD", 0x17, "x86_64", True), ("AuthenticAMD", 0x16, "x86_64", False),
    ("HygonGenuine", 0x18, "x86_64", False), ("AuthenticAMD", 0x19, "aarch64", False),
])
def test_cpu_rule(vendor: str, family: int, arch: str, ok: bool) -> None:
    host = HostContext(kernel_release="6.12.117", arch=arch, cpu_vendor=vendor, cpu_family=family)
    f = topology_t(host=host, dsp_ctrl={0: 0x001D})
    r = calc_map_type_and_dist(f, P, A, A1, verbose=True)
    assert r.map_type is (MapType.THRU_HOST_BRIDGE if ok else MapType.NOT_SUPPORTED)
    assert ids(r) == (["W1", "W2"] if ok else ["W1", "W2", "W4", "W3"])


# ---------------------------------------------------------------------------
# v5.2 / v5.3 / v4.20


def test_v52_cross_rc_bias_and_v420_acs_minus_two() -> None:
    host = HostContext(kernel_release="5.2", arch="x86_64", cpu_vendor="AuthenticAMD",
                       cpu_family=0x17, iommu=IommuMode.OFF)
    f = topology_t(host=host, hb_id=(0x1022, 0x1450), dsp_ctrl={0: 0x001D})
    p52 = profile_for_version("5.2")
    assert distance_many(f, p52, A, [C, C], verbose=False).distance == 2 * (0x1000 + 6)
    r = calc_map_type_and_dist(f, p52, A, A1, verbose=True)
    assert r.legacy_return == -2 and ids(r) == ["ACS_REJECT", "W2"]
    r420 = calc_map_type_and_dist(f, profile_for_version("4.20"), A, C, verbose=True)
    assert r420.legacy_return == -1 and ids(r420) == ["W3"]
    on = f.with_host(iommu=IommuMode.TRANSLATED)
    assert calc_map_type_and_dist(on, profile_for_version("5.3"), A, C,
                                  verbose=False).map_type is MapType.NOT_SUPPORTED


def test_v53_unknown_iommu_is_not_confident() -> None:
    host = HostContext(kernel_release="5.3", arch="x86_64", cpu_vendor="AuthenticAMD",
                       cpu_family=0x17, iommu=None)
    f = topology_t(host=host, hb_id=(0x1022, 0x1450))
    r = calc_map_type_and_dist(f, profile_for_version("5.3"), A, C, verbose=False)
    assert r.map_type is MapType.UNKNOWN


# ---------------------------------------------------------------------------
# Profiles: enum numbering and version strings


@pytest.mark.parametrize("text,key,bus_addr", [
    ("6.12.117", "6.11", 2), ("5.10.0-28-amd64", "5.10", 2), ("7.2-rc3", "7.2", 3),
    ("6.8.0-45-generic", "6.2", 2), ("6.16", "6.16", 3), ("4.20", "4.20", None),
    ("5.4.0-150-generic", "5.3", None),
])
def test_version_strings_and_enum(text: str, key: str, bus_addr: int | None) -> None:
    prof: KernelProfile = profile_for_version(text)
    assert prof.key == key and prof.map_type_value(MapType.BUS_ADDR) == bus_addr


@pytest.mark.parametrize("text", ["garbage", "4.19.3", "6", ""])
def test_version_garbage_rejected(text: str) -> None:
    with pytest.raises(Exception, match="kernel"):
        profile_for_version(text)


# ---------------------------------------------------------------------------
# §2.9 / §5.1 cache


def test_cache_is_stale_after_acs_change_and_cache_only_is_unknown() -> None:
    f = topology_t()
    g = f.with_acs_control(DSP0, 0x001D)
    for key, first in (("5.14", MapType.UNKNOWN), ("6.0", MapType.BUS_ADDR),
                       ("pci-next", MapType.BUS_ADDR)):
        prof = PROFILES[key]
        cache = MapTypeCache()
        assert pci_p2pdma_map_type(f, prof, cache, A, A1).map_type is first
        distance_many(f, prof, A, [A1], verbose=False, caches=lambda _b, c=cache: c)
        assert pci_p2pdma_map_type(g, prof, cache, A, A1).map_type is MapType.BUS_ADDR
        assert calc_map_type_and_dist(g, prof, A, A1, verbose=False).map_type \
            is MapType.NOT_SUPPORTED


# ---------------------------------------------------------------------------
# Unknown facts: the kernel's distance is certain when every possibility is supported


def _unknown_dsp0() -> Fabric:
    f = topology_t(hb_id=(0x8086, 0x09A2))
    f = f.replace_function(C, p2pmem=P2PMem(size=1 << 26, available=1 << 26, published=True,
                                            allocate=True))
    return f.replace_function(DSP0, acs=None, acs_unknown="captured without root")


def test_unknown_acs_map_type_is_unknown() -> None:
    r = calc_map_type_and_dist(_unknown_dsp0(), P, A, A1, verbose=False)
    assert r.map_type is MapType.UNKNOWN and r.dist == 2
    assert set(r.possible) == {MapType.BUS_ADDR, MapType.THRU_HOST_BRIDGE}


def test_distance_many_certain_when_every_possibility_supported() -> None:
    assert distance_many(_unknown_dsp0(), P, A, [A1], verbose=False).distance == 2


def test_find_many_does_not_pick_a_farther_provider_on_unknown_acs() -> None:
    r = find_many(_unknown_dsp0(), P, [A1], rng=random.Random(0))
    assert r.choice == A and r.best == 2


def _ns(path: Path, **kw: Any) -> argparse.Namespace:
    base: dict[str, Any] = dict(fabric=str(path), snapshot=None, sample=None, root=None,
                                json=True, color="never", kernel=None, cpu=None, iommu=None,
                                cmdline=None, acs=[], seed=0)
    base.update(kw)
    return argparse.Namespace(**base)


def test_find_cli_no_confident_null_on_unknown(tmp_path: Path, capsys: Any) -> None:
    f = topology_t(hb_id=(0x8086, 0x09A2)).replace_function(
        DSP0, acs=None, acs_unknown="captured without root")
    path = tmp_path / "u.toml"
    save_fabric_file(f, path)
    rc = find.run(_ns(path, clients=["0000:03:00.1"]))
    out = json.loads(capsys.readouterr().out)
    assert rc != 1 or out["choice"] is not None


def test_check_text_does_not_claim_no_redirect_when_unknown(tmp_path: Path,
                                                             capsys: Any) -> None:
    path = tmp_path / "u.toml"
    save_fabric_file(_unknown_dsp0(), path)
    rc = check.run(_ns(path, json=False, provider="0000:03:00.0", clients=["0000:03:00.1"]))
    out = capsys.readouterr().out
    assert rc == 3
    assert "No device on the path redirects" not in out


# ---------------------------------------------------------------------------
# matrix == calc (fast path against slow path) on random fabrics


def _random_fabric(rng: random.Random) -> tuple[Fabric, list[Bdf]]:
    ids_ = [(0x8086, 0x4C43), (0x8086, 0x09A2), (0x8086, 0x2F00)]
    b = FabricBuilder(rng.choice([INTEL, AMD19]))
    hbs = [b.host_bridge(first=rng.choice(ids_))]
    if rng.random() < 0.5:
        hbs.append(b.host_bridge(bus=0x80, first=rng.choice(ids_)))
    ports = [b.root_port(hb, dev=d, acs_ctrl=rng.choice([0, 0x1D]))
             for hb in hbs for d in range(1, rng.randint(2, 4))]
    eps: list[Bdf] = []
    while ports and len(eps) < 6:
        port = ports.pop(rng.randrange(len(ports)))
        if rng.random() < 0.4:
            ports += b.switch(port, ports=2, acs_ctrl=rng.choice([0, 0x1D, 0x4]))[1]
            continue
        e = b.endpoint(port, driver="nvme")
        eps.append(e)
        if rng.random() < 0.3:
            b.update(e, acs=Acs(0x148, 0x5F, rng.choice([0, 0x1D])))
            eps.append(b.endpoint(port, fn=1, driver="nvme"))
    eps += [b.endpoint(hb, dev=0x10) for hb in hbs if rng.random() < 0.5]
    f = b.build()
    if rng.random() < 0.3:
        victim = rng.choice([x for x in f.functions if x.acs is not None])
        f = f.replace_function(victim.bdf, acs=None, acs_unknown="needs root")
    return f, eps


def assert_matrix_matches_calc(f: Fabric, eps: list[Bdf], keys: tuple[str, ...]) -> None:
    """The fast matrix agrees with calc_map_type_and_dist on every pair, per profile."""
    for key in keys:
        prof = PROFILES[key]
        m = compute_matrix(f, prof, eps, eps)
        for i, x in enumerate(eps):
            for j, y in enumerate(eps):
                r = calc_map_type_and_dist(f, prof, x, y, verbose=False)
                assert (m.map_types[i][j], m.dists[i][j]) == (r.map_type, r.dist), (key, x, y)


@pytest.mark.parametrize("seed", range(40))
def test_matrix_matches_calc(seed: int) -> None:
    f, eps = _random_fabric(random.Random(seed))
    assert_matrix_matches_calc(f, eps, ("pci-next", "5.10", "5.2", "4.20", "leon"))


# ---------------------------------------------------------------------------
# What-if: pci=disable_acs_redir= / pci=config_acs= (§2.12, §13.2-13.3)


def _ctrl(f: Fabric, bdf: Bdf) -> int:
    acs = f.get(bdf).acs
    assert acs is not None
    return acs.control


def test_disable_acs_redir_generic_drops_iommu_bits_and_path_form() -> None:
    f = topology_t(host=dataclasses.replace(HOST_OFF, iommu=IommuMode.TRANSLATED),
                   dsp_ctrl={0: 0x001D, 1: 0x001D})
    g, _ = apply_whatif(f, WhatIf(cmdline="pci=disable_acs_redir=0000:00:01.0/00.0/00.0"))
    assert (_ctrl(g, DSP0), _ctrl(g, DSP1)) == (0x0000, 0x001D)
    old, _ = apply_whatif(f.with_host(kernel_release="6.8.0"),
                          WhatIf(cmdline="pci=disable_acs_redir=0000:02:00.0"))
    assert _ctrl(old, DSP0) == 0x0011  # before 6.11: only RR|CR|EC cleared


def test_config_acs_beats_disable_acs_redir() -> None:
    f = topology_t(host=HOST_OFF)
    g, _ = apply_whatif(f, WhatIf(cmdline="pci=disable_acs_redir=0000:02:00.0 "
                                          "pci=config_acs=xxxx1xx@0000:02:00.0"))
    assert _ctrl(g, DSP0) == 0x0004


def test_config_acs_unsupported_bit_still_sets_supported_ones() -> None:
    f = topology_t(host=HOST_OFF)
    g, _ = apply_whatif(f, WhatIf(cmdline="pci=config_acs=0100100@0000:02:00.0"))
    assert _ctrl(g, DSP0) & ACS_RR
    assert calc_map_type_and_dist(g, P, A, A1, verbose=False).map_type is MapType.NOT_SUPPORTED


def test_config_acs_first_matching_entry_wins() -> None:
    f = topology_t(host=HOST_OFF)
    g, _ = apply_whatif(f, WhatIf(
        cmdline="pci=config_acs=0000000@0000:02:00.0;0000100@0000:02:00.0"))
    assert _ctrl(g, DSP0) == 0x0000


def test_config_acs_eight_flag_chars_rejected() -> None:
    f = topology_t(host=HOST_OFF)
    g, _ = apply_whatif(f, WhatIf(cmdline="pci=config_acs=00000100@0000:02:00.0"))
    assert _ctrl(g, DSP0) == 0x0000


def test_repeated_pci_option_last_wins() -> None:
    f = topology_t(host=HOST_OFF, dsp_ctrl={0: 0x000C, 1: 0x000C})
    g, _ = apply_whatif(f, WhatIf(cmdline="pci=disable_acs_redir=0000:02:00.0 "
                                          "pci=disable_acs_redir=0000:02:01.0"))
    assert (_ctrl(g, DSP0), _ctrl(g, DSP1)) == (0x000C, 0x0000)


def test_cmdline_knobs_absent_in_old_kernels_are_ignored() -> None:
    f = topology_t(host=dataclasses.replace(HOST_OFF, kernel_release="6.8.0"),
                   dsp_ctrl={0: 0x000C})
    g, notes = apply_whatif(f, WhatIf(cmdline="pci=config_acs=0000000@0000:02:00.0"))
    assert _ctrl(g, DSP0) == 0x000C and any("does not exist" in n for n in notes)
    old = f.with_host(kernel_release="4.20.0")
    g, notes = apply_whatif(old, WhatIf(cmdline="pci=disable_acs_redir=0000:02:00.0"))
    assert _ctrl(g, DSP0) == 0x000C and any("does not exist" in n for n in notes)


# ---------------------------------------------------------------------------
# §3 find_many: unpublished providers are skipped; ties keep enumeration order


def test_find_many_skips_unpublished_and_keeps_enumeration_order() -> None:
    f = topology_t(hb_id=(0x8086, 0x09A2))
    unpub = f.replace_function(A, p2pmem=P2PMem(size=1 << 26, available=1 << 26,
                                                 published=False, allocate=True))
    r = find_many(unpub, P, [A1], rng=random.Random(0))
    assert A not in r.distances and r.ties == (B,) and r.best == 4
    # client D (RCiEP): A and B are both 4 + 1 = 5 away through the whitelisted host bridge
    r = find_many(f, P, [D], rng=random.Random(0))
    assert (r.best, r.ties) == (5, (A, B))
    assert {find_many(f, P, [D], rng=random.Random(s)).choice for s in range(20)} == {A, B}


def test_check_legacy_profile_does_not_blame_first_dma_mapping(tmp_path: Path,
                                                               capsys: Any) -> None:
    path = tmp_path / "t.toml"
    save_fabric_file(topology_t(), path)
    rc = check.run(_ns(path, json=False, provider="0000:03:00.0", clients=["0000:05:00.0"],
                       kernel="5.10"))
    out = capsys.readouterr().out
    assert rc == 1 and "cannot be used for peer-to-peer DMA" in out
    assert "first DMA mapping" not in out


def test_explain_legacy_acs_is_a_hard_reject() -> None:
    from p2pdma.kernel.explain import explain

    f = topology_t(dsp_ctrl={0: 0x001D}, hb_id=(0x8086, 0x09A2))
    prof = profile_for_version("5.4")
    r = calc_map_type_and_dist(f, prof, A, A1, verbose=True)
    assert r.map_type is MapType.NOT_SUPPORTED and r.legacy_return == -2
    story = " ".join(explain(f, prof, r).story)
    assert "through the host bridge" not in story
