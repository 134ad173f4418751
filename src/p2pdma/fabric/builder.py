"""Build realistic fabrics in code: host bridges, root ports, switches, endpoints.

Bus numbers, bridge windows and BAR addresses are assigned the way firmware
would (depth-first bus numbering, naturally aligned BARs from a per-host-bridge
64-bit window), so a built fabric looks like a read one.  Used by the bundled
samples, the tests, the hypothesis strategies and the benchmarks.

    b = FabricBuilder(host=HostContext(kernel_release="6.12.117", cpu_vendor="GenuineIntel"))
    hb = b.host_bridge(first=(0x8086, 0x09a2))
    rp = b.root_port(hb, acs_cap=0x005F)
    usp, dsps = b.switch(rp, ports=2, acs_cap=0x005F)
    b.nvme(dsps[0], cmb_size=64 << 20)
    fabric = b.build()
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from p2pdma.fabric.bdf import Bdf
from p2pdma.fabric.model import (
    Acs,
    Bar,
    Cmb,
    Fabric,
    HostBridge,
    HostContext,
    Link,
    NvmeController,
    P2PMem,
    PciFunction,
    PortType,
)

ACS_OFFSET = 0x148  # where QEMU's pcie-root-port keeps it; any 0x100.. offset is valid


@dataclass
class _Node:
    func: PciFunction
    children: list[Bdf] = field(default_factory=list)


def _align(x: int, a: int) -> int:
    return (x + a - 1) // a * a


class FabricBuilder:
    """Mutable builder; :meth:`build` returns the immutable :class:`Fabric`."""

    def __init__(self, host: HostContext | None = None, *, origin: str = "<builder>") -> None:
        self.host = host or HostContext()
        self.origin = origin
        self._nodes: dict[Bdf, _Node] = {}
        self._hbs: list[HostBridge] = []
        self._next_bus: dict[int, int] = {}  # domain -> next free bus number
        self._mmio: dict[tuple[int, int], int] = {}  # host bridge -> next free address
        self._nvme_count = 0
        self._iommu_group = 0
        self.assign_iommu_groups = False

    # -- host bridges -----------------------------------------------------------

    def host_bridge(
        self,
        *,
        domain: int = 0,
        bus: int | None = None,
        first: tuple[int, int] | None = (0x8086, 0x09A2),
        first_type: PortType = PortType.RC_INTEGRATED_ENDPOINT,
        first_devfn: tuple[int, int] = (0, 0),
        numa_node: int | None = None,
        mmio_base: int | None = None,
    ) -> HostBridge:
        """A host bridge with its root bus.  ``first`` is the vendor:device of the
        device at ``first_devfn`` (the one the kernel's whitelist looks at); None
        for a root bus that starts with a root port instead."""
        if bus is None:
            bus = self._next_bus.get(domain, 0)
        hb = HostBridge(domain=domain, bus=bus, numa_node=numa_node)
        self._hbs.append(hb)
        self._next_bus[domain] = max(self._next_bus.get(domain, 0), bus + 1)
        base = mmio_base if mmio_base is not None else (
            0x400_0000_0000 + (len(self._hbs) - 1) * 0x100_0000_0000)
        self._mmio[(domain, bus)] = base
        if first is not None:
            self.add(
                Bdf(domain, bus, *first_devfn),
                vendor=first[0],
                device=first[1],
                class_code=0x060000,
                port_type=first_type,
                numa_node=numa_node,
            )
        return hb

    # -- generic functions ---------------------------------------------------

    def add(self, bdf: Bdf, *, vendor: int, device: int, class_code: int,
            parent: Bdf | None = None, bars: list[tuple[int, int]] | None = None,
            **kw: Any) -> Bdf:
        """Add one function.  ``bars`` is a list of (index, size): addresses are assigned."""
        if bdf in self._nodes:
            raise ValueError(f"{bdf} added twice")
        hb = self._hb_for(parent, bdf)
        assigned = []
        for index, size in bars or []:
            start = self._alloc_mmio(hb, size)
            assigned.append(Bar(index=index, start=start, size=size, is_64bit=True,
                                prefetchable=size >= (1 << 20)))
        kw.setdefault("subsystem_vendor", vendor)
        kw.setdefault("subsystem_device", device)
        kw.setdefault("revision", 1)
        if self.assign_iommu_groups and "iommu_group" not in kw:
            kw["iommu_group"] = self._iommu_group
            self._iommu_group += 1
        func = PciFunction(bdf=bdf, vendor=vendor, device=device, class_code=class_code,
                           parent=parent, bars=tuple(assigned), **kw)
        self._nodes[bdf] = _Node(func)
        if parent is not None:
            self._nodes[parent].children.append(bdf)
        return bdf

    def _hb_for(self, parent: Bdf | None, bdf: Bdf) -> tuple[int, int]:
        if parent is None:
            return (bdf.domain, bdf.bus)
        node = self._nodes[parent]
        while node.func.parent is not None:
            node = self._nodes[node.func.parent]
        return (node.func.bdf.domain, node.func.bdf.bus)

    def _alloc_mmio(self, hb: tuple[int, int], size: int) -> int:
        start = _align(self._mmio[hb], max(size, 4096))
        self._mmio[hb] = start + size
        return start

    def _new_bus(self, domain: int) -> int:
        bus = self._next_bus.get(domain, 0)
        if bus > 0xFF:
            raise ValueError(f"domain {domain:04x} ran out of bus numbers")
        self._next_bus[domain] = bus + 1
        return bus

    def _free_devfn(self, domain: int, bus: int, start: int = 0) -> tuple[int, int]:
        used = {(b.dev, b.fn) for b in self._nodes if b.domain == domain and b.bus == bus}
        for dev in range(start, 32):
            if (dev, 0) not in used:
                return dev, 0
        raise ValueError(f"bus {domain:04x}:{bus:02x} is full")

    def _bridge(self, parent: Bdf | None, bdf: Bdf, *, vendor: int, device: int,
                port_type: PortType, acs_cap: int | None, acs_ctrl: int,
                link: Link | None, **kw: Any) -> Bdf:
        acs = Acs(ACS_OFFSET, acs_cap, acs_ctrl) if acs_cap is not None else None
        sec = self._new_bus(bdf.domain)
        self.add(bdf, vendor=vendor, device=device, class_code=0x060400, parent=parent,
                 header_type=1, port_type=port_type, acs=acs, link=link,
                 secondary_bus=sec, subordinate_bus=sec, mps=256, mps_supported=512, **kw)
        return bdf

    # -- topology pieces ------------------------------------------------------

    def root_port(self, hb: HostBridge, *, dev: int | None = None, fn: int = 0,
                  vendor: int = 0x8086, device: int = 0x347A, acs_cap: int | None = 0x005F,
                  acs_ctrl: int = 0, link: Link | None = None, **kw: Any) -> Bdf:
        if dev is None:
            dev, _ = self._free_devfn(hb.domain, hb.bus, start=1)
        return self._bridge(None, Bdf(hb.domain, hb.bus, dev, fn), vendor=vendor, device=device,
                            port_type=PortType.ROOT_PORT, acs_cap=acs_cap, acs_ctrl=acs_ctrl,
                            link=link or Link(16.0, 16, 16.0, 16), **kw)

    def switch(self, upstream: Bdf, *, ports: int = 2, vendor: int = 0x10B5,
               device: int = 0x9781, acs_cap: int | None = 0x005F, acs_ctrl: int = 0,
               usp_acs_cap: int | None = None, link: Link | None = None) -> tuple[Bdf, list[Bdf]]:
        """A PCIe switch below ``upstream``: one upstream port, ``ports`` downstream ports."""
        sec = self._nodes[upstream].func.secondary_bus
        assert sec is not None, f"{upstream} is not a bridge"
        d = upstream.domain
        link = link or Link(16.0, 16, 16.0, 16)
        usp = self._bridge(upstream, Bdf(d, sec, 0, 0), vendor=vendor, device=device,
                           port_type=PortType.UPSTREAM_PORT, acs_cap=usp_acs_cap, acs_ctrl=0,
                           link=link)
        usec = self._nodes[usp].func.secondary_bus
        assert usec is not None
        dsps = [self._bridge(usp, Bdf(d, usec, i, 0), vendor=vendor, device=device,
                             port_type=PortType.DOWNSTREAM_PORT, acs_cap=acs_cap,
                             acs_ctrl=acs_ctrl, link=link)
                for i in range(ports)]
        return usp, dsps

    def endpoint(self, port: Bdf | HostBridge, *, vendor: int = 0x1B36, device: int = 0x0010,
                 class_code: int = 0x010802, fn: int = 0, dev: int | None = None,
                 bars: list[tuple[int, int]] | None = None, driver: str | None = None,
                 link: Link | None = None, port_type: PortType | None = None,
                 **kw: Any) -> Bdf:
        """An endpoint below a port (or on a root bus: RC-integrated)."""
        if isinstance(port, HostBridge):
            if dev is None:
                dev, _ = self._free_devfn(port.domain, port.bus, start=1)
            bdf = Bdf(port.domain, port.bus, dev, fn)
            parent = None
            ptype = port_type or PortType.RC_INTEGRATED_ENDPOINT
        else:
            sec = self._nodes[port].func.secondary_bus
            assert sec is not None, f"{port} is not a bridge"
            bdf = Bdf(port.domain, sec, dev or 0, fn)
            parent = port
            ptype = port_type or PortType.ENDPOINT
            if link is None:
                link = Link(16.0, 4, 16.0, 4)
        return self.add(bdf, vendor=vendor, device=device, class_code=class_code,
                        parent=parent, bars=bars if bars is not None else [(0, 16 << 10)],
                        driver=driver, link=link, port_type=ptype, mps=256, mps_supported=512,
                        **kw)

    def nvme(self, port: Bdf | HostBridge, *, cmb_size: int = 0, cmb_bar: int = 2,
             cmb_offset: int = 0, wds: bool = True, rds: bool = True,
             registered: bool | None = None, published: bool | None = None,
             allocate: bool = True, sq_in_cmb: int = 0, fn: int = 0,
             vendor: int = 0x1B36, device: int = 0x0010, **kw: Any) -> Bdf:
        """An NVMe controller; with ``cmb_size`` a CMB in ``cmb_bar`` and (by default)
        the p2pmem state the Linux driver would create for it."""
        name = f"nvme{self._nvme_count}"
        self._nvme_count += 1
        bars = [(0, 16 << 10)]
        cmb = None
        if cmb_size:
            bar_size = 1 << max(cmb_size + cmb_offset - 1, 1).bit_length()
            bars.append((cmb_bar, bar_size))
            cmb = Cmb.encode(size=cmb_size, bar=cmb_bar, offset=cmb_offset, wds=wds, rds=rds)
        bdf = self.endpoint(port, vendor=vendor, device=device, class_code=0x010802,
                            bars=bars, driver="nvme", fn=fn,
                            nvme=NvmeController(name=name, cmb=cmb,
                                                namespaces=(f"{name}n1",)), **kw)
        if cmb is not None:
            aligned = cmb_size % (2 << 20) == 0 and cmb_offset % (2 << 20) == 0
            if registered is None:
                registered = aligned
            if registered:
                pub = (wds and rds) if published is None else published
                self.set_p2pmem(bdf, size=cmb_size, available=cmb_size - sq_in_cmb,
                                published=pub, allocate=allocate)
        return bdf

    def set_p2pmem(self, bdf: Bdf, *, size: int, available: int | None = None,
                   published: bool = True, allocate: bool = True) -> None:
        node = self._nodes[bdf]
        node.func = dataclasses.replace(
            node.func, p2pmem=P2PMem(size=size, available=size if available is None else available,
                                     published=published, allocate=allocate))

    def update(self, bdf: Bdf, **changes: Any) -> None:
        node = self._nodes[bdf]
        node.func = dataclasses.replace(node.func, **changes)

    def mark_multifunction(self, bdf: Bdf) -> None:
        self.update(bdf, multifunction=True)

    # -- result -------------------------------------------------------------------

    def build(self) -> Fabric:
        # Bridges' subordinate bus numbers cover everything below them.
        def subordinate(b: Bdf) -> int:
            node = self._nodes[b]
            best = node.func.secondary_bus if node.func.secondary_bus is not None else -1
            for c in node.children:
                best = max(best, subordinate(c))
            if node.func.is_bridge:
                node.func = dataclasses.replace(node.func, subordinate_bus=best)
            return best

        for b, n in list(self._nodes.items()):
            if n.func.parent is None:
                subordinate(b)
        # Multifunction bit: set on function 0 of any device with several functions.
        slots: dict[tuple[int, int, int], int] = {}
        for b in self._nodes:
            if self._nodes[b].func.physfn is None:
                slots[(b.domain, b.bus, b.dev)] = slots.get((b.domain, b.bus, b.dev), 0) + 1
        for b, n in self._nodes.items():
            if slots.get((b.domain, b.bus, b.dev), 0) > 1 and not n.func.multifunction:
                n.func = dataclasses.replace(n.func, multifunction=True)
        return Fabric(functions=tuple(n.func for n in self._nodes.values()),
                      host_bridges=tuple(self._hbs), host=self.host,
                      origin=self.origin).validate()
