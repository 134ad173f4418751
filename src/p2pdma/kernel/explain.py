"""Explanations and fixes for one verdict: each hop's role, who redirects with which
bits, the host-bridge story, kernel parameters and setpci lines that would change
it, a topology change, and risks ("unsafe" is not "slow")."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from p2pdma.fabric.bdf import Bdf
from p2pdma.fabric.model import (
    ACS_SV,
    ACS_TB,
    ACS_UF,
    Fabric,
    IommuMode,
    PortType,
    decode_acs_bits,
)
from p2pdma.kernel.engine import PairResult, acs_list_text
from p2pdma.kernel.profiles import PROFILES, TIMELINE, KernelProfile
from p2pdma.kernel.topology import ACS_REDIRECT_MASK
from p2pdma.kernel.types import MapType

_ROLE = {
    PortType.ROOT_PORT: "root port",
    PortType.UPSTREAM_PORT: "switch upstream port",
    PortType.DOWNSTREAM_PORT: "switch downstream port",
    PortType.PCIE_TO_PCI_BRIDGE: "PCIe-to-PCI bridge",
    PortType.PCI_TO_PCIE_BRIDGE: "PCI-to-PCIe bridge",
    PortType.RC_INTEGRATED_ENDPOINT: "root-complex integrated endpoint",
}


@dataclass(frozen=True)
class Hop:
    bdf: Bdf
    role: str
    acs: str  # "RR|CR (ctrl 0x001d)", "no ACS capability", "unreadable: ..."
    redirects: bool

    def to_json(self) -> dict[str, Any]:
        return {"bdf": str(self.bdf), "role": self.role, "acs": self.acs,
                "redirects": self.redirects}


@dataclass(frozen=True)
class Fix:
    kind: str  # "cmdline" | "setpci" | "topology" | "platform" | "kernel" | "note"
    text: str
    risk: str | None = None

    def to_json(self) -> dict[str, Any]:
        return {"kind": self.kind, "text": self.text, "risk": self.risk}


@dataclass(frozen=True)
class Explanation:
    hops: tuple[Hop, ...]
    story: tuple[str, ...]
    fixes: tuple[Fix, ...]
    risks: tuple[tuple[str, str], ...]  # (kind "unsafe"|"slow"|"danger", text)
    disable_acs_redir: str | None = None
    config_acs: str | None = None
    setpci: tuple[str, ...] = field(default=())

    def to_json(self) -> dict[str, Any]:
        return {
            "hops": [h.to_json() for h in self.hops],
            "story": list(self.story),
            "fixes": [f.to_json() for f in self.fixes],
            "risks": [{"kind": k, "text": t} for k, t in self.risks],
            "disable_acs_redir": self.disable_acs_redir,
            "config_acs": self.config_acs,
            "setpci": list(self.setpci),
        }


def _acs_text(fabric: Fabric, b: Bdf) -> tuple[str, bool]:
    f = fabric.get(b)
    if f.acs is None:
        if f.acs_unknown:
            return f"unreadable ({f.acs_unknown})", False
        return "no ACS capability", False
    bits = decode_acs_bits(f.acs.control)
    red = bool(f.acs.control & ACS_REDIRECT_MASK)
    return f"ctrl {f.acs.control:#06x} ({'|'.join(bits) or 'none'})", red


def _role(fabric: Fabric, r: PairResult, b: Bdf) -> str:
    f = fabric.get(b)
    roles = []
    if b == r.provider:
        roles.append("provider")
    if b == r.client:
        roles.append("client")
    if b == r.common_upstream:
        roles.append("common upstream (counted on the provider side)")
    kind = _ROLE.get(f.port_type)
    if (kind and not roles) or kind:
        roles.append(kind)
    if f.is_virtfn:
        roles.append(f"VF of {f.physfn} (walks up as its PF)")
    return ", ".join(roles) or "endpoint"


def config_acs_flags(control: int, capability: int, iommu_on: bool | None = True) -> str:
    """A config_acs bit string (bit 0 rightmost) that clears RR, CR and EC and keeps
    the other bits as they read now.  ``x`` keeps the *firmware* value (§13.3), which
    equals the current one except for the bits the IOMMU setup turns on (SV, UF; TB
    for untrusted ports): those are pinned to 1 when set and the IOMMU is on or its
    state unknown (``iommu_on`` not False); every other bit is ``x``."""
    out = []
    for bit in range(7):
        m = 1 << bit
        if m & ACS_REDIRECT_MASK:
            out.append("0")
        elif (iommu_on is not False and m & (ACS_SV | ACS_TB | ACS_UF) and m & capability
              and control & m):
            out.append("1")
        else:
            out.append("x")
    return "".join(reversed(out))


def _later_profile(fabric: Fabric, r: PairResult, profile: KernelProfile) -> str | None:
    from p2pdma.kernel.engine import calc_map_type_and_dist
    keys = [t.key for t in TIMELINE]
    if profile.key not in keys:
        return None
    for k in keys[keys.index(profile.key) + 1:]:
        rr = calc_map_type_and_dist(fabric, PROFILES[k], r.provider, r.client, verbose=False)
        if rr.supported:
            return PROFILES[k].name
    return None


def explain(fabric: Fabric, profile: KernelProfile, r: PairResult) -> Explanation:
    hops = []
    for b in r.path:
        txt, red = _acs_text(fabric, b)
        if r.common_upstream is None:
            # no common upstream bridge: the kernel does not use ACS on this path
            if fabric.get(b).acs is not None:
                txt += " (not consulted: no common upstream bridge)"
            red = False
        hops.append(Hop(b, _role(fabric, r, b), txt, red))
    story: list[str] = []
    fixes: list[Fix] = []
    risks: list[tuple[str, str]] = []
    iommu = fabric.host.iommu
    same_dev = r.provider == r.client
    # -- the path
    if r.common_upstream is not None:
        if same_dev:
            story.append("Provider and client are the same function: distance 0.")
        else:
            story.append(f"Common upstream device {r.common_upstream}: distance {r.dist} "
                         f"({len(r.path) - 1} links).")
        if r.acs_redirect:
            who = ", ".join(f"{b} [{_acs_text(fabric, b)[0]}]" for b in r.acs_redirect)
            if profile.acs_via_host_bridge:
                story.append(f"ACS redirect (RR/CR/EC) is set on: {who}. Requests are "
                             "redirected up to the root complex, so the kernel treats the "
                             "path as going through the host bridge.")
            else:
                story.append(f"ACS redirect (RR/CR/EC) is set on: {who}. {profile.name} "
                             "rejects such a path outright (internal return -2): no "
                             "host-bridge check, whatever the whitelist or CPU.")
        elif r.acs_unreadable:
            who = ", ".join(f"{b} [{_acs_text(fabric, b)[0]}]" for b in r.acs_unreadable)
            story.append(f"Whether the path redirects is unknown: the ACS Control of {who} "
                         "could not be read. If nothing redirects the switch routes the TLPs "
                         "directly (BUS_ADDR); if it does, the host-bridge rules decide.")
        else:
            story.append("No device on the path redirects: the switch routes the TLPs "
                         "directly (BUS_ADDR, PCI bus addresses).")
    else:
        story.append(f"No common upstream bridge (the root bus has no bridge device): "
                     f"distance {r.dist} = {len(r.provider_chain)} + {len(r.client_chain)}. "
                     "Traffic must cross the host bridge(s); ACS is not consulted on "
                     "such a path.")
    # -- the host-bridge decision
    if r.cpu.applies and r.whitelist is None and r.map_type is MapType.THRU_HOST_BRIDGE:
        story.append(f"CPU rule: {r.cpu.reason}.")
    elif r.whitelist is not None:
        if r.cpu.applies:
            story.append(f"CPU rule: {r.cpu.reason}.")
        if r.whitelist.ignored:
            story.append(f"Root-complex whitelist ignored: {r.whitelist.ignored}.")
        for lk in r.whitelist.lookups:
            story.append(f"Host bridge {lk.host_bridge.name}: {lk.representative_reason}; "
                         f"{lk.reason}.")
        if not r.whitelist.same_host_bridge and len(r.whitelist.lookups) == 1:
            story.append("The devices are on different host bridges; the first failed, so the "
                         "second was not looked at.")
    story.append(f"Verdict ({profile.name}): {r.map_type.name}"
                 + (f", distance {r.dist}." if r.supported else "."))
    if r.unknown:
        story.append(r.unknown)
    # -- fixes
    dar = cfg = None
    setpci: list[str] = []
    if r.acs_redirect and r.map_type is not MapType.BUS_ADDR:
        _, over = acs_list_text(profile, r.acs_redirect)
        dar = ";".join(str(b) for b in r.acs_redirect)
        if r.supported:
            fixes.append(Fix("note", "allowed through the host bridge; turning ACS redirect "
                                     "off on the path below makes it BUS_ADDR (switch-routed)"))
        if not profile.disable_acs_redir:
            fixes.append(Fix("kernel", "pci=disable_acs_redir= needs v5.1 or later"))
        fixes.append(Fix("cmdline", f"pci=disable_acs_redir={dar}",
                         risk="unsafe: the listed ports stop isolating their devices; IOMMU "
                              "groups merge (one device can no longer be passed to a VM alone)"))
        if profile.config_acs:
            parts = []
            for b in r.acs_redirect:
                f = fabric.get(b)
                if f.acs is not None:
                    on = None if iommu is None else iommu is not IommuMode.OFF
                    parts.append(f"{config_acs_flags(f.acs.control, f.acs.capability, on)}@{b}")
            cfg = ";".join(parts)
            fixes.append(Fix("cmdline", f"pci=config_acs={cfg} (clears RR/CR/EC only: x keeps "
                                        "the firmware value, 1 keeps a bit the IOMMU setup "
                                        "turned on; config_acs wins over disable_acs_redir "
                                        "on a port)",
                             risk="unsafe: as above, but Source Validation stays on"))
        else:
            fixes.append(Fix("kernel", "pci=config_acs= needs v6.11 or later"))
        for b in r.acs_redirect:
            setpci.append(f"setpci -s {b} ECAP_ACS+6.w=0000:{ACS_REDIRECT_MASK:04x}")
        fixes.append(Fix("setpci", "; ".join(setpci) + "  (at runtime; do it before anything "
                         "uses the pair: the provider's cached map type is never invalidated "
                         "until its driver unbinds)",
                         risk="unsafe: as above; lost on reset/resume"))
        if over:
            risks.append(("danger", "the W2 line is cut at 127 characters; use the full list "
                                    "above, not the one in dmesg"))
    if not r.supported and r.map_type is not MapType.UNKNOWN:
        if r.common_upstream is None:
            fixes.append(Fix("topology", "put both devices below one PCIe switch whose "
                                         "downstream ports have ACS redirect off (then BUS_ADDR)"))
        elif r.acs_redirect:
            fixes.append(Fix("topology", "or use a switch whose ports leave ACS redirect off "
                                         "(no IOMMU-requested ACS, or no ACS capability)",
                             risk="unsafe: the devices share an IOMMU group"))
        if r.whitelist is not None and not r.whitelist.allowed:
            reps = [lk for lk in r.whitelist.lookups if lk.later]
            for lk in reps:
                rid = lk.representative.vendor_device if lk.representative else "?"
                fixes.append(Fix("kernel", f"{rid} is whitelisted from {lk.later}"))
            ids = ", ".join(e.id_text for e in profile.whitelist[:6])
            cpu = " or an AMD Zen CPU (family >= 0x17)" if profile.cpu_rule else ""
            table = f"in this kernel's whitelist ({ids}...)" if ids else \
                "whitelisted (this kernel has no whitelist)"
            fixes.append(Fix("platform", f"a host whose first root-bus device is {table}{cpu} "
                                         "allows traffic through the host bridge; there is no "
                                         "runtime whitelist override"))
        later = _later_profile(fabric, r, profile)
        if later:
            fixes.append(Fix("kernel", f"the same hardware is allowed from {later}"))
    if r.danger:
        risks.append(("danger", r.danger))
    # -- risks of allowed paths
    if r.map_type is MapType.THRU_HOST_BRIDGE:
        risks.append(("slow", "the data goes up through the root complex: bandwidth and "
                              "latency depend on the CPU's peer-to-peer forwarding"))
        if iommu is IommuMode.TRANSLATED:
            risks.append(("slow", "the IOMMU is in translated mode: the client's DMA uses "
                                  "IOVAs mapped per transfer (IOTLB pressure); isolation is kept"))
    if r.map_type is MapType.BUS_ADDR and not same_dev and iommu is IommuMode.TRANSLATED:
        risks.append(("unsafe", "BUS_ADDR with the IOMMU translating: peer requests are "
                                "routed by the switch and never reach the IOMMU, so these "
                                "devices are not isolated from each other"))
    return Explanation(tuple(hops), tuple(story), tuple(fixes), tuple(risks), dar, cfg,
                       tuple(setpci))
