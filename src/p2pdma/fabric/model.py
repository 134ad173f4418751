"""The immutable facts about a machine's PCI fabric.

Nothing here knows kernel policy: these are the *inputs* the kernel's P2PDMA
decisions read (the PCI tree, ACS registers, host bridges, the CPU) plus what
users ask about (links, BARs, drivers, p2pmem and CMB state).  Every source
(live sysfs, snapshot, fabric file) produces the same objects, and two sources
describing the same hardware produce *equal* objects.

Conventions:
- ``None`` means "not known" (not read, not applicable is said explicitly).
- Addresses are CPU physical addresses unless a name says ``bus``.
- Tuples are kept in a canonical order (functions by BDF, host bridges by
  domain/bus) so that equality does not depend on how a source enumerated.
"""

from __future__ import annotations

import dataclasses
import enum
import itertools
from collections.abc import Iterator
from dataclasses import dataclass, field
from functools import cached_property

from p2pdma.errors import InputError, UnknownDeviceError
from p2pdma.fabric.bdf import Bdf, is_bdf

# ---------------------------------------------------------------------------
# PCI Express port types (PCIe Capabilities register, bits 7:4)


class PortType(enum.Enum):
    ENDPOINT = "endpoint"
    LEGACY_ENDPOINT = "legacy-endpoint"
    ROOT_PORT = "root-port"
    UPSTREAM_PORT = "upstream-port"
    DOWNSTREAM_PORT = "downstream-port"
    PCIE_TO_PCI_BRIDGE = "pcie-to-pci-bridge"
    PCI_TO_PCIE_BRIDGE = "pci-to-pcie-bridge"
    RC_INTEGRATED_ENDPOINT = "rc-integrated-endpoint"
    RC_EVENT_COLLECTOR = "rc-event-collector"
    NOT_PCIE = "not-pcie"  # conventional PCI: no PCIe capability
    UNKNOWN = "unknown"  # config space could not be read that far

    @property
    def pcie_type_value(self) -> int | None:
        """The 4-bit value in the PCIe Capabilities register, or None."""
        return _PORT_TYPE_VALUES.get(self)

    @classmethod
    def from_pcie_type_value(cls, value: int) -> PortType:
        for k, v in _PORT_TYPE_VALUES.items():
            if v == value:
                return k
        raise ValueError(f"reserved PCIe device/port type {value}")

    @property
    def is_downstream_facing(self) -> bool:
        return self in (PortType.ROOT_PORT, PortType.DOWNSTREAM_PORT)


_PORT_TYPE_VALUES: dict[PortType, int] = {
    PortType.ENDPOINT: 0x0,
    PortType.LEGACY_ENDPOINT: 0x1,
    PortType.ROOT_PORT: 0x4,
    PortType.UPSTREAM_PORT: 0x5,
    PortType.DOWNSTREAM_PORT: 0x6,
    PortType.PCIE_TO_PCI_BRIDGE: 0x7,
    PortType.PCI_TO_PCIE_BRIDGE: 0x8,
    PortType.RC_INTEGRATED_ENDPOINT: 0x9,
    PortType.RC_EVENT_COLLECTOR: 0xA,
}

# ---------------------------------------------------------------------------
# ACS (Access Control Services extended capability, id 0x0D)

ACS_SV = 0x0001  # Source Validation
ACS_TB = 0x0002  # Translation Blocking
ACS_RR = 0x0004  # P2P Request Redirect
ACS_CR = 0x0008  # P2P Completion Redirect
ACS_UF = 0x0010  # Upstream Forwarding
ACS_EC = 0x0020  # P2P Egress Control
ACS_DT = 0x0040  # Direct Translated P2P

ACS_BITS: tuple[tuple[str, int], ...] = (
    ("SV", ACS_SV),
    ("TB", ACS_TB),
    ("RR", ACS_RR),
    ("CR", ACS_CR),
    ("UF", ACS_UF),
    ("EC", ACS_EC),
    ("DT", ACS_DT),
)


def decode_acs_bits(value: int) -> list[str]:
    """Names of the ACS bits set in a capability or control value, in bit order."""
    return [name for name, bit in ACS_BITS if value & bit]


@dataclass(frozen=True)
class Acs:
    """The ACS extended capability of one function, as read from config space."""

    offset: int  # of the extended capability header in config space
    capability: int  # ACS Capability register (cap + 0x04), 16 bits
    control: int  # ACS Control register (cap + 0x06), 16 bits

    def __post_init__(self) -> None:
        for name in ("capability", "control"):
            v = getattr(self, name)
            if not 0 <= v <= 0xFFFF:
                raise ValueError(f"ACS {name} {v:#x} is not a 16-bit value")


# ---------------------------------------------------------------------------
# BARs and links

IORESOURCE_IO = 0x00000100
IORESOURCE_MEM = 0x00000200
IORESOURCE_PREFETCH = 0x00002000
IORESOURCE_MEM_64 = 0x00100000
IORESOURCE_SIZEALIGN = 0x00040000


@dataclass(frozen=True)
class Bar:
    """One standard BAR (index 0..5) with its assigned CPU physical range."""

    index: int
    start: int  # CPU physical address
    size: int
    is_memory: bool = True
    is_64bit: bool = False
    prefetchable: bool = False
    bus_start: int | None = None  # PCI bus address; None means "same as start"

    def __post_init__(self) -> None:
        if not 0 <= self.index <= 5:
            raise ValueError(f"BAR index {self.index} is not 0..5")
        if self.size < 0 or self.start < 0:
            raise ValueError("BAR start and size must be non-negative")

    @property
    def end(self) -> int:
        """Inclusive end, as sysfs ``resource`` prints it."""
        return self.start + self.size - 1

    @property
    def bus_address(self) -> int:
        return self.start if self.bus_start is None else self.bus_start

    @property
    def bus_offset(self) -> int:
        """``pci_bus_address - resource_start`` with unsigned 64-bit wrap-around."""
        return (self.bus_address - self.start) & 0xFFFF_FFFF_FFFF_FFFF

    @property
    def flags(self) -> int:
        """Canonical ``IORESOURCE_*`` flags as sysfs ``resource`` shows them."""
        if not self.is_memory:
            return IORESOURCE_IO | IORESOURCE_SIZEALIGN | 0x1
        f = IORESOURCE_MEM | IORESOURCE_SIZEALIGN
        low = 0
        if self.is_64bit:
            f |= IORESOURCE_MEM_64
            low |= 0x4
        if self.prefetchable:
            f |= IORESOURCE_PREFETCH
            low |= 0x8
        return f | low


@dataclass(frozen=True)
class Link:
    """PCIe link capability and status.  Speeds in GT/s (2.5, 5.0, 8.0, 16.0, 32.0, 64.0)."""

    max_speed: float | None = None
    max_width: int | None = None
    speed: float | None = None
    width: int | None = None


# ---------------------------------------------------------------------------
# P2P memory and NVMe CMB

CMBSZ_SQS = 1 << 0
CMBSZ_CQS = 1 << 1
CMBSZ_LISTS = 1 << 2
CMBSZ_RDS = 1 << 3
CMBSZ_WDS = 1 << 4


@dataclass(frozen=True)
class P2PMem:
    """The ``p2pmem/`` sysfs directory of a provider (exists once a pool exists)."""

    size: int
    available: int
    published: bool
    allocate: bool  # ``p2pmem/allocate`` present (kernel >= 6.2)


@dataclass(frozen=True)
class Cmb:
    """Decoded NVMe CMBLOC/CMBSZ registers."""

    cmbloc: int
    cmbsz: int

    @property
    def unit(self) -> int:
        return 1 << (12 + 4 * ((self.cmbsz >> 8) & 0xF))

    @property
    def size(self) -> int:
        return self.unit * ((self.cmbsz >> 12) & 0xFFFFF)

    @property
    def offset(self) -> int:
        return self.unit * ((self.cmbloc >> 12) & 0xFFFFF)

    @property
    def bar(self) -> int:
        return self.cmbloc & 0x7

    @property
    def flags(self) -> dict[str, bool]:
        s = self.cmbsz
        return {
            "SQS": bool(s & CMBSZ_SQS),
            "CQS": bool(s & CMBSZ_CQS),
            "LISTS": bool(s & CMBSZ_LISTS),
            "RDS": bool(s & CMBSZ_RDS),
            "WDS": bool(s & CMBSZ_WDS),
        }

    @classmethod
    def encode(
        cls,
        *,
        size: int,
        bar: int,
        offset: int = 0,
        unit: int | None = None,
        sqs: bool = True,
        cqs: bool = False,
        lists: bool = False,
        rds: bool = True,
        wds: bool = True,
    ) -> Cmb:
        """Build the registers for a CMB of ``size`` bytes at ``offset`` in ``bar``."""
        if unit is None:
            unit = 1 << 20 if size % (1 << 20) == 0 and offset % (1 << 20) == 0 else 1 << 12
        szu = {1 << (12 + 4 * k): k for k in range(7)}.get(unit)
        if szu is None:
            raise ValueError(f"CMB unit {unit} is not 4KiB * 16^k")
        if size % unit or offset % unit:
            raise ValueError(f"CMB size/offset must be multiples of the unit {unit}")
        sz, ofst = size // unit, offset // unit
        if sz > 0xFFFFF or ofst > 0xFFFFF:
            raise ValueError("CMB size/offset too large for the unit")
        if not 0 <= bar <= 5:
            raise ValueError(f"CMB BAR {bar} is not 0..5")
        flags = (
            (CMBSZ_SQS if sqs else 0)
            | (CMBSZ_CQS if cqs else 0)
            | (CMBSZ_LISTS if lists else 0)
            | (CMBSZ_RDS if rds else 0)
            | (CMBSZ_WDS if wds else 0)
        )
        return cls(cmbloc=(ofst << 12) | bar, cmbsz=(sz << 12) | (szu << 8) | flags)


@dataclass(frozen=True)
class NvmeController:
    """An NVMe controller bound to a PCI function (``/sys/class/nvme/nvmeN``)."""

    name: str  # "nvme0"
    cmb: Cmb | None = None  # None: no ``cmb`` attribute or CMBSZ == 0
    namespaces: tuple[str, ...] = ()  # block devices, e.g. ("nvme0n1",)


# ---------------------------------------------------------------------------
# One PCI function


@dataclass(frozen=True)
class PciFunction:
    bdf: Bdf
    vendor: int
    device: int
    class_code: int  # 24-bit: base class, subclass, prog-if
    subsystem_vendor: int | None = None
    subsystem_device: int | None = None
    revision: int | None = None
    header_type: int = 0  # 0 normal, 1 PCI-PCI bridge, 2 CardBus (multifunction bit stripped)
    multifunction: bool = False  # header-type bit 7
    port_type: PortType = PortType.ENDPOINT
    parent: Bdf | None = None  # the bridge above (bus->self); None on a root bus
    physfn: Bdf | None = None  # set for an SR-IOV VF
    secondary_bus: int | None = None  # bridges only
    subordinate_bus: int | None = None
    link: Link | None = None
    mps: int | None = None  # Max Payload Size in bytes (Device Control)
    mps_supported: int | None = None  # Max Payload Size Supported (Device Capabilities)
    bars: tuple[Bar, ...] = ()
    driver: str | None = None
    iommu_group: int | None = None
    numa_node: int | None = None
    acs: Acs | None = None  # None with acs_unknown None: the function has no ACS capability
    acs_unknown: str | None = None  # why ACS could not be read (then acs is None)
    p2pmem: P2PMem | None = None
    nvme: NvmeController | None = None

    def __post_init__(self) -> None:
        if self.acs is not None and self.acs_unknown is not None:
            raise ValueError(f"{self.bdf}: ACS cannot be both read and unknown")
        idx = [b.index for b in self.bars]
        if idx != sorted(set(idx)):
            raise ValueError(f"{self.bdf}: BARs must be unique and in index order")

    @property
    def vendor_device(self) -> str:
        return f"{self.vendor:04x}:{self.device:04x}"

    @property
    def is_bridge(self) -> bool:
        return self.header_type == 1

    @property
    def is_virtfn(self) -> bool:
        return self.physfn is not None

    def bar(self, index: int) -> Bar | None:
        for b in self.bars:
            if b.index == index:
                return b
        return None

    @property
    def acs_known(self) -> bool:
        return self.acs_unknown is None


# ---------------------------------------------------------------------------
# Host bridges and the host context


@dataclass(frozen=True)
class HostBridge:
    """One PCI host bridge (``/sys/devices/pciDDDD:BB``) and its root bus."""

    domain: int
    bus: int
    numa_node: int | None = None

    @property
    def name(self) -> str:
        return f"pci{self.domain:04x}:{self.bus:02x}"


class IommuMode(enum.Enum):
    OFF = "off"  # no IOMMU, or present but not used for DMA
    TRANSLATED = "translated"  # DMA / DMA-FQ domains: IOVAs
    PASSTHROUGH = "passthrough"  # identity domains


@dataclass(frozen=True)
class HostContext:
    """What the kernel's decisions depend on beyond the PCI tree."""

    kernel_release: str | None = None  # `uname -r`
    cmdline: str | None = None  # /proc/cmdline
    arch: str | None = None  # "x86_64", "aarch64", ...
    cpu_vendor: str | None = None  # /proc/cpuinfo vendor_id: GenuineIntel, AuthenticAMD, ...
    cpu_family: int | None = None
    cpu_model: int | None = None
    iommu: IommuMode | None = None
    iommu_driver: str | None = None  # "dmar", "amd-iommu", "virtio-iommu", ...
    p2pdma_config: bool | None = None  # CONFIG_PCI_P2PDMA, when knowable
    privileged: bool | None = None  # read as root (full config space)


# ---------------------------------------------------------------------------
# The fabric


@dataclass(frozen=True)
class Fabric:
    """Everything known about one machine.  Immutable; what-if edits return a copy."""

    functions: tuple[PciFunction, ...]
    host_bridges: tuple[HostBridge, ...]
    host: HostContext = field(default_factory=HostContext)
    # Provenance, not facts: excluded from equality so that sources compare equal.
    origin: str = field(default="", compare=False)
    unreadable: tuple[str, ...] = field(default=(), compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "functions", tuple(sorted(self.functions, key=lambda f: f.bdf)))
        object.__setattr__(
            self, "host_bridges", tuple(sorted(self.host_bridges, key=lambda h: (h.domain, h.bus)))
        )

    # -- lookups -----------------------------------------------------------

    @cached_property
    def _by_bdf(self) -> dict[Bdf, PciFunction]:
        return {f.bdf: f for f in self.functions}

    @cached_property
    def _children(self) -> dict[Bdf | None, tuple[Bdf, ...]]:
        kids: dict[Bdf | None, list[Bdf]] = {}
        for f in self.functions:
            kids.setdefault(f.parent, []).append(f.bdf)
        return {k: tuple(v) for k, v in kids.items()}

    def __contains__(self, bdf: object) -> bool:
        return bdf in self._by_bdf

    def __iter__(self) -> Iterator[PciFunction]:
        return iter(self.functions)

    def __len__(self) -> int:
        return len(self.functions)

    def get(self, bdf: Bdf) -> PciFunction:
        try:
            return self._by_bdf[bdf]
        except KeyError:
            raise UnknownDeviceError(
                f"no PCI function {bdf} in this fabric",
                where=self.origin or None,
                hint=self._closest_hint(bdf),
            ) from None

    def _closest_hint(self, bdf: Bdf) -> str:
        same_bus = [str(f.bdf) for f in self.functions if f.bdf[:2] == bdf[:2]]
        pool = same_bus or [str(f.bdf) for f in self.functions]
        if not pool:
            return "the fabric has no PCI functions"
        shown = ", ".join(pool[:8]) + (" ..." if len(pool) > 8 else "")
        return f"known functions{' on that bus' if same_bus else ''}: {shown} (see `p2pdma topo`)"

    def resolve(self, text: str) -> Bdf:
        """A BDF (full or short) or an NVMe controller / namespace name -> BDF."""
        t = text.strip()
        if is_bdf(t):
            bdf = Bdf.parse(t)
            self.get(bdf)  # raises with a hint when absent
            return bdf
        for f in self.functions:
            if f.nvme and (t == f.nvme.name or t in f.nvme.namespaces or
                           t.removeprefix("/dev/") in f.nvme.namespaces or
                           t.removeprefix("/dev/") == f.nvme.name):
                return f.bdf
        raise UnknownDeviceError(
            f"{text!r} is neither a PCI address nor a known NVMe controller/namespace",
            where=self.origin or None,
            hint="give a BDF such as 0000:03:00.0 (see `p2pdma topo`)",
        )

    def children(self, bdf: Bdf | None) -> tuple[Bdf, ...]:
        """Functions whose parent is ``bdf`` (``None``: all functions on root buses)."""
        return self._children.get(bdf, ())

    def root_bus_devices(self, hb: HostBridge) -> tuple[PciFunction, ...]:
        """Functions on ``hb``'s root bus, in enumeration (devfn) order."""
        return tuple(
            f
            for f in self.functions
            if f.parent is None and f.bdf.domain == hb.domain and f.bdf.bus == hb.bus
            and f.physfn is None
        )

    def root_of(self, bdf: Bdf) -> PciFunction:
        """The function on the root bus above ``bdf`` (a VF counts as its PF)."""
        f = self.get(bdf)
        seen = set()
        while True:
            if f.bdf in seen:
                raise InputError(f"{bdf}: parent chain loops", where=self.origin or None)
            seen.add(f.bdf)
            if f.physfn is not None:
                f = self.get(f.physfn)
                continue
            if f.parent is None:
                return f
            f = self.get(f.parent)

    def host_bridge_of(self, bdf: Bdf) -> HostBridge:
        root = self.root_of(bdf)
        for hb in self.host_bridges:
            if hb.domain == root.bdf.domain and hb.bus == root.bdf.bus:
                return hb
        raise InputError(
            f"{root.bdf} sits on bus {root.bdf.domain:04x}:{root.bdf.bus:02x}, "
            "which no host bridge owns",
            where=self.origin or None,
        )

    def by_vendor_device(self, vendor: int, device: int) -> list[PciFunction]:
        return [f for f in self.functions if f.vendor == vendor and f.device == device]

    # -- validation ----------------------------------------------------------

    def validate(self) -> Fabric:
        """Check structural consistency; raises :class:`InputError` saying what is wrong."""
        where = self.origin or None
        seen: set[Bdf] = set()
        for f in self.functions:
            if f.bdf in seen:
                raise InputError(f"PCI function {f.bdf} is declared twice", where=where)
            seen.add(f.bdf)
        hbs = {(h.domain, h.bus) for h in self.host_bridges}
        if len(hbs) != len(self.host_bridges):
            raise InputError("a host bridge is declared twice", where=where)
        for f in self.functions:
            if f.parent is not None:
                if f.parent not in seen:
                    raise InputError(
                        f"{f.bdf}: parent {f.parent} is not in the fabric", where=where
                    )
                p = self._by_bdf[f.parent]
                if not p.is_bridge:
                    raise InputError(
                        f"{f.bdf}: parent {f.parent} is not a bridge (header type 1)",
                        where=where,
                    )
            if f.physfn is not None:
                if f.physfn not in seen:
                    raise InputError(f"{f.bdf}: physfn {f.physfn} is not in the fabric",
                                     where=where)
                if self._by_bdf[f.physfn].physfn is not None:
                    raise InputError(f"{f.bdf}: physfn {f.physfn} is itself a VF", where=where)
            elif f.parent is None and (f.bdf.domain, f.bdf.bus) not in hbs:
                raise InputError(
                    f"{f.bdf} has no parent bridge, but no host bridge owns bus "
                    f"{f.bdf.domain:04x}:{f.bdf.bus:02x}",
                    where=where,
                    hint="declare the host bridge, or give the function a parent",
                )
        for f in self.functions:
            self.root_of(f.bdf)  # detects loops
        self._check_bar_overlaps(where)
        return self

    def _check_bar_overlaps(self, where: str | None) -> None:
        ranges = sorted((b.start, b.end, f.bdf, b.index) for f in self.functions
                        for b in f.bars if b.is_memory and b.size > 0)
        for (s1, e1, d1, i1), (s2, e2, d2, i2) in itertools.pairwise(ranges):
            if s2 <= e1:
                raise InputError(
                    f"memory BAR{i2} of {d2} ({s2:#x}-{e2:#x}) overlaps BAR{i1} of {d1} "
                    f"({s1:#x}-{e1:#x})",
                    where=where, hint="give every memory BAR its own CPU address range")

    # -- what-if edits -----------------------------------------------------

    def replace_function(self, bdf: Bdf, **changes: object) -> Fabric:
        f = self.get(bdf)
        nf = dataclasses.replace(f, **changes)  # type: ignore[arg-type]
        funcs = tuple(nf if g.bdf == bdf else g for g in self.functions)
        return dataclasses.replace(self, functions=funcs)

    def with_acs_control(self, bdf: Bdf, control: int) -> Fabric:
        """The fabric as it would be with ``bdf``'s ACS Control register set to ``control``."""
        f = self.get(bdf)
        if f.acs is None:
            reason = f.acs_unknown or "it has no ACS capability"
            raise InputError(f"cannot set ACS control on {bdf}: {reason}")
        return self.replace_function(bdf, acs=dataclasses.replace(f.acs, control=control))

    def with_host(self, **changes: object) -> Fabric:
        return dataclasses.replace(self, host=dataclasses.replace(self.host, **changes))  # type: ignore[arg-type]
