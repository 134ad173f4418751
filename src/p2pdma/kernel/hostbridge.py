"""The host-bridge whitelist (spec §2.5) and the AMD CPU rule (spec §2.6).

Pure functions of the fabric's facts and a profile's tables.
"""

from __future__ import annotations

from dataclasses import dataclass

from p2pdma.fabric.model import Fabric, HostBridge, HostContext, PciFunction, PortType
from p2pdma.kernel.profiles import (
    ANY_ID,
    PROFILES,
    TIMELINE,
    WHITELIST,
    KernelProfile,
    WhitelistEntry,
)

# ---------------------------------------------------------------------------
# CPU rule


@dataclass(frozen=True)
class CpuRule:
    applies: bool  # the profile has cpu_supports_p2pdma() (v5.9+)
    value: bool | None  # None: the host's CPU is not known
    reason: str

    def to_json(self) -> dict[str, object]:
        return {"applies": self.applies, "value": self.value, "reason": self.reason}


_X86_ARCHES = {"x86_64", "x86", "i386", "i486", "i586", "i686", "amd64"}
MIN_AMD_FAMILY = 0x17  # spec §2.6


def cpu_rule(profile: KernelProfile, host: HostContext) -> CpuRule:
    """``cpu_supports_p2pdma()``: x86, vendor AMD (not Hygon), family >= 0x17."""
    if not profile.cpu_rule:
        return CpuRule(False, False, f"no CPU rule in {profile.name} (added in v5.9)")
    vendor = (host.cpu_vendor or "").strip()
    arch = (host.arch or "").strip().lower()
    if arch and arch not in _X86_ARCHES:
        return CpuRule(True, False, f"not x86 ({host.arch}): only the whitelist counts")
    if not vendor:
        if not arch:
            return CpuRule(True, None, "unknown because the CPU vendor is not known "
                                       "(AMD family >= 0x17 would allow; any other CPU would not)")
        return CpuRule(True, None, "unknown because the x86 CPU vendor is not known")
    if vendor == "HygonGenuine" or vendor.lower().startswith("hygon"):
        return CpuRule(True, False, "Hygon CPU: the kernel's vendor is X86_VENDOR_HYGON, not AMD")
    if vendor != "AuthenticAMD" and vendor.lower() != "amd":
        return CpuRule(True, False, f"CPU vendor {vendor} is not AMD")
    fam = host.cpu_family
    if fam is None:
        return CpuRule(True, None, "unknown because the AMD CPU family is not known "
                                   f"(>= {MIN_AMD_FAMILY:#x} would allow)")
    if fam >= MIN_AMD_FAMILY:
        return CpuRule(True, True, f"AMD family {fam:#x} >= {MIN_AMD_FAMILY:#x}: allowed "
                                   "without consulting the whitelist")
    return CpuRule(True, False, f"AMD family {fam:#x} < {MIN_AMD_FAMILY:#x}")


# ---------------------------------------------------------------------------
# Whitelist


@dataclass(frozen=True)
class Representative:
    host_bridge: HostBridge
    device: PciFunction | None
    reason: str


@dataclass(frozen=True)
class HostBridgeLookup:
    """One ``__host_bridge_whitelist(host, same_host_bridge, warn)`` call."""

    host_bridge: HostBridge
    representative: PciFunction | None
    representative_reason: str
    entry: WhitelistEntry | None
    allowed: bool
    reason: str
    no_match: bool  # no table entry matched: W4 is printed here when warn is set
    later: str | None  # a later profile whose table would match, if any

    def to_json(self) -> dict[str, object]:
        rep = self.representative
        return {
            "host_bridge": self.host_bridge.name,
            "device": str(rep.bdf) if rep else None,
            "id": rep.vendor_device if rep else None,
            "entry": self.entry.id_text if self.entry else None,
            "allowed": self.allowed,
            "reason": self.reason,
            "whitelisted_from": self.later,
        }


@dataclass(frozen=True)
class WhitelistResult:
    allowed: bool
    same_host_bridge: bool
    lookups: tuple[HostBridgeLookup, ...]
    ignored: str | None = None  # v5.3-5.4: ignored because an IOMMU is present

    def to_json(self) -> dict[str, object]:
        return {"allowed": self.allowed, "same_host_bridge": self.same_host_bridge,
                "ignored": self.ignored, "lookups": [x.to_json() for x in self.lookups]}


def representative(fabric: Fabric, profile: KernelProfile, hb: HostBridge) -> Representative:
    """The device the whitelist looks at for ``hb`` (spec §2.5, by profile)."""
    devs = fabric.root_bus_devices(hb)
    mode = profile.representative
    if mode == "slot0":  # pci_get_slot(bus, devfn 0)
        for d in devs:
            if d.bdf.devfn == 0:
                return Representative(hb, d, "pci_get_slot(root bus, 00.0)")
        return Representative(hb, None, "no device at devfn 00.0 on the root bus")
    if not devs:
        return Representative(hb, None, "the root bus has no devices")
    first = devs[0]
    name = f"{first.bdf} ({first.vendor_device}, {first.port_type.value})"
    if first.bdf.devfn == 0:
        return Representative(hb, first, f"first root-bus device {first.bdf} is at devfn 00.0")
    if mode == "first-devfn0-or-rp" and first.port_type is PortType.ROOT_PORT:
        return Representative(hb, first, f"first root-bus device {first.bdf} is a Root Port")
    need = "devfn 00.0 or a Root Port" if mode == "first-devfn0-or-rp" else "devfn 00.0"
    extra = (" (a Root Port would count from v5.19)"
             if mode == "first-devfn0" and first.port_type is PortType.ROOT_PORT else "")
    return Representative(hb, None, f"first root-bus device {name} is not {need}: "
                                    f"no representative, not whitelisted, no warning{extra}")


def table_match(profile: KernelProfile, vendor: int, device: int) -> WhitelistEntry | None:
    for e in profile.whitelist:  # table order; the first match decides
        if e.vendor != vendor:
            continue
        if e.device == device or (e.device == ANY_ID and profile.whitelist_wildcards):
            return e
    return None


def later_whitelisting(profile: KernelProfile, vendor: int, device: int) -> str | None:
    """The first release after ``profile`` whose table holds vendor:device."""
    keys = [r.key for r in TIMELINE]
    start = keys.index(profile.key) + 1 if profile.key in keys else len(keys)
    for k in keys[start:]:
        if table_match(PROFILES[k], vendor, device) is not None:
            return PROFILES[k].name
    return None


def lookup(fabric: Fabric, profile: KernelProfile, hb: HostBridge,
           same_host_bridge: bool) -> HostBridgeLookup:
    rep = representative(fabric, profile, hb)
    d = rep.device
    if d is None:
        return HostBridgeLookup(hb, None, rep.reason, None, False, rep.reason, False, None)
    e = table_match(profile, d.vendor, d.device)
    later = None
    if e is None:
        later = later_whitelisting(profile, d.vendor, d.device)
        why = f"{d.vendor_device} is not in the {profile.name} whitelist"
        if later:
            why += f" (it is from {later})"
        gone = [w for w in WHITELIST if w.vendor == d.vendor and w.device == d.device and w.until]
        if gone:
            why += (f" (it was in the table from v{gone[0].since} until its removal in "
                    f"v{gone[0].until})")
        return HostBridgeLookup(hb, d, rep.reason, None, False, why, True, later)
    if e.req_same_host_bridge and not same_host_bridge:
        return HostBridgeLookup(hb, d, rep.reason, e, False,
                                f"{e.id_text} ({e.comment}) is REQ_SAME_HOST_BRIDGE and the "
                                "devices are on different host bridges", False, None)
    return HostBridgeLookup(hb, d, rep.reason, e, True,
                            f"{d.vendor_device} matches {e.id_text} "
                            f"({e.comment}, since v{e.since})",
                            False, None)


def host_bridge_whitelist(fabric: Fabric, profile: KernelProfile, hb_a: HostBridge,
                          hb_b: HostBridge) -> WhitelistResult:
    """``host_bridge_whitelist(a, b)``: same host bridge -> one lookup; different -> both
    must pass, and the second is not looked at when the first fails (spec §2.5)."""
    if hb_a == hb_b:
        la = lookup(fabric, profile, hb_a, True)
        return WhitelistResult(la.allowed, True, (la,))
    la = lookup(fabric, profile, hb_a, False)
    if not la.allowed:
        return WhitelistResult(False, False, (la,))
    lb = lookup(fabric, profile, hb_b, False)
    return WhitelistResult(lb.allowed, False, (la, lb))
