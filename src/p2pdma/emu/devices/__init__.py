"""Emulated devices on the emulated machine: NVMe (CMB, file-backed namespaces), an RDMA
NIC with its remote peer, and a large-BAR GPU."""

from p2pdma.emu.devices.gpu import Gpu
from p2pdma.emu.devices.nvme import CmbPlan, CmbRegisters, Namespace, NvmeController, plan_cmb
from p2pdma.emu.devices.rdma import RdmaNic, RemotePeer, wire_pair

__all__ = ["CmbPlan", "CmbRegisters", "Gpu", "Namespace", "NvmeController", "RdmaNic",
           "RemotePeer", "plan_cmb", "wire_pair"]
