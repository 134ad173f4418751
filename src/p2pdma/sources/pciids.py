"""Vendor and device names from the system's pci.ids, with a small built-in fallback.

Names are for people: they are never part of a Fabric (two sources of the same
hardware must compare equal whether or not pci.ids is installed).
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

# Searched under the fabric's root first, then the running system.
PCI_IDS_PATHS = ("usr/share/misc/pci.ids", "usr/share/hwdata/pci.ids", "usr/share/pci.ids")

# Vendors that appear in the samples, so output is readable without pci.ids.
BUILTIN_VENDORS = {
    0x1000: "Broadcom / LSI",
    0x1022: "Advanced Micro Devices, Inc. [AMD]",
    0x104C: "Texas Instruments",
    0x10B5: "PLX Technology, Inc.",
    0x10DE: "NVIDIA Corporation",
    0x144D: "Samsung Electronics Co Ltd",
    0x15B3: "Mellanox Technologies",
    0x1AE0: "Google, Inc.",
    0x1AF4: "Red Hat, Inc. (virtio)",
    0x1B36: "Red Hat, Inc. (QEMU)",
    0x1D17: "Zhaoxin",
    0x1DE5: "Eideticom, Inc",
    0x8086: "Intel Corporation",
}
BUILTIN_DEVICES = {
    (0x8086, 0x09A2): "Ice Lake Memory Map/VT-d",
    (0x8086, 0x347A): "Ice Lake PCIe Root Port",
    (0x8086, 0x29C0): "82G33/G31/P35/P31 Express DRAM Controller (QEMU q35)",
    (0x8086, 0x4C43): "Rocket Lake Host Bridge",
    (0x1B36, 0x000C): "QEMU PCIe Root port",
    (0x1B36, 0x0010): "QEMU NVM Express Controller",
    (0x104C, 0x8232): "XIO3130 PCI Express Switch (Upstream)",
    (0x104C, 0x8233): "XIO3130 PCI Express Switch (Downstream)",
    (0x1DE5, 0x3000): "NoLoad Hardware Development Kit (NVMe with CMB)",
    (0x15B3, 0x101B): "MT28908 Family [ConnectX-6]",
    (0x10DE, 0x20B5): "GA100 [A100 PCIe 80GB]",
    (0x10DE, 0x2684): "AD102 [GeForce RTX 4090]",
    (0x144D, 0xA824): "NVMe SSD Controller PM173X",
    (0x144D, 0xA80C): "NVMe SSD Controller S4LV008[Pascal]",
    (0x1000, 0xC010): "PEX880xx PCIe Gen 4 Switch",
    (0x1022, 0x14A4): "Genoa/Bergamo Root Complex",
    (0x1022, 0x14AB): "Genoa/Bergamo PCIe GPP Bridge",
}


class PciIds:
    def __init__(self, vendors: dict[int, str], devices: dict[tuple[int, int], str]) -> None:
        self.vendors = vendors
        self.devices = devices

    def vendor(self, vendor: int) -> str | None:
        return self.vendors.get(vendor) or BUILTIN_VENDORS.get(vendor)

    def device(self, vendor: int, device: int) -> str | None:
        return self.devices.get((vendor, device)) or BUILTIN_DEVICES.get((vendor, device))

    def describe(self, vendor: int, device: int) -> str:
        v = self.vendor(vendor) or f"vendor {vendor:04x}"
        d = self.device(vendor, device) or f"device {device:04x}"
        return f"{v} {d}"


def _parse(path: Path) -> PciIds:
    vendors: dict[int, str] = {}
    devices: dict[tuple[int, int], str] = {}
    current: int | None = None
    with path.open(encoding="utf-8", errors="replace") as fh:
        for line in fh:
            if not line.strip() or line.startswith("#"):
                continue
            if line.startswith("C "):
                break  # device classes follow; not needed
            if not line.startswith("\t"):
                head, _, name = line.partition("  ")
                try:
                    current = int(head, 16)
                except ValueError:
                    current = None
                    continue
                vendors[current] = name.strip()
            elif not line.startswith("\t\t") and current is not None:
                head, _, name = line[1:].partition("  ")
                try:
                    devices[(current, int(head, 16))] = name.strip()
                except ValueError:
                    continue
    return PciIds(vendors, devices)


@lru_cache(maxsize=4)
def load_pci_ids(root: str = "/") -> PciIds:
    for rel in PCI_IDS_PATHS:
        for base in (Path(root), Path("/")):
            p = base / rel
            if p.is_file():
                try:
                    return _parse(p)
                except OSError:
                    continue
    return PciIds({}, {})
