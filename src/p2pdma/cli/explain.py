"""``p2pdma explain PROVIDER CLIENT``: the story of one verdict, hop by hop, with the
host-bridge reasoning, the kernel lines, fixes and risks."""

from __future__ import annotations

import argparse
from typing import Any

from p2pdma.cli.check import device_label, exit_code, log_label, prepare
from p2pdma.cli.common import (
    add_output_args,
    add_source_args,
    add_whatif_args,
    emit_json,
    style_for,
)
from p2pdma.kernel.engine import distance_many
from p2pdma.kernel.explain import explain

SCHEMA = "p2pdma-explain/1"


def register(sub: Any) -> None:
    p = sub.add_parser("explain", help="explain one provider/client verdict step by step",
                       description="Walk the path between PROVIDER and CLIENT as the kernel "
                                   "does and tell why it decides what it decides, what would "
                                   "change it, and at what risk.")
    p.add_argument("provider")
    p.add_argument("client")
    add_source_args(p)
    add_whatif_args(p)
    add_output_args(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    ctx = prepare(args)
    provider = ctx.fabric.resolve(args.provider)
    client = ctx.fabric.resolve(args.client)
    dr = distance_many(ctx.fabric, ctx.profile, provider, [client], verbose=True)
    pair = dr.pairs[0]
    e = explain(ctx.fabric, ctx.profile, pair)
    if getattr(args, "json", False):
        emit_json({"schema": SCHEMA, "profile": ctx.profile_json(), "whatif": ctx.notes,
                   **pair.to_json(ctx.profile), "distance": dr.distance,
                   "explanation": e.to_json()})
        return exit_code(dr)
    st = style_for(args)
    out = [f"profile: {ctx.profile.name}  ({ctx.choice.reason})"]
    out += [f"what-if: {n}" for n in ctx.notes]
    out.append(st.bold(f"{device_label(ctx.fabric, provider)} -> "
                       f"{device_label(ctx.fabric, client)}"))
    out.append("")
    out.append("path (provider first; the kernel walks each device's upstream chain):")
    for n, h in enumerate(e.hops):
        mark = st("  <- redirects", "yellow") if h.redirects else ""
        out.append(f"  {n:>2}. {h.bdf}  {h.role}; ACS {h.acs}{mark}")
    out.append("")
    out += [f"  {s}" for s in e.story]
    if pair.messages:
        out.append("")
        out.append(log_label(ctx.profile).replace("kernel log", "the kernel prints", 1) + ":")
        out += [f"  {m}" for m in pair.messages]
    if e.fixes:
        out.append("")
        out.append("what would change it:")
        for f in e.fixes:
            out.append(f"  [{f.kind}] {f.text}")
            if f.risk:
                out.append(f"      risk: {f.risk}")
    if e.risks:
        out.append("")
        out.append("risks:")
        for kind, text in e.risks:
            out.append("  " + st(f"{kind}: ", "red" if kind != "slow" else "yellow") + text)
    print("\n".join(out))
    return exit_code(dr)
