"""PCI configuration space: decode what the model needs, and encode a synthetic one.

Register layout (PCI Local Bus 3.0, PCIe Base 6.0), as data:

- header: vendor 0x00, device 0x02, status 0x06 (bit 4: capability list),
  revision 0x08, class 0x09..0x0b, header type 0x0e (bit 7: multi-function),
  BARs from 0x10, bridge bus numbers 0x18/0x19/0x1a, capability pointer 0x34
  (0x14 for a CardBus header), subsystem ids 0x2c/0x2e (type 0 header).
- capabilities from 0x40: PCIe capability id 0x10 with PCIe Capabilities at +2
  (port type bits 7:4), Device Capabilities at +4 (MPS supported bits 2:0),
  Device Control at +8 (MPS bits 7:5).
- extended capabilities from 0x100 (only with 4096 bytes): header = id 15:0,
  version 19:16, next 31:20; ACS id 0x0D with Capability at +4, Control at +6.

Reading stops at what the caller could read: an unprivileged reader of sysfs
``config`` gets 64 bytes, a conventional-PCI function (or a kernel without
extended config access) 256.  Whatever lies beyond is *unknown*, never zero.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

from p2pdma.fabric.model import Acs, Bar, PciFunction, PortType

CFG_VENDOR = 0x00
CFG_STATUS = 0x06
CFG_REVISION = 0x08
CFG_CLASS = 0x09
CFG_HEADER = 0x0E
CFG_BAR0 = 0x10
CFG_PRIMARY_BUS = 0x18
CFG_SECONDARY_BUS = 0x19
CFG_SUBORDINATE_BUS = 0x1A
CFG_SUBSYS_VENDOR = 0x2C
CFG_CAP_PTR = 0x34
CFG_CAP_PTR_CARDBUS = 0x14
STATUS_CAP_LIST = 0x0010

CAP_ID_PM = 0x01
CAP_ID_EXP = 0x10
EXP_FLAGS = 0x02
EXP_DEVCAP = 0x04
EXP_DEVCTL = 0x08
EXP_LNKCAP = 0x0C
EXP_LNKSTA = 0x12
EXP_SIZE = 0x3C  # PCIe capability structure v2

EXT_CAP_START = 0x100
EXT_CAP_ID_ACS = 0x0D
EXT_CAP_ID_VNDR = 0x0B
ACS_CAP = 0x04
ACS_CTRL = 0x06

CAP_TTL = 48  # the kernel's bound on a capability-list walk
EXT_CAP_TTL = (4096 - 256) // 8

FULL = 4096
CONVENTIONAL = 256
UNPRIVILEGED = 64

BARS_PER_HEADER = {0: 6, 1: 2, 2: 1}
LINK_SPEED_CODES = {2.5: 1, 5.0: 2, 8.0: 3, 16.0: 4, 32.0: 5, 64.0: 6}
MPS_RESERVED = 7  # written for "unknown"; read back as None (encodings 6 and 7 are reserved)


def acs_unknown_reason(readable: int) -> str:
    """Why ACS is unknown when only ``readable`` bytes of config space could be read."""
    if readable <= UNPRIVILEGED:
        return (f"only {readable} bytes of config space readable (not root): "
                "capabilities unknown; run as root")
    return (f"only {readable} bytes of config space readable: extended capabilities "
            "(ACS) unknown; the kernel cannot see them either without extended config access")


class ConfigError(ValueError):
    """A malformed register value; the message says which."""


@dataclass(frozen=True)
class ConfigFacts:
    readable: int
    vendor: int
    device: int
    header_type: int
    multifunction: bool
    port_type: PortType
    secondary_bus: int | None
    subordinate_bus: int | None
    mps: int | None
    mps_supported: int | None
    acs: Acs | None
    acs_unknown: str | None
    bar_regs: tuple[int | None, ...]  # raw dword per BAR slot of this header type


def _u16(b: bytes, off: int) -> int:
    return int(struct.unpack_from("<H", b, off)[0])


def _u32(b: bytes, off: int) -> int:
    return int(struct.unpack_from("<I", b, off)[0])


def _mps(enc: int) -> int | None:
    return None if enc >= 6 else 128 << enc


ALL_ONES_REASON = ("config space reads as all ones (device powered off, in reset or "
                   "gone): capabilities unknown")


def decode(cfg: bytes, class_code: int | None = None) -> ConfigFacts:
    """Facts from ``cfg``.  ``class_code`` (sysfs ``class``) only serves when the
    device answers config reads with all ones: then its header type is inferred from
    the class (a PCI-PCI bridge has type 1) and everything else is unknown."""
    n = len(cfg)
    if n < UNPRIVILEGED:
        raise ConfigError(f"config space is {n} bytes, less than the 64-byte header")
    if cfg[0:4] == b"\xff\xff\xff\xff":
        bridge = class_code is not None and class_code >> 8 == 0x0604
        return ConfigFacts(
            readable=n, vendor=0xFFFF, device=0xFFFF, header_type=1 if bridge else 0,
            multifunction=False, port_type=PortType.UNKNOWN, secondary_bus=None,
            subordinate_bus=None, mps=None, mps_supported=None, acs=None,
            acs_unknown=ALL_ONES_REASON, bar_regs=())
    hdr = cfg[CFG_HEADER]
    htype = hdr & 0x7F
    if htype not in BARS_PER_HEADER:
        raise ConfigError(f"header type {htype:#x} is not 0, 1 or 2")
    bar_regs: list[int | None] = [_u32(cfg, CFG_BAR0 + 4 * i)
                                  for i in range(BARS_PER_HEADER[htype])]
    sec = sub = None
    if htype in (1, 2):
        sec = cfg[CFG_SECONDARY_BUS] or None  # 0: not assigned by firmware
        sub = cfg[CFG_SUBORDINATE_BUS] or None
    port = PortType.NOT_PCIE
    mps = mps_sup = None
    caps_known = True
    if _u16(cfg, CFG_STATUS) & STATUS_CAP_LIST:
        pos = cfg[CFG_CAP_PTR_CARDBUS if htype == 2 else CFG_CAP_PTR]
        ttl = CAP_TTL
        while ttl:
            ttl -= 1
            pos &= 0xFC
            if pos < 0x40:
                break
            if pos + 2 > n:
                caps_known = False
                break
            cid, nxt = cfg[pos], cfg[pos + 1]
            if cid == 0xFF:
                break
            if cid == CAP_ID_EXP:
                if pos + EXP_DEVCTL + 2 > n:
                    caps_known = False
                    break
                ptype = (_u16(cfg, pos + EXP_FLAGS) >> 4) & 0xF
                try:
                    port = PortType.from_pcie_type_value(ptype)
                except ValueError:
                    raise ConfigError(f"PCIe capability at {pos:#x}: reserved device/port "
                                      f"type {ptype:#x}") from None
                mps_sup = _mps(_u32(cfg, pos + EXP_DEVCAP) & 0x7)
                mps = _mps((_u16(cfg, pos + EXP_DEVCTL) >> 5) & 0x7)
                break
            pos = nxt
    if not caps_known:
        port = PortType.UNKNOWN
    acs = None
    acs_unknown = None
    if port is PortType.UNKNOWN:
        acs_unknown = acs_unknown_reason(n)
    elif n > EXT_CAP_START:
        acs, truncated = _find_acs(cfg)
        if truncated:
            acs_unknown = acs_unknown_reason(n)
    elif port is not PortType.NOT_PCIE:
        acs_unknown = acs_unknown_reason(n)
    # else: conventional PCI has no extended config space, hence no ACS (known).
    return ConfigFacts(
        readable=n, vendor=_u16(cfg, 0), device=_u16(cfg, 2), header_type=htype,
        multifunction=bool(hdr & 0x80), port_type=port, secondary_bus=sec,
        subordinate_bus=sub, mps=mps, mps_supported=mps_sup, acs=acs, acs_unknown=acs_unknown,
        bar_regs=tuple(bar_regs))


def _find_acs(cfg: bytes) -> tuple[Acs | None, bool]:
    """(ACS or None, whether the walk ran past the readable bytes)."""
    n = len(cfg)
    pos = EXT_CAP_START
    ttl = EXT_CAP_TTL
    while ttl:
        ttl -= 1
        if pos + 4 > n:
            return None, True
        h = _u32(cfg, pos)
        if h == 0 or h == 0xFFFFFFFF:
            return None, False
        if h & 0xFFFF == EXT_CAP_ID_ACS:
            if pos + ACS_CTRL + 2 > n:
                return None, True
            return Acs(offset=pos, capability=_u16(cfg, pos + ACS_CAP),
                       control=_u16(cfg, pos + ACS_CTRL)), False
        pos = (h >> 20) & 0xFFC
        if pos < EXT_CAP_START:
            return None, False
    return None, False


def bar_bus_address(bar: Bar, regs: tuple[int | None, ...], indices: set[int],
                    is_64bit_flag: bool) -> int | None:
    """The bus address a BAR register holds, or None when it cannot say.

    None when the register is unprogrammed (0: e.g. a VF, whose BARs live in the
    PF's SR-IOV capability), when the slot does not exist for this header type,
    or when a 64-bit BAR's upper half is taken by another BAR (an impossible
    layout that only a hand-made fabric has)."""
    i = bar.index
    if i >= len(regs):
        return None
    reg = regs[i]
    if reg is None or reg == 0:
        return None
    if not bar.is_memory:
        if not reg & 0x1:
            return None
        addr = reg & ~0x3
    else:
        if reg & 0x1:
            return None
        typ = (reg >> 1) & 0x3
        if typ == 0x2:
            if not is_64bit_flag or i + 1 >= len(regs) or (i + 1) in indices:
                return None
            hi = regs[i + 1]
            if hi is None:
                return None
            addr = (hi << 32) | (reg & ~0xF)
        else:
            if is_64bit_flag:
                return None
            addr = reg & ~0xF
    return addr or None


def bar_register_value(bar: Bar, func: PciFunction) -> tuple[int, int | None] | None:
    """(low dword, high dword or None) encoding ``bar``'s bus address exactly, or None
    when the register cannot hold it (then it is written as 0: unprogrammed)."""
    nbars = BARS_PER_HEADER.get(func.header_type, 0)
    i = bar.index
    addr = bar.bus_address
    if i >= nbars or addr == 0:
        return None
    if not bar.is_memory:
        if addr & 0x3 or addr > 0xFFFFFFFF:
            return None
        return (addr | 0x1, None)
    if addr & 0xF:
        return None
    pf = 0x8 if bar.prefetchable else 0
    if bar.is_64bit:
        if i + 1 >= nbars or func.bar(i + 1) is not None:
            return None
        return ((addr & 0xFFFFFFFF) | 0x4 | pf, addr >> 32)
    if addr > 0xFFFFFFFF:
        return None
    return (addr | pf, None)


def mps_encoding(mps: int | None) -> int:
    if mps is None or mps < 128 or mps > 4096 or mps & (mps - 1):
        return MPS_RESERVED
    return (mps // 128).bit_length() - 1


def acs_offset_ok(offset: int) -> bool:
    return offset == EXT_CAP_START or (offset % 4 == 0 and 0x104 <= offset <= FULL - 8)


def acs_write_offset(offset: int) -> int:
    """Where the ACS capability goes: its own offset when config space can hold it
    there, else the nearest dword-aligned place that can."""
    if acs_offset_ok(offset):
        return offset
    o = min(max(offset & ~0x3, 0x104), FULL - 8)
    return o


def has_cap_list(func: PciFunction) -> bool:
    """Whether the synthetic config of ``func`` carries a capability list.

    A conventional function without ACS gets none (so a 64-byte read still proves
    it is not PCIe); everything else gets one."""
    return not (func.port_type is PortType.NOT_PCIE and func.acs is None)


def config_length(func: PciFunction) -> int:
    """How many bytes of config space a privileged reader sees for ``func``."""
    if func.port_type is PortType.UNKNOWN:
        return UNPRIVILEGED
    if func.port_type is PortType.NOT_PCIE:
        return FULL if func.acs is not None else CONVENTIONAL
    return CONVENTIONAL if func.acs_unknown is not None else FULL


def encode(func: PciFunction) -> bytes:
    """A full synthetic config space for ``func`` (cut to :func:`config_length`)."""
    cfg = bytearray(FULL)
    struct.pack_into("<HH", cfg, 0, func.vendor, func.device)
    struct.pack_into("<H", cfg, 0x04, 0x0006)  # memory space + bus master
    struct.pack_into("<I", cfg, CFG_REVISION, (func.class_code << 8) | (func.revision or 0))
    cfg[CFG_HEADER] = (func.header_type & 0x7F) | (0x80 if func.multifunction else 0)
    for b in func.bars:
        enc = bar_register_value(b, func)
        if enc is not None:
            struct.pack_into("<I", cfg, CFG_BAR0 + 4 * b.index, enc[0])
            if enc[1] is not None:
                struct.pack_into("<I", cfg, CFG_BAR0 + 4 * b.index + 4, enc[1])
    if func.header_type in (1, 2):
        cfg[CFG_PRIMARY_BUS] = func.bdf.bus
        cfg[CFG_SECONDARY_BUS] = func.secondary_bus or 0
        cfg[CFG_SUBORDINATE_BUS] = func.subordinate_bus or 0
    elif func.header_type == 0:
        struct.pack_into("<HH", cfg, CFG_SUBSYS_VENDOR, func.subsystem_vendor or 0,
                         func.subsystem_device or 0)
    if has_cap_list(func):
        struct.pack_into("<H", cfg, CFG_STATUS, STATUS_CAP_LIST)
        cfg[CFG_CAP_PTR_CARDBUS if func.header_type == 2 else CFG_CAP_PTR] = 0x40
        pcie = func.port_type.pcie_type_value
        # power management capability first, as most devices have it
        cfg[0x40] = CAP_ID_PM
        cfg[0x41] = 0x50 if pcie is not None else 0
        struct.pack_into("<H", cfg, 0x42, 0x0003)
        if pcie is not None:
            p = 0x50
            cfg[p] = CAP_ID_EXP
            cfg[p + 1] = 0
            struct.pack_into("<H", cfg, p + EXP_FLAGS, 0x2 | (pcie << 4))
            struct.pack_into("<I", cfg, p + EXP_DEVCAP, mps_encoding(func.mps_supported))
            struct.pack_into("<H", cfg, p + EXP_DEVCTL, mps_encoding(func.mps) << 5)
            link = func.link
            if link is not None:
                ms = LINK_SPEED_CODES.get(link.max_speed or 0.0, 0)
                struct.pack_into("<I", cfg, p + EXP_LNKCAP,
                                 ms | ((link.max_width or 0) & 0x3F) << 4)
                cs = LINK_SPEED_CODES.get(link.speed or 0.0, 0)
                struct.pack_into("<H", cfg, p + EXP_LNKSTA, cs | ((link.width or 0) & 0x3F) << 4)
    acs = func.acs
    if acs is not None:
        off = acs_write_offset(acs.offset)
        if off != EXT_CAP_START:
            # a vendor-specific capability links to ACS at its recorded offset
            struct.pack_into("<I", cfg, EXT_CAP_START,
                             EXT_CAP_ID_VNDR | (1 << 16) | (off << 20))
        struct.pack_into("<IHH", cfg, off, EXT_CAP_ID_ACS | (1 << 16),
                         acs.capability, acs.control)
    return bytes(cfg[:config_length(func)])
