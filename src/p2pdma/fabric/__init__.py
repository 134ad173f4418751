"""Immutable facts about a PCI fabric and the host it belongs to."""

from p2pdma.fabric.bdf import Bdf
from p2pdma.fabric.model import (
    ACS_BITS,
    ACS_CR,
    ACS_DT,
    ACS_EC,
    ACS_RR,
    ACS_SV,
    ACS_TB,
    ACS_UF,
    Acs,
    Bar,
    Cmb,
    Fabric,
    HostBridge,
    HostContext,
    IommuMode,
    Link,
    NvmeController,
    P2PMem,
    PciFunction,
    PortType,
    decode_acs_bits,
)

__all__ = [
    "ACS_BITS", "ACS_CR", "ACS_DT", "ACS_EC", "ACS_RR", "ACS_SV", "ACS_TB", "ACS_UF",
    "Acs", "Bar", "Bdf", "Cmb", "Fabric", "HostBridge", "HostContext", "IommuMode", "Link",
    "NvmeController", "P2PMem", "PciFunction", "PortType", "decode_acs_bits",
]
