"""Spec §2.11: every worked example on topology T (profile pci-next, Intel CPU,
host bridge 8086:4c43 not whitelisted)."""

from __future__ import annotations

import pytest
from kfabrics import A1, AMD19, DSP0, DSP1, USP, A, B, C, D, E, topology_t

from p2pdma.fabric.bdf import Bdf
from p2pdma.kernel import (
    PROFILES,
    MapType,
    NonPciClient,
    calc_map_type_and_dist,
    distance_many,
)

P = PROFILES["pci-next"]
W1 = "ACS redirect is set between the client and provider (0000:03:00.0)"
W2 = "to disable ACS redirect for this path, add the kernel parameter: pci=disable_acs_redir="
W3 = ("cannot be used for peer-to-peer DMA as the client and provider (0000:03:00.0) do not "
      "share an upstream bridge or whitelisted host bridge")
W4 = "pci 0000:00:00.0: Host bridge not in P2PDMA whitelist: 8086:4c43"


def lines(r: object) -> list[str]:
    return [str(m) for m in r.messages]  # type: ignore[attr-defined]


def test_chains_of_t() -> None:
    f = topology_t()
    r = calc_map_type_and_dist(f, P, A, B, verbose=False)
    assert [str(b) for b in r.provider_chain] == [
        "0000:03:00.0", "0000:02:00.0", "0000:01:00.0", "0000:00:01.0"]
    assert [str(b) for b in r.client_chain] == [
        "0000:04:00.0", "0000:02:01.0", "0000:01:00.0", "0000:00:01.0"]
    assert calc_map_type_and_dist(f, P, C, D, verbose=False).client_chain == (D,)


@pytest.mark.parametrize("client,dist", [(A, 0), (A1, 2), (B, 4)])
def test_no_acs_bus_addr(client: Bdf, dist: int) -> None:
    f = topology_t()
    r = calc_map_type_and_dist(f, P, A, client, verbose=True)
    assert (r.map_type, r.dist, r.messages) == (MapType.BUS_ADDR, dist, ())
    assert r.whitelist is None  # host-bridge check skipped
    assert distance_many(f, P, A, [client], verbose=True).distance == dist


def test_a_a1_dsp_iommu_acs() -> None:
    f = topology_t(dsp_ctrl={0: 0x001D})
    r = calc_map_type_and_dist(f, P, A, A1, verbose=True)
    assert r.map_type is MapType.NOT_SUPPORTED and r.dist == 2
    assert r.acs_redirect == (DSP0,) and r.common_upstream == DSP0
    assert lines(r) == [f"nvme 0000:03:00.1: {W1}", f"nvme 0000:03:00.1: {W2}0000:02:00.0", W4,
                        f"nvme 0000:03:00.1: {W3}"]
    assert distance_many(f, P, A, [A1], verbose=True).distance == -1


def test_a_b_both_dsps() -> None:
    f = topology_t(dsp_ctrl={0: 0x000C, 1: 0x000C})
    r = calc_map_type_and_dist(f, P, A, B, verbose=True)
    assert r.map_type is MapType.NOT_SUPPORTED and r.dist == 4
    assert lines(r) == [f"nvme 0000:04:00.0: {W1}",
                        f"nvme 0000:04:00.0: {W2}0000:02:00.0;0000:02:01.0", W4,
                        f"nvme 0000:04:00.0: {W3}"]
    assert r.acs_redirect == (DSP0, DSP1)  # provider side first


def test_a_b_amd_cpu() -> None:
    f = topology_t(host=AMD19, dsp_ctrl={0: 0x000C, 1: 0x000C})
    r = calc_map_type_and_dist(f, P, A, B, verbose=True)
    assert r.map_type is MapType.THRU_HOST_BRIDGE and r.dist == 4
    assert lines(r) == [f"nvme 0000:04:00.0: {W1}",
                        f"nvme 0000:04:00.0: {W2}0000:02:00.0;0000:02:01.0"]
    assert r.whitelist is None and r.cpu_rule is True
    assert distance_many(f, P, A, [B], verbose=True).distance == 4


def test_common_ancestor_usp_redirect_counts() -> None:
    f = topology_t(usp_cap=0x005F, usp_ctrl=0x0004)
    r = calc_map_type_and_dist(f, P, A, B, verbose=True)
    assert r.common_upstream == USP and r.acs_redirect == (USP,)
    assert r.map_type is MapType.NOT_SUPPORTED and r.dist == 4
    assert lines(r) == [f"nvme 0000:04:00.0: {W1}", f"nvme 0000:04:00.0: {W2}0000:01:00.0", W4,
                        f"nvme 0000:04:00.0: {W3}"]


@pytest.mark.parametrize("ctrl", [0, 0x1D])
def test_a_c_cross_root_port_only_w3(ctrl: int) -> None:
    f = topology_t(dsp_ctrl={0: ctrl})
    r = calc_map_type_and_dist(f, P, A, C, verbose=True)
    assert r.map_type is MapType.NOT_SUPPORTED and r.dist == 6
    assert lines(r) == [f"nvme 0000:05:00.0: {W3}"]  # no W4 on this path in [PCI]
    assert r.common_upstream is None and r.acs_redirect == ()


@pytest.mark.parametrize("hb", [(0x8086, 0x09A2), (0x8086, 0x2F00)])
def test_a_c_whitelisted(hb: tuple[int, int]) -> None:
    f = topology_t(hb_id=hb)
    r = calc_map_type_and_dist(f, P, A, C, verbose=True)
    assert (r.map_type, r.dist, r.messages) == (MapType.THRU_HOST_BRIDGE, 6, ())
    assert distance_many(f, P, A, [C], verbose=True).distance == 6


def test_a_d_rciep() -> None:
    r = calc_map_type_and_dist(topology_t(), P, A, D, verbose=True)
    assert r.map_type is MapType.NOT_SUPPORTED and r.dist == 5
    assert lines(r) == [f"nvme 0000:00:04.0: {W3}"]


def test_distance_many_is_a_sum() -> None:
    f = topology_t()
    assert distance_many(f, P, A, [B, A], verbose=False).distance == 4 + 0
    assert distance_many(f, P, A, [A1, B], verbose=False).distance == 2 + 4


def test_non_pci_client() -> None:
    f = topology_t()
    orphan = NonPciClient("rxe0", "infiniband rxe0", None)
    r = distance_many(f, P, A, [B, orphan, C], verbose=True)
    assert r.distance == -1
    assert [str(m) for m in r.messages] == [
        "infiniband rxe0: cannot be used for peer-to-peer DMA as it is not a PCI device"]
    assert len(r.pairs) == 1  # returned immediately; C never evaluated
    assert distance_many(f, P, A, [orphan], verbose=False).messages == ()
    # below a PCI device: walks to it
    ib = NonPciClient("mlx5_0", "infiniband mlx5_0", B)
    assert distance_many(f, P, A, [ib], verbose=True).distance == 4


def test_empty_clients() -> None:
    assert distance_many(topology_t(), P, A, [], verbose=True).distance == -1


def test_verbose_evaluates_every_client_nonverbose_stops() -> None:
    f = topology_t()
    v = distance_many(f, P, A, [C, B, D], verbose=True)
    assert v.distance == -1 and len(v.pairs) == 3
    assert sum("cannot be used" in str(m) for m in v.messages) == 2
    q = distance_many(f, P, A, [C, B, D], verbose=False)
    assert q.distance == -1 and len(q.pairs) == 1 and q.messages == ()


def test_cross_host_bridge_req_same() -> None:
    f = topology_t(hb_id=(0x8086, 0x2F00), second_hb=(0x8086, 0x2F00))
    r = calc_map_type_and_dist(f, P, A, E, verbose=True)
    assert r.map_type is MapType.NOT_SUPPORTED
    assert not any("Host bridge not in" in str(m) for m in r.messages)
    assert r.whitelist is not None and len(r.whitelist.lookups) == 1  # short-circuit
    f2 = topology_t(hb_id=(0x8086, 0x09A2), second_hb=(0x8086, 0x09A2))
    r2 = calc_map_type_and_dist(f2, P, A, E, verbose=True)
    assert r2.map_type is MapType.THRU_HOST_BRIDGE and len(r2.whitelist.lookups) == 2  # type: ignore[union-attr]


def test_cross_host_bridge_second_fails() -> None:
    f = topology_t(hb_id=(0x8086, 0x09A2), second_hb=(0x8086, 0x4C43))
    r = calc_map_type_and_dist(f, P, A, E, verbose=False)
    assert r.map_type is MapType.NOT_SUPPORTED
    assert [lk.allowed for lk in r.whitelist.lookups] == [True, False]  # type: ignore[union-attr]
