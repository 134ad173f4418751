"""What every command shares: choosing the fabric source, what-if flags, output.

Source precedence: ``--fabric`` / ``--snapshot`` / ``--sample`` (mutually
exclusive) and otherwise the live sysfs under ``--root`` (or ``$P2PDMA_ROOT``,
default ``/``).  The library never reads ``/sys`` directly: everything goes
through a root path, so tests drive it with synthetic trees.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from p2pdma.errors import InputError
from p2pdma.fabric.bdf import Bdf
from p2pdma.fabric.model import Fabric
from p2pdma.render.term import Style

if TYPE_CHECKING:
    from p2pdma.kernel.whatif import WhatIf

ENV_ROOT = "P2PDMA_ROOT"


def root_path(args: argparse.Namespace) -> Path:
    root = getattr(args, "root", None) or os.environ.get(ENV_ROOT) or "/"
    return Path(root)


def add_root_arg(parser: argparse.ArgumentParser, *, suppress: bool = True) -> None:
    parser.add_argument(
        "--root", metavar="DIR", default=argparse.SUPPRESS if suppress else None,
        help=f"read the machine under DIR (DIR/sys, DIR/proc) instead of / "
             f"(also ${ENV_ROOT})")


def add_source_args(parser: argparse.ArgumentParser) -> None:
    g = parser.add_argument_group("fabric source (default: this machine's live sysfs)")
    add_root_arg(g)  # type: ignore[arg-type]
    mx = g.add_mutually_exclusive_group()
    mx.add_argument("--snapshot", metavar="FILE", help="read a snapshot made by `p2pdma gather`")
    mx.add_argument("--fabric", metavar="FILE",
                    help="read a fabric file (TOML, docs/fabric-file.md)")
    mx.add_argument("--sample", metavar="NAME",
                    help="use a bundled sample fabric (see `p2pdma samples`)")


def add_output_args(parser: argparse.ArgumentParser, *, json_help: str | None = None) -> None:
    parser.add_argument("--json", action="store_true",
                        help=json_help or "print stable JSON for scripts instead of text")
    parser.add_argument("--color", choices=("auto", "always", "never"), default="auto",
                        help="colour output (default: when stdout is a terminal)")


def add_whatif_args(parser: argparse.ArgumentParser) -> None:
    g = parser.add_argument_group("what-if (change a fact or the kernel, see the verdict change)")
    g.add_argument("--kernel", metavar="VERSION",
                   help="decide as this kernel version would (e.g. 6.12.117, 5.15, 7.2-rc3)")
    g.add_argument("--cpu", metavar="VENDOR[:FAMILY]",
                   help="pretend the CPU is e.g. amd:0x19, intel, hygon:0x18, arm64")
    g.add_argument("--iommu", choices=("on", "off"),
                   help="with an IOMMU Linux sets ACS SV|RR|CR|UF on every ACS-capable port")
    g.add_argument("--cmdline", metavar="'ARGS'",
                   help="apply kernel parameters such as pci=disable_acs_redir=... or "
                        "pci=config_acs=...")
    g.add_argument("--acs", metavar="BDF=VALUE", action="append", default=[],
                   help="set a function's ACS Control register (repeatable), e.g. "
                        "02:00.0=0x0000")


def parse_acs_overrides(items: list[str]) -> dict[Bdf, int]:
    out: dict[Bdf, int] = {}
    for item in items:
        bdf_s, sep, val = item.partition("=")
        if not sep:
            raise InputError(f"--acs {item!r}: expected BDF=VALUE", hint="e.g. --acs 02:00.0=0x0")
        bdf = Bdf.parse(bdf_s, where="--acs")
        try:
            v = int(val, 0)
        except ValueError:
            raise InputError(f"--acs {item!r}: {val!r} is not a number",
                             hint="write the register value, e.g. 0x001d") from None
        if not 0 <= v <= 0xFFFF:
            raise InputError(f"--acs {item!r}: ACS Control is a 16-bit register")
        out[bdf] = v
    return out


def whatif_from_args(args: argparse.Namespace) -> WhatIf:
    from p2pdma.kernel.whatif import WhatIf

    iommu = getattr(args, "iommu", None)
    return WhatIf(
        kernel=getattr(args, "kernel", None),
        cpu=getattr(args, "cpu", None),
        iommu=None if iommu is None else iommu == "on",
        cmdline=getattr(args, "cmdline", None),
        acs=parse_acs_overrides(getattr(args, "acs", []) or []),
    )


def load_fabric(args: argparse.Namespace) -> Fabric:
    """The fabric the user asked for (before what-if changes)."""
    fabric_file = getattr(args, "fabric", None)
    snapshot = getattr(args, "snapshot", None)
    sample = getattr(args, "sample", None)
    if fabric_file:
        from p2pdma.sources.fabricfile import load_fabric_file

        return load_fabric_file(fabric_file)
    if snapshot:
        from p2pdma.sources.snapshot import read_snapshot

        return read_snapshot(snapshot)
    if sample:
        from p2pdma.samples import load_sample

        return load_sample(sample)
    from p2pdma.sources.sysfs import read_sysfs

    root = root_path(args)
    if not (root / "sys" / "bus" / "pci" / "devices").is_dir():
        raise InputError(
            f"no PCI devices under {root / 'sys/bus/pci/devices'}",
            hint="on a machine without PCI use --sample NAME (see `p2pdma samples`), "
                 "--fabric FILE or --snapshot FILE",
        )
    return read_sysfs(root)


def style_for(args: argparse.Namespace) -> Style:
    return Style.for_stream(sys.stdout, getattr(args, "color", "auto"))


def emit_json(obj: Any) -> None:
    """Stable JSON on stdout: indent 2, keys in the order the schema documents."""
    json.dump(obj, sys.stdout, indent=2, default=_json_default)
    sys.stdout.write("\n")


def _json_default(o: object) -> Any:
    if isinstance(o, Bdf):
        return str(o)
    if isinstance(o, Path):
        return str(o)
    if isinstance(o, set | frozenset | tuple):
        return list(o)
    raise TypeError(f"cannot encode {type(o).__name__} as JSON")
