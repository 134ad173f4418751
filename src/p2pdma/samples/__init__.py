"""Bundled sample fabrics, selectable by name (``--sample NAME``).

Each sample is a TOML fabric file shipped in this package.  The files are
generated from :mod:`p2pdma.samples.definitions` (``python -m
p2pdma.samples.definitions`` rewrites them); a test checks they are in sync.
"""

from __future__ import annotations

from importlib import resources

from p2pdma.errors import InputError
from p2pdma.fabric.model import Fabric
from p2pdma.sources.fabricfile import loads_fabric

SAMPLES: dict[str, str] = {
    "xeon-2s": "Dual-socket Intel Xeon (Ice Lake, 8086:09a2 host bridges), IOMMU on: PCIe "
               "switches with NVMe+CMB, RDMA NICs and GPUs",
    "epyc": "AMD EPYC (family 0x19): NVMe with CMBs and a NIC on separate root ports",
    "desktop": "Intel desktop (host bridge 8086:4c43, not whitelisted): two GPUs and an NVMe "
               "on separate root ports",
    "qemu-q35": "QEMU q35 guest (8086:29c0) as in the QEMU oracle recipe: root ports, an "
                "x3130 switch, NVMe controllers with 64 MiB CMBs",
}


def sample_names() -> list[str]:
    return list(SAMPLES)


def sample_text(name: str) -> str:
    if name not in SAMPLES:
        raise InputError(f"no sample named {name!r}",
                         hint=f"samples: {', '.join(SAMPLES)} (see `p2pdma samples`)")
    return (resources.files(__package__) / f"{name}.toml").read_text(encoding="utf-8")


def load_sample(name: str) -> Fabric:
    return loads_fabric(sample_text(name), origin=f"sample:{name}")
