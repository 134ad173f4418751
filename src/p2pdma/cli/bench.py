"""``p2pdma bench --via BDF SRC [DST]``: P2P buffer vs host buffer, side by side."""

from __future__ import annotations

import argparse
import contextlib
import os
import stat
import tempfile
from typing import Any

from p2pdma.cli.common import emit_json
from p2pdma.cli.copy import add_transfer_args, print_predictions, request_from_args, with_progress
from p2pdma.errors import InputError
from p2pdma.host.runner import BenchReport, CopyReport, run_bench


def register(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "bench",
        help="compare a verified O_DIRECT copy through P2P memory and through host memory",
        description="Run the same transfer twice, once through --via's P2P memory and once "
        "through an ordinary host buffer, verify both, and print throughput (MB/s) and "
        "per-chunk latency (p50/p99) side by side. Without DST a temporary file is created "
        "beside SRC (on SRC's file system) and removed afterwards.",
    )
    p.add_argument("src", metavar="SRC", help="file or block device to read")
    p.add_argument("dst", metavar="DST", nargs="?",
                   help="file or block device to write (default: a temporary file beside SRC)")
    add_transfer_args(p, via_required=True)
    p.add_argument("--force", action="store_true",
                   help="overwrite an existing non-empty DST in place (see `copy --help`)")
    p.add_argument("--progress", action=argparse.BooleanOptionalAction, default=True,
                   help="progress bar on a terminal (default on)")
    p.set_defaults(func=run)


def _row(name: str, r: CopyReport) -> str:
    t = r.transfer
    p50, p99 = t.percentile_us(50) or 0.0, t.percentile_us(99) or 0.0
    ok = "yes" if r.ok else "NO"
    return f"{name:<18} {t.mb_per_s:>10.1f} {p50:>10.0f} {p99:>10.0f} {t.chunks_done:>8} {ok:>9}"


def format_bench(b: BenchReport) -> list[str]:
    head = (f"{'buffer':<18} {'MB/s':>10} {'p50 us':>10} {'p99 us':>10} {'chunks':>8} "
            f"{'verified':>9}")
    lines = [head, _row(f"p2p {b.p2p.provider}", b.p2p), _row("host", b.host)]
    ratio = b.to_json()["p2p_over_host"]
    if ratio is not None:
        lines.append(f"p2p/host throughput ratio: {ratio}")
    plan = b.p2p.plan
    lines.append(f"({plan.nchunks} chunks of {plan.chunk} B, {plan.threads} thread(s); CPU "
                 "copies are not involved on either path)")
    return lines


def run(args: argparse.Namespace) -> int:
    temp: str | None = None
    dst = args.dst
    if dst is None:
        try:
            st = os.stat(args.src)
        except OSError as err:
            raise InputError(f"cannot stat SRC: {err.strerror}", where=args.src) from None
        if not stat.S_ISREG(st.st_mode):
            raise InputError(
                "SRC is not a regular file, so there is no file system to put a temporary "
                "DST on",
                where=args.src,
                hint="give DST explicitly (a scratch file or an unused block device)",
            )
        fd, temp = tempfile.mkstemp(prefix=".p2pdma-bench-",
                                    dir=os.path.dirname(os.path.abspath(args.src)))
        os.close(fd)
        dst = temp
    try:
        req = request_from_args(args, dst=dst)
        req.force = req.force or temp is not None  # our own temporary file
        on_pred = None if args.json else print_predictions
        report: BenchReport = with_progress(
            "bench", bool(args.progress) and not args.json,
            lambda prog: run_bench(req, progress=prog, on_predictions=on_pred),
        )
    finally:
        if temp is not None:
            with contextlib.suppress(OSError):
                os.unlink(temp)
    if args.json:
        emit_json({"schema": "p2pdma-bench/1", **report.to_json()})
    else:
        for line in format_bench(report):
            print(line)
    return 0 if report.p2p.ok and report.host.ok else 1
