"""Fixes for the UX problems the adversarial review reported (see
test_review_adversarial.py for the kernel-behaviour bugs)."""

from __future__ import annotations

import argparse
import dataclasses
import json
import random
from pathlib import Path
from typing import Any

import pytest
from kfabrics import A1, AMD19, DSP0, INTEL, RP1, A, B, C, D, topology_t
from test_review_adversarial import _random_fabric, assert_matrix_matches_calc

from p2pdma.cli import check, explain, find
from p2pdma.fabric.model import Fabric, HostContext, IommuMode
from p2pdma.kernel import (
    PROFILES,
    MapType,
    calc_map_type_and_dist,
    distance_many,
    find_many,
    profile_for_version,
    resolve_profile,
)
from p2pdma.kernel.explain import explain as explain_pair
from p2pdma.kernel.matrix import compute_matrix
from p2pdma.kernel.whatif import WhatIf, apply_whatif, parse_cpu
from p2pdma.sources.fabricfile import save_fabric_file

HOST_OFF = dataclasses.replace(INTEL, iommu=IommuMode.OFF)


def _ns(path: Path, **kw: Any) -> argparse.Namespace:
    base: dict[str, Any] = dict(fabric=str(path), snapshot=None, sample=None, root=None,
                                json=True, color="never", kernel=None, cpu=None, iommu=None,
                                cmdline=None, acs=[], seed=0)
    base.update(kw)
    return argparse.Namespace(**base)


def _save(tmp_path: Path, f: Fabric) -> Path:
    path = tmp_path / "f.toml"
    save_fabric_file(f, path)
    return path


def _run_json(mod: Any, args: argparse.Namespace, capsys: Any) -> tuple[int, dict[str, Any]]:
    rc = mod.run(args)
    return rc, json.loads(capsys.readouterr().out)


# ---------------------------------------------------------------------------
# --cpu: hex with 0x or h, decimal as /proc/cpuinfo prints it


@pytest.mark.parametrize("text", ["amd:0x19", "amd:19h", "amd:25", "AMD:0X19", "amd:19H"])
def test_cpu_family_forms(text: str) -> None:
    assert parse_cpu(text)["cpu_family"] == 0x19


def test_cpu_family_17h_is_zen() -> None:
    assert parse_cpu("amd:17h")["cpu_family"] == 0x17
    assert parse_cpu("amd:23")["cpu_family"] == 0x17
    assert parse_cpu("amd:17")["cpu_family"] == 17  # decimal, as cpuinfo: family 0x11


def test_cpu_note_shows_hex_and_decimal() -> None:
    _, notes = apply_whatif(topology_t(), WhatIf(cpu="amd:25"))
    assert any("family 0x19 (decimal 25" in n for n in notes)


@pytest.mark.parametrize("bad", ["amd:zz", "amd:0x", "amd:h", "amd:-1"])
def test_cpu_family_errors(bad: str) -> None:
    from p2pdma.errors import InputError
    with pytest.raises(InputError):
        parse_cpu(bad)


# ---------------------------------------------------------------------------
# check JSON: map_type_value null for UNKNOWN; top-level `possible` for many clients


def _unknown_dsp0(hb: tuple[int, int] = (0x8086, 0x09A2)) -> Fabric:
    return topology_t(hb_id=hb).replace_function(DSP0, acs=None,
                                                 acs_unknown="captured without root")


def test_check_json_map_type_value_null_when_unknown(tmp_path: Path, capsys: Any) -> None:
    path = _save(tmp_path, _unknown_dsp0())
    rc, d = _run_json(check, _ns(path, provider="0000:03:00.0", clients=["0000:03:00.1"]),
                      capsys)
    assert rc == 3 and d["map_type"] == "UNKNOWN" and d["map_type_value"] is None
    assert d["clients"][0]["map_type_value"] is None
    # every possibility is supported at distance 2: the kernel's return is certain
    assert d["distance"] == 2 and d["possible"] is True


@pytest.mark.parametrize("clients,possible,distance", [
    (["0000:04:00.0", "0000:03:00.1"], True, 4 + 2),
    (["0000:04:00.0", "0000:05:00.0"], False, -1),
])
def test_check_json_possible_multi_client(tmp_path: Path, capsys: Any, clients: list[str],
                                          possible: bool, distance: int) -> None:
    path = _save(tmp_path, topology_t())
    rc, d = _run_json(check, _ns(path, provider="0000:03:00.0", clients=clients), capsys)
    assert d["possible"] is possible and d["distance"] == distance
    assert rc == (0 if possible else 1)


def test_check_json_possible_null_when_unknown(tmp_path: Path, capsys: Any) -> None:
    path = _save(tmp_path, _unknown_dsp0(hb=(0x8086, 0x4C43)))
    rc, d = _run_json(check, _ns(path, provider="0000:03:00.0",
                                 clients=["0000:04:00.0", "0000:03:00.1"]), capsys)
    assert rc == 3 and d["possible"] is None and d["distance"] is None


# ---------------------------------------------------------------------------
# multi-client fixes: once each; an RCiEP cannot move below a switch


def test_check_fixes_not_repeated(tmp_path: Path, capsys: Any) -> None:
    path = _save(tmp_path, topology_t())
    _, d = _run_json(check, _ns(path, provider="0000:03:00.0",
                                clients=["0000:05:00.0", "0000:00:04.0"]), capsys)
    keys = [(f["kind"], f["text"]) for f in d["fix"]]
    assert len(keys) == len(set(keys)) and keys


def test_check_rciep_is_not_told_to_move(tmp_path: Path, capsys: Any) -> None:
    path = _save(tmp_path, topology_t())
    _, d = _run_json(check, _ns(path, provider="0000:00:04.0",
                                clients=["0000:04:00.0", "0000:05:00.0"]), capsys)
    texts = [f["text"] for f in d["fix"]]
    assert not any("below one PCIe switch whose" in t for t in texts)
    assert any("root-complex integrated endpoint" in t and "cannot be moved" in t
               for t in texts)


# ---------------------------------------------------------------------------
# explain: no common ancestor -> ACS is not consulted, nothing "redirects"


def test_explain_no_common_ancestor_acs_not_consulted(tmp_path: Path, capsys: Any) -> None:
    f = topology_t().with_acs_control(RP1, 0x001D)
    r = calc_map_type_and_dist(f, PROFILES["pci-next"], A, C, verbose=True)
    e = explain_pair(f, PROFILES["pci-next"], r)
    assert not any(h.redirects for h in e.hops)
    assert any("not consulted" in h.acs for h in e.hops if h.bdf == RP1)
    assert any("ACS is not consulted" in s for s in e.story)
    path = _save(tmp_path, f)
    explain.run(_ns(path, json=False, provider="0000:03:00.0", client="0000:05:00.0"))
    assert "<- redirects" not in capsys.readouterr().out


# ---------------------------------------------------------------------------
# what-if: entries that match nothing are reported


def test_cmdline_entry_matching_nothing_is_warned() -> None:
    f = topology_t(host=HOST_OFF)
    _, notes = apply_whatif(f, WhatIf(cmdline="pci=disable_acs_redir=0000:09:00.0;0000:02:00.0 "
                                              "pci=config_acs=0000000@pci:1234:5678"))
    warned = [n for n in notes if "matches no device" in n]
    assert len(warned) == 2
    assert any("0000:09:00.0" in n for n in warned) and any("pci:1234:5678" in n for n in warned)
    assert not any("'0000:02:00.0'" in n for n in warned)


def test_repeated_option_note() -> None:
    _, notes = apply_whatif(topology_t(host=HOST_OFF), WhatIf(
        cmdline="pci=disable_acs_redir=0000:02:00.0 pci=disable_acs_redir=0000:02:01.0"))
    assert any("only the last value takes effect" in n for n in notes)


# ---------------------------------------------------------------------------
# --kernel newer than known


@pytest.mark.parametrize("text", ["7.4", "7.4.1", "8.0", "7.10-rc2"])
def test_newer_kernel_uses_newest_profile_with_note(text: str) -> None:
    assert profile_for_version(text).key == "pci-next"
    c = resolve_profile(None, text)
    assert c.profile.key == "pci-next" and "newer than anything this model knows" in c.reason
    c2 = resolve_profile(text)
    assert "newer than anything" in c2.reason


def test_known_kernel_has_no_newer_note() -> None:
    assert "newer" not in resolve_profile(None, "7.3").reason


def test_check_kernel_74_runs(tmp_path: Path, capsys: Any) -> None:
    path = _save(tmp_path, topology_t())
    rc, d = _run_json(check, _ns(path, provider="0000:03:00.0", clients=["0000:03:00.1"],
                                 kernel="7.4"), capsys)
    assert rc == 0 and "newer than anything" in d["profile"]["reason"]


# ---------------------------------------------------------------------------
# check: a provider without a p2pmem pool


def test_check_notes_provider_without_pool(tmp_path: Path, capsys: Any) -> None:
    path = _save(tmp_path, topology_t())
    _, d = _run_json(check, _ns(path, provider="0000:03:00.1", clients=["0000:03:00.0"]),
                     capsys)
    assert any("no p2pmem pool" in n and "nvmet" in n and "v6.19" in n for n in d["notes"])
    _, d2 = _run_json(check, _ns(path, provider="0000:03:00.0", clients=["0000:03:00.1"]),
                      capsys)
    assert not any("no p2pmem pool" in n for n in d2["notes"])


def test_check_text_notes_provider_without_pool(tmp_path: Path, capsys: Any) -> None:
    path = _save(tmp_path, topology_t())
    check.run(_ns(path, json=False, provider="0000:03:00.1", clients=["0000:03:00.0"]))
    assert "note: 0000:03:00.1 has no p2pmem pool" in capsys.readouterr().out


# ---------------------------------------------------------------------------
# 7.1.y: the accelerator-id backport release is unknown (spec §0.4)


def _dsa_first() -> Fabric:
    return topology_t(hb_id=(0x8086, 0x0B25))  # DSA SPR0 first on the root bus


@pytest.mark.parametrize("version,expect", [
    ("7.1", MapType.NOT_SUPPORTED), ("7.1.0", MapType.NOT_SUPPORTED),
    ("7.1.4", MapType.UNKNOWN), ("7.1.y", MapType.UNKNOWN),
    ("7.2", MapType.THRU_HOST_BRIDGE), ("7.2-rc1", MapType.THRU_HOST_BRIDGE),
])
def test_71y_accelerator_backport_unknown(version: str, expect: MapType) -> None:
    prof = profile_for_version(version)
    r = calc_map_type_and_dist(_dsa_first(), prof, A, C, verbose=True)
    assert r.map_type is expect
    if expect is MapType.UNKNOWN:
        assert r.unknown is not None and "7.1.y stable release" in r.unknown
        assert set(r.possible) == {MapType.NOT_SUPPORTED, MapType.THRU_HOST_BRIDGE}
        assert distance_many(_dsa_first(), prof, A, [C], verbose=False).distance is None


def test_71y_pairs_not_depending_on_the_entries_stay_certain() -> None:
    prof = profile_for_version("7.1.4")
    assert prof.key == "7.1"
    f = _dsa_first()
    assert calc_map_type_and_dist(f, prof, A, A1, verbose=True).map_type is MapType.BUS_ADDR
    g = topology_t(hb_id=(0x8086, 0x09A2))  # whitelisted either way
    assert calc_map_type_and_dist(g, prof, A, C, verbose=True).map_type \
        is MapType.THRU_HOST_BRIDGE
    amd = _dsa_first().with_host(cpu_vendor="AuthenticAMD", cpu_family=0x19)
    assert calc_map_type_and_dist(amd, prof, A, C, verbose=True).map_type \
        is MapType.THRU_HOST_BRIDGE


def test_71y_matrix_matches_calc() -> None:
    f = _dsa_first()
    eps = [A, A1, B, C, D]
    prof = PROFILES["7.1.y"]
    m = compute_matrix(f, prof, eps, eps)
    for i, x in enumerate(eps):
        for j, y in enumerate(eps):
            r = calc_map_type_and_dist(f, prof, x, y, verbose=False)
            assert (m.map_types[i][j], m.dists[i][j]) == (r.map_type, r.dist)
    assert MapType.UNKNOWN in {t for row in m.map_types for t in row}


# ---------------------------------------------------------------------------
# v5.3-5.4 with an unknown IOMMU state: in the matrix too


def test_v53_unknown_iommu_matrix_and_certain_cases() -> None:
    host = HostContext(kernel_release="5.3", arch="x86_64", cpu_vendor="AuthenticAMD",
                       cpu_family=0x17, iommu=None)
    f = topology_t(host=host, hb_id=(0x1022, 0x1450))
    prof = profile_for_version("5.3")
    m = compute_matrix(f, prof, [A], [C])
    assert m.map_types[0][0] is MapType.UNKNOWN
    r = calc_map_type_and_dist(f, prof, A, C, verbose=False)
    assert r.unknown is not None and "IOMMU" in r.unknown
    # not whitelisted: NOT_SUPPORTED either way, so certain
    g = topology_t(host=host)
    assert calc_map_type_and_dist(g, prof, A, C, verbose=False).map_type \
        is MapType.NOT_SUPPORTED
    off = f.with_host(iommu=IommuMode.OFF)
    assert calc_map_type_and_dist(off, prof, A, C, verbose=False).map_type \
        is MapType.THRU_HOST_BRIDGE


@pytest.mark.parametrize("seed", range(20))
def test_matrix_matches_calc_53_and_71y(seed: int) -> None:
    f, eps = _random_fabric(random.Random(seed))
    if seed % 2:
        f = f.with_host(iommu=None)
    assert_matrix_matches_calc(f, eps, ("5.3", "7.1.y"))


# ---------------------------------------------------------------------------
# find: unknown only when an unknown provider could tie or beat the best


def test_find_unknown_when_an_unknown_provider_could_win(tmp_path: Path, capsys: Any) -> None:
    f = _unknown_dsp0(hb=(0x8086, 0x4C43))
    r = find_many(f, PROFILES["pci-next"], [A1], rng=random.Random(0))
    assert r.choice is None and r.unknown is not None
    path = _save(tmp_path, f)
    rc, d = _run_json(find, _ns(path, clients=["0000:03:00.1"]), capsys)
    assert rc == 3 and d["outcome"] == "unknown"
    find.run(_ns(path, json=False, clients=["0000:03:00.1"]))
    out = capsys.readouterr().out
    assert "returns NULL" not in out and "unknown" in out


def test_find_certain_when_unknown_provider_cannot_win() -> None:
    # host bridge not whitelisted, DSP0 unreadable: A -> B is BUS_ADDR 4 or NOT_SUPPORTED
    # (unknown, at least 4); B itself is a certain provider at distance 0.
    f = _unknown_dsp0(hb=(0x8086, 0x4C43))
    assert distance_many(f, PROFILES["pci-next"], A, [B], verbose=False).distance is None
    r = find_many(f, PROFILES["pci-next"], [B], rng=random.Random(0))
    assert r.choice == B and r.best == 0 and r.unknown is None
    assert "at least 4 > 0" in r.losers[A]


def test_config_acs_fix_keeps_unneeded_bits_with_x() -> None:
    f = topology_t(host=HOST_OFF, dsp_ctrl={0: 0x001D})
    prof = PROFILES["6.11"]
    r = calc_map_type_and_dist(f, prof, A, A1, verbose=False)
    e = explain_pair(f, prof, r)
    assert e.config_acs == "x0x00xx@0000:02:00.0"
    g, _ = apply_whatif(f, WhatIf(cmdline=f"pci=config_acs={e.config_acs}"))
    assert calc_map_type_and_dist(g, prof, A, A1, verbose=False).map_type is MapType.BUS_ADDR
    on = dataclasses.replace(AMD19, iommu=IommuMode.TRANSLATED)
    f2 = topology_t(host=on, dsp_ctrl={0: 0x001D})
    e2 = explain_pair(f2, prof, calc_map_type_and_dist(f2, prof, A, A1, verbose=False))
    assert e2.config_acs == "x0100x1@0000:02:00.0"  # SV/UF set by the IOMMU are kept
