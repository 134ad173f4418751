"""Which physical links a transfer crosses, from the PCI tree alone.

A PCIe *link* joins a downstream-facing port (root port or switch downstream
port) to the device below it (an endpoint or a switch upstream port).  We name
a link after that lower device: ``LinkId(bdf)``.  Hops inside a switch
(upstream port to downstream port) and inside the root complex are not links.

The route (under a common bridge, through the root complex, bounced through
host memory) is *not* decided here: the caller gets it from the kernel layer
(map type) and passes it in.  This module only lays that route onto the tree.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from p2pdma.errors import InputError
from p2pdma.fabric.bdf import Bdf
from p2pdma.fabric.model import Fabric, PciFunction, PortType

HOST = "host-memory"


class Route(enum.Enum):
    """How the bytes of one device-to-device transfer travel."""

    DIRECT = "direct"  # kernel BUS_ADDR: through the lowest common bridge only
    ROOT_COMPLEX = "root-complex"  # kernel THRU_HOST_BRIDGE: up to the root complex and down
    BOUNCE = "bounce"  # through host memory: written there, then read back
    HOST = "host"  # one end is host memory (plain DMA)


class Direction(enum.Enum):
    UP = "up"  # toward the root complex
    DOWN = "down"


@dataclass(frozen=True, order=True)
class LinkId:
    """The link above ``lower`` (an endpoint or a switch upstream port)."""

    lower: Bdf
    upper: Bdf

    def __str__(self) -> str:
        return f"{self.upper.short()}<->{self.lower.short()}"


@dataclass(frozen=True)
class Hop:
    link: LinkId
    direction: Direction


@dataclass(frozen=True)
class Segment:
    """One leg of a transfer: the links crossed, and what it touches besides links."""

    hops: tuple[Hop, ...]
    root_complexes: tuple[str, ...] = ()  # host bridges that forward P2P traffic
    host_memory: bool = False  # this leg writes or reads host memory


def _physical(fabric: Fabric, bdf: Bdf) -> PciFunction:
    f = fabric.get(bdf)
    return fabric.get(f.physfn) if f.physfn is not None else f


def chain(fabric: Fabric, bdf: Bdf) -> list[Bdf]:
    """``bdf`` (its PF for a VF) and every bridge above it, bottom up."""
    out = []
    f: PciFunction | None = _physical(fabric, bdf)
    while f is not None:
        if f.bdf in out:
            raise InputError(f"{bdf}: parent chain loops", where=fabric.origin or None)
        out.append(f.bdf)
        f = fabric.get(f.parent) if f.parent is not None else None
    return out


def uplink(fabric: Fabric, bdf: Bdf) -> LinkId | None:
    """The link above ``bdf``, or None (root bus, or inside a switch)."""
    f = fabric.get(bdf)
    if f.parent is None:
        return None
    parent = fabric.get(f.parent)
    if parent.port_type in (PortType.ROOT_PORT, PortType.DOWNSTREAM_PORT):
        return LinkId(lower=bdf, upper=parent.bdf)
    return None


def links_to_root(fabric: Fabric, bdf: Bdf, stop: Bdf | None = None) -> list[LinkId]:
    """Links from ``bdf`` upward, stopping below ``stop`` (or at the root bus)."""
    out = []
    for b in chain(fabric, bdf):
        if b == stop:
            break
        link = uplink(fabric, b)
        if link is not None:
            out.append(link)
    return out


def common_bridge(fabric: Fabric, a: Bdf, b: Bdf) -> Bdf | None:
    """The lowest bridge above both (the tree's lowest common ancestor)."""
    above_b = set(chain(fabric, b)[1:])
    for x in chain(fabric, a)[1:]:
        if x in above_b:
            return x
    return None


def segments(fabric: Fabric, src: Bdf | str, dst: Bdf | str, route: Route,
             *, via: Bdf | None = None) -> tuple[Segment, ...]:
    """Lay a transfer from ``src`` to ``dst`` (a BDF or :data:`HOST`) onto the tree.

    ``via`` is the common upstream bridge the kernel reported for a DIRECT route;
    without it the tree's lowest common bridge is used.
    """
    if route is Route.HOST or src == HOST or dst == HOST:
        if isinstance(src, Bdf) and dst == HOST:
            ups = tuple(Hop(x, Direction.UP) for x in links_to_root(fabric, src))
            return (Segment(ups, host_memory=True),)
        if src == HOST and isinstance(dst, Bdf):
            downs = tuple(Hop(x, Direction.DOWN) for x in reversed(links_to_root(fabric, dst)))
            return (Segment(downs, host_memory=True),)
        raise InputError(f"a host transfer needs exactly one device end (got {src}, {dst})")
    assert isinstance(src, Bdf) and isinstance(dst, Bdf)
    if route is Route.BOUNCE:
        return (segments(fabric, src, HOST, Route.HOST)[0],
                segments(fabric, HOST, dst, Route.HOST)[0])
    if route is Route.DIRECT:
        top = via if via is not None else common_bridge(fabric, src, dst)
        if top is None:
            raise InputError(f"{src} and {dst} share no bridge: a direct route is impossible",
                             hint="the kernel would not give BUS_ADDR for this pair")
        up = [Hop(x, Direction.UP) for x in links_to_root(fabric, src, stop=top)]
        down = [Hop(x, Direction.DOWN) for x in reversed(links_to_root(fabric, dst, stop=top))]
        return (Segment(tuple(up + down)),)
    # Through the root complex: all the way up, across (one or two host bridges), down.
    hbs = [fabric.host_bridge_of(src).name]
    other = fabric.host_bridge_of(dst).name
    if other not in hbs:
        hbs.append(other)
    up = [Hop(x, Direction.UP) for x in links_to_root(fabric, src)]
    down = [Hop(x, Direction.DOWN) for x in reversed(links_to_root(fabric, dst))]
    return (Segment(tuple(up + down), root_complexes=tuple(hbs)),)


def path_functions(fabric: Fabric, segs: tuple[Segment, ...]) -> set[Bdf]:
    """Every function at either end of a link on the path (for the MPS they must agree on)."""
    out: set[Bdf] = set()
    for s in segs:
        for h in s.hops:
            out.add(h.link.lower)
            out.add(h.link.upper)
    return out
