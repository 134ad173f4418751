"""``p2pdma copy SRC DST --via BDF``: O_DIRECT through a P2P buffer, verified."""

from __future__ import annotations

import argparse
import sys
import threading
from collections.abc import Callable
from typing import Any

from p2pdma.cli.common import add_output_args, add_root_arg, emit_json, root_path
from p2pdma.fabric.bdf import Bdf
from p2pdma.host.io import parse_size
from p2pdma.host.p2pmem import human
from p2pdma.host.predict import Prediction
from p2pdma.host.runner import DEFAULT_CHUNK, CopyReport, CopyRequest, run_copy
from p2pdma.render.progress import Progress


def add_transfer_args(p: argparse.ArgumentParser, *, via_required: bool) -> None:
    """The options p2pmem-test users know: chunk size/count, threads, duration, offset."""
    p.add_argument("--via", metavar="BDF", required=via_required,
                   help="the P2P memory provider whose p2pmem/allocate buffer carries the data")
    g = p.add_argument_group("transfer")
    g.add_argument("--size", metavar="N", help="bytes to copy (default: all of SRC from "
                   "--offset, whole blocks)")
    g.add_argument("--chunk", metavar="N", default=str(DEFAULT_CHUNK),
                   help="bytes per read/write, the DMA unit (default 1M)")
    g.add_argument("--chunks", metavar="COUNT", type=int,
                   help="number of chunks to copy (instead of --size)")
    g.add_argument("--offset", metavar="N", default="0",
                   help="start offset in SRC and DST (block aligned)")
    g.add_argument("--buffer-offset", metavar="N", default="0",
                   help="start offset inside the buffer (block aligned)")
    g.add_argument("--threads", metavar="N", type=int, default=1,
                   help="parallel workers, each with its own chunk of the buffer")
    g.add_argument("--duration", metavar="S", type=float,
                   help="keep copying (wrapping over the range) for S seconds")
    g.add_argument("--kernel", metavar="VERSION",
                   help="predict with this kernel version's rules instead of the running one")
    add_root_arg(p)
    add_output_args(p)


def request_from_args(args: argparse.Namespace, *, dst: str) -> CopyRequest:
    via = getattr(args, "via", None)
    return CopyRequest(
        src=args.src,
        dst=dst,
        via=None if via is None else Bdf.parse(via, where="--via"),
        host_memory=bool(getattr(args, "host_memory", False)),
        size=None if args.size is None else parse_size(args.size, what="--size"),
        chunk=parse_size(args.chunk, what="--chunk"),
        chunks=args.chunks,
        offset=parse_size(args.offset, what="--offset"),
        buffer_offset=parse_size(args.buffer_offset, what="--buffer-offset"),
        threads=args.threads,
        duration=args.duration,
        verify=bool(getattr(args, "verify", True)),
        force=bool(getattr(args, "force", False)),
        root=str(root_path(args)),
        kernel=getattr(args, "kernel", None),
    )


class ProgressAdapter:
    """Feeds the runner's cumulative counts (from several threads) to a Progress bar."""

    def __init__(self, label: str, total: int | None, *, enabled: bool | None) -> None:
        self.bar = Progress(total, label=label, enabled=enabled)
        self.last = 0
        self.lock = threading.Lock()

    def __call__(self, moved: int, total: int) -> None:
        with self.lock:
            want = total or None  # 0 means open-ended (--duration)
            if want != self.bar.total:
                self.bar.total = want
            delta, self.last = moved - self.last, max(moved, self.last)
            if delta > 0:
                self.bar.update(delta)

    def close(self) -> None:
        self.bar.close()


def print_predictions(predictions: list[Prediction], *, stream: Any = None) -> None:
    out = stream or sys.stderr
    for p in predictions:
        print(f"predicted: {p.summary()}", file=out)
        for line in p.explanation:
            print(f"  {line}", file=out)


def with_progress(
    label: str, enabled: bool, work: Callable[[Callable[[int, int], None]], Any]
) -> Any:
    adapter = ProgressAdapter(label, None, enabled=None if enabled else False)
    try:
        return work(adapter)
    finally:
        adapter.close()


def format_report(r: CopyReport, src: str, dst: str) -> list[str]:
    t = r.transfer
    what = f"P2P memory of {r.provider}" if r.buffer == "p2p" else "host memory"
    p50, p99 = t.percentile_us(50), t.percentile_us(99)
    lines = [
        f"copied {human(t.bytes_moved)} {src} -> {dst} through {what}",
        f"  plan       {r.plan.nchunks} chunks of {human(r.plan.chunk)}, offset {r.plan.offset}, "
        f"{r.plan.threads} thread(s), alignment {r.plan.align}"
        + (f", duration {r.plan.duration}s ({t.passes:.2f} passes)" if r.plan.duration else ""),
        f"  throughput {t.mb_per_s:.1f} MB/s in {t.seconds:.3f} s; per-chunk latency "
        f"p50 {p50 or 0:.0f} us, p99 {p99 or 0:.0f} us",
    ]
    if r.pool_before is not None:
        mapped = r.pool_mapped.available if r.pool_mapped else None
        after = r.pool_after.available if r.pool_after else None
        lines.append(
            f"  pool       available {r.pool_before.available} -> {mapped} while mapped -> "
            f"{after} after munmap"
        )
    if r.verify is not None:
        lines.append(f"  verified   {human(r.verify.compared)}, every byte matches SRC")
    else:
        lines.append("  NOT verified (--no-verify): the copy is unchecked")
    if r.dst_created:
        lines.append(f"  created    {dst}")
    lines.extend(f"  note: {n}" for n in r.notes)
    return lines


def register(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "copy",
        help="copy SRC to DST with O_DIRECT through a P2P memory buffer, and verify",
        description="Read SRC (a file or block device) with O_DIRECT into P2P memory mapped "
        "from --via's p2pmem/allocate, write it to DST with O_DIRECT, then read DST back "
        "through host memory and compare every byte with SRC. The kernel's verdict for the "
        "devices involved is predicted before any I/O. DST safety: a new file is created; an "
        "existing non-empty file, or a block device holding a file system or partition table, "
        "is only overwritten with --force (never truncated); a mounted or otherwise busy "
        "block device is never written.",
    )
    p.add_argument("src", metavar="SRC", help="file or block device to read")
    p.add_argument("dst", metavar="DST", help="file or block device to write")
    add_transfer_args(p, via_required=False)
    p.add_argument("--host-memory", action="store_true",
                   help="use an ordinary host buffer instead of P2P memory (comparison)")
    p.add_argument("--verify", dest="verify", action="store_true", default=True,
                   help="verify DST against SRC byte for byte (default)")
    p.add_argument("--no-verify", dest="verify", action="store_false",
                   help="skip verification (the result is then reported as unverified)")
    p.add_argument("--force", action="store_true",
                   help="overwrite an existing non-empty DST file in place, or a block device "
                   "with a file system/partition table (never a mounted one)")
    p.add_argument("--progress", action=argparse.BooleanOptionalAction, default=True,
                   help="progress bar on a terminal (default on)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    req = request_from_args(args, dst=args.dst)
    on_pred = None if args.json else print_predictions
    report: CopyReport = with_progress(
        "copy", bool(args.progress) and not args.json,
        lambda prog: run_copy(req, progress=prog, on_predictions=on_pred),
    )
    if args.json:
        emit_json({"schema": "p2pdma-copy/1", **report.to_json()})
    else:
        for line in format_report(report, args.src, args.dst):
            print(line)
    return 0 if (report.verify is None or report.ok) else 1
