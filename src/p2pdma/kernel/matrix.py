"""All-pairs verdicts, fast: the same rule as ``calc_map_type_and_dist`` (it calls
``engine.decide``), computed per provider over ranges of clients.

For a provider p with chain A = (a0, a1, ..., ak), the clients whose lowest common
ancestor with p is a_i are exactly those inside subtree(a_i) but not subtree(a_(i-1)).
With clients sorted by DFS entry time each of those sets is two slices, so a row
costs O(depth + clients) integer work: the hop count is i + depth(c) - depth(a_i),
and the ACS set is non-empty iff the provider side a0..a_i has a redirecting node or
the client side (below a_i) does, which a per-client prefix count answers in O(1).
The verdict for (common?, redirect?, host bridges) is looked up in a small cache of
``decide()`` results.  Pairs whose ACS is partly unreadable take the slow path.
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Sequence
from dataclasses import dataclass

from p2pdma.fabric.bdf import Bdf
from p2pdma.fabric.model import Fabric, PciFunction, PortType
from p2pdma.kernel.engine import (
    calc_map_type_and_dist,
    cpu_options,
    decide,
    iommu_options,
    profile_options,
)
from p2pdma.kernel.hostbridge import cpu_rule
from p2pdma.kernel.profiles import KernelProfile
from p2pdma.kernel.topology import topology
from p2pdma.kernel.types import MapType

ENDPOINT_TYPES = (PortType.ENDPOINT, PortType.LEGACY_ENDPOINT, PortType.RC_INTEGRATED_ENDPOINT,
                  PortType.NOT_PCIE, PortType.UNKNOWN)


def is_endpoint(f: PciFunction) -> bool:
    """A device that does DMA: not a bridge, not a host bridge (class 06xx)."""
    return (not f.is_bridge and f.port_type in ENDPOINT_TYPES
            and (f.class_code >> 16) != 0x06)


def is_provider_capable(f: PciFunction) -> bool:
    """Could register p2pmem: has a memory BAR (or already has a pool)."""
    return f.p2pmem is not None or any(b.is_memory and b.size > 0 for b in f.bars)


@dataclass(frozen=True)
class MatrixResult:
    providers: tuple[Bdf, ...]
    clients: tuple[Bdf, ...]
    map_types: tuple[tuple[MapType, ...], ...]  # [provider][client]
    dists: tuple[tuple[int, ...], ...]


def compute_matrix(fabric: Fabric, profile: KernelProfile, providers: Sequence[Bdf],
                   clients: Sequence[Bdf]) -> MatrixResult:
    topo = topology(fabric)
    n = len(topo.funcs)
    chain = topo.chain
    red = topo.redirect
    # DFS entry/exit times over the upstream tree (parent = chain[x][1]).
    kids: list[list[int]] = [[] for _ in range(n)]
    roots: list[int] = []
    for x in range(n):
        ch = chain[x]
        (kids[ch[1]] if len(ch) > 1 else roots).append(x)
    tin = [0] * n
    tout = [0] * n
    t = 0
    stack: list[tuple[int, bool]] = [(r, False) for r in reversed(roots)]
    while stack:
        x, done = stack.pop()
        if done:
            tout[x] = t
            continue
        tin[x] = t
        t += 1
        stack.append((x, True))
        stack.extend((k, False) for k in reversed(kids[x]))
    # Per node: counts of redirecting / unreadable nodes on its chain (itself included).
    cnt = [0] * n
    unk = [0] * n
    for x in sorted(range(n), key=lambda y: len(chain[y])):
        ch = chain[x]
        up = cnt[ch[1]] if len(ch) > 1 else 0
        upu = unk[ch[1]] if len(ch) > 1 else 0
        cnt[x] = up + (1 if red[x] else 0)
        unk[x] = upu + (1 if red[x] is None else 0)

    cidx = [topo.idx(b) for b in clients]
    order = sorted(range(len(cidx)), key=lambda k: tin[cidx[k]])
    stin = [tin[cidx[k]] for k in order]
    clen = [len(chain[c]) for c in cidx]
    chb = [topo.hb[c] for c in cidx]

    cpu = cpu_rule(profile, fabric.host)
    hbs = fabric.host_bridges
    memo: dict[tuple[bool, bool, int, int], tuple[MapType, int]] = {}

    def verdict(common: bool, redirect: bool, hp: int, hc: int) -> tuple[MapType, int]:
        key = (common, redirect, hp, hc)
        v = memo.get(key)
        if v is None:
            hb_p = hbs[hp] if hp >= 0 else None
            hb_c = hbs[hc] if hc >= 0 else None
            ds = [decide(fabric, pv, cpu, common=common, redirect=redirect, hops=0,
                         hb_p=hb_p, hb_c=hb_c, verbose=False, cpu_assume=o, iommu_assume=io)
                  for pv in profile_options(profile) for o in cpu_options(cpu)
                  for io in iommu_options(fabric, profile)]
            mts = {d.map_type for d in ds}
            v = (ds[0].map_type if len(mts) == 1 else MapType.UNKNOWN, ds[0].dist)
            memo[key] = v
        return v

    m = len(cidx)
    # Work in DFS order (s_*), where every LCA level is a contiguous slice; permute
    # back to the caller's client order at the end (skipped when it is the same).
    s_len = [clen[k] for k in order]
    s_hb = [chb[k] for k in order]
    s_cnt = [cnt[cidx[k]] for k in order]
    s_unk = [unk[cidx[k]] for k in order]
    identity = order == list(range(m))
    inv = [0] * m
    for s_pos, k in enumerate(order):
        inv[k] = s_pos
    hb_keys = sorted(set(chb))
    rows_mt: list[tuple[MapType, ...]] = []
    rows_d: list[tuple[int, ...]] = []
    # per provider host bridge: the row as if nothing shared an ancestor
    nc_rows: dict[int, tuple[list[MapType], list[int]]] = {}
    for pb in providers:
        p = topo.idx(pb)
        A = chain[p]
        hp = topo.hb[p]
        la = len(A)
        # no common ancestor: everything first, overwritten below for the root's subtree
        tmpl = nc_rows.get(hp)
        if tmpl is None:
            nc = {h: verdict(False, False, hp, h) for h in hb_keys}
            tmpl = ([nc[h][0] for h in s_hb],
                    [x + nc[h][1] for x, h in zip(s_len, s_hb, strict=True)])
            nc_rows[hp] = tmpl
        t_mt = list(tmpl[0])
        t_d = [la + x for x in tmpl[1]]
        red_v = verdict(True, True, hp, hp)
        ok_v = verdict(True, False, hp, hp)
        seen_lo, seen_hi = 0, 0
        pref_red = False
        pref_unk = False
        for i, a in enumerate(A):
            pref_red = pref_red or bool(red[a])
            pref_unk = pref_unk or red[a] is None
            lo = bisect_left(stin, tin[a])
            hi = bisect_left(stin, tout[a])
            off = i - len(chain[a])
            ca, ua = cnt[a], unk[a]
            for r0, r1 in ((lo, seen_lo), (seen_hi, hi)) if seen_hi > seen_lo else ((lo, hi),):
                if r0 >= r1:
                    continue
                if pref_unk or max(s_unk[r0:r1]) > ua:
                    for s_pos in range(r0, r1):  # slow path: an unreadable ACS decides
                        k = order[s_pos]
                        r = calc_map_type_and_dist(fabric, profile, pb, clients[k],
                                                   verbose=False)
                        t_mt[s_pos] = r.map_type
                        t_d[s_pos] = r.dist
                    continue
                if pref_red:
                    t_mt[r0:r1] = [red_v[0]] * (r1 - r0)
                    t_d[r0:r1] = [x + off + red_v[1] for x in s_len[r0:r1]]
                else:
                    rm, rb = red_v
                    om, ob = ok_v
                    t_mt[r0:r1] = [rm if x > ca else om for x in s_cnt[r0:r1]]
                    t_d[r0:r1] = [x + off + (rb if y > ca else ob)
                                  for x, y in zip(s_len[r0:r1], s_cnt[r0:r1], strict=True)]
            seen_lo, seen_hi = lo, hi
        if identity:
            rows_mt.append(tuple(t_mt))
            rows_d.append(tuple(t_d))
        else:
            rows_mt.append(tuple([t_mt[j] for j in inv]))
            rows_d.append(tuple([t_d[j] for j in inv]))
    return MatrixResult(tuple(providers), tuple(clients), tuple(rows_mt), tuple(rows_d))
