"""``p2pdma synth``: write a fabric (file or sample) as a synthetic sysfs tree."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from p2pdma.cli.common import emit_json


def register(sub: Any) -> None:
    p = sub.add_parser(
        "synth", help="write a fabric file or sample as a synthetic sysfs/procfs tree",
        description="Materialise a fabric as DIR/sys and DIR/proc, so that p2pdma (--root DIR) "
                    "and other tools (lspci -A linux-sysfs, ...) can read a machine you do not "
                    "have.")
    p.add_argument("fabric", metavar="FABRIC_OR_SAMPLE",
                   help="a fabric file (TOML) or the name of a bundled sample")
    p.add_argument("-o", "--output", required=True, metavar="DIR",
                   help="directory to create the tree in (must not hold sys/ or proc/ yet)")
    p.add_argument("--unprivileged", action="store_true",
                   help="cut every config file to 64 bytes, as a non-root reader sees it")
    p.add_argument("--json", action="store_true", help="print a JSON summary")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from p2pdma.errors import InputError
    from p2pdma.samples import SAMPLES, load_sample
    from p2pdma.sources.fabricfile import load_fabric_file
    from p2pdma.sources.synthetic import sysfs_losses, write_sysfs

    src = args.fabric
    if Path(src).exists():
        fabric = load_fabric_file(src)
    elif src in SAMPLES:
        fabric = load_sample(src)
    else:
        raise InputError(f"{src!r} is neither a fabric file nor a sample name",
                         hint=f"samples: {', '.join(SAMPLES)}")
    losses = sysfs_losses(fabric)
    root = write_sysfs(fabric, args.output, unprivileged=args.unprivileged)
    if args.json:
        emit_json({"root": str(root), "functions": len(fabric.functions),
                   "unprivileged": bool(args.unprivileged), "not_carried": losses})
        return 0
    print(f"wrote {root}/sys and {root}/proc: {len(fabric.functions)} PCI functions, "
          f"{len(fabric.host_bridges)} host bridges"
          + (" (config cut to 64 bytes)" if args.unprivileged else ""))
    for loss in losses:
        print(f"warning: sysfs cannot carry {loss}", file=sys.stderr)
    print(f"read it with: p2pdma topo --root {root}    or: lspci -A linux-sysfs "
          f"-O sysfs.path={root}/sys/bus/pci -tv")
    return 0
