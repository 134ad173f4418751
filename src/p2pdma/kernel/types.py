"""Value types shared by the kernel layer: map types, kernel log lines, non-PCI clients."""

from __future__ import annotations

import enum
from dataclasses import dataclass

from p2pdma.fabric.bdf import Bdf


class MapType(enum.Enum):
    """``enum pci_p2pdma_map_type``.  The *numbers* differ between kernels: ask
    ``profile.map_type_value(t)``; the names are the kernel's ``PCI_P2PDMA_MAP_*``."""

    UNKNOWN = "UNKNOWN"
    NONE = "NONE"  # v6.16+: "not a P2PDMA transfer"
    NOT_SUPPORTED = "NOT_SUPPORTED"
    BUS_ADDR = "BUS_ADDR"
    THRU_HOST_BRIDGE = "THRU_HOST_BRIDGE"

    @property
    def supported(self) -> bool:
        return self in (MapType.BUS_ADDR, MapType.THRU_HOST_BRIDGE)


@dataclass(frozen=True)
class KernelMessage:
    """One kernel log line.  ``str()`` is the dmesg body: ``"<prefix>: <text>"``.

    ``prefix`` is what ``dev_warn``/``pci_warn`` print before the text: the bound
    driver's name (or ``pci``) and the device name, e.g. ``nvme 0000:04:00.0``;
    ``pci-p2pdma`` for the subsystem's own ``pr_*`` lines."""

    id: str  # W1..W5, ACS_REJECT (v4.20-5.4), E1, ...: our name for the line
    device: Bdf | None
    prefix: str
    text: str
    level: str = "warn"

    def __str__(self) -> str:
        return f"{self.prefix}: {self.text}"


@dataclass(frozen=True)
class NonPciClient:
    """A ``struct device`` that is not PCI (an RDMA ib_device, a block gendisk).

    ``find_parent_pci_dev`` walks its parents to ``pci_parent`` (None: no PCI
    device above it, so distance/find reject it with W5)."""

    name: str
    prefix: str
    pci_parent: Bdf | None = None

    def __str__(self) -> str:
        return self.name


Client = Bdf | NonPciClient


def device_prefix(driver: str | None, bdf: Bdf) -> str:
    """``dev_warn`` prefix: driver name if bound, else the bus name ``pci``."""
    return f"{driver or 'pci'} {bdf}"
