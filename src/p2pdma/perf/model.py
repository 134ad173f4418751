"""The throughput model: pure functions over a Fabric and a workload.

A *workload* is a set of concurrent transfers.  Each transfer is laid onto the
tree (``paths.segments``) along the route the caller got from the kernel layer,
and then consumes, per payload byte:

* on every link it crosses, in the data direction, ``(MPS + TLP overhead) / MPS``
  wire bytes, and in the opposite direction the ACK DLLPs (and read requests
  when the data comes back as completions);
* on every root complex that forwards it peer to peer, one byte of that root
  complex's P2P forwarding budget (a platform parameter);
* on host memory, one byte per leg that writes or reads it (a bounce costs two).

Transfers share every resource max-min fairly (progressive filling): all rates
grow together until a resource saturates; the transfers using it are frozen
there and the rest keep growing.  A transfer with several legs (a pipeline or a
bounce) moves every byte over each leg, so its legs run at one rate; that rate
is set by its slowest (most contended) resource — its bottleneck.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from p2pdma.errors import InputError
from p2pdma.fabric.bdf import Bdf
from p2pdma.fabric.model import Fabric
from p2pdma.fabric.paths import HOST, LinkId, Route, Segment, path_functions, segments
from p2pdma.perf.rates import (
    ACK_DLLP_BYTES,
    TlpParams,
    generation_for_speed,
    header_dw_for,
    link_bytes_per_s,
)

GB = 1e9


@dataclass(frozen=True)
class Platform:
    """What the PCI tree does not say.  Every default is an assumption and is
    printed as one."""

    rc_p2p_bytes_per_s: float | None = 12 * GB  # None: the root complex never limits P2P
    host_memory_bytes_per_s: float = 40 * GB  # reads + writes together
    default_mps: int = 256
    ecrc: bool = False
    ack_per_tlp: bool = True
    mrrs: int = 512
    default_link: tuple[float, int] | None = None  # (GT/s, width) for links without status

    def assumptions(self) -> list[str]:
        rc = ("root-complex P2P forwarding is not limited" if self.rc_p2p_bytes_per_s is None
              else f"root-complex P2P forwarding: {self.rc_p2p_bytes_per_s / GB:.2f} GB/s per "
                   "host bridge (platform-specific, assumed)")
        return [
            "rates are per direction, 1 GB/s = 1e9 B/s; link rate = lanes x GT/s x line-code "
            "efficiency / 8",
            f"TLP overhead: 24 B with a 4-DW header (addresses >= 4 GiB or unknown), 20 B with "
            f"3-DW headers and for completions{', +4 B ECRC' if self.ecrc else ''}",
            (f"one {ACK_DLLP_BYTES} B ACK DLLP per TLP, charged to the opposite direction"
             if self.ack_per_tlp else "ACK DLLPs ignored"),
            f"reads: one request TLP per {self.mrrs} B (MRRS) in the opposite direction",
            f"MPS: the smallest on the path; {self.default_mps} B where unknown",
            rc,
            f"host memory bandwidth: {self.host_memory_bytes_per_s / GB:.1f} GB/s, reads and "
            "writes together (assumed)",
            "switch internals, device media and network rates do not limit unless given",
            "NVMe commands, completions, PRP/SGL fetches and interrupts are not counted "
            "(small next to 4 KiB+ I/O)",
            "concurrent transfers share each resource max-min fairly",
        ]


@dataclass(frozen=True)
class Transfer:
    """One stream of bytes from ``src`` to ``dst`` (BDFs or ``"host-memory"``).

    ``initiator``: which end's DMA engine moves the data: ``"src"`` pushes it with
    posted writes, ``"dst"`` pulls it with reads (data returns as completions).
    ``legs``: a pipeline (e.g. NIC -> CMB -> NVMe) is one transfer whose legs all
    carry every byte; give each leg as (src, dst, route, initiator).
    """

    name: str
    legs: tuple[Leg, ...]
    nbytes: int = 0
    limit_bytes_per_s: float | None = None  # e.g. a NIC's network line rate

    @classmethod
    def simple(cls, name: str, src: Bdf | str, dst: Bdf | str, route: Route, *,
               nbytes: int = 0, initiator: str = "src", via: Bdf | None = None,
               target_address: int | None = None,
               limit_bytes_per_s: float | None = None) -> Transfer:
        return cls(name, (Leg(src, dst, route, initiator, via, target_address),), nbytes,
                   limit_bytes_per_s)


@dataclass(frozen=True)
class Leg:
    src: Bdf | str
    dst: Bdf | str
    route: Route
    initiator: str = "src"
    via: Bdf | None = None  # the kernel's common upstream bridge for a DIRECT route
    target_address: int | None = None  # bus address written/read (header size)

    def __post_init__(self) -> None:
        if self.initiator not in ("src", "dst"):
            raise ValueError("initiator is 'src' or 'dst'")


@dataclass
class Resource:
    key: str
    kind: str  # "link", "root-complex", "host-memory"
    capacity: float  # per second, in the unit the weights use
    detail: str
    used: float = 0.0

    @property
    def utilisation(self) -> float:
        return self.used / self.capacity if self.capacity else 0.0


@dataclass
class TransferResult:
    name: str
    rate: float  # payload bytes per second
    bottleneck: str
    seconds: float | None
    host_memory_bytes_per_byte: float
    links: list[str] = field(default_factory=list)
    mps: list[int] = field(default_factory=list)


@dataclass
class Prediction:
    transfers: list[TransferResult]
    resources: list[Resource]
    assumptions: list[str]
    notes: list[str]

    @property
    def throughput(self) -> float:
        return sum(t.rate for t in self.transfers)

    @property
    def bottleneck(self) -> str:
        if not self.transfers:
            return "none"
        return min(self.transfers, key=lambda t: t.rate).bottleneck

    @property
    def host_memory_bytes(self) -> float:
        return sum(t.host_memory_bytes_per_byte * self._nbytes.get(t.name, 0)
                   for t in self.transfers)

    _nbytes: dict[str, int] = field(default_factory=dict)

    def to_json(self) -> dict[str, object]:
        return {
            "throughput_bytes_per_s": self.throughput,
            "bottleneck": self.bottleneck,
            "host_memory_bytes": self.host_memory_bytes,
            "transfers": [
                {"name": t.name, "rate_bytes_per_s": t.rate, "bottleneck": t.bottleneck,
                 "seconds": t.seconds, "host_memory_bytes_per_byte":
                     t.host_memory_bytes_per_byte, "links": t.links, "mps": t.mps}
                for t in self.transfers
            ],
            "resources": [
                {"key": r.key, "kind": r.kind, "capacity_per_s": r.capacity,
                 "used_per_s": r.used, "utilisation": round(r.utilisation, 6),
                 "detail": r.detail}
                for r in self.resources if r.used > 0
            ],
            "assumptions": self.assumptions,
            "notes": self.notes,
        }


def link_capacity(fabric: Fabric, link: LinkId, platform: Platform) -> tuple[float, str] | None:
    """Per-direction wire bytes/s of a link, from the lower device's negotiated status
    (the port above reports the same link; used when the device does not)."""
    for bdf in (link.lower, link.upper):
        lk = fabric.get(bdf).link
        if lk is not None and lk.speed is not None and lk.width:
            speed, width = lk.speed, lk.width
            break
    else:
        if platform.default_link is None:
            return None
        speed, width = platform.default_link
    gen = generation_for_speed(speed)
    if gen is None:
        raise InputError(f"link {link}: {speed} GT/s is not a PCIe rate")
    return link_bytes_per_s(speed, width), f"Gen{gen.gen} x{width} ({gen.encoding})"


def _leg_weights(fabric: Fabric, leg: Leg, platform: Platform, weights: dict[str, float],
                 resources: dict[str, Resource], notes: list[str],
                 desc: list[str], mpss: list[int]) -> None:
    segs: tuple[Segment, ...] = segments(fabric, leg.src, leg.dst, leg.route, via=leg.via)
    known = [fabric.get(b).mps for b in path_functions(fabric, segs)]
    mps_values = [m for m in known if m]
    mps = min(mps_values) if mps_values else platform.default_mps
    mpss.append(mps)
    tlp = TlpParams(mps=mps, header_dw=header_dw_for(leg.target_address), ecrc=platform.ecrc,
                    ack_per_tlp=platform.ack_per_tlp, mrrs=platform.mrrs)
    for i, seg in enumerate(segs):
        # In a bounce the source pushes into host memory and the destination pulls.
        pulled = (leg.initiator == "dst") if len(segs) == 1 else (i == 1)
        fwd = tlp.forward_bytes_per_byte(completion=pulled)
        rev = tlp.reverse_bytes_per_byte(completion=pulled)
        for hop in seg.hops:
            cap = link_capacity(fabric, hop.link, platform)
            if cap is None:
                note = f"link {hop.link}: speed/width unknown, not limiting"
                if note not in notes:
                    notes.append(note)
                continue
            other = "down" if hop.direction.value == "up" else "up"
            for d, w in ((hop.direction.value, fwd), (other, rev)):
                key = f"link {hop.link} {d}"
                if key not in resources:
                    resources[key] = Resource(key, "link", cap[0], cap[1])
                weights[key] = weights.get(key, 0.0) + w
            desc.append(f"{hop.link} {hop.direction.value}")
        for hb in seg.root_complexes:
            desc.append(f"root-complex {hb}")
            if platform.rc_p2p_bytes_per_s is None:
                continue
            key = f"root-complex {hb}"
            resources.setdefault(key, Resource(key, "root-complex", platform.rc_p2p_bytes_per_s,
                                               "P2P forwarding (platform parameter)"))
            weights[key] = weights.get(key, 0.0) + 1.0
        if seg.host_memory:
            desc.append(HOST)
            key = HOST
            resources.setdefault(key, Resource(key, "host-memory",
                                               platform.host_memory_bytes_per_s,
                                               "DRAM reads + writes"))
            weights[key] = weights.get(key, 0.0) + 1.0


def predict(fabric: Fabric, workload: Sequence[Transfer] | Iterable[Transfer],
            platform: Platform | None = None) -> Prediction:
    """Steady-state rates of concurrent transfers, their bottlenecks and host traffic."""
    platform = platform or Platform()
    transfers = list(workload)
    names = [t.name for t in transfers]
    if len(set(names)) != len(names):
        raise InputError("transfer names in a workload must be unique")
    resources: dict[str, Resource] = {}
    notes: list[str] = []
    weights: list[dict[str, float]] = []
    descs: list[list[str]] = []
    mpss: list[list[int]] = []
    for t in transfers:
        w: dict[str, float] = {}
        d: list[str] = []
        m: list[int] = []
        for leg in t.legs:
            _leg_weights(fabric, leg, platform, w, resources, notes, d, m)
        weights.append(w)
        descs.append(d)
        mpss.append(m)

    rates = [0.0] * len(transfers)
    frozen_by: list[str | None] = [None] * len(transfers)
    active = set(range(len(transfers)))
    while active:
        step = float("inf")
        limiter = ""
        for key, res in resources.items():
            wsum = sum(weights[i].get(key, 0.0) for i in active)
            if wsum <= 0:
                continue
            s = (res.capacity - res.used) / wsum
            if s < step:
                step, limiter = s, key
        for i in active:
            lim = transfers[i].limit_bytes_per_s
            if lim is not None and lim - rates[i] < step:
                step, limiter = lim - rates[i], f"limit of {transfers[i].name}"
        if step == float("inf"):
            raise InputError("a transfer crosses no limiting resource: its rate is unbounded",
                             hint="give link speeds in the fabric or Platform.default_link")
        step = max(step, 0.0)
        for i in active:
            rates[i] += step
            for key, weight in weights[i].items():
                resources[key].used += weight * step
        done = set()
        for i in active:
            lim = transfers[i].limit_bytes_per_s
            if lim is not None and rates[i] >= lim * (1 - 1e-12):
                done.add(i)
                frozen_by[i] = f"limit of {transfers[i].name}"
                continue
            for key in weights[i]:
                res = resources[key]
                if res.used >= res.capacity * (1 - 1e-9):
                    done.add(i)
                    frozen_by[i] = key
                    break
        if not done:  # numerical safety: freeze on the resource that set the step
            done = {i for i in active if limiter in weights[i]} or set(active)
            for i in done:
                frozen_by[i] = limiter
        active -= done

    results = []
    for i, t in enumerate(transfers):
        results.append(TransferResult(
            name=t.name, rate=rates[i], bottleneck=frozen_by[i] or "none",
            seconds=(t.nbytes / rates[i]) if rates[i] > 0 and t.nbytes else None,
            host_memory_bytes_per_byte=weights[i].get(HOST, 0.0), links=descs[i],
            mps=mpss[i]))
    pred = Prediction(results, sorted(resources.values(), key=lambda r: -r.utilisation),
                      platform.assumptions(), notes)
    pred._nbytes = {t.name: t.nbytes for t in transfers}
    return pred
