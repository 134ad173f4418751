"""``p2pdma report``: the main job — this machine's fabric and every P2P verdict.

Without an explicit source it reads the live machine; where the machine has no
P2P provider (no p2pmem pool, no NVMe CMB) — or no PCI at all — it shows a
bundled sample instead and says so plainly, rather than an empty answer.
"""

from __future__ import annotations

import argparse
from typing import Any

from p2pdma.cli.check import Context, prepare
from p2pdma.cli.common import (
    add_output_args,
    add_source_args,
    add_whatif_args,
    emit_json,
    load_fabric,
    root_path,
    style_for,
)
from p2pdma.cli.matrix import build as build_matrix
from p2pdma.cli.matrix import render_text as matrix_text
from p2pdma.cli.matrix import to_json as matrix_json
from p2pdma.cli.topo import build_tree, topo_json
from p2pdma.errors import InputError
from p2pdma.fabric.model import Fabric, PciFunction
from p2pdma.kernel.engine import calc_map_type_and_dist
from p2pdma.kernel.explain import explain
from p2pdma.kernel.matrix import is_endpoint
from p2pdma.render import human_bytes, table, tree
from p2pdma.sources.pciids import load_pci_ids

SCHEMA = "p2pdma-report/1"
FALLBACK_SAMPLE = "xeon-2s"


def register(sub: Any) -> None:
    p = sub.add_parser("report", help="the fabric and every P2P verdict (the main job)",
                       description="Show the fabric, its P2P providers and the kernel's verdict "
                                   "for every pair. Reads this machine unless a source is "
                                   "given; with no P2P provider here, shows a bundled sample "
                                   "and says so.")
    add_source_args(p)
    add_whatif_args(p)
    add_output_args(p)
    p.set_defaults(func=run)


def offers_p2p_memory(f: PciFunction) -> bool:
    """A p2pmem pool, or an NVMe CMB (registered or not: worth showing either way)."""
    return f.p2pmem is not None or (f.nvme is not None and f.nvme.cmb is not None)


def providers_of(fabric: Fabric) -> list[str]:
    return [str(f.bdf) for f in fabric.functions if offers_p2p_memory(f)]


def _explicit_source(args: argparse.Namespace) -> bool:
    return any(getattr(args, k, None) for k in ("fabric", "snapshot", "sample", "root"))


def choose_source(args: argparse.Namespace) -> str | None:
    """Returns why the live machine was replaced by a sample, or None to keep it."""
    if _explicit_source(args):
        return None
    try:
        live = load_fabric(args)
    except InputError as e:
        return f"this machine's PCI fabric cannot be read ({e.what})"
    if not providers_of(live):
        return (f"this machine ({len(live.functions)} PCI functions, kernel "
                f"{live.host.kernel_release or '?'}) has no P2P provider: no p2pmem pool and "
                "no NVMe CMB")
    return None


def run(args: argparse.Namespace) -> int:
    fallback = choose_source(args)
    if fallback:
        args.sample = FALLBACK_SAMPLE
    ctx = prepare(args)
    m = build_matrix(ctx, False)
    ids = load_pci_ids(str(root_path(args)))
    if getattr(args, "json", False):
        emit_json({
            "schema": SCHEMA,
            "fallback": None if not fallback else {"reason": fallback,
                                                   "sample": FALLBACK_SAMPLE},
            "notes": ctx.notes,
            "topo": topo_json(ctx.fabric, ids),
            "matrix": matrix_json(ctx, m),
        })
        return 0
    st = style_for(args)
    out: list[str] = []
    if fallback:
        out.append(st.yellow(f"note: {fallback}."))
        out.append(st.yellow(f"      Showing the bundled sample '{FALLBACK_SAMPLE}' instead "
                             "(other samples: `p2pdma samples`; a machine elsewhere: "
                             "`p2pdma gather` there, then --snapshot)."))
        out.append("")
    h = ctx.fabric.host
    out.append(f"{st.bold('fabric')}  {ctx.fabric.origin}   {st.bold('kernel')}  "
               f"{h.kernel_release or '?'}   {st.bold('cpu')}  {h.cpu_vendor or '?'}"
               f"{f' family {h.cpu_family:#x}' if h.cpu_family is not None else ''}   "
               f"{st.bold('iommu')}  {h.iommu.value if h.iommu else '?'}")
    out.extend(f"what-if: {n}" for n in ctx.notes)
    out += ["", st.bold("── topology"), tree(build_tree(ctx.fabric, ids, st)), ""]
    out += [st.bold("── P2P providers"), _providers_table(ctx), ""]
    out += [st.bold("── verdicts"), matrix_text(ctx, m, st).rstrip(), ""]
    story = _example_story(ctx)
    if story:
        out += [st.bold("── why, for one pair") + st.dim("  (p2pdma explain PROVIDER CLIENT)"),
                story, ""]
    print("\n".join(out))
    return 0


def _providers_table(ctx: Context) -> str:
    rows = []
    for f in ctx.fabric.functions:
        if not offers_p2p_memory(f):
            continue
        cmb = f.nvme.cmb if f.nvme else None
        if f.p2pmem is not None:
            state = (f"pool {human_bytes(f.p2pmem.size)}, {human_bytes(f.p2pmem.available)} free, "
                     + ("published" if f.p2pmem.published else "NOT published"))
        else:
            state = "CMB present but not registered (see `p2pdma explain`)"
        what = f"CMB {human_bytes(cmb.size)} in BAR{cmb.bar}" if cmb else "BAR memory"
        rows.append((f.bdf.short(), f.nvme.name if f.nvme else (f.driver or ""), what, state))
    if not rows:
        return "  none: no device here offers P2P memory (no p2pmem pool, no NVMe CMB)"
    return table(["device", "name", "memory", "state"], rows)


def _example_story(ctx: Context) -> str | None:
    """Explain the pair a user most likely cares about: the first published provider
    against the farthest other endpoint it can (or cannot) reach."""
    fab = ctx.fabric
    prov = next((f.bdf for f in fab.functions if f.p2pmem is not None and f.p2pmem.published),
                None)
    if prov is None:
        return None
    others = [f.bdf for f in fab.functions if f.bdf != prov and f.driver and is_endpoint(f)]
    if not others:
        return None
    results = [calc_map_type_and_dist(fab, ctx.profile, prov, c, verbose=True) for c in others]
    pick = max(results, key=lambda r: (r.map_type.name != "BUS_ADDR", r.dist))
    ex = explain(fab, ctx.profile, pick)
    lines = [f"{pick.provider} -> {pick.client}: {pick.map_type.name}, distance {pick.dist}"]
    lines += [f"  {h.bdf}  {h.role}; {h.acs}" for h in ex.hops]
    lines += [f"  {s}" for s in ex.story]
    lines += [f"  fix [{f.kind}] {f.text}" for f in ex.fixes]
    return "\n".join(lines)
