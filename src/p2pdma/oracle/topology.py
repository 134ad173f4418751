"""Guest topologies for the oracle, and the generator that produces the variants.

A topology is a small tree of QEMU PCIe pieces (root ports, switches, expander
host bridges, NVMe controllers with or without a CMB) plus machine options (CPU
model, IOMMU, ``pci=disable_acs_redir=`` paths).  :func:`generate_variants` builds
the variant list from shape generators crossed with machine-option axes; nothing
in the list is written out by hand.

QEMU facts the pieces rely on (see spec/qemu-kernel-oracle.md): ``pcie-root-port``
has ACS, ``xio3130-downstream`` has none, a ``pcie-root-port`` placed under an
``x3130-upstream`` acts as an ACS-capable switch downstream port, ``pxb-pcie`` only
accepts bridges, ``intel_iommu=on`` makes Linux enable ACS redirect on every ACS
port, and a CMB of 1 MiB is not registered (not 2 MiB aligned).
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from dataclasses import dataclass, field

CMB_REGISTERED_MB = 64
CMB_SKIPPED_MB = 1


@dataclass(frozen=True)
class Nvme:
    """An NVMe controller; ``functions`` > 1 makes a multifunction device."""

    cmb_mb: int = CMB_REGISTERED_MB  # 0: no CMB
    functions: int = 1


@dataclass(frozen=True)
class Switch:
    """A switch: upstream port plus one downstream port per entry of ``ports``.

    ``acs_ports`` uses ACS-capable ``pcie-root-port`` devices as the downstream ports.
    """

    ports: tuple[Node | None, ...]
    acs_ports: bool = False


@dataclass(frozen=True)
class RootPort:
    child: Node | None


Node = Nvme | Switch | RootPort


@dataclass(frozen=True)
class Expander:
    """A ``pxb-pcie`` extra host bridge with root ports below it."""

    ports: tuple[RootPort, ...]
    bus_nr: int


@dataclass(frozen=True)
class Topology:
    name: str
    root: tuple[Node | Expander, ...]  # devices on pcie.0, in slot order
    cpu: str = "qemu64"
    iommu: bool = False
    #: ``pci=disable_acs_redir=`` entries as device paths (``0000:00:02.0/00.0``)
    #: or the literal index of an ACS port (see :func:`acs_port_paths`).
    acs_redir_off: tuple[str, ...] = ()
    description: str = ""

    def cmdline(self) -> str:
        parts = []
        if self.iommu:
            parts.append("intel_iommu=on")
        if self.acs_redir_off:
            parts.append("pci=disable_acs_redir=" + ";".join(self.acs_redir_off))
        return " ".join(parts)

    def nvme_count(self) -> int:
        return sum(n.functions for n in _walk_nvme(self.root))


def _walk_nvme(nodes: tuple[Node | Expander | None, ...]) -> Iterator[Nvme]:
    for n in nodes:
        if isinstance(n, Nvme):
            yield n
        elif isinstance(n, Switch):
            yield from _walk_nvme(n.ports)
        elif isinstance(n, RootPort):
            yield from _walk_nvme((n.child,))
        elif isinstance(n, Expander):
            yield from _walk_nvme(n.ports)


@dataclass
class _Emitter:
    disk_dir: str | None = None  # file-backed namespaces here; None: null-co (reads zeros)
    args: list[str] = field(default_factory=list)
    acs_ports: list[str] = field(default_factory=list)  # device paths of ACS ports
    n_id: int = 0
    chassis: int = 0
    serial: int = 0

    def new_id(self, kind: str) -> str:
        self.n_id += 1
        return f"{kind}{self.n_id}"

    def new_chassis(self) -> int:
        self.chassis += 1
        return self.chassis

    def nvme(self, n: Nvme, bus: str, slot: int, path: str) -> None:
        for fn in range(n.functions):
            self.serial += 1
            blk = f"nb{self.serial}"
            if self.disk_dir is None:
                self.args += ["-blockdev", f"driver=null-co,node-name={blk},size={DISK_BYTES}"]
            else:
                img = f"{self.disk_dir}/nvme{self.serial}.img"
                with open(img, "wb") as fh:
                    fh.truncate(DISK_BYTES)
                self.args += ["-blockdev", f"driver=raw,node-name={blk},file.driver=file,"
                              f"file.filename={img}"]
            opts = [f"serial=p2p{self.serial:04d}", f"drive={blk}", f"bus={bus}",
                    f"addr={slot:#x}.{fn:#x}"]
            if n.functions > 1 and fn == 0:
                opts.append("multifunction=on")
            if n.cmb_mb:
                opts.append(f"cmb_size_mb={n.cmb_mb}")
            self.args += ["-device", "nvme," + ",".join(opts)]

    def node(self, n: Node | None, bus: str, slot: int, path: str) -> None:
        """Place ``n`` at ``bus``/``slot``; ``path`` is the device path of that slot."""
        if n is None:
            return
        if isinstance(n, Nvme):
            self.nvme(n, bus, slot, path)
        elif isinstance(n, RootPort):
            self.root_port(n, bus, slot, path)
        else:
            up = self.new_id("up")
            self.args += ["-device", f"x3130-upstream,id={up},bus={bus},addr={slot:#x}.0x0"]
            for i, child in enumerate(n.ports):
                dn = self.new_id("dn")
                kind = "pcie-root-port" if n.acs_ports else "xio3130-downstream"
                self.args += ["-device", f"{kind},id={dn},bus={up},chassis={self.new_chassis()},"
                              f"slot={i},addr={i:#x}.0x0"]
                dpath = f"{path}/{i:02x}.0"
                if n.acs_ports:
                    self.acs_ports.append(dpath)
                self.node(child, dn, 0, dpath + "/00.0")

    def root_port(self, n: RootPort, bus: str, slot: int, path: str) -> None:
        rp = self.new_id("rp")
        self.args += ["-device", f"pcie-root-port,id={rp},bus={bus},chassis={self.new_chassis()},"
                      f"slot={slot},addr={slot:#x}.0x0"]
        self.acs_ports.append(path)
        self.node(n.child, rp, 0, path + "/00.0")


#: pcie.0 slots used for the devices of a topology (0x1f is q35's ICH9; 0x1e the 9p share)
FIRST_SLOT = 2
NINEP_SLOT = 0x1E


DISK_BYTES = 16 << 20


def qemu_device_args(topo: Topology, disk_dir: str | None = None) -> tuple[list[str], list[str]]:
    """QEMU arguments for the topology's devices, and the device paths of its ACS ports.

    With ``disk_dir``, every namespace is a sparse 16 MiB file created there (data
    survives writes); otherwise a ``null-co`` block device (reads zeros, drops writes).
    """
    em = _Emitter(disk_dir)
    if topo.iommu:
        em.args += ["-device", "intel-iommu"]
    slot = FIRST_SLOT
    for item in topo.root:
        path = f"0000:00:{slot:02x}.0"
        if isinstance(item, Expander):
            pxb = em.new_id("pxb")
            em.args += ["-device", f"pxb-pcie,id={pxb},bus_nr={item.bus_nr},bus=pcie.0,"
                        f"addr={slot:#x}"]
            for i, rp in enumerate(item.ports):
                # device paths below a pxb start at its own root bus
                em.root_port(rp, pxb, i, f"0000:{item.bus_nr:02x}:{i:02x}.0")
        else:
            em.node(item, "pcie.0", slot, path)
        slot += 1
    return em.args, em.acs_ports


# --------------------------------------------------------------------------- shapes

def _shapes() -> Iterator[tuple[str, tuple[Node | Expander, ...], str]]:
    """(name, root items, description) for every base shape."""
    big, small = CMB_REGISTERED_MB, CMB_SKIPPED_MB
    # one switch with k NVMe below it, plain or ACS-capable downstream ports
    for k, acs in itertools.product((2, 3), (False, True)):
        ports = tuple(Nvme(big) for _ in range(k))
        yield (f"switch{k}{'-acs' if acs else ''}",
               (RootPort(Switch(ports, acs_ports=acs)),),
               f"{k} NVMe under one switch ({'ACS' if acs else 'no ACS'} downstream ports)")
    # nested switches: depth d, one NVMe at each level
    for depth in (2, 3):
        node: Node = Switch((Nvme(big), Nvme(big)), acs_ports=True)
        for _ in range(depth - 1):
            node = Switch((Nvme(big), node))
        yield (f"nested{depth}", (RootPort(node),),
               f"switches nested {depth} deep, the innermost with ACS downstream ports")
    # separate root ports
    for k in (2, 3):
        yield (f"rootports{k}", tuple(RootPort(Nvme(big)) for _ in range(k)),
               f"{k} NVMe on separate root ports")
    # root-complex integrated endpoints on pcie.0, plus one behind a root port
    yield ("rcie", (Nvme(big), Nvme(big), RootPort(Nvme(big))),
           "2 NVMe on the root bus pcie.0 and one on a root port")
    # CMB providers that register and ones that do not (1 MiB)
    yield ("cmbmix", (RootPort(Switch((Nvme(big), Nvme(small), Nvme(0), Nvme(big)))),),
           "one switch: 64 MiB, 1 MiB, no CMB, 64 MiB")
    # equidistant providers for find_many ties, plus a far one
    yield ("ties", (RootPort(Switch((Nvme(0), Nvme(big), Nvme(big), Nvme(big)))),
                    RootPort(Nvme(big))),
           "client with three equidistant providers in its switch, one provider far away")
    # multifunction devices
    yield ("multifn", (RootPort(Nvme(big, functions=2)),
                       RootPort(Switch((Nvme(big, functions=3), Nvme(big))))),
           "multifunction NVMe: 2 functions on a root port, 3 under a switch")
    # extra host bridges
    yield ("pxb", (RootPort(Nvme(big)),
                   Expander((RootPort(Nvme(big)), RootPort(Nvme(big))), bus_nr=0x40)),
           "pxb-pcie host bridge with two root ports, one NVMe on the main host bridge")
    yield ("pxb2", (Expander((RootPort(Switch((Nvme(big), Nvme(big)))),), bus_nr=0x40),
                    Expander((RootPort(Nvme(big)),), bus_nr=0x80)),
           "two pxb-pcie host bridges, a switch below one")
    yield ("pxb-acs", (Expander((RootPort(Switch((Nvme(big), Nvme(big)), acs_ports=True)),),
                                bus_nr=0x40),),
           "pxb-pcie host bridge, a switch with ACS downstream ports below its root port")


#: machine-option axes: (suffix, cpu, iommu)
_MACHINES = (
    ("", "qemu64", False),
    ("-epyc", "EPYC", False),
    ("-iommu", "qemu64", True),
    ("-iommu-epyc", "EPYC", True),
    ("-intel", "Skylake-Server", False),
    ("-hygon", "Dhyana", False),
)

#: which machine axes each shape is crossed with (keeps the boot count reasonable)
_AXES = {
    "switch2": ("", "-iommu", "-iommu-epyc"),
    "switch2-acs": ("", "-iommu", "-iommu-epyc", "-hygon"),
    "switch3": ("",),
    "switch3-acs": ("-iommu",),
    "nested2": ("", "-iommu"),
    "nested3": ("-iommu-epyc",),
    "rootports2": ("", "-epyc", "-intel", "-hygon", "-iommu"),
    "rootports3": ("-epyc",),
    "rcie": ("", "-epyc"),
    "cmbmix": ("",),
    "ties": ("", "-epyc"),
    "multifn": ("", "-iommu"),
    "pxb": ("", "-epyc", "-iommu", "-iommu-epyc"),
    "pxb2": ("", "-epyc"),
    "pxb-acs": ("-iommu",),
}


def generate_variants() -> list[Topology]:
    """All oracle variants: shapes × machine axes, plus ACS-redirect-off subsets."""
    machines = {s: (cpu, iommu) for s, cpu, iommu in _MACHINES}
    out: list[Topology] = []
    for name, root, desc in _shapes():
        for suffix in _AXES.get(name, ("",)):
            cpu, iommu = machines[suffix]
            topo = Topology(f"{name}{suffix}", root, cpu=cpu, iommu=iommu,
                            description=f"{desc}; cpu {cpu}; iommu {'on' if iommu else 'off'}")
            out.append(topo)
            if iommu and not cpu.startswith("EPYC"):
                out.extend(_acs_off_variants(topo))
    return out


def _acs_off_variants(topo: Topology) -> list[Topology]:
    """With the IOMMU on: clear ACS redirect on all ACS ports, and on the first one only."""
    _, ports = qemu_device_args(topo)
    if topo.name not in {"switch2-acs-iommu", "nested2-iommu", "rootports2-iommu"} or not ports:
        return []
    subsets = [("-acsoff", tuple(ports)), ("-acsoff1", (ports[-1],))]
    return [
        Topology(topo.name + sfx, topo.root, cpu=topo.cpu, iommu=True, acs_redir_off=paths,
                 description=topo.description + "; disable_acs_redir=" + ";".join(paths))
        for sfx, paths in subsets
    ]


def variant_by_name(name: str) -> Topology:
    for t in generate_variants():
        if t.name == name:
            return t
    raise KeyError(name)
