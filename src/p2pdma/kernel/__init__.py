"""Kernel policy: what a given Linux version decides about P2PDMA, as pure functions.

See docs/internal-contracts.md (section `kernel`) and docs/kernel-profiles.md.
"""

from p2pdma.kernel.engine import (
    FIND_MANY_MAX_DEVS,
    Decision,
    DistanceResult,
    FindResult,
    MapTypeCache,
    MapTypeResult,
    PairResult,
    acs_list_text,
    calc_map_type_and_dist,
    decide,
    distance_many,
    find_many,
    pci_has_p2pmem,
    pci_p2pdma_map_type,
)
from p2pdma.kernel.hostbridge import (
    CpuRule,
    HostBridgeLookup,
    WhitelistResult,
    cpu_rule,
    host_bridge_whitelist,
    representative,
)
from p2pdma.kernel.profiles import (
    PROFILES,
    TIMELINE,
    WHITELIST,
    KernelProfile,
    ProfileChoice,
    profile_for_version,
    resolve_profile,
)
from p2pdma.kernel.types import KernelMessage, MapType, NonPciClient

__all__ = [
    "FIND_MANY_MAX_DEVS", "PROFILES", "TIMELINE", "WHITELIST", "CpuRule", "Decision",
    "DistanceResult", "FindResult", "HostBridgeLookup", "KernelMessage", "KernelProfile",
    "MapType", "MapTypeCache", "MapTypeResult", "NonPciClient", "PairResult", "ProfileChoice",
    "WhitelistResult", "acs_list_text", "calc_map_type_and_dist", "cpu_rule", "decide",
    "distance_many", "find_many", "host_bridge_whitelist", "pci_has_p2pmem",
    "pci_p2pdma_map_type", "profile_for_version", "representative", "resolve_profile",
]
