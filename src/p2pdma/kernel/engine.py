"""The P2PDMA compatibility rules (spec §2-§3, §5.1) as pure functions.

``decide()`` is the one place that turns the path facts of a pair (common
upstream bridge or not, ACS redirect or not, the two host bridges) into the
kernel's verdict for a profile.  ``calc_map_type_and_dist`` adds the log lines
and the explanation; the fast matrix (kernel/matrix.py) calls ``decide()``
directly with cached inputs.  Older algorithms are rows of the profile
(``algorithm``, ``acs_via_host_bridge``, ``cross_rc_bias``, ...), read here only.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from p2pdma.fabric.bdf import Bdf
from p2pdma.fabric.model import Fabric, HostBridge, IommuMode
from p2pdma.kernel.hostbridge import CpuRule, WhitelistResult, cpu_rule, host_bridge_whitelist
from p2pdma.kernel.profiles import KernelProfile
from p2pdma.kernel.topology import Topology, topology
from p2pdma.kernel.types import Client, KernelMessage, MapType, NonPciClient, device_prefix

# find_many's candidate array: PAGE_SIZE / sizeof(struct pci_dev *) (spec §1.6, §3)
FIND_MANY_MAX_DEVS = 512
ACS_LIST_ENTRY = 13  # "0000:00:00.0;"

# ---------------------------------------------------------------------------
# The decision


@dataclass(frozen=True)
class Decision:
    map_type: MapType
    dist: int  # the distance the kernel reports for this client (hops, or 0x1000+ in v5.2)
    legacy_return: int | None  # v4.20-5.4 upstream_bridge_distance() return (-1, -2, dist)
    whitelist: WhitelistResult | None  # None: not consulted
    whitelist_warns: bool  # W4 would be printed (on the failing lookup's device)
    consulted_cpu: bool
    note: str | None = None


def _iommu_present(mode: IommuMode | None) -> bool | None:
    if mode is None:
        return None
    return mode is not IommuMode.OFF


def decide(fabric: Fabric, profile: KernelProfile, cpu: CpuRule, *, common: bool,
           redirect: bool, hops: int, hb_p: HostBridge | None, hb_c: HostBridge | None,
           verbose: bool, cpu_assume: bool | None = None,
           iommu_assume: bool | None = None) -> Decision:
    """The verdict for one pair given its path facts.  ``cpu_assume`` replaces an
    unknown CPU rule value and ``iommu_assume`` an unknown IOMMU state (the caller
    evaluates both possibilities; see ``iommu_options``)."""
    algo = profile.algorithm
    if common and not redirect:
        return Decision(MapType.BUS_ADDR, hops, hops if algo in _LEGACY else None,
                        None, False, False)
    if common and redirect and not profile.acs_via_host_bridge:
        # v4.20-5.4: ACS redirect is a hard reject (-2).
        return Decision(MapType.NOT_SUPPORTED, hops, -2, None, False, False)
    if not common and not profile.no_common_via_host_bridge:
        return Decision(MapType.NOT_SUPPORTED, hops, -1, None, False, False)
    if hb_p is None or hb_c is None:
        return Decision(MapType.NOT_SUPPORTED, hops, -1 if algo in _LEGACY else None, None,
                        False, False, note="a device's root bus has no host bridge")
    if algo == "rc-whitelist":
        # v5.2 root_complex_whitelist(provider) && (client); v5.3 ignores it with an IOMMU.
        if profile.whitelist_ignored_with_iommu:
            present = _iommu_present(fabric.host.iommu)
            if present is None:
                present = iommu_assume
            if present is None or present:
                why = ("an IOMMU is present" if present else
                       "unknown because the IOMMU state is not known (assumed present)")
                wl = WhitelistResult(False, hb_p == hb_c, (), ignored=why)
                return Decision(MapType.NOT_SUPPORTED, hops, -1, wl, False, False, note=why)
        wl = host_bridge_whitelist(fabric, profile, hb_p, hb_c)
        if wl.allowed:
            d = profile.cross_rc_bias + hops
            return Decision(MapType.THRU_HOST_BRIDGE, d, d, wl, False, False)
        return Decision(MapType.NOT_SUPPORTED, hops, -1, wl, False, False)
    # v5.5+: candidate THRU_HOST_BRIDGE; the CPU rule, then the table.
    cpu_ok = cpu.value if cpu.value is not None else cpu_assume
    if profile.cpu_rule and cpu_ok:
        return Decision(MapType.THRU_HOST_BRIDGE, hops, None, None, False, True)
    wl = host_bridge_whitelist(fabric, profile, hb_p, hb_c)
    warn_flag = {None: False, "acs_redirects": redirect, "verbose": verbose}[
        profile.whitelist_warn_mode]
    warns = warn_flag and any(lk.no_match for lk in wl.lookups)
    mt = MapType.THRU_HOST_BRIDGE if wl.allowed else MapType.NOT_SUPPORTED
    return Decision(mt, hops, None, wl, warns, profile.cpu_rule)


_LEGACY = ("common-bridge", "rc-whitelist")


def iommu_options(fabric: Fabric, profile: KernelProfile) -> tuple[bool | None, ...]:
    """The IOMMU states to evaluate: both when the profile's verdict depends on it
    (v5.3-5.4 ignore the root-complex whitelist with an IOMMU) and it is not known."""
    if profile.whitelist_ignored_with_iommu and fabric.host.iommu is None:
        return (False, True)
    return (None,)


def profile_options(profile: KernelProfile) -> tuple[KernelProfile, ...]:
    """The profile, plus its variant with backported table entries when the release
    may or may not carry them (7.1.y)."""
    return (profile,) if profile.backport is None else (profile, profile.backport)


def cpu_options(cpu: CpuRule) -> tuple[bool | None, ...]:
    return (None,) if cpu.value is not None else (False, True)

# ---------------------------------------------------------------------------
# Pair results


@dataclass(frozen=True)
class PairResult:
    provider: Bdf
    client: Bdf
    map_type: MapType  # UNKNOWN when an unreadable fact decides (see .unknown)
    dist: int
    common_upstream: Bdf | None
    acs_redirect: tuple[Bdf, ...]  # the ACS set in kernel order (provider side incl. C)
    acs_unreadable: tuple[Bdf, ...]  # path nodes whose ACS could not be read
    provider_chain: tuple[Bdf, ...]
    client_chain: tuple[Bdf, ...]
    messages: tuple[KernelMessage, ...]
    cpu_rule: bool | None  # the CPU rule's value (False when the profile has none)
    cpu: CpuRule
    whitelist: WhitelistResult | None
    unknown: str | None = None
    possible: tuple[MapType, ...] = ()  # when unknown: what each possibility gives
    danger: str | None = None  # e.g. the §13.1 W2 overflow oops
    legacy_return: int | None = None
    profile_key: str = ""
    notes: tuple[str, ...] = ()
    # every distinct (map type, dist) the possibilities give; one entry when known
    outcomes: tuple[tuple[MapType, int], ...] = ()

    @property
    def supported(self) -> bool:
        return self.map_type.supported

    @property
    def certain_supported(self) -> bool | None:
        """Whether the pair is supported (the only thing distance_many asks), None when
        that differs between the possibilities of an unknown map type."""
        outs = self.outcomes or ((self.map_type, self.dist),)
        kinds = {mt.supported for mt, _ in outs}
        return kinds.pop() if len(kinds) == 1 else None

    @property
    def certain_dist(self) -> int | None:
        """The distance distance_many adds for a supported pair, None when it differs."""
        outs = self.outcomes or ((self.map_type, self.dist),)
        dists = {d for mt, d in outs if mt.supported}
        return dists.pop() if len(dists) == 1 else None

    @property
    def acs_redirects(self) -> bool:
        return bool(self.acs_redirect)

    def to_json(self, profile: KernelProfile) -> dict[str, Any]:
        return {
            "provider": str(self.provider),
            "client": str(self.client),
            "map_type": self.map_type.name,
            "map_type_value": (None if self.map_type is MapType.UNKNOWN
                               else profile.map_type_value(self.map_type)),
            "dist": self.dist,
            "path": [str(b) for b in self.path],
            "common_upstream": str(self.common_upstream) if self.common_upstream else None,
            "acs_redirect": [str(b) for b in self.acs_redirect],
            "acs_unreadable": [str(b) for b in self.acs_unreadable],
            "cpu_rule": self.cpu.to_json(),
            "whitelist": self.whitelist.to_json() if self.whitelist else None,
            "unknown": self.unknown,
            "possible": [m.name for m in self.possible],
            "danger": self.danger,
            "legacy_return": self.legacy_return,
            "messages": [str(m) for m in self.messages],
            "notes": list(self.notes),
        }

    @property
    def path(self) -> tuple[Bdf, ...]:
        """provider ... common ancestor ... client (without a common ancestor: up one
        chain, across the host bridge(s), down the other)."""
        if self.common_upstream is not None:
            i = self.provider_chain.index(self.common_upstream)
            j = self.client_chain.index(self.common_upstream)
            return self.provider_chain[: i + 1] + tuple(reversed(self.client_chain[:j]))
        return self.provider_chain + tuple(reversed(self.client_chain))


def _msg(profile: KernelProfile, mid: str, fabric: Fabric, dev: Bdf, **kw: Any) -> KernelMessage:
    f = fabric.get(dev)
    return KernelMessage(mid, dev, device_prefix(f.driver, dev),
                         profile.messages[mid].format(**kw))


def acs_list_text(profile: KernelProfile, acs: Sequence[Bdf]) -> tuple[str, bool]:
    """The W2 list as printed, and whether the seq_buf overflowed (spec §2.7, §13.1)."""
    full = "".join(f"{b};" for b in acs)
    room = profile.acs_list_bytes - 1  # seq_buf keeps one byte for the NUL
    if len(full) > room:
        return full[:room], True
    return full[:-1], False


def _danger(profile: KernelProfile, n: int) -> str | None:
    if n * ACS_LIST_ENTRY <= profile.acs_list_bytes - 1 or profile.w2_overflow_guard:
        return None
    return (f"evaluating this pair verbosely crashes kernels with the {profile.acs_list_bytes}-"
            f"byte ACS list ({profile.name}): its {n} redirecting devices overflow the buffer "
            "(W2 is cut at 127 characters, then the trailing-';' drop writes past the buffer; "
            "a real 6.12.117 kernel oopses). The first O_DIRECT use of the pair, a verbose "
            "distance query or nvmet's explicit p2pmem triggers it; 9 redirecting devices is "
            "the most that works")


def _path_facts(topo: Topology, p: int, c: int, assume_unknown: bool
                ) -> tuple[int, int, list[int], list[int]]:
    """(i, j, acs set, unreadable) for chains A=chain(p), B=chain(c); i = -1 when no
    common ancestor.  Unreadable nodes count as redirecting when ``assume_unknown``."""
    A, B = topo.chain[p], topo.chain[c]
    red = topo.redirect
    for i, a in enumerate(A):
        if a in B:
            j = B.index(a)
            nodes = A[: i + 1] + B[:j]
            acs = [x for x in nodes if red[x] or (red[x] is None and assume_unknown)]
            unk = [x for x in nodes if red[x] is None]
            return i, j, acs, unk
    return -1, -1, [], []


def calc_map_type_and_dist(fabric: Fabric, profile: KernelProfile, provider: Bdf, client: Bdf,
                           *, verbose: bool, cache: MapTypeCache | None = None) -> PairResult:
    """``calc_map_type_and_dist()`` (v5.14+; older profiles: their algorithm) for two PCI
    functions, with the log lines a call with this ``verbose`` prints, in order.
    ``cache``: the provider's map-type cache, written as the kernel does (every call)."""
    topo = topology(fabric)
    p, c = topo.idx(provider), topo.idx(client)
    cpu = cpu_rule(profile, fabric.host)
    # Unreadable facts: evaluate each possibility; report UNKNOWN if they disagree.
    _, _, _, unk = _path_facts(topo, p, c, False)
    acs_opts = (False, True) if unk else (False,)
    iommu_opts = iommu_options(fabric, profile)
    profs = profile_options(profile)
    combos = [(a, ca, io, pv) for pv in range(len(profs)) for a in acs_opts
              for ca in cpu_options(cpu) for io in iommu_opts]
    results = [_evaluate(fabric, topo, profs[pv], cpu, p, c, verbose, a, ca, io)
               for a, ca, io, pv in combos]
    backport_matters = len(profs) > 1 and (
        {r.map_type for r, cb in zip(results, combos, strict=True) if cb[3] == 0}
        != {r.map_type for r, cb in zip(results, combos, strict=True) if cb[3] == 1})
    if len(profs) > 1 and not backport_matters:
        keep = [k for k, cb in enumerate(combos) if cb[3] == 0]
        combos = [combos[k] for k in keep]
        results = [results[k] for k in keep]
    base = results[0]
    kinds = tuple(dict.fromkeys(r.map_type for r in results))
    outcomes = tuple(dict.fromkeys((r.map_type, r.dist) for r in results))
    base = _replace(base, outcomes=outcomes)
    unknown = None
    if len(kinds) > 1:
        reasons = []
        if unk:
            why = "; ".join(f"{topo.bdf(x)}: {topo.funcs[x].acs_unknown}" for x in unk)
            reasons.append(f"the ACS Control of {', '.join(str(topo.bdf(x)) for x in unk)} "
                           f"could not be read ({why})")
        if cpu.value is None:
            reasons.append(cpu.reason)
        if iommu_opts != (None,):
            reasons.append(f"the IOMMU state is not known ({profile.name} ignores the root "
                           "complex whitelist when an IOMMU is present)")
        if backport_matters:
            reasons.append(profile.backport_reason)
        parts = []
        for (a, ca, io, pv), r in zip(combos, results, strict=True):
            cond = []
            if backport_matters:
                cond.append("with the backported entries" if pv else "without them")
            if unk:
                cond.append("ACS redirect set there" if a else "ACS redirect off there")
            if ca is not None:
                cond.append("the CPU rule holds" if ca else "the CPU rule fails")
            if io is not None:
                cond.append("an IOMMU is present" if io else "no IOMMU")
            parts.append(f"{' and '.join(cond)}: {r.map_type.name}")
        unknown = "unknown because " + " and ".join(reasons) + " -- " + "; ".join(parts)
        base = _replace(base, map_type=MapType.UNKNOWN, unknown=unknown, possible=kinds,
                        messages=())
    elif unk and base.common_upstream is not None:
        note = (f"ACS of {', '.join(str(topo.bdf(x)) for x in unk)} unreadable; the verdict "
                "is the same either way, but the W-lines may differ")
        base = _replace(base, notes=(*base.notes, note))
    if cache is not None and base.map_type is not MapType.UNKNOWN:
        cache.store(client, base.map_type)
    return base


def _replace(r: PairResult, **kw: Any) -> PairResult:
    import dataclasses
    return dataclasses.replace(r, **kw)


def _evaluate(fabric: Fabric, topo: Topology, profile: KernelProfile, cpu: CpuRule, p: int,
              c: int, verbose: bool, assume_unknown: bool, cpu_assume: bool | None,
              iommu_assume: bool | None = None) -> PairResult:
    A, B = topo.chain[p], topo.chain[c]
    i, j, acs, unk = _path_facts(topo, p, c, assume_unknown)
    common = i >= 0
    hops = i + j if common else len(A) + len(B)
    redirect = bool(acs)
    hbs = fabric.host_bridges
    hb_p = hbs[topo.hb[p]] if topo.hb[p] >= 0 else None
    hb_c = hbs[topo.hb[c]] if topo.hb[c] >= 0 else None
    d = decide(fabric, profile, cpu, common=common, redirect=redirect, hops=hops, hb_p=hb_p,
               hb_c=hb_c, verbose=verbose, cpu_assume=cpu_assume, iommu_assume=iommu_assume)
    provider, client = topo.bdf(p), topo.bdf(c)
    acs_bdfs = tuple(topo.bdf(x) for x in acs)
    msgs: list[KernelMessage] = []
    danger = _danger(profile, len(acs)) if (redirect and common) else None
    pname = str(provider)
    legacy = profile.algorithm in _LEGACY
    if redirect and common and verbose:
        listed, _ = acs_list_text(profile, acs_bdfs)
        msgs.append(_msg(profile, "ACS_REJECT" if legacy else "W1", fabric, client,
                         provider=pname))
        msgs.append(_msg(profile, "W2", fabric, client, list=listed))
    if d.whitelist_warns and d.whitelist is not None:
        for lk in d.whitelist.lookups:
            if lk.no_match and lk.representative is not None:
                rep = lk.representative
                msgs.append(_msg(profile, "W4", fabric, rep.bdf, vendor=rep.vendor,
                                 device=rep.device))
    if d.map_type is MapType.NOT_SUPPORTED and verbose and not (legacy and redirect and common):
        msgs.append(_msg(profile, "W3", fabric, client, provider=pname))
    notes = [d.note] if d.note else []
    if profile.dma_virt_ops_rejected:
        notes.append("this kernel also rejects clients whose driver uses dma_virt_ops "
                     "(software RDMA: rxe, siw, rdmavt); not modelled")
    return PairResult(
        provider=provider, client=client, map_type=d.map_type, dist=d.dist,
        common_upstream=topo.bdf(A[i]) if common else None, acs_redirect=acs_bdfs,
        acs_unreadable=tuple(topo.bdf(x) for x in unk),
        provider_chain=tuple(topo.bdf(x) for x in A), client_chain=tuple(topo.bdf(x) for x in B),
        messages=tuple(msgs), cpu_rule=bool(cpu.value) if profile.cpu_rule else False, cpu=cpu,
        whitelist=d.whitelist, danger=danger, legacy_return=d.legacy_return,
        profile_key=profile.key, notes=tuple(notes))


# ---------------------------------------------------------------------------
# distance_many


@dataclass(frozen=True)
class DistanceResult:
    distance: int | None  # the kernel's return; None only when an unreadable fact decides
    pairs: tuple[PairResult, ...]  # the clients evaluated, in order
    messages: tuple[KernelMessage, ...]
    unknown: str | None = None
    stopped_at: int | None = None  # index of the client where a non-verbose call stopped
    notes: tuple[str, ...] = ()
    # when unknown: the smallest distance the kernel could return if it is not -1
    # (None: it may be -1 or anything; used by find_many to bound the pick)
    low: int | None = None


def _find_parent_pci(fabric: Fabric, client: Client) -> Bdf | None:
    if isinstance(client, NonPciClient):
        return client.pci_parent if client.pci_parent in fabric else None
    return client


def distance_many(fabric: Fabric, profile: KernelProfile, provider: Bdf,
                  clients: Sequence[Client], *, verbose: bool,
                  caches: Callable[[Bdf], MapTypeCache | None] | None = None) -> DistanceResult:
    """``pci_p2pdma_distance_many()`` (spec §2.10): the *sum* of the distances, -1 when
    any client is not supported or not below a PCI device (W5 when verbose).

    A client whose map type is unknown still gives a certain answer when all its
    possibilities agree on "supported or not" and on the distance.  Possibilities are
    weighed per client (a fact shared by two clients is not correlated), so a joint
    analysis could occasionally decide where this says unknown, never the reverse."""
    if fabric.host.p2pdma_config is False:
        return DistanceResult(-1, (), (), notes=("kernel built without CONFIG_PCI_P2PDMA: "
                                                 "every distance is -1",))
    if not clients:
        return DistanceResult(-1, (), ())
    cache = caches(provider) if caches else None
    pairs: list[PairResult] = []
    msgs: list[KernelMessage] = []
    total = 0
    low = 0
    not_supported = False
    unknown: list[str] = []
    notes: list[str] = []
    for n, cl in enumerate(clients):
        pci = _find_parent_pci(fabric, cl)
        if pci is None:
            if verbose:
                assert isinstance(cl, NonPciClient)
                msgs.append(KernelMessage("W5", None, cl.prefix, profile.messages["W5"]))
            return DistanceResult(-1, tuple(pairs), tuple(msgs), stopped_at=n)
        r = calc_map_type_and_dist(fabric, profile, provider, pci, verbose=verbose, cache=cache)
        pairs.append(r)
        msgs.extend(r.messages)
        # Only "supported or not" and the distance reach the return value: an unknown
        # map type whose possibilities agree on both still gives a certain distance.
        sup = r.certain_supported
        dist = r.certain_dist
        if sup is False:
            not_supported = True
        elif sup is None or dist is None:
            unknown.append(f"{pci}: {r.unknown}")
            low += min(d for mt, d in r.outcomes if mt.supported)
        elif r.map_type is MapType.UNKNOWN:
            notes.append(f"{pci}: the map type is unknown ("
                         + "/".join(m.name for m in r.possible)
                         + f") but every possibility is supported at distance {dist}")
        if not_supported and not verbose:
            return DistanceResult(-1, tuple(pairs), tuple(msgs), stopped_at=n,
                                  notes=tuple(notes))
        if sup is True and dist is not None:
            total += dist
            low += dist
    if not_supported:
        return DistanceResult(-1, tuple(pairs), tuple(msgs), notes=tuple(notes))
    if unknown:
        return DistanceResult(None, tuple(pairs), tuple(msgs), unknown="; ".join(unknown),
                              notes=tuple(notes), low=low)
    return DistanceResult(total, tuple(pairs), tuple(msgs), notes=tuple(notes))


# ---------------------------------------------------------------------------
# find_many


def pci_has_p2pmem(fabric: Fabric, profile: KernelProfile, bdf: Bdf) -> tuple[bool, str]:
    """``pci_has_p2pmem()`` per profile, with the reason when false."""
    f = fabric.get(bdf)
    if f.p2pmem is None:
        return False, "no p2pmem pool (no p2pdma state / no registered memory)"
    if not f.p2pmem.published:
        return False, "p2pmem not published"
    # A fabric's p2pmem implies a pool, so the pci/next pool requirement holds too.
    return True, "published"


@dataclass(frozen=True)
class FindResult:
    choice: Bdf | None
    ties: tuple[Bdf, ...]  # the candidate array at the end (<= 512)
    best: int | None  # the closest distance, None when nothing qualified
    losers: dict[Bdf, str]  # every other device and why it lost
    distances: dict[Bdf, int]  # distance_many of each published provider
    messages: tuple[KernelMessage, ...]  # W4 can appear even though find is non-verbose
    # set when the pick is uncertain: a provider whose distance is unknown (unreadable
    # ACS, ...) could tie or beat ``best``; ``choice`` is then only the pick among the
    # certain ones (or None), not necessarily the kernel's
    unknown: str | None = None


def find_many(fabric: Fabric, profile: KernelProfile, clients: Sequence[Client], *,
              rng: random.Random, has_p2pmem: Callable[[Bdf], bool] | None = None,
              caches: Callable[[Bdf], MapTypeCache | None] | None = None) -> FindResult:
    """``pci_p2pmem_find_many()`` (spec §3): the closest published providers, in the
    order the PCI core added devices, at most 512 per tie level, one picked uniformly
    with ``rng.randrange`` (the kernel uses get_random_u32_below; we take an explicit
    seedable Random so results are reproducible)."""
    if fabric.host.p2pdma_config is False:
        return FindResult(None, (), None, {}, {}, ())
    topo = topology(fabric)
    best: int | None = None
    cands: list[Bdf] = []
    losers: dict[Bdf, str] = {}
    dists: dict[Bdf, int] = {}
    msgs: list[KernelMessage] = []
    undecided: list[tuple[Bdf, int, str]] = []  # (provider, smallest possible distance, why)
    client_set = {c for c in clients if isinstance(c, Bdf)}
    for k in topo.enum_order:
        dev = topo.bdf(k)
        if has_p2pmem is not None:
            ok, why = has_p2pmem(dev), "no published p2pmem (caller's has_p2pmem)"
        else:
            ok, why = pci_has_p2pmem(fabric, profile, dev)
        if not ok:
            fn = topo.funcs[k]
            # report endpoints that could have been providers; skip bridges and host bridges
            if (fn.p2pmem is not None or dev in client_set
                    or (not fn.is_bridge and (fn.class_code >> 16) != 0x06
                        and any(b.is_memory for b in fn.bars))):
                losers[dev] = why
            continue
        r = distance_many(fabric, profile, dev, clients, verbose=False, caches=caches)
        msgs.extend(r.messages)
        if r.distance is None:
            undecided.append((dev, r.low if r.low is not None else 0, r.unknown or ""))
            continue
        dists[dev] = r.distance
        if r.distance < 0:
            bad = [x for x in r.pairs if x.map_type is MapType.NOT_SUPPORTED]
            losers[dev] = ("not supported" + (f" for client {bad[0].client}" if bad else "")
                           + (" (non-PCI client)" if not bad else ""))
            continue
        if best is not None and r.distance > best:
            losers[dev] = f"farther: distance {r.distance} > {best}"
            continue
        if best is not None and r.distance == best and len(cands) >= FIND_MANY_MAX_DEVS:
            losers[dev] = f"tie at distance {best} beyond the {FIND_MANY_MAX_DEVS}-candidate cap"
            continue
        if best is None or r.distance < best:
            for old in cands:
                losers[old] = f"farther: distance {dists[old]} > {r.distance}"
            cands = []
            best = r.distance
        cands.append(dev)
    for dev, why in list(losers.items()):
        if why.startswith("farther") and best is not None:
            losers[dev] = f"farther: distance {dists[dev]} > {best}"
    # A provider whose distance is unknown changes the pick only if it could tie or
    # beat the best certain distance; otherwise it certainly loses.
    unknown: list[str] = []
    for dev, low, why in undecided:
        if best is not None and low > best:
            losers[dev] = (f"farther: distance unknown but at least {low} > {best} "
                           f"(or not supported) ({why})")
        else:
            losers[dev] = (f"unknown: could be at distance {low}"
                           + (f" (best certain: {best})" if best is not None else "")
                           + f" ({why})")
            unknown.append(f"{dev} could be at distance {low}: {why}")
    choice = cands[rng.randrange(len(cands))] if cands else None
    for dev in cands:
        if dev != choice:
            losers[dev] = f"tie at distance {best}: lost the random draw"
    return FindResult(choice, tuple(cands), best, losers, dists, tuple(msgs),
                      unknown="; ".join(unknown) or None)


# ---------------------------------------------------------------------------
# The per-provider map-type cache and pci_p2pdma_map_type()


@dataclass
class MapTypeCache:
    """A provider's ``map_types`` xarray (spec §2.9): keyed by ``Bdf.cache_index``, written
    by every calc, never invalidated (stale after ACS changes or BDF reuse), destroyed
    only with the provider."""

    entries: dict[int, MapType] = field(default_factory=dict)
    destroyed: bool = False

    def lookup(self, client: Bdf) -> MapType:
        return self.entries.get(client.cache_index, MapType.UNKNOWN)

    def store(self, client: Bdf, map_type: MapType) -> None:
        if not self.destroyed:
            self.entries[client.cache_index] = map_type

    def destroy(self) -> None:
        self.entries.clear()
        self.destroyed = True


@dataclass(frozen=True)
class MapTypeResult:
    map_type: MapType
    messages: tuple[KernelMessage, ...]
    computed: bool  # a calc ran (cache miss, v6.0+)
    note: str | None = None


def pci_p2pdma_map_type(fabric: Fabric, profile: KernelProfile, cache: MapTypeCache | None,
                        provider: Bdf, client: Client) -> MapTypeResult:
    """``pci_p2pdma_map_type()`` with the cache semantics of the profile (spec §5.1, §2.9).
    ``cache`` None means the provider has no p2pdma state."""
    if cache is None:
        return MapTypeResult(MapType.NOT_SUPPORTED, (), False, "provider has no p2pdma state")
    if isinstance(client, NonPciClient):
        # No parent walk here, unlike distance/find; nothing cached.
        return MapTypeResult(MapType.NOT_SUPPORTED, (), False, "client is not a PCI device")
    if profile.cache_mode == "none":
        r = calc_map_type_and_dist(fabric, profile, provider, client, verbose=False)
        return MapTypeResult(r.map_type, (), True,
                             f"{profile.name} has no map types or cache; shown: the path's verdict")
    hit = cache.lookup(client)
    if hit is not MapType.UNKNOWN:
        return MapTypeResult(hit, (), False)
    if profile.cache_mode == "cache-only":
        return MapTypeResult(MapType.UNKNOWN, (), False,
                             f"{profile.name}: cache-only lookup and nothing computed this pair "
                             "yet: the mapping fails (compute the distance first)")
    r = calc_map_type_and_dist(fabric, profile, provider, client, verbose=True, cache=cache)
    return MapTypeResult(r.map_type, r.messages, True, r.unknown)
