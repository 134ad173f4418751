"""The emulated P2PDMA subsystem: a machine with real memory and the kernel's state.

Public API (stable; see :mod:`p2pdma.emu.machine` for a usage example):

- :class:`Machine` — built from any Fabric.  Memory: ``memory`` (read/write by CPU
  physical, bus or kernel virtual address), ``alloc_ram``/``free_ram`` (host pages),
  ``iommu_domain(bdf)``, ``dma_read``/``dma_write`` (what a device sees at a DMA
  address).  Core layer: ``p2pdma_init``, ``provider(bdf, bar)``, ``map_type``.
  Allocation layer: ``add_resource``, ``publish``, ``has_p2pmem``, ``alloc``, ``free``,
  ``virt_to_bus``, ``alloc_sgl``/``free_sgl``, ``find``/``find_many``,
  ``distance``/``distance_many``, ``sysfs_read``, ``enable_store``/``enable_show``
  (and :class:`NvmetP2pmemAttr`, the nvmet configfs file),
  ``open_allocate(bdf).mmap(...)`` -> :class:`Vma`, ``pin_user_pages``.
  DMA: ``dma`` (:class:`DmaLayer`: ``map_phys``, ``unmap``, ``map_sgtable``, ``map_sg``,
  ``unmap_sgtable``, ``dma_buf_phys_vec_to_sgt``).  Topology: ``subscribe``,
  ``add_device``, ``remove_device``, ``reset_device``, ``set_memory_decoding``,
  ``set_acs_control``; ``dmesg``.
- Exporter/importer over VMAs: :class:`VmaExporter`, :class:`ExportedVma`,
  :class:`Importer`.  dma-buf: :func:`vfio_dmabuf_export`, :class:`DmaBuf`.
- Drivers with their own BAR allocator: :func:`insert_p2p_pages`.
"""

from p2pdma.emu.alloc import Resource, Sgl
from p2pdma.emu.core import P2PDmaState, Provider
from p2pdma.emu.device import DeviceState, EmuPciDev
from p2pdma.emu.dma import Direction, DmaLayer, DmaMapping, MapKind, P2PMapState, SgEntry, SgTable
from p2pdma.emu.dmabuf import DmaBuf, DmaBufAttachment, vfio_dmabuf_export
from p2pdma.emu.enable import EnableResult, NvmetP2pmemAttr
from p2pdma.emu.events import DeviceEvent, EventKind
from p2pdma.emu.exporter import ExportedVma, Importer, VmaExporter
from p2pdma.emu.gup import FOLL_LONGTERM, FOLL_PCI_P2PDMA, FOLL_WRITE, Pin
from p2pdma.emu.machine import Machine
from p2pdma.emu.pool import GenPool, PoolBug
from p2pdma.emu.usermap import MAP_PRIVATE, MAP_SHARED, AllocateFile
from p2pdma.emu.vma import SigBus, Vma, insert_p2p_pages

__all__ = [
    "FOLL_LONGTERM", "FOLL_PCI_P2PDMA", "FOLL_WRITE", "MAP_PRIVATE", "MAP_SHARED",
    "AllocateFile", "DeviceEvent", "DeviceState", "Direction", "DmaBuf", "DmaBufAttachment",
    "DmaLayer", "DmaMapping", "EmuPciDev", "EnableResult", "EventKind", "ExportedVma",
    "GenPool", "Importer", "Machine", "MapKind", "NvmetP2pmemAttr", "P2PDmaState",
    "P2PMapState", "Pin", "PoolBug", "Provider", "Resource", "SgEntry", "SgTable", "Sgl",
    "SigBus", "Vma", "VmaExporter", "insert_p2p_pages", "vfio_dmabuf_export",
]
