"""Exact texts of the messages the emulated allocation layer prints (spec §2.7).

The decision messages (W1-W5) come from the kernel layer with each result; the
ones below belong to code paths that live in the emulator (add_resource, the
``allocate`` mmap, enable_store).  Kept as data in one place.
"""

from __future__ import annotations

I1_ADDED = "added peer-to-peer DMA memory {start:#x}-{end:#x}"
I2_PRIVATE = "{comm}: fail, attempted private mapping"
I3_OFFSET = "{comm}: fail, attempted mapping with non-zero offset"
E1_NO_P2PMEM = "PCI device has no peer-to-peer memory: {page}"
E2_NO_DEVICE = "pci-p2pdma: No such PCI device: {name}"
CMB_WARN = "failed to register the CMB"
