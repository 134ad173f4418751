"""``p2pdma alloc BDF SIZE``: map P2P memory from sysfs, test it, show where it came from."""

from __future__ import annotations

import argparse
import time
from typing import Any

from p2pdma.cli.common import add_output_args, add_root_arg, emit_json, root_path
from p2pdma.errors import InputError
from p2pdma.fabric.bdf import Bdf
from p2pdma.host.io import parse_size
from p2pdma.host.p2pmem import (
    CpuCheck,
    Origin,
    P2PBuffer,
    cpu_pattern_check,
    human,
    locate,
    map_p2pmem,
    read_cmb_findings,
)


def register(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "alloc",
        help="map P2P memory from a provider's p2pmem/allocate and test it",
        description="mmap SIZE bytes (rounded up to pages) of BDF's P2P memory through "
        "/sys/bus/pci/devices/BDF/p2pmem/allocate (Linux >= 6.2, root), write and read back a "
        "pattern at a few offsets (CPU access to BAR memory is uncached MMIO, so only a few "
        "bytes per page-stride are touched, in a child process so that a revoked mapping "
        "cannot crash p2pdma), show where the memory lives and how p2pmem/available changed, "
        "then munmap.",
    )
    p.add_argument("bdf", metavar="BDF", help="the provider, e.g. 0000:03:00.0")
    p.add_argument("size", metavar="SIZE", help="bytes to map, e.g. 2M, 64KiB")
    p.add_argument("--hold", metavar="SECONDS", type=float, default=0.0,
                   help="keep the mapping for this long before unmapping (watch "
                   "p2pmem/available from another shell)")
    p.add_argument("--no-touch", action="store_true",
                   help="do not access the memory with the CPU at all")
    add_root_arg(p)
    add_output_args(p)
    p.set_defaults(func=run)


def _result(buf: P2PBuffer, origin: Origin | None, check: CpuCheck | None,
            held: float) -> dict[str, object]:
    before = buf.before
    mapped = buf.after_map
    after = buf.after_unmap
    dropped = None if mapped is None else before.available - mapped.available
    returned = None if (after is None or mapped is None) else after.available - mapped.available
    cmbs = read_cmb_findings(buf.root, buf.bdf)
    return {
        "provider": str(buf.bdf),
        "requested": buf.requested,
        "mapped": buf.length,
        "pool": {
            "before": before.to_json(),
            "mapped": None if mapped is None else mapped.to_json(),
            "after": None if after is None else after.to_json(),
            "available_dropped_by": dropped,
            "available_returned": returned,
            "drop_as_expected": dropped == buf.length,
        },
        "origin": None if origin is None else origin.to_json(),
        "cmb": [f.to_json() for f in cmbs],
        "cpu_check": None if check is None else {
            "ok": check.ok, "bytes_touched": check.touched, "detail": check.detail,
        },
        "held_seconds": held,
        "notes": buf.notes,
    }


def run(args: argparse.Namespace) -> int:
    bdf = Bdf.parse(args.bdf, where="BDF")
    size = parse_size(args.size, what="SIZE")
    if args.hold < 0:
        raise InputError("--hold must not be negative")
    root = str(root_path(args))
    with map_p2pmem(root, bdf, size) as buf:
        origin = locate(buf)
        check = None if args.no_touch else cpu_pattern_check(buf.view)
        held = 0.0
        if args.hold:
            t0 = time.monotonic()
            time.sleep(args.hold)
            held = time.monotonic() - t0
    data = _result(buf, origin, check, held)
    if args.json:
        emit_json({"schema": "p2pdma-alloc/1", **data})
    else:
        for line in _format(buf, data, origin, check):
            print(line)
    return 0 if check is None or check.ok else 1


def _format(buf: P2PBuffer, data: dict[str, Any], origin: Origin | None,
            check: CpuCheck | None) -> list[str]:
    pool = data["pool"]
    lines = [f"mapped {human(buf.length)} of P2P memory from {buf.bdf}"
             + (f" (asked {buf.requested} B, rounded up to pages)"
                if buf.length != buf.requested else "")]
    b, m, a = buf.before, buf.after_map, buf.after_unmap
    lines.append(f"  pool       size {human(b.size)}, published {int(b.published)}")
    drop = pool["available_dropped_by"]
    verdict = "as expected" if pool["drop_as_expected"] else (
        f"expected {buf.length}: another user allocated or freed meanwhile")
    lines.append(
        f"  available  {b.available} before, {m.available if m else '?'} while mapped "
        f"(dropped {drop}, {verdict}), {a.available if a else '?'} after munmap"
    )
    for f in data["cmb"]:
        lines.append(f"  cmb        {f['controller']}: BAR{f['bar']} + {f['offset'] or 0:#x}, "
                     f"{human(f['size'] or 0)}; {f['reason']}")
    if origin is not None and origin.phys is not None:
        where = f"CPU physical {origin.phys:#x}"
        if origin.bar is not None:
            where += f" = BAR{origin.bar} + {origin.bar_offset:#x}"
        if origin.cmb_offset is not None:
            where += f" (CMB + {origin.cmb_offset:#x})"
        lines.append(f"  origin     {where}")
        if origin.bus is not None:
            lines.append(f"  bus addr   {origin.bus:#x}, {origin.bus_note}")
        elif origin.bus_note:
            lines.append(f"  bus addr   {origin.bus_note}")
    else:
        lines.append("  origin     physical address unknown (needs root to read "
                     "/proc/self/pagemap)")
    if check is not None:
        lines.append(f"  cpu check  {'ok' if check.ok else 'FAILED'}: {check.detail} "
                     "(uncached MMIO: touched sparingly)")
    lines.extend(f"  note: {n}" for n in buf.notes)
    return lines
