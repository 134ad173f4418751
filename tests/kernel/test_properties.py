"""Property tests over random builder fabrics (hypothesis)."""

from __future__ import annotations

import os
import random
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from p2pdma.fabric.bdf import Bdf
from p2pdma.fabric.builder import FabricBuilder
from p2pdma.fabric.model import Acs, Fabric, HostContext, PortType
from p2pdma.kernel import (
    PROFILES,
    MapType,
    calc_map_type_and_dist,
    distance_many,
    find_many,
)
from p2pdma.kernel.matrix import compute_matrix

HB_IDS = [(0x8086, 0x4C43), (0x8086, 0x09A2), (0x8086, 0x2F00), (0x1022, 0x1450), None]
CTRLS = [0, 0, 0x1D, 0x0C, 0x04, 0x11]
HOSTS = [
    HostContext(arch="x86_64", cpu_vendor="GenuineIntel", cpu_family=6),
    HostContext(arch="x86_64", cpu_vendor="AuthenticAMD", cpu_family=0x19),
    HostContext(arch="aarch64"),
]
PROFILE_KEYS = ["4.20", "5.2", "5.5", "5.9", "5.14", "5.19", "6.11", "pci-next", "leon"]


@st.composite
def fabrics(draw: Any) -> Fabric:
    b = FabricBuilder(draw(st.sampled_from(HOSTS)))
    for h in range(draw(st.integers(1, 2))):
        hb = b.host_bridge(bus=0x80 * h, first=draw(st.sampled_from(HB_IDS)))
        for _ in range(draw(st.integers(1, 3))):
            rp = b.root_port(hb, acs_ctrl=draw(st.sampled_from(CTRLS)))
            ports = [rp]
            if draw(st.booleans()):
                _, dsps = b.switch(rp, ports=draw(st.integers(1, 3)),
                                   acs_ctrl=draw(st.sampled_from(CTRLS)),
                                   usp_acs_cap=draw(st.sampled_from([None, 0x5F])))
                ports = dsps
                if draw(st.booleans()):
                    _, deeper = b.switch(dsps[0], ports=2, acs_ctrl=draw(st.sampled_from(CTRLS)))
                    ports = deeper + dsps[1:]
            for port in ports:
                nfn = draw(st.integers(0, 2))
                for fn in range(nfn):
                    if draw(st.booleans()):
                        b.nvme(port, fn=fn, cmb_size=draw(st.sampled_from([0, 4 << 20])))
                    else:
                        ep = b.endpoint(port, fn=fn, driver="mlx5_core")
                        if draw(st.booleans()):
                            b.update(ep, acs=Acs(0x148, 0x5F, draw(st.sampled_from(CTRLS))))
        if draw(st.booleans()):
            b.endpoint(hb, dev=0x10, port_type=PortType.RC_INTEGRATED_ENDPOINT)
    return b.build()


def endpoints(f: Fabric) -> list[Bdf]:
    return [x.bdf for x in f.functions if not x.is_bridge and (x.class_code >> 16) != 6]


# P2PDMA_KERNEL_EXAMPLES raises the example count for a longer local run.
SETTINGS = settings(max_examples=int(os.environ.get("P2PDMA_KERNEL_EXAMPLES", "60")), deadline=None,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


@SETTINGS
@given(fabrics(), st.sampled_from(PROFILE_KEYS), st.data())
def test_symmetric_facts(f: Fabric, key: str, data: Any) -> None:
    eps = endpoints(f)
    if not eps:
        return
    p = data.draw(st.sampled_from(eps))
    c = data.draw(st.sampled_from(eps))
    prof = PROFILES[key]
    pc = calc_map_type_and_dist(f, prof, p, c, verbose=True)
    cp = calc_map_type_and_dist(f, prof, c, p, verbose=True)
    assert pc.dist == cp.dist
    assert pc.common_upstream == cp.common_upstream
    assert pc.map_type == cp.map_type  # the kernel's verdict is symmetric for PCI pairs
    assert set(pc.acs_redirect) == set(cp.acs_redirect)
    if pc.common_upstream is not None:
        # ACS set: provider side A[0..i] *including* the common bridge, then client side
        i = pc.provider_chain.index(pc.common_upstream)
        j = pc.client_chain.index(pc.common_upstream)
        prov_side = [x for x in pc.provider_chain[: i + 1] if x in pc.acs_redirect]
        cli_side = [x for x in pc.client_chain[:j] if x in pc.acs_redirect]
        assert list(pc.acs_redirect) == prov_side + cli_side
        assert pc.dist == i + j
        red = f.get(pc.common_upstream).acs
        assert (pc.common_upstream in pc.acs_redirect) == bool(red and red.control & 0x2C)
    else:
        assert pc.dist == len(pc.provider_chain) + len(pc.client_chain) or key in ("5.2",)
        assert pc.acs_redirect == ()


@SETTINGS
@given(fabrics(), st.sampled_from(PROFILE_KEYS), st.data())
def test_distance_many_is_sum(f: Fabric, key: str, data: Any) -> None:
    eps = endpoints(f)
    if not eps:
        return
    prof = PROFILES[key]
    p = data.draw(st.sampled_from(eps))
    clients = data.draw(st.lists(st.sampled_from(eps), min_size=1, max_size=4))
    r = distance_many(f, prof, p, clients, verbose=True)
    singles = [calc_map_type_and_dist(f, prof, p, c, verbose=False) for c in clients]
    if any(s.map_type is MapType.NOT_SUPPORTED for s in singles):
        assert r.distance == -1
    else:
        assert r.distance == sum(s.dist for s in singles)
    assert len(r.pairs) == len(clients)  # verbose evaluates every client


@SETTINGS
@given(fabrics(), st.sampled_from(PROFILE_KEYS), st.data(), st.integers(0, 2**32))
def test_find_many_minimum_and_ties(f: Fabric, key: str, data: Any, seed: int) -> None:
    eps = endpoints(f)
    if not eps:
        return
    prof = PROFILES[key]
    clients = data.draw(st.lists(st.sampled_from(eps), min_size=1, max_size=3))
    r = find_many(f, prof, clients, rng=random.Random(seed))
    published = [x.bdf for x in f.functions if x.p2pmem is not None and x.p2pmem.published]
    ok = {b: d for b in published
          if (d := distance_many(f, prof, b, clients, verbose=False).distance) is not None
          and d >= 0}
    if not ok:
        assert r.choice is None and r.ties == ()
        return
    best = min(ok.values())
    assert r.best == best
    assert set(r.ties) == {b for b, d in ok.items() if d == best}
    assert r.choice in r.ties
    for b in published:
        if b != r.choice:
            assert b in r.losers


@SETTINGS
@given(fabrics(), st.sampled_from(PROFILE_KEYS))
def test_matrix_equals_pairwise(f: Fabric, key: str) -> None:
    prof = PROFILES[key]
    allb = [x.bdf for x in f.functions]
    m = compute_matrix(f, prof, allb, allb)
    for r, p in enumerate(allb):
        for k, c in enumerate(allb):
            pr = calc_map_type_and_dist(f, prof, p, c, verbose=False)
            assert (m.map_types[r][k], m.dists[r][k]) == (pr.map_type, pr.dist), (p, c)


def test_find_many_tie_cap_and_uniform_choice() -> None:
    b = FabricBuilder(HostContext(arch="x86_64", cpu_vendor="GenuineIntel", cpu_family=6))
    hb = b.host_bridge(first=(0x8086, 0x09A2))
    rp = b.root_port(hb, dev=1)
    _, dsps = b.switch(rp, ports=2)
    client = b.endpoint(dsps[0], driver="mlx5_core")
    # 600 providers behind other root ports: all at distance 4 + 4 via the host bridge
    provs = []
    for k in range(3):
        rp2 = b.root_port(hb, dev=2 + k)
        _, ds = b.switch(rp2, ports=1)
        # many functions on one bus below one port: build devices 0..31 fn 0..7
        for dev in range(25):
            for fn in range(8):
                bdf = b.endpoint(ds[0], dev=dev, fn=fn, driver="nvme", bars=[(0, 1 << 20)])
                b.set_p2pmem(bdf, size=1 << 20)
                provs.append(bdf)
    f = b.build()
    r = find_many(f, PROFILES["pci-next"], [client], rng=random.Random(1))
    assert r.best == 8 and len(provs) == 600
    assert len(r.ties) == 512
    capped = [x for x, why in r.losers.items() if "cap" in why]
    assert len(capped) == 600 - 512
    # the cap keeps the first 512 in enumeration order
    assert set(capped) == set(sorted(provs)[512:])
    picks = {find_many(f, PROFILES["pci-next"], [client], rng=random.Random(s)).choice
             for s in range(12)}
    assert len(picks) > 6  # uniform over the ties, not always the first
