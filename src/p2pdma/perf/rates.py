"""Link rates and TLP overheads: the first-principles numbers the model uses.

All rates are *per direction* in bytes per second (SI: 1 GB/s = 1e9 B/s).
Every table row carries where the number comes from, so the output can say so.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Generation:
    gen: int
    gt_per_s: float  # transfers per second per lane, in GT/s
    encoding: str
    efficiency: float  # line-code efficiency (payload bits / line bits)
    provenance: str

    @property
    def lane_bytes_per_s(self) -> float:
        return self.gt_per_s * 1e9 * self.efficiency / 8


_PCIE_BASE = "PCI Express Base Specification rate table (spec/pcie-performance.md)"

GENERATIONS: tuple[Generation, ...] = (
    Generation(1, 2.5, "8b/10b", 8 / 10, _PCIE_BASE + ", rev 1.x"),
    Generation(2, 5.0, "8b/10b", 8 / 10, _PCIE_BASE + ", rev 2.x"),
    Generation(3, 8.0, "128b/130b", 128 / 130, _PCIE_BASE + ", rev 3.x"),
    Generation(4, 16.0, "128b/130b", 128 / 130, _PCIE_BASE + ", rev 4.0"),
    Generation(5, 32.0, "128b/130b", 128 / 130, _PCIE_BASE + ", rev 5.0"),
    # FLIT mode: 256 B flits of which 236 B TLP + 6 B DLP; FEC/CRC take the rest.
    # Published per-lane figures differ (7.6-7.9 GB/s); this is the 242/256 reading.
    Generation(6, 64.0, "PAM4 + 256 B FLIT", 242 / 256,
               _PCIE_BASE + ", rev 6.0 (FLIT efficiency approximate; sources differ)"),
)

_BY_SPEED = {g.gt_per_s: g for g in GENERATIONS}


def generation_for_speed(gt_per_s: float) -> Generation | None:
    """The generation whose per-lane rate is ``gt_per_s`` (sysfs ``16.0 GT/s`` -> Gen4)."""
    return _BY_SPEED.get(float(gt_per_s))


def link_bytes_per_s(gt_per_s: float, width: int) -> float:
    """Raw per-direction data rate of a link after line coding, before TLP overheads."""
    g = generation_for_speed(gt_per_s)
    if g is None:
        raise ValueError(f"{gt_per_s} GT/s is not a PCIe rate "
                         f"({', '.join(str(x.gt_per_s) for x in GENERATIONS)})")
    if width not in (1, 2, 4, 8, 12, 16, 32):
        raise ValueError(f"x{width} is not a PCIe link width")
    return g.lane_bytes_per_s * width


# -- TLP overheads (bytes on the wire per TLP besides the payload) -------------------------
# STP/framing 4 + sequence number 2 + header 12 or 16 + LCRC 4 (spec/pcie-performance.md).
TLP_OVERHEAD_3DW = 20
TLP_OVERHEAD_4DW = 24
ECRC_BYTES = 4
ACK_DLLP_BYTES = 8
FOUR_GIB = 1 << 32


@dataclass(frozen=True)
class TlpParams:
    """How the data of one transfer is packetised on one path."""

    mps: int = 256  # bytes of payload per TLP
    header_dw: int = 4  # 4: 64-bit addresses (at or above 4 GiB); completions are always 3
    ecrc: bool = False
    ack_per_tlp: bool = True  # one ACK DLLP per TLP, sent the *other* way
    mrrs: int = 512  # Max Read Request Size, for read requests sent the other way

    def __post_init__(self) -> None:
        if self.mps not in (128, 256, 512, 1024, 2048, 4096):
            raise ValueError(f"MPS {self.mps} is not 128..4096 (a power of two)")
        if self.header_dw not in (3, 4):
            raise ValueError("TLP header is 3 or 4 DW")

    @property
    def overhead(self) -> int:
        return (TLP_OVERHEAD_4DW if self.header_dw == 4 else TLP_OVERHEAD_3DW) + (
            ECRC_BYTES if self.ecrc else 0)

    def forward_bytes_per_byte(self, *, completion: bool) -> float:
        """Wire bytes in the data direction per payload byte.  Completions (data
        returned to a reader) always use a 3-DW header."""
        ovh = TLP_OVERHEAD_3DW + (ECRC_BYTES if self.ecrc else 0) if completion else self.overhead
        return (self.mps + ovh) / self.mps

    def reverse_bytes_per_byte(self, *, completion: bool) -> float:
        """Wire bytes sent against the data direction per payload byte: the ACKs for
        the data TLPs and, for a read, the read-request TLPs (no payload)."""
        rev = ACK_DLLP_BYTES / self.mps if self.ack_per_tlp else 0.0
        if completion:
            rev += (self.overhead) / self.mrrs
        return rev

    def efficiency(self, *, completion: bool = False) -> float:
        return 1.0 / self.forward_bytes_per_byte(completion=completion)


def header_dw_for(address: int | None) -> int:
    """A memory request to an address at or above 4 GiB needs the 4-DW header."""
    return 4 if address is None or address >= FOUR_GIB else 3
