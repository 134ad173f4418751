"""``p2pdma gather``: capture this machine (or a tree under --root) into one snapshot file."""

from __future__ import annotations

import argparse
from typing import Any

from p2pdma.cli.common import add_root_arg, emit_json, root_path


def register(sub: Any) -> None:
    p = sub.add_parser(
        "gather", help="capture what p2pdma reads from this machine into one snapshot file",
        description="Read sysfs/procfs under --root (default /) and write everything p2pdma "
                    "needs into one versioned file, for `--snapshot FILE` on any machine. "
                    "Run as root: without it config space stops at 64 bytes and ACS is unknown.")
    p.add_argument("-o", "--output", required=True, metavar="FILE", help="snapshot file to write")
    add_root_arg(p)
    p.add_argument("--json", action="store_true", help="print a JSON summary")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from p2pdma.sources.snapshot import gather

    root = root_path(args)
    fabric = gather(root, args.output)
    summary = {
        "snapshot": str(args.output),
        "root": str(root),
        "functions": len(fabric.functions),
        "host_bridges": len(fabric.host_bridges),
        "privileged": fabric.host.privileged,
        "unreadable": list(fabric.unreadable),
    }
    if getattr(args, "json", False):
        emit_json(summary)
        return 0
    print(f"wrote {args.output}: {len(fabric.functions)} PCI functions, "
          f"{len(fabric.host_bridges)} host bridges from {root}")
    if fabric.host.privileged is False:
        print("note: not run as root: config space was readable only to 64 bytes, so port "
              "types and ACS are recorded as unknown (rerun as root for a complete snapshot)")
    for u in fabric.unreadable:
        print(f"unreadable: {u}")
    return 0
