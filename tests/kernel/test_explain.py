"""Explanations and fixes (kernel/explain.py)."""

from __future__ import annotations

from kfabrics import AMD19, A, B, C, topology_t

from p2pdma.fabric.model import IommuMode
from p2pdma.kernel import PROFILES, calc_map_type_and_dist
from p2pdma.kernel.explain import config_acs_flags, explain


def ex(fabric, key, p, c):  # type: ignore[no-untyped-def]
    prof = PROFILES[key]
    r = calc_map_type_and_dist(fabric, prof, p, c, verbose=True)
    return r, explain(fabric, prof, r)


def test_later_release_whitelists_the_host_bridge() -> None:
    f = topology_t(hb_id=(0x8086, 0x0B25))  # Intel DSA SPR0, whitelisted from 7.2
    r, e = ex(f, "7.1", A, C)
    assert not r.supported
    assert r.whitelist is not None and r.whitelist.lookups[0].later == "v7.2"
    assert any(x.kind == "kernel" and "v7.2" in x.text for x in e.fixes)
    assert any(x.kind == "topology" for x in e.fixes)


def test_removed_amd_entry_is_explained() -> None:
    f = topology_t(hb_id=(0x1022, 0x1450))
    r, _ = ex(f, "5.9", A, C)
    assert r.whitelist is not None
    assert "until its removal in v5.9" in r.whitelist.lookups[0].reason


def test_acs_fixes_per_profile() -> None:
    f = topology_t(dsp_ctrl={0: 0x1D, 1: 0x0C})
    _, new = ex(f, "6.11", A, B)
    assert new.disable_acs_redir == "0000:02:00.0;0000:02:01.0"
    assert new.config_acs == "x0100x1@0000:02:00.0;x0x00xx@0000:02:01.0"
    assert new.setpci == ("setpci -s 0000:02:00.0 ECAP_ACS+6.w=0000:002c",
                          "setpci -s 0000:02:01.0 ECAP_ACS+6.w=0000:002c")
    _, old = ex(f, "6.2", A, B)
    assert old.config_acs is None
    assert any("needs v6.11" in x.text for x in old.fixes)
    assert all(x.risk and x.risk.startswith("unsafe") for x in new.fixes if x.kind == "cmdline")


def test_config_acs_flags() -> None:
    # x for every bit the fix need not change; SV/UF pinned to 1 only while the IOMMU
    # may have set them (x would restore the firmware value, §13.3)
    assert config_acs_flags(0x001D, 0x005F) == "x0100x1"
    assert config_acs_flags(0x001D, 0x005F, False) == "x0x00xx"
    assert config_acs_flags(0x0000, 0x001D) == "x0x00xx"


def test_risks_unsafe_vs_slow() -> None:
    from dataclasses import replace
    f = topology_t(host=replace(AMD19, iommu=IommuMode.TRANSLATED))
    _, e = ex(f, "6.11", A, B)  # BUS_ADDR while the IOMMU translates: not isolated
    assert [k for k, _ in e.risks] == ["unsafe"]
    _, e2 = ex(f, "6.11", A, C)  # through the host bridge via the CPU rule
    assert [k for k, _ in e2.risks] == ["slow", "slow"]
    assert e2.fixes == ()


def test_hop_roles() -> None:
    f = topology_t(dsp_ctrl={0: 0x1D})
    _, e = ex(f, "6.11", A, B)
    roles = [h.role for h in e.hops]
    assert roles[0] == "provider" and roles[-1] == "client"
    assert roles[1] == "switch downstream port" and e.hops[1].redirects
    assert roles[2].startswith("common upstream")
