"""What-if: the same machine with another kernel, CPU, IOMMU state, command line or
ACS Control values.  ``apply_whatif`` returns a new Fabric plus notes saying what was
changed and what was assumed.

ACS model (spec §2.12, §13.2-13.4).  A fabric's ACS Control is the value *as read*:
with an IOMMU on, it already carries the bits ``pci_enable_acs()`` set (the
supported ones among SV|RR|CR|UF).  The firmware value is therefore estimated as
the read value without those bits when the fabric was read with an IOMMU on (the
firmware may have set some of them itself: we say so in a note).  Then, per
function with an ACS capability, in the kernel's order:
  1. IOMMU on: ctrl = firmware | (cap & (SV|RR|CR|UF))
  2. pci=disable_acs_redir= matches: 6.11+ ctrl = firmware & ~(RR|CR|EC) (the IOMMU's
     SV/UF are lost too, §13.2); before 6.11 ctrl &= ~(RR|CR|EC) (they are kept)
  3. pci=config_acs= (6.11+): the first entry whose device matches decides;
     written = (firmware & ~mask) | bits  (x = firmware), so config_acs wins over
     disable_acs_redir on the same port (§13.3).  No capability check: the port
     reads back ``written & capability``.  More than 7 flags: "Invalid ACS flags
     specified", nothing changes.
  pci_setup() keeps one pointer per option: a repeated option's last value counts.
  4. --acs BDF=VALUE: a setpci after boot, written as given.
"""

from __future__ import annotations

import dataclasses
import re
import shlex
from dataclasses import dataclass, field

from p2pdma.errors import InputError
from p2pdma.fabric.bdf import Bdf
from p2pdma.fabric.model import (
    ACS_BITS,
    ACS_CR,
    ACS_EC,
    ACS_RR,
    ACS_SV,
    ACS_UF,
    Fabric,
    IommuMode,
    PciFunction,
)
from p2pdma.kernel.profiles import KernelProfile, resolve_profile

IOMMU_ACS_BITS = ACS_SV | ACS_RR | ACS_CR | ACS_UF  # pci_std_enable_acs()
REDIRECT_BITS = ACS_RR | ACS_CR | ACS_EC
ACS_FLAG_MASK = 0x7F  # SV|TB|RR|CR|UF|EC|DT: the only bits __pci_config_acs() accepts


@dataclass(frozen=True)
class WhatIf:
    kernel: str | None = None
    cpu: str | None = None  # "amd:0x19", "intel", "hygon:0x18", "arm64"
    iommu: bool | None = None
    cmdline: str | None = None
    acs: dict[Bdf, int] = field(default_factory=dict)

    @property
    def empty(self) -> bool:
        return not (self.kernel or self.cpu or self.iommu is not None or self.cmdline
                    or self.acs)


# ---------------------------------------------------------------------------
# --cpu

_CPU_VENDORS = {"amd": "AuthenticAMD", "intel": "GenuineIntel", "hygon": "HygonGenuine",
                "zhaoxin": "CentaurHauls"}
_CPU_DEFAULT_FAMILY = {"amd": 0x19, "intel": 6, "hygon": 0x18, "zhaoxin": 7}
_NON_X86 = {"arm64": "aarch64", "aarch64": "aarch64", "riscv64": "riscv64", "ppc64le": "ppc64le",
            "s390x": "s390x"}


def parse_cpu(text: str) -> dict[str, object]:
    """``VENDOR[:FAMILY]`` -> HostContext fields."""
    t = text.strip().lower()
    name, _, fam = t.partition(":")
    if name in _NON_X86 and not fam:
        return {"arch": _NON_X86[name], "cpu_vendor": None, "cpu_family": None}
    if name not in _CPU_VENDORS:
        raise InputError(f"--cpu {text!r}: unknown CPU",
                         hint="use amd[:FAMILY], intel, hygon[:FAMILY], zhaoxin or arm64, "
                              "e.g. amd:0x19 (FAMILY in hex as 0x19 or 19h, or decimal as "
                              "/proc/cpuinfo prints it: 25)")
    family = _CPU_DEFAULT_FAMILY[name]
    if fam:
        family = _parse_family(text, fam)
    return {"arch": "x86_64", "cpu_vendor": _CPU_VENDORS[name], "cpu_family": family}


def _parse_family(text: str, fam: str) -> int:
    """``0x19`` and ``19h`` are hex (AMD's own notation); a bare number is decimal, as
    /proc/cpuinfo prints it (``cpu family : 25`` is family 0x19)."""
    hexa = re.fullmatch(r"(?:0x([0-9a-f]+)|([0-9a-f]+)h)", fam)
    if hexa:
        return int(hexa[1] or hexa[2], 16)
    if re.fullmatch(r"[0-9]+", fam):
        return int(fam, 10)
    raise InputError(f"--cpu {text!r}: family {fam!r} is not a number",
                     hint="hex as 0x19 or 19h, or decimal as /proc/cpuinfo prints it (25)")


# ---------------------------------------------------------------------------
# The kernel command line: pci=disable_acs_redir= and pci=config_acs=


@dataclass(frozen=True)
class DevSpec:
    """One ``pci_dev_str_match`` device spec."""

    text: str
    ids: tuple[int, int, int, int] | None = None  # pci:VVVV:DDDD[:SV:SD], 0 = any
    path: tuple[tuple[int, int, int, int], tuple[tuple[int, int], ...]] | None = None


_PATH_HEAD = re.compile(r"^(?:([0-9a-fA-F]+):)?([0-9a-fA-F]+):([0-9a-fA-F]+)\.([0-9a-fA-F]+)$")
_PATH_SEG = re.compile(r"^([0-9a-fA-F]+)\.([0-9a-fA-F]+)$")


def parse_devspec(text: str) -> DevSpec:
    t = text.strip()
    if t.startswith("pci:"):
        parts = t[4:].split(":")
        if len(parts) not in (2, 4) or not all(re.fullmatch(r"[0-9a-fA-F]{1,4}", p)
                                               for p in parts):
            raise InputError(f"cannot parse device spec {text!r}",
                             hint="pci:VVVV:DDDD[:SVVV:SDDD] (0 matches any)")
        v = [int(p, 16) for p in parts] + [0, 0]
        return DevSpec(t, ids=(v[0], v[1], v[2], v[3]))
    head, *segs = t.split("/")
    m = _PATH_HEAD.match(head)
    if not m:
        raise InputError(f"cannot parse device spec {text!r}",
                         hint="[DDDD:]BB:DD.F[/DD.F...] or pci:VVVV:DDDD")
    seg_vals = []
    for s in segs:
        ms = _PATH_SEG.match(s)
        if not ms:
            raise InputError(f"cannot parse path element {s!r} in {text!r}",
                             hint="path elements are DD.F (hex), as `lspci -t` shows them")
        seg_vals.append((int(ms[1], 16), int(ms[2], 16)))
    dom = int(m[1], 16) if m[1] else 0
    return DevSpec(t, path=((dom, int(m[2], 16), int(m[3], 16), int(m[4], 16)),
                            tuple(seg_vals)))


def _upstream(fabric: Fabric, f: PciFunction) -> PciFunction | None:
    g = fabric.get(f.physfn) if f.physfn is not None else f
    return fabric.get(g.parent) if g.parent is not None else None


def devspec_matches(fabric: Fabric, spec: DevSpec, f: PciFunction) -> bool:
    if spec.ids is not None:
        v, d, sv, sd = spec.ids
        return ((not v or v == f.vendor) and (not d or d == f.device)
                and (not sv or sv == f.subsystem_vendor) and (not sd or sd == f.subsystem_device))
    assert spec.path is not None
    (dom, bus, dev, fn), segs = spec.path
    cur: PciFunction | None = f
    for sdev, sfn in reversed(segs):  # from the device upwards, like the kernel
        if cur is None or cur.bdf.devfn != ((sdev << 3) | sfn):
            return False
        cur = _upstream(fabric, cur)
    return (cur is not None and cur.bdf.domain == dom and cur.bdf.bus == bus
            and cur.bdf.devfn == ((dev << 3) | fn))


@dataclass(frozen=True)
class ConfigAcs:
    spec: DevSpec
    mask: int
    bits: int
    text: str


@dataclass(frozen=True)
class AcsParams:
    disable_acs_redir: tuple[DevSpec, ...] = ()
    config_acs: tuple[ConfigAcs, ...] = ()
    notes: tuple[str, ...] = ()


def parse_config_acs_bits(s: str) -> tuple[int, int]:
    """Right to left, one char per ACS bit: 0 clear, 1 set, x keep."""
    if not s:
        raise InputError("pci=config_acs= entry without ACS flags",
                         hint="write FLAGS@DEVICE, e.g. 0000101@0000:02:00.0 (bit 0 is "
                              "rightmost: SV TB RR CR UF EC DT)")
    if len(s) > 16 or any(ch not in "01xX" for ch in s):
        raise InputError(f"invalid ACS flags {s!r}", hint="only 0, 1 and x, bit 0 rightmost")
    mask = bits = 0
    for shift, ch in enumerate(reversed(s)):
        if ch in "01":
            mask |= 1 << shift
            if ch == "1":
                bits |= 1 << shift
    return mask, bits


ACS_FLAG_CHARS = 7  # SV TB RR CR UF EC DT: the bits __pci_config_acs() accepts


def parse_cmdline(cmdline: str, profile: KernelProfile | None) -> AcsParams:
    """Find ``pci=`` options the way the kernel's pci_setup() does: ',' separates
    options, ';' separates devices inside one option.  pci_setup() keeps one pointer
    per option, so when an option appears again (in the same or a later ``pci=``
    word) only its last value takes effect."""
    try:
        words = shlex.split(cmdline)
    except ValueError as e:
        raise InputError(f"cannot split the command line: {e}") from None
    dar: list[DevSpec] = []
    cfg: list[ConfigAcs] = []
    seen: dict[str, str] = {}
    notes: list[str] = []
    for w in words:
        if not w.startswith("pci="):
            continue
        for opt in w[4:].split(","):
            name = opt.partition("=")[0]
            if name in ("disable_acs_redir", "config_acs"):
                if name in seen:
                    notes.append(f"pci={name}= given again: only the last value takes effect "
                                 f"(pci_setup keeps one pointer); {seen[name]!r} is ignored")
                seen[name] = opt
            if opt.startswith("disable_acs_redir="):
                if profile is not None and not profile.disable_acs_redir:
                    notes.append(f"pci=disable_acs_redir= does not exist in {profile.name}: "
                                 "ignored (PCI: Unknown option)")
                    continue
                dar = [parse_devspec(item)
                       for item in filter(None, opt[len("disable_acs_redir="):].split(";"))]
            elif opt.startswith("config_acs="):
                if profile is not None and not profile.config_acs:
                    notes.append(f"pci=config_acs= does not exist in {profile.name} (from "
                                 "v6.11): ignored (PCI: Unknown option)")
                    continue
                cfg = []
                for item in filter(None, opt[len("config_acs="):].split(";")):
                    flags, at, dev = item.partition("@")
                    if not at:
                        raise InputError(f"pci=config_acs= entry {item!r} has no '@DEVICE'",
                                         hint="FLAGS@DEVICE, e.g. xx0x00x@0000:02:00.0")
                    mask, bits = parse_config_acs_bits(flags)
                    cfg.append(ConfigAcs(parse_devspec(dev), mask, bits, item))
            elif re.match(r"^[0-9a-fA-F]+:[0-9a-fA-F]+", opt) or opt.startswith("pci:"):
                notes.append(f"pci= option {opt!r} looks like a device: ',' ends a pci= "
                             "option, so it is not part of the list (use ';' between devices)")
    return AcsParams(tuple(dar), tuple(cfg), tuple(notes))


# ---------------------------------------------------------------------------
# apply


def _iommu_on(mode: IommuMode | None) -> bool:
    return mode is not None and mode is not IommuMode.OFF


def apply_whatif(fabric: Fabric, whatif: WhatIf) -> tuple[Fabric, list[str]]:
    notes: list[str] = []
    if whatif.empty:
        return fabric, notes
    try:
        profile: KernelProfile | None = resolve_profile(fabric.host.kernel_release,
                                                        whatif.kernel).profile
    except InputError:
        if whatif.kernel:
            raise
        profile = None
    out = fabric
    if whatif.kernel:
        out = out.with_host(kernel_release=whatif.kernel)
        notes.append(f"kernel: behaving as {whatif.kernel}")
    if whatif.cpu:
        fields = parse_cpu(whatif.cpu)
        out = out.with_host(**fields)
        vendor = fields["cpu_vendor"] or fields["arch"]
        fam = fields["cpu_family"]
        notes.append(f"cpu: {vendor}" + (f" family {fam:#x} (decimal {fam}, as /proc/cpuinfo "
                                         "shows it)" if isinstance(fam, int) else ""))
    was_on = _iommu_on(fabric.host.iommu)
    now_on = was_on if whatif.iommu is None else whatif.iommu
    if whatif.iommu is not None and fabric.host.iommu is None:
        notes.append("the fabric's IOMMU state is unknown: its ACS values are taken as firmware "
                     "values (no IOMMU bits to remove)")
    if whatif.iommu is not None:
        out = out.with_host(iommu=IommuMode.TRANSLATED if now_on else IommuMode.OFF)
        notes.append(f"iommu: {'on (translated)' if now_on else 'off'}")
    params = AcsParams()
    if whatif.cmdline is not None:
        params = parse_cmdline(whatif.cmdline, profile)
        notes.extend(params.notes)
        out = out.with_host(cmdline=whatif.cmdline)
        if fabric.host.cmdline and ("disable_acs_redir" in fabric.host.cmdline
                                    or "config_acs" in fabric.host.cmdline):
            notes.append("the fabric's own command line already changed ACS at boot; its "
                         "effect is in the values read, which are taken as firmware values")
    recompute = (now_on != was_on) or whatif.cmdline is not None
    if recompute:
        out = _recompute_acs(out, fabric, was_on, now_on, params, profile, notes)
    for bdf, value in whatif.acs.items():
        if not 0 <= value <= 0xFFFF:
            raise InputError(f"--acs {bdf}={value:#x}: not a 16-bit value")
        f = out.get(bdf)
        if f.acs is None:
            why = f.acs_unknown or "the function has no ACS capability"
            raise InputError(f"--acs {bdf}: {why}",
                             hint="only functions with an ACS capability have a control register")
        out = out.with_acs_control(bdf, value)
        notes.append(f"acs: {bdf} control {f.acs.control:#06x} -> {value:#06x} (as setpci "
                     "after boot; evaluated pairs keep their cached map type in a real kernel)")
    return out, notes


def _recompute_acs(out: Fabric, orig: Fabric, was_on: bool, now_on: bool, params: AcsParams,
                   profile: KernelProfile | None, notes: list[str]) -> Fabric:
    generic = profile is None or profile.config_acs  # 6.11+ generic ACS code
    if profile is None:
        notes.append("kernel release unknown: command-line ACS knobs use the 6.11+ semantics")
    if was_on:
        notes.append("firmware ACS values estimated as the values read without the bits the "
                     "IOMMU setup sets (SV|RR|CR|UF); firmware may have set some itself")
    changed = 0
    funcs = []
    matched: set[str] = set()
    for f in out.functions:
        dar_hit = [sp for sp in params.disable_acs_redir if devspec_matches(out, sp, f)]
        matched.update(sp.text for sp in dar_hit)
        # __pci_config_acs() stops at the first entry whose device matches
        ca = next((x for x in params.config_acs if devspec_matches(out, x.spec, f)), None)
        if ca is not None:
            matched.add(ca.text)
        if f.acs is None:
            if not generic and f.acs_unknown is None and dar_hit:
                notes.append(f"pci {f.bdf}: cannot disable ACS redirect for this hardware "
                             "as it does not have ACS capabilities")
            funcs.append(f)
            continue
        cap = f.acs.capability
        fw = f.acs.control & ~(cap & IOMMU_ACS_BITS) if was_on else f.acs.control
        ctrl = fw | (cap & IOMMU_ACS_BITS) if now_on else fw
        if dar_hit:
            ctrl = (fw if generic else ctrl) & ~REDIRECT_BITS
            notes.append(f"pci {f.bdf}: " + (f"Configured ACS to {ctrl:#06x}" if generic
                                            else "disabled ACS redirect"))
        if ca is not None:
            flags = ca.text.partition("@")[0]
            if len(flags) > ACS_FLAG_CHARS or ca.mask & ~ACS_FLAG_MASK:
                notes.append(f"pci {f.bdf}: Invalid ACS flags specified ({flags!r}: more than "
                             f"{ACS_FLAG_CHARS} flags; bits beyond DT are unsupported by the "
                             "kernel): config_acs changes nothing here")
            else:
                written = (fw & ~ca.mask) | (ca.bits & ca.mask)
                ctrl = written & cap  # unsupported bits are hardwired to 0 (§13.4)
                notes.append(f"pci {f.bdf}: Configured ACS to {written:#06x}")
                lost = written & ~cap
                if lost:
                    names = [n for n, b in ACS_BITS if b & lost]
                    notes.append(f"pci {f.bdf}: config_acs {ca.text!r} sets ACS bits "
                                 f"{'|'.join(names)} the port does not support (capability "
                                 f"{cap:#06x}); the kernel writes them anyway, the port reads "
                                 f"back {ctrl:#06x}")
        if ctrl != f.acs.control:
            changed += 1
            funcs.append(dataclasses.replace(f, acs=dataclasses.replace(f.acs, control=ctrl)))
        else:
            funcs.append(f)
    for opt, texts in (("disable_acs_redir", [sp.text for sp in params.disable_acs_redir]),
                       ("config_acs", [x.text for x in params.config_acs])):
        for t in texts:
            if t not in matched:
                notes.append(f"warning: pci={opt}= entry {t!r} matches no device in this "
                             "fabric: it changes nothing")
    notes.append(f"ACS Control recomputed: {changed} function(s) changed")
    return dataclasses.replace(out, functions=tuple(funcs))
