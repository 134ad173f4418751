"""The verify-and-benchmark runner behind ``p2pdma copy`` and ``p2pdma bench``.

Order of events for one copy:
1. open SRC (O_DIRECT), plan the chunks, open DST after the safety checks;
2. for a P2P buffer: predict the kernel's verdict for SRC's and DST's PCI functions
   *before* mapping or moving anything, and hand it to the caller;
3. map the buffer (P2P or host), move the bytes, unmap;
4. verify through separate host buffers; success only if every byte matched.
"""

from __future__ import annotations

import contextlib
import errno
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from p2pdma.errors import InputError, KernelError, P2PDMAError
from p2pdma.fabric.bdf import Bdf
from p2pdma.host.io import (
    HostBuffer,
    IoFailure,
    Plan,
    Progress,
    Target,
    TransferResult,
    VerifyResult,
    make_plan,
    open_destination,
    open_source,
    run_transfer,
    verify_copy,
)
from p2pdma.host.p2pmem import P2PBuffer, P2PMemState, human, map_p2pmem, precheck
from p2pdma.host.predict import Prediction, client_of, predict, refusal_errno
from p2pdma.host.sysroot import pci_device_dir

DEFAULT_CHUNK = 1 << 20


@dataclass
class CopyRequest:
    src: str
    dst: str
    via: Bdf | None = None
    host_memory: bool = False
    size: int | None = None
    chunk: int = DEFAULT_CHUNK
    chunks: int | None = None
    offset: int = 0
    buffer_offset: int = 0
    threads: int = 1
    duration: float | None = None
    verify: bool = True
    force: bool = False
    root: str = "/"
    kernel: str | None = None  # profile override for the prediction


@dataclass
class CopyReport:
    buffer: str  # "p2p" or "host"
    provider: Bdf | None
    plan: Plan
    transfer: TransferResult
    verify: VerifyResult | None
    predictions: list[Prediction] = field(default_factory=list)
    pool_before: P2PMemState | None = None
    pool_mapped: P2PMemState | None = None
    pool_after: P2PMemState | None = None
    notes: list[str] = field(default_factory=list)
    dst_created: bool = False

    @property
    def ok(self) -> bool:
        return self.verify is not None and self.verify.ok

    def to_json(self) -> dict[str, object]:
        def pool(s: P2PMemState | None) -> object:
            return None if s is None else s.to_json()

        return {
            "buffer": self.buffer,
            "provider": None if self.provider is None else str(self.provider),
            "plan": self.plan.to_json(),
            "transfer": self.transfer.to_json(),
            "verify": None if self.verify is None else self.verify.to_json(),
            "verified": self.ok,
            "predictions": [p.to_json() for p in self.predictions],
            "pool": {"before": pool(self.pool_before), "mapped": pool(self.pool_mapped),
                     "after": pool(self.pool_after)},
            "dst_created": self.dst_created,
            "notes": self.notes,
        }


def predict_copy(req: CopyRequest, provider: Bdf) -> list[Prediction]:
    """The kernel's expected verdict for SRC's and DST's devices against ``provider``."""
    out: list[Prediction] = []
    seen: set[object] = set()
    for path in (req.src, req.dst):
        if not os.path.exists(path):
            # A new DST file lives on the file system of its directory.
            path = os.path.dirname(os.path.abspath(path))
        client = client_of(path, req.root)
        key = client.block or path
        if key in seen:
            continue
        seen.add(key)
        out.append(predict(req.root, provider, client, kernel=req.kernel))
    return out


def classify_io_error(
    failure: IoFailure,
    *,
    p2p: P2PBuffer | None,
    predictions: list[Prediction],
    root: str,
) -> P2PDMAError:
    """Turn an I/O errno into a precise error, using the prediction made beforehand."""
    code = failure.err.errno
    where = f"{failure.path} @ {failure.offset:#x} ({failure.op})"
    if p2p is not None:
        alloc = pci_device_dir(root, p2p.bdf) / "p2pmem" / "allocate"
        gone = not alloc.exists()
        if code == errno.EFAULT and not gone:
            # EFAULT into pages we mapped ourselves: they were taken away (seen on 6.12 while
            # the sysfs files were still being torn down).  Give the teardown a moment.
            deadline = time.monotonic() + 1.0
            while not gone and time.monotonic() < deadline:
                time.sleep(0.05)
                gone = not alloc.exists()
        if gone or code == errno.EFAULT:
            state = ("its p2pmem/allocate is gone" if gone
                     else "the buffer's pages vanished; teardown still in progress")
            return KernelError(
                "ENODEV",
                f"the P2P provider {p2p.bdf} was removed or unbound during the copy ({state}): "
                f"the kernel revoked the buffer and the {failure.op} failed "
                f"({errno.errorcode.get(code or 0, code)}). Nothing was reported as copied.",
                where=where,
                hint="bring the device back (echo 1 > /sys/bus/pci/rescan) and copy again",
            )
        refusing = refusal_errno(root)
        if code in (errno.EREMOTEIO, errno.EINVAL):
            name = errno.errorcode.get(code or 0, "EIO")
            predicted = [p for p in predictions if p.refuse]
            lines = [ln for p in (predicted or predictions) for ln in
                     (p.summary(), *("  " + e for e in p.explanation))]
            what = (
                f"the kernel refused to DMA between {failure.path} and {p2p.bdf}'s P2P memory "
                f"({name}; this kernel refuses a NOT_SUPPORTED pair with {refusing})"
            )
            if predicted:
                what += ", as predicted before the copy"
            elif predictions and all(p.refuse is False for p in predictions):
                what += "; the rule engine had predicted it would be allowed (please report)"
            return KernelError(
                name, what + ("\n  " + "\n  ".join(lines) if lines else ""),
                where=where,
                hint="use a provider that shares a switch with the NVMe drives (p2pdma topo), "
                "see the kernel's reason in dmesg, or compare with --host-memory",
            )
    name = errno.errorcode.get(code or 0, "EIO")
    if code == errno.ENOSPC:
        return KernelError("ENOSPC", "no space left for DST", where=where,
                           hint="free space or copy less (--size)")
    return KernelError(name, f"{failure.op} failed: {failure.err.strerror}", where=where)


def run_copy(
    req: CopyRequest,
    *,
    progress: Progress | None = None,
    on_predictions: Callable[[list[Prediction]], None] | None = None,
    before_verify: Callable[[Target], None] | None = None,
) -> CopyReport:
    """Copy SRC → buffer → DST and verify; raises on every failure, never half-reports."""
    if req.via is None and not req.host_memory:
        raise InputError(
            "no buffer chosen",
            hint="give --via BDF (a P2P memory provider) or --host-memory",
        )
    src = open_source(req.src, req.root)
    dst: Target | None = None
    try:
        plan0 = make_plan(
            src, dst_align=src.align, size=req.size, chunk=req.chunk, chunks=req.chunks,
            offset=req.offset, threads=req.threads, duration=req.duration,
            buffer_offset=req.buffer_offset,
        )
        use_p2p = req.via is not None and not req.host_memory
        predictions: list[Prediction] = []
        if use_p2p:
            assert req.via is not None
            precheck(req.root, req.via, plan0.buffer_length)  # fail fast, before predicting
        if req.via is not None:
            # The verdict is shown before DST is opened and before any byte moves.
            predictions = predict_copy(req, req.via)
            if on_predictions is not None:
                on_predictions(predictions)
        dst = open_destination(
            req.dst, req.root, offset=plan0.offset, end=plan0.offset + plan0.size,
            source=src, force=req.force,
        )
        plan = make_plan(
            src, dst_align=dst.align, size=plan0.size, chunk=req.chunk, chunks=None,
            offset=req.offset, threads=req.threads, duration=req.duration,
            buffer_offset=req.buffer_offset,
        )
        notes = list(dict.fromkeys(src.notes + dst.notes))
        if use_p2p:
            for pred in predictions:
                if pred.extra.get("cpu_copy"):
                    notes.append(
                        f"{pred.client.path}: no P2P DMA took place for this side; the kernel "
                        "copied through the page cache with the CPU (file system without a "
                        "block device)"
                    )
        p2p: P2PBuffer | None = None
        host: HostBuffer | None = None
        if use_p2p:
            assert req.via is not None
            p2p = map_p2pmem(req.root, req.via, plan.buffer_length)
            notes.extend(p2p.notes)
            buffer_view = p2p.view
        else:
            host = HostBuffer(plan.buffer_length)
            buffer_view = host.view
        try:
            try:
                transfer = run_transfer(src, dst, buffer_view, plan, progress=progress)
            except IoFailure as failure:
                raise classify_io_error(
                    failure, p2p=p2p, predictions=predictions, root=req.root
                ) from None
        finally:
            buffer_view.release()
            if p2p is not None:
                p2p.close()
            if host is not None:
                host.close()
        verify = None
        if before_verify is not None:
            before_verify(dst)
        if req.verify:
            verify = verify_copy(req.src, req.dst, plan)
            if not verify.ok:
                assert verify.first_mismatch is not None
                raise P2PDMAError(
                    f"verification FAILED: DST differs from SRC at byte offset "
                    f"{verify.first_mismatch} ({verify.first_mismatch:#x}): expected "
                    f"{verify.expected:#04x}, found {verify.found:#04x} "
                    f"({human(verify.compared)} matched before it)",
                    where=req.dst,
                    hint="the data in DST is not a good copy; check dmesg for DMA/IOMMU "
                    "faults, and compare with --host-memory",
                )
        return CopyReport(
            buffer="p2p" if use_p2p else "host",
            provider=req.via if use_p2p else None,
            plan=plan, transfer=transfer, verify=verify, predictions=predictions,
            pool_before=p2p.before if p2p else None,
            pool_mapped=p2p.after_map if p2p else None,
            pool_after=p2p.after_unmap if p2p else None,
            notes=notes, dst_created=dst.created,
        )
    except BaseException:
        if dst is not None and dst.created:
            # We created DST for this copy; if nothing reached it, leave no empty file behind.
            dst.close()
            with contextlib.suppress(OSError):
                if os.path.getsize(dst.path) == 0:
                    os.unlink(dst.path)
        raise
    finally:
        src.close()
        if dst is not None:
            dst.close()


@dataclass
class BenchReport:
    p2p: CopyReport
    host: CopyReport

    def to_json(self) -> dict[str, object]:
        ratio = (self.p2p.transfer.mb_per_s / self.host.transfer.mb_per_s
                 if self.host.transfer.mb_per_s else None)
        return {"p2p": self.p2p.to_json(), "host": self.host.to_json(),
                "p2p_over_host": None if ratio is None else round(ratio, 3)}


def run_bench(
    req: CopyRequest,
    *,
    progress: Progress | None = None,
    on_predictions: Callable[[list[Prediction]], None] | None = None,
) -> BenchReport:
    """The same transfer through the P2P buffer and through host memory, both verified."""
    if req.via is None:
        raise InputError("bench needs --via BDF (the P2P memory provider to compare)")
    p2p_req = CopyRequest(**{**req.__dict__, "host_memory": False, "verify": True})
    p2p = run_copy(p2p_req, progress=progress, on_predictions=on_predictions)
    # The second run writes the same bytes to the same DST: overwriting our own copy is
    # expected here, so it is forced (the first run already passed the safety checks).
    host_req = CopyRequest(**{**req.__dict__, "host_memory": True, "verify": True,
                              "force": True, "via": None})
    host = run_copy(host_req, progress=progress)
    return BenchReport(p2p, host)
