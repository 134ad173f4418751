"""``p2pdma find CLIENT [CLIENT...]``: which p2pmem provider ``pci_p2pmem_find_many``
would pick for these clients, the tie set, and why every other device lost.

The kernel picks among equally close providers at random; we use a seeded
``random.Random`` (``--seed``, default 0) so the answer is reproducible.  Any
member of the tie set is a possible kernel pick.
"""

from __future__ import annotations

import argparse
import random
from typing import Any

from p2pdma.cli.check import device_label, prepare, resolve_devices
from p2pdma.cli.common import (
    add_output_args,
    add_source_args,
    add_whatif_args,
    emit_json,
    style_for,
)
from p2pdma.kernel.engine import FIND_MANY_MAX_DEVS, FindResult, find_many

SCHEMA = "p2pdma-find/1"


def register(sub: Any) -> None:
    p = sub.add_parser("find", help="which p2pmem provider would the kernel pick for clients?",
                       description="Evaluate pci_p2pmem_find_many(CLIENTS): the closest "
                                   "published providers (ties), the seeded pick, and why each "
                                   "other device lost. Exit 0 when a provider is found, 1 "
                                   "when none, 3 when the pick depends on a fact that could "
                                   "not be read (e.g. ACS without root).")
    p.add_argument("clients", nargs="+", metavar="CLIENT", help="BDF or NVMe name")
    p.add_argument("--seed", type=int, default=0,
                   help="seed for the tie-break (the kernel's choice is random; default 0)")
    add_source_args(p)
    add_whatif_args(p)
    add_output_args(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    ctx = prepare(args)
    clients = resolve_devices(ctx.fabric, list(args.clients))
    seed = int(getattr(args, "seed", 0) or 0)
    r = find_many(ctx.fabric, ctx.profile, clients, rng=random.Random(seed))
    if getattr(args, "json", False):
        emit_json({
            "schema": SCHEMA,
            "profile": ctx.profile_json(),
            "whatif": ctx.notes,
            "clients": [str(c) for c in clients],
            "seed": seed,
            "choice": str(r.choice) if r.choice else None,
            "best": r.best,
            "ties": [str(b) for b in r.ties],
            "cap": FIND_MANY_MAX_DEVS,
            "distances": {str(k): v for k, v in r.distances.items()},
            "losers": {str(k): v for k, v in r.losers.items()},
            "messages": [str(m) for m in r.messages],
            "unknown": r.unknown,
            "outcome": "unknown" if r.unknown else ("found" if r.choice else "none"),
        })
        return _exit(r)
    st = style_for(args)
    out = [f"profile: {ctx.profile.name}  ({ctx.choice.reason})"]
    out += [f"what-if: {n}" for n in ctx.notes]
    out.append("clients: " + ", ".join(device_label(ctx.fabric, c) for c in clients))
    if r.unknown:
        out.append(st("unknown: ", "magenta", "bold")
                   + "the kernel's pick depends on a fact that could not be read")
        if r.choice is not None:
            out.append(f"best certain candidate: {device_label(ctx.fabric, r.choice)} "
                       f"(distance {r.best}); a provider listed as unknown below could tie "
                       "or beat it")
        else:
            out.append("no provider is certainly supported; one listed as unknown below "
                       "may be (pci_p2pmem_find_many may or may not return NULL)")
    elif r.choice is None:
        out.append(st.bold("no provider: pci_p2pmem_find_many returns NULL"))
    else:
        out.append(st("pick: ", "bold") + st(device_label(ctx.fabric, r.choice), "green", "bold")
                   + f" (distance {r.best}, seed {seed})")
        out.append(f"ties at distance {r.best} ({len(r.ties)}; the kernel picks one uniformly "
                   "at random):")
        out += [f"  {device_label(ctx.fabric, b)}" for b in r.ties]
    if r.losers:
        out.append("not picked:")
        for b, why in r.losers.items():
            if b not in r.ties:
                out.append(f"  {device_label(ctx.fabric, b)}: {why}")
    if r.unknown:
        out.append(st("unknown: ", "magenta") + r.unknown)
    if r.messages:
        out.append("kernel log (W4 is printed even by this non-verbose search):")
        out += [f"  {m}" for m in r.messages]
    print("\n".join(out))
    return _exit(r)


def _exit(r: FindResult) -> int:
    """0: a provider is found; 1: NULL; 3: unknown (like ``check``)."""
    if r.unknown:
        return 3
    return 0 if r.choice else 1
