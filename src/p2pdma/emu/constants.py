"""Sizes and address-space layout of the emulated machine (x86-64 with 4 KiB pages)."""

from __future__ import annotations

PAGE_SHIFT = 12
PAGE_SIZE = 1 << PAGE_SHIFT
PAGE_MASK = ~(PAGE_SIZE - 1)

# The kernel's direct map: a kernel virtual address is PAGE_OFFSET + CPU physical
# address (what memremap of P2P memory hands to gen_pool on x86-64).
PAGE_OFFSET = 0xFFFF_8880_0000_0000

# memremap_compat_align() on x86-64: the memory-hotplug subsection size.  Ranges
# given to devm_memremap_pages must be aligned to it (spec §4.3 step 9).
SUBSECTION_SIZE = 2 << 20

# Size the sysfs ``allocate`` bin attribute claims (so mmap length checks pass).
SZ_1T = 1 << 40

# dma_buf_phys_vec_to_sgt splits entries at ALIGN_DOWN(UINT_MAX, PAGE_SIZE).
SG_MAX_SEGMENT = 0xFFFF_F000

# Where the emulated host RAM sits in CPU physical space, and where IOVAs are
# handed out (far from any BAR window the fabric builder assigns).
RAM_BASE = 0x1_0000_0000
IOVA_BASE = 0x7F00_0000_0000
IOVA_LIMIT = 0x7FFF_FFFF_F000

U64_MASK = 0xFFFF_FFFF_FFFF_FFFF


def page_align_up(n: int) -> int:
    return (n + PAGE_SIZE - 1) & PAGE_MASK


def pages(n: int) -> int:
    """Number of pages needed for ``n`` bytes."""
    return (n + PAGE_SIZE - 1) >> PAGE_SHIFT

PCI_STD_NUM_BARS = 6
