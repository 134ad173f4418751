"""Spec §0.4: each behavioural change, checked at the release before and at the release."""

from __future__ import annotations

import pytest
from kfabrics import AMD19, INTEL, A, B, C, topology_t

from p2pdma.errors import InputError
from p2pdma.fabric.model import HostContext, IommuMode
from p2pdma.kernel import (
    PROFILES,
    MapType,
    MapTypeCache,
    calc_map_type_and_dist,
    distance_many,
    pci_p2pdma_map_type,
    profile_for_version,
    resolve_profile,
)


def verdict(key: str, **kw: object) -> MapType:
    f = topology_t(**kw)  # type: ignore[arg-type]
    return calc_map_type_and_dist(f, PROFILES[key], A, C, verbose=False).map_type


@pytest.mark.parametrize("text,key", [
    ("6.12.117", "6.11"), ("5.10.0-28-amd64", "5.10"), ("7.2-rc3", "7.2"),
    ("6.8.0-45-generic", "6.2"), ("v5.15", "5.14"), ("4.20.0", "4.20"), ("5.0", "4.20"),
    ("5.4.0-150-generic", "5.3"), ("6.15", "6.11"), ("6.16.1", "6.16"), ("7.1.3", "7.1"),
    ("7.3-rc1", "pci-next"), ("pci-next", "pci-next"), ("leon", "leon"), ("5.19.17", "5.19"),
    ("6.1.0-rpi7-rpi-v8", "6.0"),
])
def test_version_mapping(text: str, key: str) -> None:
    assert profile_for_version(text).key == key


@pytest.mark.parametrize("bad", ["", "banana", "4.19.0", "3.10.0-1160.el7", "6"])
def test_bad_versions(bad: str) -> None:
    with pytest.raises(InputError) as ei:
        profile_for_version(bad)
    assert "6.12.117" in str(ei.value)  # the hint lists accepted forms


def test_resolve_reason() -> None:
    c = resolve_profile("6.12.117")
    assert c.profile.key == "6.11" and "kernel release 6.12.117" in c.reason
    c2 = resolve_profile("6.12.117", "5.15")
    assert c2.profile.key == "5.14" and "--kernel 5.15" in c2.reason
    assert resolve_profile(None).profile.key == "pci-next"


def test_enum_numbering() -> None:
    assert PROFILES["6.11"].map_type_value(MapType.BUS_ADDR) == 2
    assert PROFILES["6.11"].map_type_value(MapType.NONE) is None
    assert PROFILES["6.16"].map_type_value(MapType.BUS_ADDR) == 3
    assert PROFILES["6.16"].map_type_value(MapType.THRU_HOST_BRIDGE) == 4
    assert PROFILES["6.16"].map_type_value(MapType.NONE) == 1
    assert PROFILES["5.3"].map_type_value(MapType.BUS_ADDR) is None


def test_v420_common_bridge_only_and_acs_minus2() -> None:
    p = PROFILES["4.20"]
    f = topology_t(hb_id=(0x8086, 0x09A2), dsp_ctrl={0: 0x1D})
    r = calc_map_type_and_dist(f, p, A, B, verbose=True)
    assert r.map_type is MapType.NOT_SUPPORTED and r.legacy_return == -2
    assert [m.text for m in r.messages] == [
        "cannot be used for peer-to-peer DMA as ACS redirect is set between the client and "
        "provider (0000:03:00.0)",
        "to disable ACS redirect for this path, add the kernel parameter: "
        "pci=disable_acs_redir=0000:02:00.0"]
    rc = calc_map_type_and_dist(f, p, A, C, verbose=True)
    assert rc.map_type is MapType.NOT_SUPPORTED and rc.legacy_return == -1
    assert rc.messages[0].text.endswith("do not share an upstream bridge")
    assert distance_many(f, p, A, [C], verbose=False).distance == -1


def test_v52_root_complex_whitelist_bias() -> None:
    p = PROFILES["5.2"]
    f = topology_t(hb_id=(0x1022, 0x1450))
    r = calc_map_type_and_dist(f, p, A, C, verbose=True)
    assert r.map_type is MapType.THRU_HOST_BRIDGE and r.dist == 0x1000 + 6
    assert distance_many(f, p, A, [C], verbose=False).distance == 0x1006
    assert verdict("5.2", hb_id=(0x8086, 0x09A2)) is MapType.NOT_SUPPORTED
    # v5.2: an ACS path is still a hard reject, even on a whitelisted root complex
    f2 = topology_t(hb_id=(0x1022, 0x1450), dsp_ctrl={0: 0x1D})
    assert calc_map_type_and_dist(f2, p, A, B, verbose=False).legacy_return == -2


def test_v53_iommu_ignores_rc_whitelist() -> None:
    on = HostContext(arch="x86_64", cpu_vendor="AuthenticAMD", cpu_family=0x17,
                     iommu=IommuMode.TRANSLATED)
    off = HostContext(arch="x86_64", cpu_vendor="AuthenticAMD", cpu_family=0x17,
                      iommu=IommuMode.OFF)
    assert verdict("5.3", hb_id=(0x1022, 0x1450), host=on) is MapType.NOT_SUPPORTED
    assert verdict("5.3", hb_id=(0x1022, 0x1450), host=off) is MapType.THRU_HOST_BRIDGE
    assert verdict("5.2", hb_id=(0x1022, 0x1450), host=on) is MapType.THRU_HOST_BRIDGE


def test_v55_map_types_acs_through_whitelisted_host_bridge() -> None:
    f = topology_t(hb_id=(0x1022, 0x1450), dsp_ctrl={0: 0x1D})
    r = calc_map_type_and_dist(f, PROFILES["5.5"], A, B, verbose=True)
    assert r.map_type is MapType.THRU_HOST_BRIDGE
    assert [m.id for m in r.messages] == ["W1", "W2"]
    assert verdict("5.5", hb_id=(0x1022, 0x1450)) is MapType.THRU_HOST_BRIDGE
    # no W4 before v5.14
    g = topology_t(dsp_ctrl={0: 0x1D})
    assert [m.id for m in calc_map_type_and_dist(g, PROFILES["5.11"], A, B,
                                                 verbose=True).messages] == ["W1", "W2", "W3"]


@pytest.mark.parametrize("hb,before,at", [
    ((0x8086, 0x2030), "5.5", "5.6"), ((0x8086, 0x2031), "5.6", "5.7"),
    ((0x8086, 0x2033), "5.6", "5.7"), ((0x1022, 0x15D0), "5.7", "5.8"),
    ((0x8086, 0x2020), "5.9", "5.10"), ((0x8086, 0x09A2), "5.16", "5.18"),
    ((0x1AE0, 0xABCD), "6.19", "7.1"), ((0x8086, 0x0B25), "7.1", "7.2"),
    ((0x8086, 0x4948), "7.1", "7.2"), ((0x10DE, 0x2F95), "7.2", "pci-next"),
    ((0x1D17, 0x1008), "7.2", "pci-next"),
])
def test_whitelist_additions(hb: tuple[int, int], before: str, at: str) -> None:
    assert verdict(before, hb_id=hb) is MapType.NOT_SUPPORTED
    assert verdict(at, hb_id=hb) is MapType.THRU_HOST_BRIDGE


def test_v59_amd_entries_removed_cpu_rule_added() -> None:
    amd_hb = (0x1022, 0x1450)
    assert verdict("5.8", hb_id=amd_hb) is MapType.THRU_HOST_BRIDGE
    assert verdict("5.9", hb_id=amd_hb) is MapType.NOT_SUPPORTED  # Intel CPU, entry gone
    assert verdict("5.9", host=AMD19) is MapType.THRU_HOST_BRIDGE
    assert verdict("5.8", host=AMD19) is MapType.NOT_SUPPORTED


def test_zhaoxin_req_same_and_leon_lacks_it() -> None:
    assert verdict("pci-next", hb_id=(0x1D17, 0x1003)) is MapType.THRU_HOST_BRIDGE
    assert verdict("leon", hb_id=(0x1D17, 0x1003)) is MapType.NOT_SUPPORTED
    assert verdict("leon", hb_id=(0x10DE, 0x2F95)) is MapType.THRU_HOST_BRIDGE


def test_w4_gating_pci_vs_leon() -> None:
    f = topology_t()
    pci = calc_map_type_and_dist(f, PROFILES["pci-next"], A, C, verbose=True)
    leon = calc_map_type_and_dist(f, PROFILES["leon"], A, C, verbose=True)
    assert [m.id for m in pci.messages] == ["W3"]
    assert [m.id for m in leon.messages] == ["W4", "W3"]
    # [PCI] prints W4 on the ACS path even when not verbose; [LEON] only when verbose
    g = topology_t(dsp_ctrl={0: 0x1D})
    assert [m.id for m in calc_map_type_and_dist(g, PROFILES["pci-next"], A, B,
                                                 verbose=False).messages] == ["W4"]
    assert calc_map_type_and_dist(g, PROFILES["leon"], A, B, verbose=False).messages == ()


def test_v514_representative_devfn0_v519_root_port() -> None:
    # root bus whose first device is a Root Port at 00:01.0 (no 00.0 device)
    f = topology_t(hb_id=None)  # type: ignore[arg-type]
    r514 = calc_map_type_and_dist(f, PROFILES["5.18"], A, C, verbose=False)
    assert r514.whitelist is not None and r514.whitelist.lookups[0].representative is None
    r519 = calc_map_type_and_dist(f, PROFILES["5.19"], A, C, verbose=False)
    rep = r519.whitelist.lookups[0].representative  # type: ignore[union-attr]
    assert rep is not None and str(rep.bdf) == "0000:00:01.0"
    # that root port is 8086:347a: not whitelisted either way, but W4 names it in 5.19+
    g = topology_t(hb_id=None, dsp_ctrl={0: 0x1D})  # type: ignore[arg-type]
    assert [str(m) for m in calc_map_type_and_dist(g, PROFILES["5.19"], A, B,
                                                   verbose=False).messages] == [
        "pci 0000:00:01.0: Host bridge not in P2PDMA whitelist: 8086:347a"]
    assert calc_map_type_and_dist(g, PROFILES["5.18"], A, B, verbose=False).messages == ()


def test_cache_only_vs_compute_on_miss() -> None:
    f = topology_t()
    for key, expect, computed in (("5.19", MapType.UNKNOWN, False),
                                  ("6.0", MapType.BUS_ADDR, True)):
        cache = MapTypeCache()
        r = pci_p2pdma_map_type(f, PROFILES[key], cache, A, B)
        assert (r.map_type, r.computed) == (expect, computed)
        distance_many(f, PROFILES[key], A, [B], verbose=False, caches=lambda _b, c=cache: c)
        assert pci_p2pdma_map_type(f, PROFILES[key], cache, A, B).map_type is MapType.BUS_ADDR


def test_cache_never_invalidated_and_verbose_on_miss() -> None:
    p = PROFILES["6.11"]
    f = topology_t(dsp_ctrl={0: 0x1D})
    cache = MapTypeCache()
    first = pci_p2pdma_map_type(f, p, cache, A, B)
    assert first.map_type is MapType.NOT_SUPPORTED and first.computed
    assert [m.id for m in first.messages] == ["W1", "W2", "W4", "W3"]
    fixed = f.with_acs_control(topology_t().get(A).bdf.__class__(0, 2, 0, 0), 0)
    again = pci_p2pdma_map_type(fixed, p, cache, A, B)
    assert again.map_type is MapType.NOT_SUPPORTED and not again.computed  # stale
    assert again.messages == ()
    cache.destroy()
    assert pci_p2pdma_map_type(fixed, p, MapTypeCache(), A, B).map_type is MapType.BUS_ADDR


def test_map_type_non_pci_and_no_state() -> None:
    from p2pdma.kernel import NonPciClient
    f = topology_t()
    p = PROFILES["pci-next"]
    assert pci_p2pdma_map_type(f, p, MapTypeCache(), A,
                               NonPciClient("x", "x", B)).map_type is MapType.NOT_SUPPORTED
    assert pci_p2pdma_map_type(f, p, None, A, B).map_type is MapType.NOT_SUPPORTED


def test_profile_intel_default_for_tests() -> None:
    # the helper's default host is a known Intel CPU: no "unknown" verdicts
    r = calc_map_type_and_dist(topology_t(host=INTEL), PROFILES["pci-next"], A, C, verbose=False)
    assert r.unknown is None


def test_message_texts_by_release() -> None:
    assert "{resource}" in PROFILES["5.9"].messages["I1"]
    assert PROFILES["5.10"].messages["I1"].format(start=0x1000, end=0x1FFF) == (
        "added peer-to-peer DMA memory 0x1000-0x1fff")
    assert "I2" not in PROFILES["6.0"].messages and "I2" in PROFILES["6.2"].messages
    assert "W4" not in PROFILES["5.11"].messages and "W4" in PROFILES["leon"].messages
    assert "W1" not in PROFILES["5.3"].messages and "ACS_REJECT" in PROFILES["5.3"].messages


def test_profile_table_is_ordered_and_complete() -> None:
    from p2pdma.kernel import TIMELINE
    versions = [r.version for r in TIMELINE]
    assert versions == sorted(versions) and len(set(versions)) == len(versions)
    # every release of spec §0.4 that changes a decision has a row
    for key in ("4.20", "5.2", "5.3", "5.5", "5.6", "5.7", "5.8", "5.9", "5.14", "5.18",
                "5.19", "6.0", "6.11", "6.16", "7.1", "7.2", "pci-next"):
        assert key in PROFILES
