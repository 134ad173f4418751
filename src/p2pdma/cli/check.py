"""``p2pdma check PROVIDER CLIENT [CLIENT...]``: would Linux allow P2P DMA, and why.

Exit status: 0 when P2P is possible (``pci_p2pdma_distance_many`` >= 0), 1 when it
is not (-1), 3 when it depends on a fact that could not be read (e.g. ACS without
root); input errors exit 2.  The messages are the exact lines a verbose evaluation
of each pair prints: from v6.0 the first DMA mapping of the pair does that; before
v6.0 only an explicit verbose distance query (e.g. nvmet's p2pmem) prints them.

This module also holds the setup shared by the inspect commands (check, matrix,
find, explain): load the fabric, apply what-if changes, pick the profile.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from typing import Any

from p2pdma.cli.common import (
    add_output_args,
    add_source_args,
    add_whatif_args,
    emit_json,
    load_fabric,
    style_for,
    whatif_from_args,
)
from p2pdma.errors import InputError
from p2pdma.fabric.bdf import Bdf
from p2pdma.fabric.model import Fabric, PortType
from p2pdma.kernel.engine import DistanceResult, PairResult, distance_many
from p2pdma.kernel.explain import Explanation, Fix, explain
from p2pdma.kernel.hostbridge import representative, table_match
from p2pdma.kernel.profiles import KernelProfile, ProfileChoice, resolve_profile
from p2pdma.kernel.types import MapType
from p2pdma.kernel.whatif import apply_whatif

SCHEMA = "p2pdma-check/1"
EXIT_POSSIBLE, EXIT_NOT_POSSIBLE, EXIT_UNKNOWN = 0, 1, 3


@dataclass(frozen=True)
class Context:
    fabric: Fabric  # after what-if
    choice: ProfileChoice
    notes: list[str]

    @property
    def profile(self) -> KernelProfile:
        return self.choice.profile

    def profile_json(self) -> dict[str, Any]:
        return {**self.profile.to_json(), "reason": self.choice.reason}


def prepare(args: argparse.Namespace) -> Context:
    """Load the fabric, apply the what-if flags, choose the profile."""
    fabric = load_fabric(args)
    w = whatif_from_args(args)
    changed, notes = apply_whatif(fabric, w)
    choice = resolve_profile(fabric.host.kernel_release, w.kernel)
    return Context(changed, choice, notes)


def resolve_devices(fabric: Fabric, items: list[str]) -> list[Bdf]:
    return [fabric.resolve(t) for t in items]


def device_label(fabric: Fabric, b: Bdf) -> str:
    f = fabric.get(b)
    extra = f.nvme.name if f.nvme else (f.driver or f.vendor_device)
    return f"{b} ({extra})"


def overall_map_type(pairs: list[PairResult] | tuple[PairResult, ...]) -> MapType:
    kinds = {p.map_type for p in pairs}
    for t in (MapType.NOT_SUPPORTED, MapType.UNKNOWN, MapType.THRU_HOST_BRIDGE):
        if t in kinds:
            return t
    return MapType.BUS_ADDR if kinds else MapType.NOT_SUPPORTED


def host_bridges_json(ctx: Context, pairs: tuple[PairResult, ...]) -> list[dict[str, Any]]:
    fab, prof = ctx.fabric, ctx.profile
    seen: list[Any] = []
    for p in pairs:
        for b in (p.provider, p.client):
            hb = fab.host_bridge_of(b)
            if hb not in seen:
                seen.append(hb)
    out = []
    for hb in seen:
        rep = representative(fab, prof, hb)
        d = rep.device
        e = table_match(prof, d.vendor, d.device) if d else None
        out.append({"host_bridge": hb.name, "device": str(d.bdf) if d else None,
                    "id": d.vendor_device if d else None, "why": rep.reason,
                    "whitelisted": e is not None,
                    "entry": e.id_text if e else None,
                    "req_same_host_bridge": e.req_same_host_bridge if e else None})
    return out


def check_result(ctx: Context, provider: Bdf, clients: list[Bdf]
                 ) -> tuple[DistanceResult, list[Explanation]]:
    dr = distance_many(ctx.fabric, ctx.profile, provider, clients, verbose=True)
    exps = [explain(ctx.fabric, ctx.profile, p) for p in dr.pairs]
    return dr, exps


def exit_code(dr: DistanceResult) -> int:
    """0 possible, 1 not possible, 3 unknown.  A certain distance with an unknown map
    type (e.g. BUS_ADDR or THRU_HOST_BRIDGE depending on an unreadable ACS) is 3 too:
    P2P certainly works, but not *how* (JSON ``possible`` is then true)."""
    if dr.distance is None:
        return EXIT_UNKNOWN
    if dr.distance < 0:
        return EXIT_NOT_POSSIBLE
    if any(p.map_type is MapType.UNKNOWN for p in dr.pairs):
        return EXIT_UNKNOWN
    return EXIT_POSSIBLE


def log_label(profile: KernelProfile) -> str:
    """Who prints the W-lines: from v6.0 the first DMA mapping of a pair computes its
    map type verbosely; before, mapping only reads the cache (v5.5-5.19) or there are
    no map types at all (before v5.5), so only an explicit verbose distance query
    (nvmet's p2pmem, ...) prints them."""
    if profile.cache_mode == "compute-on-miss":
        return "kernel log on the first DMA mapping (verbose)"
    return ("kernel log of a verbose distance query such as nvmet's p2pmem (in "
            f"{profile.name} DMA mapping itself computes nothing and prints nothing)")


def unique_fixes(fabric: Fabric, provider: Bdf, pairs: tuple[PairResult, ...],
                 exps: list[Explanation]) -> list[Fix]:
    """The fixes of every client, each once; a topology move is not offered for a
    root-complex integrated endpoint (it cannot be moved below a switch)."""
    seen: set[tuple[str, str]] = set()
    out: list[Fix] = []
    fixed = [d for d in (provider, *[p.client for p in pairs])
             if fabric.get(d).port_type is PortType.RC_INTEGRATED_ENDPOINT]
    for e in exps:
        for f in e.fixes:
            if f.kind == "topology" and "below one PCIe switch" in f.text and fixed:
                names = ", ".join(str(b) for b in dict.fromkeys(fixed))
                f = Fix("topology", f"{names} is a root-complex integrated endpoint: it is "
                                    "part of the root complex and cannot be moved below a "
                                    "PCIe switch; only the host-bridge route (whitelist or "
                                    "CPU rule) can allow this pair")
            key = (f.kind, f.text)
            if key not in seen:
                seen.add(key)
                out.append(f)
    return out


def provider_pool_note(ctx: Context, provider: Bdf) -> str | None:
    f = ctx.fabric.get(provider)
    if f.p2pmem is not None:
        if not f.p2pmem.published:
            return (f"{provider} has a p2pmem pool but does not publish it: "
                    "pci_p2pmem_find_many() skips it; explicit users can still name it")
        return None
    api = ("only a pool-less provider API (v6.19+ dma-buf / VFIO export) could use it"
           if ctx.profile.per_bar_provider else
           f"{ctx.profile.name} has no pool-less provider API (dma-buf / VFIO export is v6.19+)")
    return (f"{provider} has no p2pmem pool (no driver registered its memory with "
            "pci_p2pdma_add_resource): in-kernel users such as nvmet or O_DIRECT to a "
            f"p2pmem buffer cannot use it as a provider; {api}")


def register(sub: Any) -> None:
    p = sub.add_parser(
        "check", help="would Linux allow P2P DMA between a provider and clients?",
        description="Evaluate pci_p2pdma_distance_many(PROVIDER, CLIENTS) as the chosen kernel "
                    "would: map type, distance, path, ACS, host-bridge whitelist, CPU rule, "
                    "the exact kernel messages and a fix. Exit 0: possible; 1: not possible; "
                    "3: unknown (a needed fact was unreadable; also when P2P is certainly "
                    "possible but its map type is not known); 2: input error.")
    p.add_argument("provider", help="the device whose memory is used (BDF or NVMe name)")
    p.add_argument("clients", nargs="+", metavar="CLIENT", help="devices that do the DMA")
    add_source_args(p)
    add_whatif_args(p)
    add_output_args(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    ctx = prepare(args)
    provider = ctx.fabric.resolve(args.provider)
    clients = resolve_devices(ctx.fabric, list(args.clients))
    if not clients:
        raise InputError("no client given", hint="p2pdma check PROVIDER CLIENT [CLIENT...]")
    dr, exps = check_result(ctx, provider, clients)
    prof = ctx.profile
    mt = overall_map_type(dr.pairs)
    all_fixes = unique_fixes(ctx.fabric, provider, dr.pairs, exps)
    pool_note = provider_pool_note(ctx, provider)
    notes = list(dr.notes) + ([pool_note] if pool_note else [])
    if getattr(args, "json", False):
        fixes = [f.to_json() for f in all_fixes]
        emit_json({
            "schema": SCHEMA,
            "profile": ctx.profile_json(),
            "whatif": ctx.notes,
            "provider": str(provider),
            "map_type": mt.name,
            "map_type_value": (None if mt is MapType.UNKNOWN
                               else prof.map_type_value(mt)),
            "distance": dr.distance,
            "possible": None if dr.distance is None else dr.distance >= 0,
            "unknown": dr.unknown,
            "clients": [{**p.to_json(prof), "explanation": e.to_json()}
                        for p, e in zip(dr.pairs, exps, strict=True)],
            "host_bridges": host_bridges_json(ctx, dr.pairs),
            "cpu_rule": dr.pairs[0].cpu.to_json() if dr.pairs else None,
            "messages": [str(m) for m in dr.messages],
            "danger": [p.danger for p in dr.pairs if p.danger],
            "fix": fixes,
            "notes": notes,
        })
        return exit_code(dr)
    st = style_for(args)
    out = [f"profile: {prof.name}  ({ctx.choice.reason})"]
    out += [f"what-if: {n}" for n in ctx.notes]
    for p, e in zip(dr.pairs, exps, strict=True):
        val = None if p.map_type is MapType.UNKNOWN else prof.map_type_value(p.map_type)
        colour = "green" if p.supported else ("magenta" if p.map_type is MapType.UNKNOWN
                                              else "red")
        out.append("")
        out.append(st.bold(f"{device_label(ctx.fabric, provider)} -> "
                           f"{device_label(ctx.fabric, p.client)}: ")
                   + st(p.map_type.name, colour, "bold")
                   + (f" (enum {val})" if val is not None else "") + f", dist {p.dist}")
        for h in e.hops:
            mark = st(" redirects", "yellow") if h.redirects else ""
            out.append(f"  {h.bdf}  {h.role}; ACS {h.acs}{mark}")
        for line in e.story:
            out.append(f"  {line}")
        for kind, text in e.risks:
            out.append("  " + st(f"{kind}: ", "red" if kind != "slow" else "yellow") + text)
    out.append("")
    if dr.distance is None:
        out.append(st("verdict: unknown", "magenta", "bold") + f" ({dr.unknown})")
    elif dr.distance >= 0 and mt is MapType.UNKNOWN:
        out.append(st("verdict: P2P possible, path unknown", "magenta", "bold")
                   + f" (pci_p2pdma_distance_many = {dr.distance} either way; whether the "
                   "switch routes the TLPs or they go through the host bridge depends on an "
                   "unreadable fact)")
    elif dr.distance >= 0:
        out.append(st("verdict: P2P possible", "green", "bold")
                   + f" (pci_p2pdma_distance_many = {dr.distance}, the sum over clients)")
    else:
        out.append(st("verdict: P2P not possible", "red", "bold")
                   + " (pci_p2pdma_distance_many = -1)")
    out += [f"note: {n}" for n in notes]
    if dr.messages:
        out.append(log_label(prof) + ":")
        out += [f"  {m}" for m in dr.messages]
    if all_fixes:
        out.append("fix:")
        for f in all_fixes:
            out.append(f"  [{f.kind}] {f.text}" + (f"\n      risk: {f.risk}" if f.risk else ""))
    print("\n".join(out))
    return exit_code(dr)
