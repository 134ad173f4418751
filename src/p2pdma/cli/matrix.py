"""``p2pdma matrix``: the kernel's verdict for every provider-capable device against
every client, like ``nvidia-smi topo -m``.

Rows are devices that could provide memory (a memory BAR or a p2pmem pool; ``*``
marks a published pool), columns are clients.  Default: endpoints only;
``--all``: every PCI function.
"""

from __future__ import annotations

import argparse
import io
from typing import Any

from p2pdma.cli.check import Context, prepare
from p2pdma.cli.common import (
    add_output_args,
    add_source_args,
    add_whatif_args,
    emit_json,
    style_for,
)
from p2pdma.kernel.matrix import MatrixResult, compute_matrix, is_endpoint, is_provider_capable
from p2pdma.kernel.types import MapType
from p2pdma.render.term import Style

SCHEMA = "p2pdma-matrix/1"
CODE = {MapType.BUS_ADDR: "B", MapType.THRU_HOST_BRIDGE: "H", MapType.NOT_SUPPORTED: "-",
        MapType.UNKNOWN: "?", MapType.NONE: "."}
COLOUR = {MapType.BUS_ADDR: "green", MapType.THRU_HOST_BRIDGE: "yellow",
          MapType.NOT_SUPPORTED: "red", MapType.UNKNOWN: "magenta", MapType.NONE: "dim"}
LEGEND = (
    ("B<n>", "BUS_ADDR: routed by a switch/bridge below the host bridge, distance n"),
    ("H<n>", "THRU_HOST_BRIDGE: allowed through the root complex (whitelist or CPU rule), "
             "distance n"),
    ("-", "NOT_SUPPORTED: the kernel refuses (pci_p2pdma_distance = -1)"),
    ("?", "unknown: depends on a fact that could not be read"),
    ("*", "row device has a published p2pmem pool (pci_p2pmem_find can pick it)"),
)


def register(sub: Any) -> None:
    p = sub.add_parser("matrix", help="P2P verdict for every device pair (like nvidia-smi "
                                      "topo -m)",
                       description="The kernel's map type and distance for every "
                                   "provider-capable device (rows) against every client "
                                   "(columns).")
    p.add_argument("--all", action="store_true",
                   help="include every PCI function (bridges, host bridge devices), not only "
                        "endpoints")
    add_source_args(p)
    add_whatif_args(p)
    add_output_args(p)
    p.set_defaults(func=run)


def build(ctx: Context, all_functions: bool) -> MatrixResult:
    funcs = ctx.fabric.functions
    clients = [f.bdf for f in funcs if all_functions or is_endpoint(f)]
    providers = [f.bdf for f in funcs
                 if all_functions or (is_endpoint(f) and is_provider_capable(f))]
    return compute_matrix(ctx.fabric, ctx.profile, providers, clients)


class _Cells(dict[tuple[MapType, int], str]):
    """Cell text per (map type, distance), made on first use (a 1M-cell matrix has
    only a handful of distinct cells)."""

    def __init__(self, st: Style, width: int) -> None:
        super().__init__()
        self.st, self.width = st, width

    def __missing__(self, key: tuple[MapType, int]) -> str:
        mt, d = key
        txt = CODE[mt] + (str(d) if mt.supported else "")
        cell = self.st(f"{txt:>{self.width}}", COLOUR[mt])
        self[key] = cell
        return cell


def render_text(ctx: Context, m: MatrixResult, st: Style) -> str:
    fab = ctx.fabric
    buf = io.StringIO()
    w = buf.write
    w(f"profile: {ctx.profile.name}  ({ctx.choice.reason})\n")
    for n in ctx.notes:
        w(f"what-if: {n}\n")
    ncols = len(m.clients)
    cw = max(4, len(str(ncols - 1)) + 1)
    labels = [str(b.short()) for b in m.providers]
    lw = max([len(x) for x in labels] + [8]) + 2
    w(" " * lw + "".join(f"{'c' + str(k):>{cw}}" for k in range(ncols)) + "\n")
    cells = _Cells(st, cw)
    get = cells.__getitem__
    for r, pb in enumerate(m.providers):
        f = fab.get(pb)
        star = "*" if f.p2pmem is not None and f.p2pmem.published else " "
        w(f"{labels[r] + star:<{lw}}")
        w("".join(map(get, zip(m.map_types[r], m.dists[r], strict=True))))
        w("\n")
    w("\nclients:\n")
    for k, b in enumerate(m.clients):
        f = fab.get(b)
        name = f.nvme.name if f.nvme else (f.driver or "")
        w(f"  c{k:<{cw}} {b}  {f.vendor_device}  {name}\n")
    w("\nlegend:\n")
    for code, text in LEGEND:
        w(f"  {code:<5} {text}\n")
    return buf.getvalue()


def to_json(ctx: Context, m: MatrixResult) -> dict[str, Any]:
    return {
        "schema": SCHEMA,
        "profile": ctx.profile_json(),
        "whatif": ctx.notes,
        "providers": [str(b) for b in m.providers],
        "clients": [str(b) for b in m.clients],
        "published": [str(b) for b in m.providers
                      if (p := ctx.fabric.get(b).p2pmem) is not None and p.published],
        "map_types": [[t.name for t in row] for row in m.map_types],
        "map_type_values": {t.name: ctx.profile.map_type_value(t) for t in MapType},
        "dists": [list(row) for row in m.dists],
        "legend": {c: t for c, t in LEGEND},
    }


def run(args: argparse.Namespace) -> int:
    ctx = prepare(args)
    m = build(ctx, bool(getattr(args, "all", False)))
    if getattr(args, "json", False):
        emit_json(to_json(ctx, m))
    else:
        print(render_text(ctx, m, style_for(args)), end="")
    return 0
