"""The DMA engine: devices move real bytes, along the path the kernel would use.

A device (the *initiator*) reads or writes a DMA address it was handed by the
DMA-mapping layer.  The engine

1. resolves the address to the memory behind it (a BAR's backing or host RAM);
2. asks the kernel layer (through the emulator's core layer) for the map type
   between the memory's owner and the initiator, and refuses what the kernel
   refuses (``NOT_SUPPORTED`` -> ``-EREMOTEIO``);
3. lays the route onto the fabric (``fabric.paths``: BUS_ADDR -> under the common
   upstream bridge, THRU_HOST_BRIDGE -> through the root complex, host RAM ->
   the initiator's links and host memory) and counts the bytes per link and
   direction, per root complex and in host memory;
4. copies the bytes with one memoryview copy (or one ``preadv``/``pwritev``/
   ``recv_into``/``sendall`` system call) straight into or out of the mapped
   memory: no intermediate buffers, no per-byte Python.

Routes are compiled once per (initiator, memory region, direction) and cached;
a region that disappears (device removal) is never found again, so its route
is never reused.
"""

from __future__ import annotations

import socket
import threading
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from p2pdma.emu.memory import MemoryBacking, Region
from p2pdma.errors import P2PDMAError, kerr
from p2pdma.fabric.bdf import Bdf
from p2pdma.fabric.paths import HOST, Direction, LinkId, Route, segments

if TYPE_CHECKING:
    from p2pdma.emu.devices.nvme import Namespace
    from p2pdma.emu.machine import Machine

LinkKey = tuple[LinkId, Direction]


@dataclass(frozen=True)
class CompiledRoute:
    """Everything the engine adds to the counters for one byte of one access."""

    map_type: str  # "BUS_ADDR", "THRU_HOST_BRIDGE", "HOST" (host RAM), "INTERNAL"
    links: tuple[LinkKey, ...]
    root_complexes: tuple[str, ...] = ()
    host_read: bool = False  # the device reads host memory
    host_write: bool = False  # the device writes host memory


class Traffic:
    """Bytes counted by the engine.  Only completed accesses count.

    Each compiled route has one counter; an access bumps just that (O(1) per
    operation, whatever the path length).  The per-link, per-root-complex and
    host-memory totals are summed from the counters when asked."""

    def __init__(self) -> None:
        self._counters: list[tuple[CompiledRoute, list[int]]] = []  # [bytes, operations]
        self.lock = threading.Lock()

    def counter(self, route: CompiledRoute) -> list[int]:
        c = [0, 0]
        with self.lock:
            self._counters.append((route, c))
        return c

    def count(self, counter: list[int], n: int) -> None:
        with self.lock:
            counter[0] += n
            counter[1] += 1

    def count2(self, a: list[int], b: list[int], n: int) -> None:
        """Count one access of ``n`` bytes on each of two routes (a copy's two sides)."""
        with self.lock:
            a[0] += n
            a[1] += 1
            b[0] += n
            b[1] += 1

    def add(self, route: CompiledRoute, n: int) -> None:
        """Count ``n`` bytes on ``route`` (for callers without a cached counter)."""
        self.count(self.counter(route), n)

    def _snapshot(self) -> list[tuple[CompiledRoute, int, int]]:
        with self.lock:
            return [(r, c[0], c[1]) for r, c in self._counters if c[1]]

    @property
    def links(self) -> dict[LinkKey, int]:
        out: dict[LinkKey, int] = {}
        for r, n, _ in self._snapshot():
            for key in r.links:
                out[key] = out.get(key, 0) + n
        return out

    @property
    def root_complexes(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for r, n, _ in self._snapshot():
            for rc in r.root_complexes:
                out[rc] = out.get(rc, 0) + n
        return out

    @property
    def host_memory_read(self) -> int:
        return sum(n for r, n, _ in self._snapshot() if r.host_read)

    @property
    def host_memory_written(self) -> int:
        return sum(n for r, n, _ in self._snapshot() if r.host_write)

    @property
    def host_memory_bytes(self) -> int:
        return self.host_memory_read + self.host_memory_written

    @property
    def by_map_type(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for r, n, _ in self._snapshot():
            out[r.map_type] = out.get(r.map_type, 0) + n
        return out

    @property
    def operations(self) -> int:
        return sum(ops for _, _, ops in self._snapshot())

    def link_bytes(self, link: LinkId, direction: Direction) -> int:
        return self.links.get((link, direction), 0)

    def to_json(self) -> dict[str, Any]:
        return {
            "links": [
                {"link": str(k[0]), "lower": str(k[0].lower), "upper": str(k[0].upper),
                 "direction": k[1].value, "bytes": v}
                for k, v in sorted(self.links.items(), key=lambda kv: (kv[0][0], kv[0][1].value))
            ],
            "root_complexes": self.root_complexes,
            "host_memory_read": self.host_memory_read,
            "host_memory_written": self.host_memory_written,
            "by_map_type": self.by_map_type,
            "operations": self.operations,
        }


def _mapping(backing: MemoryBacking) -> Any:
    # Callers hold backing.lock (see MemoryBacking.mapping_locked).
    return backing.mapping_locked()


class DmaEngine:
    """Moves bytes for devices on one emulated machine and counts where they went."""

    def __init__(self, machine: Machine, traffic: Traffic | None = None) -> None:
        self.m = machine
        self.traffic = traffic or Traffic()
        self._routes: dict[tuple[Bdf, int, bool], tuple[Region, CompiledRoute, list[int]]] = {}
        self._lock = threading.Lock()
        self._last: dict[str, Region] = {}

    # -- resolution --------------------------------------------------------------

    def resolve(self, initiator: Bdf, dma_addr: int, length: int) -> list[tuple[Region, int, int]]:
        """The memory a DMA of ``initiator`` at ``dma_addr`` lands in, as (region, offset
        into its backing, bytes) parts.  The machine's DMA layer says which address
        space the device's address is in (PCI bus, or CPU physical after the IOMMU)."""
        acc = self.m.dma.resolve_device_access(initiator, dma_addr, length)
        out = []
        for space, addr, n in acc:
            region = self._find(space, addr, n)
            if region is None:
                raise kerr("EFAULT", f"DMA to {dma_addr:#x}+{length:#x} by {initiator} hits "
                           "nothing", where=str(initiator),
                           hint="the buffer was freed, or its device was removed")
            out.append((region, region.backing_offset + (addr - region.start), n))
        return out

    def resolve_local(self, device: Bdf, kva: int, length: int) -> list[tuple[Region, int, int]]:
        """``device``'s own memory by the kernel address its driver holds (a GPU kernel
        touching its BAR): no DMA mapping, no link, and nobody else's memory."""
        phys = self.m.kva_to_phys(kva)
        region = self._find("cpu", phys, length)
        if region is None or region.owner != device:
            raise kerr("EFAULT", f"{kva:#x}+{length:#x} is not memory of {device}",
                       where=str(device), hint="pass an address from this device's p2pmem")
        return [(region, region.backing_offset + (phys - region.start), length)]

    def _find(self, space: str, addr: int, n: int) -> Region | None:
        # The last region hit per address space answers most lookups.  Regions only
        # disappear with their device, whose backing is then closed: a closed
        # backing sends us back to the address space.
        last = self._last.get(space)
        if (last is not None and last.start <= addr and addr + n <= last.start + last.size
                and not last.backing.closed):
            return last
        mem = self.m.memory
        region = (mem.bus if space == "bus" else mem.cpu).find(addr, n)
        if region is not None:
            self._last[space] = region
        return region

    def route(self, initiator: Bdf, region: Region, *, to_memory: bool) -> CompiledRoute:
        return self._route(initiator, region, to_memory)[0]

    def _route(self, initiator: Bdf, region: Region,
               to_memory: bool) -> tuple[CompiledRoute, list[int]]:
        key = (initiator, id(region), to_memory)
        hit = self._routes.get(key)
        if hit is not None and hit[0] is region:
            return hit[1], hit[2]
        compiled = self._compile(initiator, region, to_memory=to_memory)
        counter = self.traffic.counter(compiled)
        with self._lock:
            self._routes[key] = (region, compiled, counter)
        return compiled, counter

    def _compile(self, initiator: Bdf, region: Region, *, to_memory: bool) -> CompiledRoute:
        fabric = self.m.fabric
        owner = region.owner
        if owner is None:  # host RAM: the initiator's own links and host memory
            src, dst = (initiator, HOST) if to_memory else (HOST, initiator)
            (seg,) = segments(fabric, src, dst, Route.HOST)
            return CompiledRoute("HOST", tuple((h.link, h.direction) for h in seg.hops),
                                 host_read=not to_memory, host_write=to_memory)
        if owner == initiator:  # a device touching its own BAR: no P2P, no link
            return CompiledRoute("INTERNAL", ())
        if region.bar is None:
            raise kerr("EFAULT", f"region {region.tag or hex(region.start)} of {owner} "
                       "is not a BAR", where=str(initiator))
        provider = self.m.core.provider(owner, region.bar)
        if provider is None:
            raise kerr("EREMOTEIO", f"{owner} BAR{region.bar} is not a P2PDMA provider",
                       where=str(initiator),
                       hint="the device has no p2pdma state (removed, or never registered)")
        mt = self.m.core.map_type(provider, initiator)
        name = str(getattr(mt, "name", mt))
        if name not in ("BUS_ADDR", "THRU_HOST_BRIDGE"):
            raise kerr("EREMOTEIO", f"{initiator} cannot reach {owner} BAR{region.bar} "
                       f"peer to peer (map type {name})", where=str(initiator),
                       hint="run `p2pdma check` on the pair to see why; use host memory")
        src, dst = (initiator, owner) if to_memory else (owner, initiator)
        if name == "BUS_ADDR":
            (seg,) = segments(fabric, src, dst, Route.DIRECT)
        else:
            (seg,) = segments(fabric, src, dst, Route.ROOT_COMPLEX)
        return CompiledRoute(name, tuple((h.link, h.direction) for h in seg.hops),
                             root_complexes=seg.root_complexes)

    def forget(self, bdf: Bdf | None = None) -> None:
        """Drop compiled routes (all, or those of one initiator)."""
        with self._lock:
            if bdf is None:
                self._routes.clear()
            else:
                for k in [k for k in self._routes if k[0] == bdf]:
                    del self._routes[k]

    # -- the one primitive ---------------------------------------------------------

    @contextmanager
    def access(self, initiator: Bdf, dma_addr: int, length: int, *, to_memory: bool,
               local: bool = False) -> Iterator[list[memoryview]]:
        """Writable views of the ``length`` bytes at ``dma_addr`` as ``initiator`` sees
        them (one per contiguous part; almost always one).  With ``local`` the address
        is a kernel address of the initiator's own memory (see :meth:`resolve_local`).

        The backings stay locked (cannot be torn down) while the views are in use;
        the bytes are counted only if the body completes."""
        parts = (self.resolve_local(initiator, dma_addr, length) if local
                 else self.resolve(initiator, dma_addr, length))
        counters = [self._route(initiator, r, to_memory)[1] for r, _, _ in parts]
        with ExitStack() as stack:
            (views,) = _lock_and_view(stack, [parts])
            yield views
        for c, (_, _, n) in zip(counters, parts, strict=True):
            self.traffic.count(c, n)

    # -- conveniences built on access() ------------------------------------------

    def write(self, initiator: Bdf, dma_addr: int, data: bytes | bytearray | memoryview) -> None:
        """The device writes ``data`` (bytes, or a byte-format buffer) to memory."""
        n = len(data)
        parts = self.resolve(initiator, dma_addr, n)
        if len(parts) == 1:  # the common case, kept short: one slice store into the mapping
            region, off, _ = parts[0]
            counter = self._route(initiator, region, True)[1]
            backing = region.backing
            with backing.lock:
                _mapping(backing)[off:off + n] = data
            self.traffic.count(counter, n)
            return
        src = memoryview(data)
        with self.access(initiator, dma_addr, n, to_memory=True) as views:
            pos = 0
            for v in views:
                v[:] = src[pos:pos + len(v)]
                pos += len(v)

    def read(self, initiator: Bdf, dma_addr: int, length: int) -> bytes:
        """The device reads memory (completions come back to it)."""
        parts = self.resolve(initiator, dma_addr, length)
        if len(parts) == 1:
            region, off, _ = parts[0]
            counter = self._route(initiator, region, False)[1]
            backing = region.backing
            with backing.lock:
                out: bytes = _mapping(backing)[off:off + length]
            self.traffic.count(counter, length)
            return out
        with self.access(initiator, dma_addr, length, to_memory=False) as views:
            return b"".join(bytes(v) for v in views)

    def window(self, initiator: Bdf, dma_addr: int, length: int, *,
               to_memory: bool) -> DmaWindow:
        """Resolve a mapped buffer once, for many small accesses (a device that keeps
        its translation, as for a queue or a registered memory region).  Valid while
        the mapping is; after the memory's device is removed every access fails."""
        parts = self.resolve(initiator, dma_addr, length)
        if len(parts) != 1:
            raise kerr("EINVAL", f"{dma_addr:#x}+{length:#x} is not contiguous behind the "
                       "device's address", where=str(initiator),
                       hint="use the engine's per-access calls for scattered buffers")
        region, off, _ = parts[0]
        return DmaWindow(self.traffic, region.backing, off, length,
                         self._route(initiator, region, to_memory)[1])

    def from_namespace(self, initiator: Bdf, ns: Namespace, ns_offset: int, dma_addr: int,
                       length: int) -> None:
        """An NVMe read command: media -> memory, one ``preadv`` into the mapping."""
        self._with_file(initiator, dma_addr, length, True, ns.read_into, ns_offset)

    def to_namespace(self, initiator: Bdf, ns: Namespace, ns_offset: int, dma_addr: int,
                     length: int) -> None:
        """An NVMe write command: memory -> media, one ``pwritev`` from the mapping."""
        self._with_file(initiator, dma_addr, length, False, ns.write_from, ns_offset)

    def _with_file(self, initiator: Bdf, dma_addr: int, length: int, to_memory: bool,
                   io: Callable[[int, memoryview], None], file_offset: int) -> None:
        parts = self.resolve(initiator, dma_addr, length)
        if len(parts) == 1:  # short path: no ExitStack for the common case
            region, off, _ = parts[0]
            counter = self._route(initiator, region, to_memory)[1]
            backing = region.backing
            with backing.lock, memoryview(_mapping(backing)) as whole, \
                    whole[off:off + length] as view:
                io(file_offset, view)
            self.traffic.count(counter, length)
            return
        with self.access(initiator, dma_addr, length, to_memory=to_memory) as views:
            pos = 0
            for v in views:
                io(file_offset + pos, v)
                pos += len(v)

    def from_socket(self, initiator: Bdf, sock: socket.socket, dma_addr: int,
                    length: int) -> None:
        """A NIC receive: bytes off the wire straight into memory."""
        with self.access(initiator, dma_addr, length, to_memory=True) as views:
            for v in views:
                got = 0
                while got < len(v):
                    n = sock.recv_into(v[got:], len(v) - got)
                    if n == 0:
                        raise kerr("ECONNRESET", f"peer closed inside a {length}-byte "
                                   "transfer", where=str(initiator))
                    got += n

    def to_socket(self, initiator: Bdf, sock: socket.socket, dma_addr: int, length: int) -> None:
        with self.access(initiator, dma_addr, length, to_memory=False) as views:
            for v in views:
                sock.sendall(v)

    def copy(self, initiator: Bdf, src_addr: int, dst_addr: int, length: int, *,
             src_local: bool = False, dst_local: bool = False) -> None:
        """A copy engine in ``initiator`` reads ``src`` and writes ``dst`` (both count).
        ``*_local``: that side is the initiator's own memory, by kernel address."""
        sparts = (self.resolve_local(initiator, src_addr, length) if src_local
                  else self.resolve(initiator, src_addr, length))
        dparts = (self.resolve_local(initiator, dst_addr, length) if dst_local
                  else self.resolve(initiator, dst_addr, length))
        if len(sparts) == 1 and len(dparts) == 1:
            (sreg, soff, _), (dreg, doff, _) = sparts[0], dparts[0]
            cs = self._route(initiator, sreg, False)[1]
            cd = self._route(initiator, dreg, True)[1]
            sb, db = sreg.backing, dreg.backing
            first, second = (sb, db) if id(sb) <= id(db) else (db, sb)
            with first.lock:
                if second is not first:
                    second.lock.acquire()
                try:
                    if length <= _SMALL:  # one short bytes copy beats a memoryview's setup
                        _mapping(db)[doff:doff + length] = _mapping(sb)[soff:soff + length]
                    else:
                        with memoryview(_mapping(sb)) as sv:
                            _mapping(db)[doff:doff + length] = sv[soff:soff + length]
                finally:
                    if second is not first:
                        second.lock.release()
            self.traffic.count2(cs, cd, length)
            return
        counters = ([self._route(initiator, r, False)[1] for r, _, _ in sparts]
                    + [self._route(initiator, r, True)[1] for r, _, _ in dparts])
        with ExitStack() as stack:
            src, dst = _lock_and_view(stack, [sparts, dparts])
            data = memoryview(b"".join(bytes(v) for v in src))
            pos = 0
            for v in dst:
                v[:] = data[pos:pos + len(v)]
                pos += len(v)
        for c, (_, _, n) in zip(counters, sparts + dparts, strict=True):
            self.traffic.count(c, n)


_SMALL = 64 << 10


class DmaWindow:
    """One resolved, contiguous DMA buffer: per access just a lock, a copy, a count."""

    __slots__ = ("_backing", "_base", "_counter", "_traffic", "length")

    def __init__(self, traffic: Traffic, backing: MemoryBacking, base: int, length: int,
                 counter: list[int]) -> None:
        self._traffic = traffic
        self._backing = backing
        self._base = base
        self.length = length
        self._counter = counter

    def _range(self, offset: int, n: int) -> int:
        if offset < 0 or offset + n > self.length:
            raise kerr("EFAULT", f"{offset:#x}+{n:#x} outside a {self.length:#x}-byte window")
        return self._base + offset

    def write(self, offset: int, data: bytes | bytearray | memoryview) -> None:
        n = len(data)
        start = self._range(offset, n)
        with self._backing.lock:
            _mapping(self._backing)[start:start + n] = data
        self._traffic.count(self._counter, n)

    def read(self, offset: int, n: int) -> bytes:
        start = self._range(offset, n)
        with self._backing.lock:
            out: bytes = _mapping(self._backing)[start:start + n]
        self._traffic.count(self._counter, n)
        return out


def _lock_and_view(stack: ExitStack, groups: list[list[tuple[Region, int, int]]]
                   ) -> list[list[memoryview]]:
    """Lock every backing the parts touch (each once, in a fixed order so that two
    engines copying in opposite directions cannot deadlock), then view the parts."""
    backings = {id(r.backing): r.backing for parts in groups for r, _, _ in parts}
    for _, b in sorted(backings.items()):
        stack.enter_context(b.lock)
    out = []
    for parts in groups:
        views = []
        for region, off, n in parts:
            whole = stack.enter_context(memoryview(_mapping(region.backing)))
            views.append(stack.enter_context(whole[off:off + n]))
        out.append(views)
    return out


def describe_error(err: BaseException) -> str:
    """A one-line reason for a failed request, for reports."""
    if isinstance(err, P2PDMAError):
        return str(err).splitlines()[0]
    return f"{type(err).__name__}: {err}"
