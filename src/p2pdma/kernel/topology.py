"""Per-fabric precomputation the kernel rules read: upstream chains, own-ACS redirect
flags, host bridges and the PCI core's enumeration order.

Built once per ``Fabric`` object (memoised in the instance's ``__dict__``, the way
``functools.cached_property`` does) so that a 1024x1024 matrix walks no tree twice.
Everything here is a fact of the hardware; no kernel policy.
"""

from __future__ import annotations

from dataclasses import dataclass

from p2pdma.errors import InputError
from p2pdma.fabric.bdf import Bdf
from p2pdma.fabric.model import ACS_CR, ACS_EC, ACS_RR, Fabric, HostBridge, PciFunction

# The ACS Control bits p2pdma treats as "redirect" (spec §1.6, §2.3).
ACS_REDIRECT_MASK = ACS_RR | ACS_CR | ACS_EC  # 0x002c

_ATTR = "_p2pdma_kernel_topology"


@dataclass
class Topology:
    fabric: Fabric
    funcs: list[PciFunction]
    index: dict[Bdf, int]
    chain: list[tuple[int, ...]]  # chain(d) = [d, up(d), up(up(d)), ...] as indices
    redirect: list[bool | None]  # own ACS Control has RR|CR|EC (None: unreadable)
    hb: list[int]  # index into fabric.host_bridges of the chain's root bus
    enum_order: list[int]  # the order the PCI core adds devices (see enumeration_order)

    def idx(self, bdf: Bdf) -> int:
        try:
            return self.index[bdf]
        except KeyError:
            self.fabric.get(bdf)  # raises UnknownDeviceError with a hint
            raise

    def bdf(self, i: int) -> Bdf:
        return self.funcs[i].bdf


def acs_redirect_of(f: PciFunction) -> bool | None:
    """``pci_acs_redirect``-style predicate for one function (spec §2.3)."""
    if f.acs is not None:
        return bool(f.acs.control & ACS_REDIRECT_MASK)
    if f.acs_unknown is not None:
        return None
    return False  # no ACS capability


def topology(fabric: Fabric) -> Topology:
    cached = fabric.__dict__.get(_ATTR)
    if isinstance(cached, Topology):
        return cached
    topo = _build(fabric)
    fabric.__dict__[_ATTR] = topo
    return topo


def _build(fabric: Fabric) -> Topology:
    funcs = list(fabric.functions)
    index = {f.bdf: i for i, f in enumerate(funcs)}
    hb_index = {(h.domain, h.bus): k for k, h in enumerate(fabric.host_bridges)}
    up: list[int] = []
    for f in funcs:
        # pci_upstream_bridge(): a VF is replaced by its PF; NULL on a root bus.
        g = funcs[index[f.physfn]] if f.physfn is not None and f.physfn in index else f
        up.append(index[g.parent] if g.parent is not None and g.parent in index else -1)
    chain: list[tuple[int, ...] | None] = [None] * len(funcs)

    def build_chain(i: int) -> tuple[int, ...]:
        path: list[int] = []
        seen = set()
        k = i
        while k != -1:
            c = chain[k]
            if c is not None:
                out = tuple(path) + c
                break
            if k in seen:
                raise InputError(f"{funcs[i].bdf}: upstream chain loops",
                                 where=fabric.origin or None)
            seen.add(k)
            path.append(k)
            k = up[k]
        else:
            out = tuple(path)
        # memoise every suffix
        for n in range(len(path)):
            chain[path[n]] = out[n:]
        return out

    chains = [chain[i] or build_chain(i) for i in range(len(funcs))]
    hb: list[int] = []
    for i in range(len(funcs)):
        root = funcs[chains[i][-1]]
        if root.physfn is not None and root.physfn in index:
            root = funcs[index[root.physfn]]
        hb.append(hb_index.get((root.bdf.domain, root.bdf.bus), -1))
    topo = Topology(fabric=fabric, funcs=funcs, index=index, chain=chains,
                    redirect=[acs_redirect_of(f) for f in funcs], hb=hb, enum_order=[])
    topo.enum_order = enumeration_order(fabric, index)
    return topo


def enumeration_order(fabric: Fabric, index: dict[Bdf, int]) -> list[int]:
    """The order ``for_each_pci_dev`` visits devices: the order the PCI core added them.

    Derived from the tree (a fabric records no timestamps): host bridges in
    (domain, bus) order; for each bus, ``pci_bus_add_devices`` first adds every
    device of the bus in devfn order, then recurses into each bridge's child bus
    in the same order.  VFs are added when their PF's driver enables SR-IOV,
    after boot enumeration: they come last, per PF in enumeration order, each
    PF's VFs by BDF.  (Spec §13.7: find_many walks devices in the order the
    PCI core added them.)
    """
    kids: dict[Bdf | None, list[Bdf]] = {}
    vfs: dict[Bdf, list[Bdf]] = {}
    for f in fabric.functions:
        if f.physfn is not None:
            vfs.setdefault(f.physfn, []).append(f.bdf)
        else:
            kids.setdefault(f.parent, []).append(f.bdf)
    order: list[int] = []

    def add_bus(devs: list[Bdf]) -> None:
        for b in devs:
            order.append(index[b])
        for b in devs:
            if b in kids:
                add_bus(kids[b])

    roots = kids.get(None, [])
    for h in fabric.host_bridges:
        add_bus([b for b in roots if (b.domain, b.bus) == (h.domain, h.bus)])
    seen = set(order)
    # Functions on a root bus no host bridge owns (an invalid fabric): still listed.
    for b in roots:
        if index[b] not in seen:
            add_bus([b])
    pfs = [funcs_bdf for funcs_bdf in (fabric.functions[i].bdf for i in order) if funcs_bdf in vfs]
    for pf in pfs:
        for v in sorted(vfs[pf]):
            order.append(index[v])
    return order


def host_bridge_at(fabric: Fabric, k: int) -> HostBridge | None:
    return fabric.host_bridges[k] if 0 <= k < len(fabric.host_bridges) else None
