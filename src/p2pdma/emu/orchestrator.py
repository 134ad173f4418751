"""Copy offload with nvmet's semantics (spec §7.2), on the emulated machine.

Per namespace the target chooses P2P memory the way nvmet does:

* an explicitly named device must have published p2pmem (else E1, ``-ENODEV``)
  and be within reach of the namespace's device (distance < 0 -> ``-EINVAL``),
  and of the port's RDMA device (else that controller does not use it);
* otherwise ``find_many({rdma device, namespace device})`` picks one; when none
  is found nvmet logs ``no peer-to-peer memory is available that's supported
  by %s and %s`` and uses host memory;
* every I/O takes its data buffer with ``alloc_sgl`` from that device and falls
  back to host memory when the pool is empty.

nvmet falls back *silently*.  We do not: every fallback is a warning in the
report (and the JSON), with the reason.

The decisions are asked of the kernel layer (through the machine); this module
never re-derives a rule.  Requests are tracked so that removal of the provider
(the machine's REMOVING event) fails the in-flight ones cleanly and frees their
buffers, and nothing already acknowledged is lost.
"""

from __future__ import annotations

import enum
import hashlib
import random
import threading
import time
import zlib
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any

from p2pdma.emu.devices.gpu import Gpu
from p2pdma.emu.devices.nvme import Namespace, NvmeController
from p2pdma.emu.devices.rdma import RESPONSE, RdmaNic, RemotePeer, pattern_chunks, wire_pair
from p2pdma.emu.dma_engine import DmaEngine, describe_error
from p2pdma.emu.enable import NvmetP2pmemAttr
from p2pdma.errors import InputError, KernelError, P2PDMAError, kerr
from p2pdma.fabric.bdf import Bdf
from p2pdma.kernel import NonPciClient

if TYPE_CHECKING:
    from p2pdma.emu.machine import Machine

NVMET = "nvmet"
MSG_USING = "using p2pmem on {dev} for nsid {nsid}"
MSG_NONE_FOR_PAIR = "no peer-to-peer memory is available that's supported by {a} and {b}"
MSG_NONE_FOR_NS = "no peer-to-peer memory is available for {ns}"
MSG_E1 = "PCI device has no peer-to-peer memory: {page}"


def nvmet_line(text: str) -> str:
    return f"{NVMET}: {text}"


# ---------------------------------------------------------------------------
# Memory the target hands to devices


@dataclass(eq=False)
class DataBuffer:
    """One I/O's data buffer: P2P memory of ``provider`` or host memory (provider None)."""

    provider: Bdf | None
    kva: int
    length: int
    handle: Any = None  # the Sgl (P2P) or the host allocation, for freeing
    freed: bool = False
    mappings: dict[Bdf, Any] = field(default_factory=dict)  # client -> DmaMapping

    @property
    def p2p(self) -> bool:
        return self.provider is not None


class Memory:
    """Allocates buffers and translates them to DMA addresses for a client device.

    The DMA address a device gets is what the kernel's DMA mapping gives it:
    BUS_ADDR -> the PCI bus address; otherwise the CPU physical address (or an
    IOVA, when the machine translates).  Which one is asked of the machine's
    DMA-mapping layer when it offers one."""

    def __init__(self, machine: Machine) -> None:
        self.m = machine

    def alloc_p2p(self, provider: Bdf, length: int) -> DataBuffer | None:
        sgl = self.m.alloc_sgl(provider, length)
        if sgl is None:
            return None
        kva, n = sgl.entries[0]
        return DataBuffer(provider, kva, n, sgl)

    def alloc_host(self, length: int) -> DataBuffer:
        phys = self.m.alloc_ram(length)
        return DataBuffer(None, self.m.phys_to_kva(phys), length, phys)

    def free(self, buf: DataBuffer) -> None:
        if buf.freed:
            return
        buf.freed = True
        for mapping in buf.mappings.values():
            # The client may be gone with its IOMMU domain: nothing left to undo then.
            with suppress(P2PDMAError):
                self.m.dma.unmap(mapping)
        buf.mappings.clear()
        if buf.provider is not None:
            self.m.free_sgl(buf.provider, buf.handle)
        else:
            self.m.free_ram(buf.handle, buf.length)

    def dma_addr(self, client: Bdf, buf: DataBuffer) -> int:
        """``dma_map_sg`` of the buffer for ``client`` (once per client); -EREMOTEIO
        when the kernel says the client cannot reach the buffer's provider."""
        mapping = buf.mappings.get(client)
        if mapping is None:
            mapping = self.m.dma.map_phys(client, self.m.kva_to_phys(buf.kva), buf.length)
            buf.mappings[client] = mapping
        addr: int = mapping.dma_addr
        return addr


# ---------------------------------------------------------------------------
# Choosing P2P memory per namespace


@dataclass
class P2PChoice:
    nsid: int
    provider: Bdf | None
    how: str  # "explicit", "find_many", "none"
    messages: list[str] = field(default_factory=list)
    warning: str | None = None


def _distance(machine: Machine, provider: Bdf, clients: list[Any]) -> int:
    res = machine.distance_many(provider, clients, verbose=True, log=True)
    d: int = getattr(res, "distance", res)
    return d


def choose_p2pmem(machine: Machine, *, nsid: int, ns_dev: Any, ns_pci: Bdf, p2p_client: Bdf,
                  explicit: Bdf | None = None) -> P2PChoice:
    """``nvmet_p2pmem_ns_enable`` + ``nvmet_p2pmem_ns_add_p2p`` for one namespace.

    ``ns_dev`` is the namespace's block device as a kernel-layer client (its
    gendisk, whose PCI parent is ``ns_pci``).  Raises what nvmet's enable path
    returns; returns provider None (with a warning) where nvmet silently uses
    host memory."""
    seq = machine.dmesg.seq
    ns_name = str(ns_dev)
    if explicit is not None:
        if not machine.has_p2pmem(explicit):
            line = MSG_E1.format(page=str(explicit))
            machine.dmesg.log(f"pci-p2pdma: {line}")
            raise kerr("ENODEV", line, where=f"nsid {nsid} p2pmem",
                       hint="name a device whose p2pmem is published (see `p2pdma topo`), "
                            "or let the target choose")
        if _distance(machine, explicit, [ns_dev]) < 0:
            raise kerr("EINVAL", f"{explicit} cannot do P2P DMA with {ns_name}",
                       where=f"nsid {nsid} p2pmem",
                       hint="the kernel's distance check failed; see the messages above "
                            "(`p2pdma check` explains why)")
        if _distance(machine, explicit, [p2p_client]) < 0:
            return P2PChoice(nsid, None, "explicit", machine.dmesg.since(seq),
                             warning=f"{explicit} is not reachable from {p2p_client}: nvmet "
                                     f"skips it for this controller and uses host memory")
        machine.dmesg.log(nvmet_line(MSG_USING.format(dev=explicit, nsid=nsid)))
        return P2PChoice(nsid, explicit, "explicit", machine.dmesg.since(seq))
    # The enable path only checks that *something* serves the namespace device.
    if machine.find_many([ns_dev]) is None:
        line = nvmet_line(MSG_NONE_FOR_NS.format(ns=ns_name))
        machine.dmesg.log(line)
        return P2PChoice(nsid, None, "none", machine.dmesg.since(seq),
                         warning=f"{line} (nvmet refuses to enable p2pmem; using host memory)")
    found = machine.find_many([p2p_client, ns_dev])
    if found is None:
        line = nvmet_line(MSG_NONE_FOR_PAIR.format(a=p2p_client, b=ns_name))
        machine.dmesg.log(line)
        return P2PChoice(nsid, None, "none", machine.dmesg.since(seq),
                         warning=f"{line}: using host memory (nvmet would do so silently)")
    machine.dmesg.log(nvmet_line(MSG_USING.format(dev=found, nsid=nsid)))
    return P2PChoice(nsid, found, "find_many", machine.dmesg.since(seq))


def block_client(machine: Machine, ns_name: str, pci: Bdf) -> Any:
    """The namespace's gendisk as a non-PCI client whose parent is the controller."""
    return NonPciClient(ns_name, f"block {ns_name}", pci)


# ---------------------------------------------------------------------------
# Requests


class ReqState(enum.Enum):
    ALLOCATED = "allocated"
    DONE = "done"  # acknowledged
    FAILED = "failed"


@dataclass(eq=False)
class Request:
    index: int
    offset: int
    length: int
    buffer: DataBuffer | None = None
    state: ReqState = ReqState.ALLOCATED
    error: str | None = None
    aborted: str | None = None
    lock: threading.RLock = field(default_factory=threading.RLock)


@dataclass
class RunStats:
    requests: int = 0
    acknowledged: int = 0
    failed: int = 0
    bytes_acknowledged: int = 0
    p2p_requests: int = 0
    host_requests: int = 0
    errors: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    acked: list[tuple[int, int]] = field(default_factory=list)  # (offset, length)


class Target:
    """Runs requests with buffers from the chosen provider, tracking them for removal."""

    def __init__(self, machine: Machine, engine: DmaEngine, provider: Bdf | None) -> None:
        self.m = machine
        self.engine = engine
        self.memory = Memory(machine)
        self.provider = provider
        self.stats = RunStats()
        self._inflight: set[Request] = set()
        self._lock = threading.Lock()
        self._gone: set[Bdf] = set()
        self._unsubscribe: Callable[[], None] | None = None
        events = getattr(machine, "events", None)
        if events is not None:
            self._unsubscribe = events.subscribe(self._on_event)
        self._fallback_warned: set[str] = set()
        self.hooks: list[Callable[[Request, str], None]] = []  # for tests: (req, step)

    def close(self) -> None:
        if self._unsubscribe is not None:
            self._unsubscribe()

    def warn(self, text: str) -> None:
        if text not in self._fallback_warned:
            self._fallback_warned.add(text)
            self.stats.warnings.append(text)

    def _on_event(self, ev: Any) -> None:
        kind = getattr(ev.kind, "value", str(ev.kind))
        if kind != "removing":
            return
        self._gone.add(ev.bdf)
        with self._lock:
            victims = [r for r in self._inflight
                       if r.buffer is not None and r.buffer.provider == ev.bdf]
        for r in victims:
            with r.lock:  # waits for the request's current DMA step to finish
                r.aborted = f"provider {ev.bdf} is being removed"
                if r.buffer is not None:
                    self.memory.free(r.buffer)  # the driver's remove() frees its memory
        if ev.bdf == self.provider:
            self.warn(f"provider {ev.bdf} removed during the run: its in-flight requests "
                      "failed; later requests use host memory")

    def _buffer(self, length: int) -> DataBuffer:
        if self.provider is not None and self.provider not in self._gone:
            buf = self.memory.alloc_p2p(self.provider, length)
            if buf is not None:
                return buf
            self.warn(f"p2pmem of {self.provider} exhausted for a {length}-byte buffer: "
                      "falling back to host memory (nvmet does this silently)")
        return self.memory.alloc_host(length)

    @contextmanager
    def request(self, index: int, offset: int, length: int) -> Iterator[Request]:
        req = Request(index, offset, length)
        self.stats.requests += 1
        with self._lock:  # tracked before it holds memory: a removal sees every buffer
            self._inflight.add(req)
        try:
            with req.lock:
                req.buffer = self._buffer(length)
        except BaseException:  # no memory at all (host RAM exhausted): stop the run
            with self._lock:
                self._inflight.discard(req)
            raise
        if req.buffer.p2p:
            self.stats.p2p_requests += 1
        else:
            self.stats.host_requests += 1
        try:
            yield req
        except (P2PDMAError, OSError) as e:
            req.state = ReqState.FAILED
            req.error = req.aborted or describe_error(e)
            self.stats.failed += 1
            self.stats.errors.append(f"request {index} ({offset:#x}+{length:#x}): {req.error}")
        else:
            if req.aborted:
                req.state = ReqState.FAILED
                req.error = req.aborted
                self.stats.failed += 1
                self.stats.errors.append(f"request {index} ({offset:#x}+{length:#x}): "
                                         f"{req.error}")
            else:
                req.state = ReqState.DONE
                self.stats.acknowledged += 1
                self.stats.bytes_acknowledged += length
                self.stats.acked.append((offset, length))
        finally:
            with self._lock:
                self._inflight.discard(req)
            with req.lock:
                if req.buffer is not None:
                    self.memory.free(req.buffer)

    def step(self, req: Request, name: str, fn: Callable[[], None]) -> None:
        """One DMA step of a request; refused once the request is aborted."""
        for hook in self.hooks:
            hook(req, name)
        with req.lock:
            if req.aborted:
                raise kerr("ENODEV", req.aborted, where=f"request {req.index} {name}")
            fn()

    def addr(self, client: Bdf, req: Request) -> int:
        assert req.buffer is not None
        return self.memory.dma_addr(client, req.buffer)


def digest(chunks: Iterator[memoryview] | list[bytes]) -> str:
    h = hashlib.blake2b(digest_size=16)
    for c in chunks:
        h.update(c)
    return h.hexdigest()


# ---------------------------------------------------------------------------
# Workloads: the pipelines `p2pdma emulate` runs

WORKLOADS = {
    "nvmeof-write": "NVMe-oF write offload: remote host -> RDMA NIC -> P2P buffer -> NVMe",
    "nvmeof-read": "NVMe-oF read offload: NVMe -> P2P buffer -> RDMA NIC -> remote host",
    "nvme-to-gpu": "load: NVMe -> GPU memory (BAR), then a checksum kernel on the GPU",
    "nvme-copy": "copy: NVMe -> P2P buffer -> another NVMe",
}
HOST_MEMORY = "host"  # provider choice that forces host (bounce) buffers

CLASS_NETWORK = 0x02
CLASS_DISPLAY = 0x03
CLASS_NVME = 0x010802


@dataclass
class WorkloadSpec:
    kind: str
    workdir: Path
    size: int = 64 << 20
    chunk: int = 128 << 10
    seed: int = 0
    nvme: str | None = None  # the namespace's controller (source for a copy)
    nvme_dst: str | None = None  # destination controller of a copy
    nic: str | None = None
    gpu: str | None = None
    provider: str | None = None  # a BDF/name, "host", or None (nvmet's choice)
    o_direct: bool = False
    wire: str = "unix"

    def __post_init__(self) -> None:
        if self.kind not in WORKLOADS:
            raise InputError(f"unknown workload {self.kind!r}",
                             hint=f"workloads: {', '.join(WORKLOADS)}")
        if self.size <= 0 or self.chunk <= 0:
            raise InputError("size and chunk must be positive")
        if self.chunk % 4096 or self.size % 4096:
            raise InputError(f"size {self.size} and chunk {self.chunk} must be multiples of "
                             "4 KiB (whole pages, as the block layer moves them)")


@dataclass
class Pick:
    role: str
    bdf: Bdf
    why: str


@dataclass
class RunReport:
    spec: WorkloadSpec
    picks: list[Pick]
    provider: Bdf | None
    provider_how: str
    stats: RunStats
    traffic: dict[str, Any]
    host_memory_bytes: int
    verified: bool
    verify_detail: str
    messages: list[str]
    legs: list[tuple[str, str, str, str]]  # (src, dst, map type / "HOST", initiator)
    seconds: float

    @property
    def warnings(self) -> list[str]:
        return self.stats.warnings

    def to_json(self) -> dict[str, Any]:
        return {
            "workload": self.spec.kind,
            "size": self.spec.size,
            "chunk": self.spec.chunk,
            "seed": self.spec.seed,
            "devices": [{"role": p.role, "bdf": str(p.bdf), "why": p.why} for p in self.picks],
            "p2pmem": {"provider": str(self.provider) if self.provider else None,
                       "how": self.provider_how,
                       "host_memory_fallback": self.stats.host_requests > 0},
            "requests": {"total": self.stats.requests, "acknowledged": self.stats.acknowledged,
                         "failed": self.stats.failed, "p2p": self.stats.p2p_requests,
                         "host_memory": self.stats.host_requests,
                         "bytes_acknowledged": self.stats.bytes_acknowledged},
            "verified": self.verified,
            "verify_detail": self.verify_detail,
            "traffic": self.traffic,
            "host_memory_bytes": self.host_memory_bytes,
            "legs": [{"src": s, "dst": d, "route": r, "initiator": i}
                     for s, d, r, i in self.legs],
            "warnings": self.warnings,
            "errors": self.stats.errors,
            "kernel_messages": self.messages,
            "seconds": self.seconds,
        }


def _functions(machine: Machine, pred: Callable[[Any], bool]) -> list[Bdf]:
    return [f.bdf for f in machine.fabric.functions if pred(f)]


def _kernel_find(machine: Machine, clients: list[Any]) -> Any:
    """A side-effect-free find_many (for picking devices; nothing logged or cached)."""
    from p2pdma import kernel

    return kernel.find_many(machine.fabric, machine.profile, clients,
                            rng=random.Random(0), has_p2pmem=machine.has_p2pmem)


def _kernel_pair(machine: Machine, provider: Bdf, client: Bdf) -> Any:
    from p2pdma import kernel

    return kernel.calc_map_type_and_dist(machine.fabric, machine.profile, provider, client,
                                         verbose=False)


def _named(machine: Machine, text: str | None, role: str) -> Bdf | None:
    if text is None:
        return None
    try:
        return machine.resolve(text)
    except P2PDMAError as e:
        raise InputError(f"--{role} {text}: {e.what}", hint=e.hint) from None


class Runner:
    """Builds the devices a workload needs on a machine, runs it, verifies it."""

    def __init__(self, machine: Machine, spec: WorkloadSpec, *,
                 engine: DmaEngine | None = None,
                 progress: Callable[[int], None] | None = None,
                 hooks: list[Callable[[Request, str], None]] | None = None) -> None:
        self.m = machine
        self.spec = spec
        self.engine = engine or DmaEngine(machine)
        self.progress = progress or (lambda n: None)
        self.hooks = hooks or []
        self.picks: list[Pick] = []
        self.controllers: dict[Bdf, NvmeController] = {}
        self.legs: list[tuple[str, str, str, str]] = []

    # -- devices -----------------------------------------------------------------------

    def controller(self, bdf: Bdf) -> NvmeController:
        ctrl = self.controllers.get(bdf)
        if ctrl is None:
            ctrl = NvmeController(self.m, bdf, self.engine)
            ctrl.probe()
            self.controllers[bdf] = ctrl
        return ctrl

    def probe_all_nvme(self) -> None:
        """Bind the nvme driver everywhere: every CMB is registered as the driver would."""
        for bdf in _functions(self.m, lambda f: f.class_code == CLASS_NVME):
            self.controller(bdf)

    def namespace(self, ctrl: NvmeController) -> Namespace:
        if 1 in ctrl.namespaces:
            return ctrl.namespaces[1]
        size = max(self.spec.size, 1 << 20)
        self.spec.workdir.mkdir(parents=True, exist_ok=True)
        path = self.spec.workdir / f"{ctrl.name}n1.img"
        return ctrl.attach(Namespace(path, nsid=1, size=size, o_direct=self.spec.o_direct))

    def _pick_pair(self, first_role: str, firsts: list[Bdf], second_role: str,
                   seconds: list[Bdf], make_clients: Callable[[Bdf, Bdf], list[Any]]
                   ) -> tuple[Bdf, Bdf]:
        best: tuple[int, Bdf, Bdf, Bdf] | None = None
        for a in firsts:
            for b in seconds:
                if a == b:
                    continue
                r = _kernel_find(self.m, make_clients(a, b))
                if r.choice is not None and r.best is not None and (
                        best is None or r.best < best[0]):
                    best = (r.best, a, b, r.choice)
        if best is not None:
            d, a, b, prov = best
            why = f"p2pmem on {prov} serves both at distance {d} (the closest such pair)"
            self.picks += [Pick(first_role, a, why), Pick(second_role, b, why)]
            return a, b
        pairs = [(a, b) for a in firsts for b in seconds if a != b]
        if not pairs:
            raise InputError(f"the fabric has no {first_role} and {second_role} for this "
                             "workload", hint="pick another sample or name the devices")
        a, b = pairs[0]
        why = "no p2pmem serves any pair: the first ones (the run will use host memory)"
        self.picks += [Pick(first_role, a, why), Pick(second_role, b, why)]
        return a, b

    def _p2pmem_setting(self) -> tuple[bool, Bdf | None]:
        """The provider option written to nvmet's ``namespaces/1/p2pmem`` attribute:
        (use p2pmem, the named device).  Device names (``nvme0``, short BDFs) are
        resolved first for convenience; the rest is the kernel's parsing (E1/E2)."""
        text = self.spec.provider
        if text == HOST_MEMORY:
            return False, None
        page = "1" if text is None else text
        with suppress(P2PDMAError):
            page = str(self.m.resolve(page))
        attr = NvmetP2pmemAttr(self.m, nsid=1)
        attr.store(page)
        return attr.use, attr.p2p_dev

    def _host_choice(self, nsid: int) -> P2PChoice:
        how = "host" if self.spec.provider == HOST_MEMORY else "disabled"
        return P2PChoice(nsid, None, how, [],
                         warning=f"p2pmem off (--provider {self.spec.provider}): every byte "
                                 "bounces through host memory")

    def _choose_provider(self, *, nsid: int, ns_dev: Any, ns_pci: Bdf,
                         client: Bdf) -> P2PChoice:
        use, explicit = self._p2pmem_setting()
        if not use:
            return self._host_choice(nsid)
        return choose_p2pmem(self.m, nsid=nsid, ns_dev=ns_dev, ns_pci=ns_pci, p2p_client=client,
                             explicit=explicit)

    # -- running -------------------------------------------------------------------------

    def run(self) -> RunReport:
        t0 = time.monotonic()
        seq = self.m.dmesg.seq
        kind = self.spec.kind
        fn = {"nvmeof-write": self._nvmeof_write, "nvmeof-read": self._nvmeof_read,
              "nvme-to-gpu": self._nvme_to_gpu, "nvme-copy": self._nvme_copy}[kind]
        target, choice, verified, detail = fn()
        stats = target.stats
        if choice.warning:
            stats.warnings.insert(0, choice.warning)
        if stats.host_requests and not any("host memory" in w for w in stats.warnings):
            stats.warnings.append(f"{stats.host_requests} of {stats.requests} requests used "
                                  "host memory (bounce)")
        target.close()
        tr = self.engine.traffic
        return RunReport(self.spec, self.picks, choice.provider, choice.how, stats,
                         tr.to_json(), tr.host_memory_bytes, verified, detail,
                         self.m.dmesg.since(seq), self.legs, time.monotonic() - t0)

    def _chunks(self) -> Iterator[tuple[int, int, int]]:
        i, off = 0, 0
        while off < self.spec.size:
            n = min(self.spec.chunk, self.spec.size - off)
            yield i, off, n
            i += 1
            off += n

    def _fill(self, ns: Namespace) -> None:
        """Put the test pattern in a namespace (not DMA: as if written earlier)."""
        off = 0
        for piece in pattern_chunks(self.spec.seed, self.spec.size, self.spec.chunk):
            ns.host_write(off, piece)
            off += len(piece)

    def _verify_ns(self, ns: Namespace, acked: set[int] | None) -> tuple[bool, str]:
        """Every acknowledged chunk of the pattern reads back identical from the file."""
        off = bad = checked = 0
        for piece in pattern_chunks(self.spec.seed, self.spec.size, self.spec.chunk):
            if acked is None or off in acked:
                checked += 1
                if ns.read(off, len(piece)) != bytes(piece):  # bytes: memcmp speed
                    bad += 1
            off += len(piece)
        if bad:
            return False, f"{bad} of {checked} acknowledged chunks differ in {ns.path}"
        return True, f"{checked} acknowledged chunks read back identical from {ns.path}"

    def _leg(self, src: Bdf | str, dst: Bdf | str, mem_owner: Bdf | None, client: Bdf,
             initiator: str) -> None:
        if mem_owner is None:
            route = "HOST"
        elif mem_owner == client:
            route = "INTERNAL"
        else:
            route = _kernel_pair(self.m, mem_owner, client).map_type.name
        self.legs.append((str(src), str(dst), route, initiator))

    def _nvmeof(self, *, write: bool) -> tuple[Target, P2PChoice, NvmeController, Bdf]:
        self.probe_all_nvme()
        nics = [x for x in [_named(self.m, self.spec.nic, "nic")] if x] or _functions(
            self.m, lambda f: f.class_code >> 16 == CLASS_NETWORK)
        nvmes = [x for x in [_named(self.m, self.spec.nvme, "nvme")] if x] or _functions(
            self.m, lambda f: f.class_code == CLASS_NVME)
        if not nics:
            raise InputError("the fabric has no network controller for the RDMA NIC",
                             hint="pick a sample with a NIC (xeon-2s, epyc) or --nic BDF")

        def clients(nic: Bdf, nvme: Bdf) -> list[Any]:
            ctrl = self.controller(nvme)
            return [nic, block_client(self.m, ctrl.disk_name(1), nvme)]

        nic, nvme = self._pick_pair("rdma-nic", nics, "nvme", nvmes, clients)
        ctrl = self.controller(nvme)
        self.namespace(ctrl)
        choice = self._choose_provider(nsid=1, ns_dev=clients(nic, nvme)[1], ns_pci=nvme,
                                       client=nic)
        target = Target(self.m, self.engine, choice.provider)
        target.hooks.extend(self.hooks)
        p = choice.provider
        if write:
            self._leg(nic, p or HOST_MEMORY, p, nic, "src")
            self._leg(p or HOST_MEMORY, nvme, p, nvme, "dst")
        else:
            self._leg(nvme, p or HOST_MEMORY, p, nvme, "src")
            self._leg(p or HOST_MEMORY, nic, p, nic, "dst")
        return target, choice, ctrl, nic

    def _nvmeof_write(self) -> tuple[Target, P2PChoice, bool, str]:
        target, choice, ctrl, nic_bdf = self._nvmeof(write=True)
        ns = self.namespace(ctrl)
        mine, theirs = wire_pair(self.spec.wire)
        nic = RdmaNic(nic_bdf, self.engine, mine)
        peer = RemotePeer(theirs)
        peer.write_stream(self.spec.seed, self.spec.size, self.spec.chunk)
        scratch = bytearray(self.spec.chunk)
        index = 0
        try:
            while (hdr := nic.recv_header()) is not None:
                off, n = hdr
                received = False
                with target.request(index, off, n) as req:
                    addr_nic = target.addr(nic_bdf, req)
                    mr = nic.reg_mr(addr_nic, n)

                    def rx(mr: Any = mr, addr: int = addr_nic, n: int = n) -> None:
                        nic.receive(mr, addr, n)

                    target.step(req, "nic-receive", rx)
                    received = True
                    nic.dereg_mr(mr)
                    addr_nvme = target.addr(ctrl.bdf, req)
                    target.step(req, "nvme-write",
                                partial(ctrl.write, 1, off, addr_nvme, n))
                if not received:  # keep the stream in step: drop this command's data
                    _drain(mine, n, scratch)
                self.progress(n)
                index += 1
        finally:
            mine.close()
            res = peer.join(10)
            theirs.close()
        acked = {o for o, _ in target.stats.acked}
        ok, detail = self._verify_ns(ns, acked)
        if res.error:
            ok, detail = False, f"remote peer: {res.error}"
        return target, choice, ok and target.stats.failed == 0, detail

    def _nvmeof_read(self) -> tuple[Target, P2PChoice, bool, str]:
        target, choice, ctrl, nic_bdf = self._nvmeof(write=False)
        ns = self.namespace(ctrl)
        self._fill(ns)
        mine, theirs = wire_pair(self.spec.wire)
        nic = RdmaNic(nic_bdf, self.engine, mine)
        peer = RemotePeer(theirs)
        peer.read_stream(self.spec.size, self.spec.chunk)
        index = 0
        try:
            while (hdr := nic.recv_header()) is not None:
                off, n = hdr
                sent = False
                with target.request(index, off, n) as req:
                    addr_nvme = target.addr(ctrl.bdf, req)
                    target.step(req, "nvme-read",
                                partial(ctrl.read, 1, off, addr_nvme, n))
                    addr_nic = target.addr(nic_bdf, req)
                    mr = nic.reg_mr(addr_nic, n)

                    def tx(mr: Any = mr, addr: int = addr_nic, n: int = n) -> None:
                        nic.send_control(RESPONSE.pack(0, n))
                        nic.send(mr, addr, n)

                    target.step(req, "nic-send", tx)
                    sent = True
                    nic.dereg_mr(mr)
                if not sent:
                    nic.send_control(RESPONSE.pack(5, 0))  # EIO status, no data
                self.progress(n)
                index += 1
        finally:
            mine.close()
            res = peer.join(10)
            theirs.close()
        expected = digest(pattern_chunks(self.spec.seed, self.spec.size, self.spec.chunk))
        if res.error:
            return target, choice, False, f"remote peer: {res.error}"
        ok = res.digest == expected and target.stats.failed == 0
        detail = (f"the remote host received {res.received} bytes identical to the namespace"
                  if ok else f"digest {res.digest} != expected {expected}")
        return target, choice, ok, detail

    def _nvme_to_gpu(self) -> tuple[Target, P2PChoice, bool, str]:
        gpus = [x for x in [_named(self.m, self.spec.gpu, "gpu")] if x] or _functions(
            self.m, lambda f: f.class_code >> 16 == CLASS_DISPLAY and f.bars)
        if not gpus:
            raise InputError("the fabric has no GPU (display controller with BARs)",
                             hint="pick a sample with a GPU (xeon-2s, desktop) or --gpu BDF")
        nvmes = [x for x in [_named(self.m, self.spec.nvme, "nvme")] if x] or _functions(
            self.m, lambda f: f.class_code == CLASS_NVME)
        if not nvmes:
            raise InputError("the fabric has no NVMe controller")
        self.probe_all_nvme()
        gpu_bdf = gpus[0]
        gpu = Gpu(self.m, gpu_bdf, self.engine, size=max(self.spec.chunk, 2 << 20) * 4)
        self.picks.append(Pick("gpu", gpu_bdf, "the named GPU" if self.spec.gpu
                               else "the first GPU in the fabric"))
        best: tuple[int, Bdf] | None = None
        for b in nvmes:
            d = self.m.distance_many(gpu_bdf, [b], verbose=False, log=False)
            if d >= 0 and (best is None or d < best[0]):
                best = (d, b)
        nvme = best[1] if best is not None else nvmes[0]
        self.picks.append(Pick("nvme", nvme,
                               f"closest to the GPU (distance {best[0]})" if best else
                               "no NVMe can reach the GPU peer to peer: the first one"))
        ctrl = self.controller(nvme)
        ns = self.namespace(ctrl)
        self._fill(ns)
        named = self.spec.provider
        if named not in (None, HOST_MEMORY) and _named(self.m, named, "provider") != gpu_bdf:
            raise InputError(f"nvme-to-gpu loads into the GPU's own memory: --provider "
                             f"{named} cannot be used", hint="give --provider host to stage "
                             "through host memory, or leave it out")
        if named == HOST_MEMORY:
            choice = self._host_choice(1)
        elif best is None:
            choice = P2PChoice(1, None, "none", [], warning=f"{nvme} cannot reach {gpu_bdf} "
                               "peer to peer: staging through host memory")
        else:
            choice = P2PChoice(1, gpu_bdf, "gpu", [])
        target = Target(self.m, self.engine, choice.provider)
        target.hooks.extend(self.hooks)
        p = choice.provider
        self._leg(nvme, p or HOST_MEMORY, p, nvme, "src")
        if p is None:
            self._leg(HOST_MEMORY, gpu_bdf, None, gpu_bdf, "dst")
        crc = 0
        gpu_buf: DataBuffer | None = None
        for index, off, n in self._chunks():
            with target.request(index, off, n) as req:
                addr = target.addr(nvme, req)
                target.step(req, "nvme-read", partial(ctrl.read, 1, off, addr, n))
                assert req.buffer is not None
                if req.buffer.provider == gpu_bdf:
                    kva = req.buffer.kva
                else:  # staged in host memory: the GPU copies it into its memory first
                    if gpu_buf is None:
                        gpu_buf = target.memory.alloc_p2p(gpu_bdf, self.spec.chunk)
                    if gpu_buf is None:
                        raise kerr("ENOMEM", "no GPU memory for the staging copy",
                                   where=str(gpu_bdf))
                    kva = gpu_buf.kva
                    target.step(req, "gpu-copy-in",
                                partial(gpu.copy_in, target.addr(gpu_bdf, req), kva, n))
                crc = gpu.checksum(kva, n, crc)  # the kernel runs on the GPU's memory
            self.progress(n)
        if gpu_buf is not None:
            target.memory.free(gpu_buf)
        expected = 0
        for piece in pattern_chunks(self.spec.seed, self.spec.size, self.spec.chunk):
            expected = zlib.crc32(piece, expected)
        ok = crc == expected and target.stats.failed == 0
        return target, choice, ok, (f"GPU checksum kernel: CRC-32 {crc:#010x} "
                                    f"{'matches' if crc == expected else '!='} the namespace "
                                    f"({expected:#010x})")

    def _nvme_copy(self) -> tuple[Target, P2PChoice, bool, str]:
        self.probe_all_nvme()
        nvmes = _functions(self.m, lambda f: f.class_code == CLASS_NVME)
        srcs = [x for x in [_named(self.m, self.spec.nvme, "nvme")] if x] or nvmes
        dsts = [x for x in [_named(self.m, self.spec.nvme_dst, "nvme-dst")] if x] or nvmes

        def clients(a: Bdf, b: Bdf) -> list[Any]:
            return [a, b]

        src, dst = self._pick_pair("nvme-src", srcs, "nvme-dst", dsts, clients)
        sctrl, dctrl = self.controller(src), self.controller(dst)
        sns, dns = self.namespace(sctrl), self.namespace(dctrl)
        self._fill(sns)
        use, explicit = self._p2pmem_setting()
        if not use:
            choice = self._host_choice(1)
        else:
            seq = self.m.dmesg.seq
            if explicit is not None:
                if self.m.distance_many(explicit, [src, dst], verbose=True) < 0:
                    raise kerr("EINVAL", f"{explicit} cannot do P2P DMA with {src} and {dst}",
                               where="--provider", hint="see the kernel messages above")
                choice = P2PChoice(1, explicit, "explicit", self.m.dmesg.since(seq))
            else:
                found = self.m.find_many([src, dst])
                choice = P2PChoice(1, found, "find_many" if found else "none",
                                   self.m.dmesg.since(seq),
                                   warning=None if found else
                                   f"no peer-to-peer memory is available that's supported by "
                                   f"{src} and {dst}: using host memory")
        target = Target(self.m, self.engine, choice.provider)
        target.hooks.extend(self.hooks)
        p = choice.provider
        self._leg(src, p or HOST_MEMORY, p, src, "src")
        self._leg(p or HOST_MEMORY, dst, p, dst, "dst")
        for index, off, n in self._chunks():
            with target.request(index, off, n) as req:
                a = target.addr(src, req)
                target.step(req, "nvme-read", partial(sctrl.read, 1, off, a, n))
                b = target.addr(dst, req)
                target.step(req, "nvme-write", partial(dctrl.write, 1, off, b, n))
            self.progress(n)
        acked = {o for o, _ in target.stats.acked}
        ok, detail = self._verify_ns(dns, acked)
        return target, choice, ok and target.stats.failed == 0, detail

    def close(self) -> None:
        for c in self.controllers.values():
            c.close()


def _drain(sock: Any, n: int, scratch: bytearray) -> None:
    view = memoryview(scratch)
    while n > 0:
        got = sock.recv_into(view[:min(n, len(view))])
        if got == 0:
            return
        n -= got


__all__ = ["HOST_MEMORY", "MSG_NONE_FOR_PAIR", "MSG_USING", "WORKLOADS", "DataBuffer",
           "KernelError", "Memory", "P2PChoice", "Request", "RunReport", "RunStats", "Runner",
           "Target", "WorkloadSpec", "block_client", "choose_p2pmem", "nvmet_line"]
