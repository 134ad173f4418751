"""Kernel profiles: what each Linux release decides, as data.

A profile is the fold of the TIMELINE rows up to a release: each row says what
changed in that release (spec §0.4) and where that fact comes from.  Code reads
profile *fields*; it never compares version numbers.  The whitelist is a table
of entries with the release that added (and, for AMD, removed) them.

Version strings map to the newest row at or below them: ``6.12.117`` and
``6.8.0-45-generic`` behave like the row they fall in.  See docs/kernel-profiles.md.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from p2pdma.errors import InputError
from p2pdma.kernel.types import MapType

# ---------------------------------------------------------------------------
# Host-bridge whitelist (spec §2.5), in the kernel's table order.

REQ_SAME_HOST_BRIDGE = 1 << 0
ANY_ID = -1  # PCI_ANY_ID stored in an int field (v7.1+)


@dataclass(frozen=True)
class WhitelistEntry:
    vendor: int
    device: int  # ANY_ID: any device of the vendor (v7.1+ only)
    flags: int
    comment: str
    since: str  # TIMELINE key of the release that added it
    until: str | None = None  # TIMELINE key of the release that removed it
    source: str = "[PCI]"

    @property
    def id_text(self) -> str:
        dev = "*" if self.device == ANY_ID else f"{self.device:04x}"
        return f"{self.vendor:04x}:{dev}"

    @property
    def req_same_host_bridge(self) -> bool:
        return bool(self.flags & REQ_SAME_HOST_BRIDGE)


_RS = REQ_SAME_HOST_BRIDGE
WHITELIST: tuple[WhitelistEntry, ...] = (
    # AMD Zen entries sat at the head of the v5.5-5.8 table; removed when the
    # CPU rule replaced them (dea286bb71ba, v5.9).
    WhitelistEntry(0x1022, 0x1450, 0, "AMD ZEN", "5.5", "5.9", "[510] [ML:44082504841]"),
    WhitelistEntry(0x1022, 0x15D0, 0, "AMD Raven root port", "5.8", "5.9", "[ML:44320084708]"),
    WhitelistEntry(0x1022, 0x1630, 0, "AMD Renoir root port", "5.8", "5.9", "[ML:44320084708]"),
    WhitelistEntry(0x8086, 0x3C00, _RS, "Intel Xeon E5/Core i7", "5.5"),
    WhitelistEntry(0x8086, 0x3C01, _RS, "Intel Xeon E5/Core i7", "5.5"),
    WhitelistEntry(0x8086, 0x2F00, _RS, "Intel Xeon E7 v3/Xeon E5 v3/Core i7", "5.5"),
    WhitelistEntry(0x8086, 0x2F01, _RS, "Intel Xeon E7 v3/Xeon E5 v3/Core i7", "5.5"),
    WhitelistEntry(0x8086, 0x2030, 0, "Intel Skylake-E root port A", "5.6", None,
                   "[ML:26092453678]"),
    WhitelistEntry(0x8086, 0x2031, 0, "Intel Skylake-E root port B", "5.7", None,
                   "[ML:44407517083]"),
    WhitelistEntry(0x8086, 0x2032, 0, "Intel Skylake-E root port C", "5.7", None,
                   "[ML:44407517083]"),
    WhitelistEntry(0x8086, 0x2033, 0, "Intel Skylake-E root port D", "5.7", None,
                   "[ML:44407517083]"),
    # Spec: "<= v5.10, exact version not verified"; we place it at 5.10.
    WhitelistEntry(0x8086, 0x2020, 0, "Intel Skylake-E", "5.10", None,
                   "[510] (release unverified)"),
    WhitelistEntry(0x8086, 0x09A2, 0, "Intel 3rd Gen Xeon Scalable (ICX) and later", "5.18",
                   None, "[ML:48523558844]"),
    WhitelistEntry(0x8086, 0x0B25, 0, "Intel DSA SPR0", "7.2", None, "[ML:61454120102]"),
    WhitelistEntry(0x8086, 0x0CFE, 0, "Intel IAX SPR0", "7.2", None, "[ML:61454120102]"),
    WhitelistEntry(0x8086, 0x11FB, 0, "Intel DSA GNRD", "7.2", None, "[ML:61454120102]"),
    WhitelistEntry(0x8086, 0x1212, 0, "Intel DSA DMR", "7.2", None, "[ML:61454120102]"),
    WhitelistEntry(0x8086, 0x1216, 0, "Intel IAA DMR", "7.2", None, "[ML:61454120102]"),
    WhitelistEntry(0x8086, 0x4940, 0, "Intel QAT 4xxx", "7.2", None, "[ML:61454120102]"),
    WhitelistEntry(0x8086, 0x4942, 0, "Intel QAT 401xx", "7.2", None, "[ML:61454120102]"),
    WhitelistEntry(0x8086, 0x4944, 0, "Intel QAT 402xx", "7.2", None, "[ML:61454120102]"),
    WhitelistEntry(0x8086, 0x4946, 0, "Intel QAT 420xx", "7.2", None, "[ML:61454120102]"),
    WhitelistEntry(0x8086, 0x4948, 0, "Intel QAT 6xxx", "7.2", None, "[ML:61454120102]"),
    WhitelistEntry(0x1AE0, ANY_ID, 0, "Google SoCs", "7.1", None, "[ML:66506459908]"),
    WhitelistEntry(0x10DE, 0x2F95, 0, "NVIDIA Vera Rubin", "pci-next", None, "[PCI] [LEON]"),
    WhitelistEntry(0x10DE, 0x2F96, 0, "NVIDIA Vera Rubin", "pci-next", None, "[PCI] [LEON]"),
    WhitelistEntry(0x10DE, 0x2F97, 0, "NVIDIA Vera Rubin", "pci-next", None, "[PCI] [LEON]"),
    WhitelistEntry(0x10DE, 0x2F98, 0, "NVIDIA Vera Rubin", "pci-next", None, "[PCI] [LEON]"),
    WhitelistEntry(0x1D17, 0x1003, _RS, "Zhaoxin", "pci-next", None, "[PCI] only"),
    WhitelistEntry(0x1D17, 0x1005, _RS, "Zhaoxin", "pci-next", None, "[PCI] only"),
    WhitelistEntry(0x1D17, 0x1006, _RS, "Zhaoxin", "pci-next", None, "[PCI] only"),
    WhitelistEntry(0x1D17, 0x1007, _RS, "Zhaoxin", "pci-next", None, "[PCI] only"),
    WhitelistEntry(0x1D17, 0x1008, 0, "Zhaoxin", "pci-next", None, "[PCI] only"),
)

# The v5.2-5.4 root_complex_whitelist(): one hard-coded id (spec §2.5 history).
RC_WHITELIST_52: tuple[WhitelistEntry, ...] = (
    WhitelistEntry(0x1022, 0x1450, 0, "AMD ZEN (root_complex_whitelist)", "5.2", "5.5", "[52]"),
)

# ---------------------------------------------------------------------------
# Message formats (spec §2.7), keyed by message id.  str.format fields:
# {provider} = pci_name(provider), {list} = the ACS list, {vendor}/{device}.

MSG_OLD: dict[str, str] = {  # v4.20-v5.4 ([420], [52])
    "ACS_REJECT": "cannot be used for peer-to-peer DMA as ACS redirect is set between the "
                  "client and provider ({provider})",
    "W2": "to disable ACS redirect for this path, add the kernel parameter: "
          "pci=disable_acs_redir={list}",
    "W3": "cannot be used for peer-to-peer DMA as the client and provider ({provider}) do not "
          "share an upstream bridge",
    "W5": "cannot be used for peer-to-peer DMA as it is not a PCI device",
    # enable_store (pci_err on the device / pr_err "pci-p2pdma: ") and add_resource
    "E1": "PCI device has no peer-to-peer memory: {page}",
    "E2": "No such PCI device: {name}",
    "I1": "added peer-to-peer DMA memory {resource}",  # %pR before v5.10
}
MSG_55: dict[str, str] = {  # v5.5+ ([510]); W4 joins in v5.14 ([515])
    **{k: v for k, v in MSG_OLD.items() if k != "ACS_REJECT"},
    "W1": "ACS redirect is set between the client and provider ({provider})",
    "W3": "cannot be used for peer-to-peer DMA as the client and provider ({provider}) do not "
          "share an upstream bridge or whitelisted host bridge",
}
# v5.10: I1 prints the CPU physical range with %#llx-%#llx (C prints 0 as "0")
MSG_510: dict[str, str] = {**MSG_55, "I1": "added peer-to-peer DMA memory {start:#x}-{end:#x}"}
MSG_514: dict[str, str] = {
    **MSG_510, "W4": "Host bridge not in P2PDMA whitelist: {vendor:04x}:{device:04x}"}
# v6.2 userspace allocate: mmap refusals (pci_info_ratelimited on the provider)
MSG_62: dict[str, str] = {
    **MSG_514, "I2": "{comm}: fail, attempted private mapping",
    "I3": "{comm}: fail, attempted mapping with non-zero offset"}

# ---------------------------------------------------------------------------
# Enum numbering (spec §5.1)

ENUM_55: dict[MapType, int] = {
    MapType.UNKNOWN: 0, MapType.NOT_SUPPORTED: 1, MapType.BUS_ADDR: 2,
    MapType.THRU_HOST_BRIDGE: 3,
}
ENUM_616: dict[MapType, int] = {
    MapType.UNKNOWN: 0, MapType.NONE: 1, MapType.NOT_SUPPORTED: 2, MapType.BUS_ADDR: 3,
    MapType.THRU_HOST_BRIDGE: 4,
}

# ---------------------------------------------------------------------------
# The profile


@dataclass(frozen=True)
class KernelProfile:
    """Everything version-dependent the kernel layer needs.  Pure data."""

    key: str  # TIMELINE key: "6.11", "pci-next", "leon"
    name: str  # human: "v6.11-v6.15"
    version: tuple[int, int]
    source: str  # spec source tag of the code this models
    # How the pair decision works (spec §2.4, §2.10 history):
    #   "common-bridge": v4.20 - only a common upstream bridge; ACS -> -2
    #   "rc-whitelist":  v5.2  - plus root_complex_whitelist() for no-common pairs
    #   "map-types":     v5.5  - map types, host-bridge table also for ACS paths
    #   "calc":          v5.14 - calc_map_type_and_dist(), W4
    algorithm: str = "common-bridge"
    acs_via_host_bridge: bool = False  # an ACS-redirected path may go through the host bridge
    no_common_via_host_bridge: bool = False
    cross_rc_bias: int = 0  # v5.2-5.4: 0x1000 added to a cross-root-complex distance
    whitelist_ignored_with_iommu: bool = False  # v5.3-5.4
    representative: str = "none"  # "slot0" | "first-devfn0" | "first-devfn0-or-rp"
    whitelist: tuple[WhitelistEntry, ...] = ()
    whitelist_wildcards: bool = False  # v7.1: PCI_ANY_ID device ids
    cpu_rule: bool = False  # v5.9: AMD family >= 0x17 on x86
    whitelist_warn_mode: str | None = None  # None (no W4) | "acs_redirects" | "verbose"
    messages: Mapping[str, str] = field(default_factory=lambda: dict(MSG_OLD))
    enum_values: Mapping[MapType, int] | None = None  # None before v5.5 (no map types)
    cache_mode: str = "none"  # "none" | "cache-only" (v5.5) | "compute-on-miss" (v6.0)
    acs_list_bytes: int = 4096  # PAGE_SIZE kmalloc; 128 on the stack from v5.14
    w2_overflow_guard: bool = False  # [LEON]: skip the trailing-';' drop on overflow
    has_p2pmem_needs_pool: bool = False  # pci/next
    dma_virt_ops_rejected: bool = False  # v5.1-v5.10
    disable_acs_redir: bool = False  # v5.1
    config_acs: bool = False  # v6.11; disable_acs_redir then uses the generic code
    bus_offset_added: bool = False  # v5.16 sign fix (for emu)
    userspace_allocate: bool = False  # v6.2 p2pmem/allocate
    per_bar_provider: bool = False  # v6.19 struct p2pdma_provider
    notes: tuple[str, ...] = ()
    # 7.1.y: the same release *may* carry later table entries (an undated stable
    # backport): this profile with them.  The engine evaluates both and reports
    # UNKNOWN (reason ``backport_reason``) when they disagree.
    backport: KernelProfile | None = None
    backport_reason: str = ""

    def map_type_value(self, t: MapType) -> int | None:
        """The enum's number in this kernel; None when the kernel has no such value
        (no map types before v5.5, no NONE before v6.16)."""
        if self.enum_values is None:
            return None
        return self.enum_values.get(t)

    def whitelist_since(self, vendor: int, device: int) -> list[str]:
        return [e.since for e in WHITELIST if e.vendor == vendor and e.device == device]

    def to_json(self) -> dict[str, Any]:
        return {
            "key": self.key, "name": self.name, "source": self.source,
            "algorithm": self.algorithm, "representative": self.representative,
            "cpu_rule": self.cpu_rule, "whitelist_warn_mode": self.whitelist_warn_mode,
            "cache_mode": self.cache_mode,
            "whitelist": [e.id_text for e in self.whitelist],
        }


@dataclass(frozen=True)
class Release:
    """One TIMELINE row: the release and what changed in it."""

    key: str
    version: tuple[int, int]
    changes: Mapping[str, Any]
    summary: str
    source: str


def _wl(key: str, order: list[str],
        exclude_vendor: int | None = None) -> tuple[WhitelistEntry, ...]:
    """The table as it stood at ``key``: entries added at or before, not yet removed."""
    pos = order.index(key)
    out = []
    for e in WHITELIST:
        if order.index(e.since) > pos:
            continue
        if e.until is not None and order.index(e.until) <= pos:
            continue
        if exclude_vendor is not None and e.vendor == exclude_vendor:
            continue
        out.append(e)
    return tuple(out)


TIMELINE: tuple[Release, ...] = (
    Release("4.20", (4, 20), dict(algorithm="common-bridge", messages=MSG_OLD),
            "P2PDMA introduced: only a common upstream bridge; ACS redirect rejects (-2)",
            "[420]"),
    Release("5.1", (5, 1), dict(dma_virt_ops_rejected=True, disable_acs_redir=True),
            "dma_virt_ops clients rejected; pci=disable_acs_redir= exists", "[52] [ML:15981611]"),
    Release("5.2", (5, 2), dict(algorithm="rc-whitelist", no_common_via_host_bridge=True,
                                cross_rc_bias=0x1000, representative="slot0"),
            "root_complex_whitelist(): AMD 1022:1450, distance 0x1000 + hops", "[52]"),
    Release("5.3", (5, 3), dict(whitelist_ignored_with_iommu=True),
            "root complex whitelist ignored when an IOMMU is present", "[ML:4091588615]"),
    Release("5.5", (5, 5), dict(algorithm="map-types", acs_via_host_bridge=True,
                                whitelist_ignored_with_iommu=False, cross_rc_bias=0,
                                messages=MSG_55, enum_values=ENUM_55, cache_mode="cache-only"),
            "map types and the xarray cache; host-bridge table with REQ_SAME_HOST_BRIDGE; "
            "ACS paths may go through a whitelisted host bridge", "[510] [ML:7181416116]"),
    Release("5.6", (5, 6), {}, "whitelist: Intel 8086:2030", "[ML:26092453678]"),
    Release("5.7", (5, 7), {}, "whitelist: Intel 8086:2031-2033", "[ML:44407517083]"),
    Release("5.8", (5, 8), {}, "whitelist: AMD 1022:15d0, 1022:1630", "[ML:44320084708]"),
    Release("5.9", (5, 9), dict(cpu_rule=True),
            "cpu_supports_p2pdma(): AMD family >= 0x17; AMD table entries removed",
            "[ML:44782671688]"),
    Release("5.10", (5, 10), dict(messages=MSG_510),
            "whitelist: Intel 8086:2020 (release not verified); I1 prints %#llx-%#llx",
            "[510]"),
    Release("5.11", (5, 11), dict(dma_virt_ops_rejected=False),
            "dma_virt_ops gone: that rejection disappears", "[510]"),
    Release("5.14", (5, 14), dict(algorithm="calc", representative="first-devfn0",
                                  whitelist_warn_mode="acs_redirects", messages=MSG_514,
                                  acs_list_bytes=128),
            "calc_map_type_and_dist(); pci_host_bridge_dev() needs devfn 00.0; W4; "
            "128-byte ACS list on the stack", "[515] [ML:28865955860]"),
    Release("5.16", (5, 16), dict(bus_offset_added=True), "bus offset added, not subtracted",
            "[ML:38364622296]"),
    Release("5.18", (5, 18), {}, "whitelist: Intel 8086:09a2", "[ML:48523558844]"),
    Release("5.19", (5, 19), dict(representative="first-devfn0-or-rp"),
            "pci_host_bridge_dev() also accepts a Root Port at any devfn", "[ML:33283483329]"),
    Release("6.0", (6, 0), dict(cache_mode="compute-on-miss"),
            "pci_p2pdma_map_type() computes (verbosely) on a cache miss", "[ML:15786917200]"),
    Release("6.2", (6, 2), dict(userspace_allocate=True, messages=MSG_62),
            "userspace p2pmem/allocate",
            "[ML:16990888618]"),
    Release("6.11", (6, 11), dict(config_acs=True),
            "pci=config_acs=; disable_acs_redir through the generic ACS code",
            "[ML:18387268549] §13.2-13.3"),
    Release("6.16", (6, 16), dict(enum_values=ENUM_616),
            "PCI_P2PDMA_MAP_NONE renumbers the enum (release approximate)", "[616]"),
    Release("6.19", (6, 19), dict(per_bar_provider=True), "per-BAR struct p2pdma_provider",
            "[ML:7897145081]"),
    Release("7.1", (7, 1), dict(whitelist_wildcards=True),
            "whitelist: Google 1ae0:* (PCI_ANY_ID wildcards)", "[ML:66506459908]"),
    Release("7.2", (7, 2), {},
            "whitelist: Intel DSA/IAA/QAT accelerators (also backported to some 7.1.y)",
            "[ML:61454120102]"),
    Release("pci-next", (7, 3), dict(has_p2pmem_needs_pool=True),
            "pci/next Aug 2026: NVIDIA Vera Rubin, Zhaoxin; pci_has_p2pmem needs a pool",
            "[PCI]"),
)
_ORDER = [r.key for r in TIMELINE]


def _fold(upto: str) -> dict[str, Any]:
    state: dict[str, Any] = {}
    for r in TIMELINE:
        state.update(r.changes)
        if r.key == upto:
            break
    return state


def _range_name(i: int) -> str:
    r = TIMELINE[i]
    if r.key == "pci-next":
        return "pci-next (Aug 2026)"
    nxt = TIMELINE[i + 1] if i + 1 < len(TIMELINE) else None
    if nxt is None or nxt.key == "pci-next":
        return f"v{r.key}"
    prev_minor = (nxt.version[0], nxt.version[1] - 1)
    if nxt.version[1] == 0:  # the release before x.0 is the last of the previous major
        prev_minor = {(6, 0): (5, 19), (5, 0): (4, 20)}.get(nxt.version, prev_minor)
    last = f"{prev_minor[0]}.{prev_minor[1]}"
    return f"v{r.key}" if last == r.key else f"v{r.key}-v{last}"


def _build(i: int) -> KernelProfile:
    r = TIMELINE[i]
    st = _fold(r.key)
    algo = st.get("algorithm", "common-bridge")
    wl: tuple[WhitelistEntry, ...] = ()
    if algo == "rc-whitelist":
        wl = RC_WHITELIST_52
    elif algo in ("map-types", "calc"):
        wl = _wl(r.key, _ORDER)
    return KernelProfile(key=r.key, name=_range_name(i), version=r.version, source=r.source,
                         whitelist=wl, **st)


PROFILES: dict[str, KernelProfile] = {r.key: _build(i) for i, r in enumerate(TIMELINE)}

# [LEON] (Leon Romanovsky's 2026 tree, spec §2.8): pci-next minus Zhaoxin, W4 gated by
# `verbose`, and the W2 overflow guarded.
PROFILES["leon"] = dataclasses.replace(
    PROFILES["pci-next"], key="leon", name="leon-2026 ([LEON] variant)", source="[LEON]",
    whitelist=_wl("pci-next", _ORDER, exclude_vendor=0x1D17),
    whitelist_warn_mode="verbose", w2_overflow_guard=True,
    notes=("Leon Romanovsky's dev tree: W4 printed when verbose (both paths); the W2 "
           "buffer overflow is guarded; no Zhaoxin entries",),
)

# 7.1.y (7.1.1 and later stable releases): the Intel DSA/IAA/QAT ids (0ba76b19fd4c,
# v7.2-rc) were backported to 7.1.y, but the spec cannot date that release (§0.4).
# Same key as 7.1 (same TIMELINE row); the engine evaluates with and without them.
_BACKPORT_71 = ("the 7.1.y stable release that received the Intel DSA/IAA/QAT whitelist "
                "entries (0ba76b19fd4c, backported from v7.2) is not known (spec §0.4)")
PROFILES["7.1.y"] = dataclasses.replace(
    PROFILES["7.1"], name="v7.1.y (7.1.1+)",
    backport=dataclasses.replace(PROFILES["7.1"], name="v7.1.y with the v7.2 accelerator ids",
                                 whitelist=PROFILES["7.2"].whitelist),
    backport_reason=_BACKPORT_71,
    notes=("a 7.1.y stable release may or may not whitelist the Intel accelerator ids that "
           "v7.2 added (8086:0b25, 0cfe, 11fb, 1212, 1216, 4940-4948): pairs that depend on "
           "them are UNKNOWN",),
)

DEFAULT_PROFILE_KEY = "pci-next"
NEWEST_KNOWN = (7, 3)

# ---------------------------------------------------------------------------
# Version strings

_VER_RE = re.compile(r"^v?(\d+)\.(\d+)(?:\.(\d+))?(-rc\d+)?(?:[-+.~_].*)?$")
_NAMED = {"pci-next": "pci-next", "next": "pci-next", "newest": "pci-next",
          "latest": "pci-next", "default": "pci-next", "leon": "leon", "leon-2026": "leon",
          "7.1.y": "7.1.y"}
ACCEPTED_FORMS = ("6.12.117", "5.10.0-28-amd64", "7.2-rc3", "6.8.0-45-generic", "v5.15",
                  "pci-next", "leon")


@dataclass(frozen=True)
class ProfileChoice:
    profile: KernelProfile
    reason: str


def _accepted_hint() -> str:
    return ("accepted: a kernel release such as " + ", ".join(ACCEPTED_FORMS)
            + "; releases from 4.20 (P2PDMA's first); newer than 7.3 uses the newest profile; "
            + f"profiles: {', '.join(PROFILES)}")


def profile_for_version(text: str) -> KernelProfile:
    """The profile whose behaviour ``text`` (a `uname -r` or a profile key) has."""
    t = text.strip()
    if t.lower() in _NAMED:
        return PROFILES[_NAMED[t.lower()]]
    m = _VER_RE.match(t)
    if not m:
        raise InputError(f"{text!r} is not a kernel version", hint=_accepted_hint())
    ver = (int(m[1]), int(m[2]))
    if ver < (4, 20):
        raise InputError(f"kernel {text!r} predates P2PDMA (added in v4.20)",
                         hint=_accepted_hint())
    if ver > NEWEST_KNOWN:  # resolve_profile() says so in its reason
        return PROFILES[DEFAULT_PROFILE_KEY]
    best = TIMELINE[0]
    for r in TIMELINE:
        if r.version <= ver:
            best = r
    if best.key == "7.1" and m[3] is not None and int(m[3]) > 0:
        return PROFILES["7.1.y"]
    return PROFILES[best.key]


def newer_than_known(text: str) -> str | None:
    """A note when ``text`` is a release newer than the newest profile, else None."""
    m = _VER_RE.match(text.strip())
    if not m or (int(m[1]), int(m[2])) <= NEWEST_KNOWN:
        return None
    return (f"{text.strip()} is newer than anything this model knows (newest: pci/next of "
            "Aug 2026, queued for 7.3): using that newest profile; changes made after Aug "
            "2026 are not modelled")


def resolve_profile(release: str | None, override: str | None = None) -> ProfileChoice:
    """Pick the profile: ``override`` (--kernel) wins, then the fabric's kernel release,
    else the default (newest, spec §0.3).  ``reason`` says which and why."""
    if override:
        p = profile_for_version(override)
        extra = newer_than_known(override)
        return ProfileChoice(p, f"--kernel {override} -> profile {p.name}"
                             + (f"; NOTE: {extra}" if extra else ""))
    if release:
        p = profile_for_version(release)
        extra = newer_than_known(release)
        return ProfileChoice(p, f"from the source's kernel release {release} -> profile {p.name}"
                             + (f"; NOTE: {extra}" if extra else ""))
    p = PROFILES[DEFAULT_PROFILE_KEY]
    return ProfileChoice(p, f"no kernel release known: default profile {p.name} (newest, "
                            "spec §0.3); pass --kernel to choose")


def first_release_whitelisting(vendor: int, device: int) -> str | None:
    """The first profile whose table matches vendor:device (wildcards included)."""
    for key in [*_ORDER]:
        prof = PROFILES[key]
        for e in prof.whitelist:
            if e.vendor == vendor and (e.device == device or
                                        (e.device == ANY_ID and prof.whitelist_wildcards)):
                return prof.name
    return None
