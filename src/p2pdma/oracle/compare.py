"""Compare the project's rule engine with a real kernel's verdicts.

Input is a *capture*: a directory with ``root/`` (the guest's sysfs and proc files,
readable by ``p2pdma.sources.read_sysfs``) and ``kernel.json`` (what the kernel
itself computed; written by :mod:`p2pdma.oracle.harness`).  The same function runs
on fresh captures in the QEMU tests and on the saved fixtures in the fast tests.

The rule engine and the sysfs reader are imported lazily: when either is missing
:func:`engine_available` says why, and callers skip (fast tests) or only save the
captures for later (the QEMU harness).
"""

from __future__ import annotations

import importlib
import json
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from p2pdma.fabric import Bdf
from p2pdma.oracle.kbuild import OracleError


@dataclass
class Mismatch:
    variant: str
    what: str  # "pair", "distance_many", "find_many"
    query: str
    field: str
    kernel: Any
    ours: Any

    def __str__(self) -> str:
        return (f"{self.variant}: {self.what} {self.query}: {self.field} differs\n"
                f"    kernel: {self.kernel!r}\n    ours:   {self.ours!r}")


@dataclass
class Comparison:
    variant: str
    pairs: int = 0
    many: int = 0
    finds: int = 0
    mismatches: list[Mismatch] = field(default_factory=list)


def engine_available() -> str | None:
    """None when the rule engine and the sysfs reader can be imported, else why not."""
    try:
        kernel = importlib.import_module("p2pdma.kernel")
        sources = importlib.import_module("p2pdma.sources")
    except ImportError as e:  # pragma: no cover - depends on the checkout
        return f"cannot import: {e}"
    missing = [n for n in ("calc_map_type_and_dist", "distance_many", "find_many",
                           "resolve_profile") if not hasattr(kernel, n)]
    missing += [f"sources.{n}" for n in ("read_sysfs",) if not hasattr(sources, n)]
    if missing:
        return "not yet implemented: " + ", ".join(missing)
    return None


def load_capture(capture: Path) -> dict[str, Any]:
    path = capture / "kernel.json"
    if not path.is_file():
        raise OracleError("not an oracle capture (no kernel.json)", where=str(capture),
                          hint="give directories written by 'python -m p2pdma.oracle run'")
    data: dict[str, Any] = json.loads(path.read_text())
    return data


def expand_captures(paths: list[Path]) -> list[Path]:
    """Capture directories: each path itself, or the captures directly inside it."""
    out: list[Path] = []
    for p in paths:
        if (p / "kernel.json").is_file():
            out.append(p)
        elif p.is_dir():
            out.extend(sorted(c.parent for c in p.glob("*/kernel.json")))
    return out


def kernel_ties(candidates: dict[str, int]) -> list[str]:
    """The providers at the smallest non-negative distance (the kernel's random pool)."""
    ok = {b: d for b, d in candidates.items() if d >= 0}
    if not ok:
        return []
    best = min(ok.values())
    return sorted(b for b, d in ok.items() if d == best)


def _msgs(obj: Any) -> list[str]:
    return [str(m) for m in getattr(obj, "messages", ())]


def compare_capture(capture: Path, *, profile_override: str | None = None) -> Comparison:
    """Run the rule engine on the capture's sysfs and compare every recorded query."""
    kernel: Any = importlib.import_module("p2pdma.kernel")
    sources: Any = importlib.import_module("p2pdma.sources")
    data = load_capture(capture)
    variant = str(data["variant"])
    # The guest's own `p2pdma gather` snapshot when there is one (what the project
    # itself captures); otherwise the init script's copy of the sysfs files.
    snap = capture / "snapshot.zip"
    fabric = (sources.read_snapshot(snap) if snap.is_file()
              else sources.read_sysfs(capture / "root"))
    choice = kernel.resolve_profile(data["kernel_release"], profile_override)
    profile = choice.profile
    res = Comparison(variant)

    def check(what: str, query: str, name: str, k: Any, o: Any) -> None:
        if k != o:
            res.mismatches.append(Mismatch(variant, what, query, name, k, o))

    names = {int(k): v for k, v in data.get("map_types", {}).items()}

    def value(mt: Any) -> str:
        v = int(profile.map_type_value(mt))
        return f"{v} ({mt.name})"

    def kvalue(v: int) -> str:
        return f"{v} ({names.get(v, '?')})"

    for p in data["pairs"]:
        prov, cl = Bdf.parse(p["provider"]), Bdf.parse(p["clients"][0])
        q = f"{prov} -> {cl}"
        res.pairs += 1
        calc = p["calcs"][0] if p["calcs"] else None
        r = kernel.calc_map_type_and_dist(fabric, profile, prov, cl, verbose=True)
        if calc is None:
            check("pair", q, "kernel record", "calc probe hit", "none recorded")
            continue
        check("pair", q, "map_type", kvalue(calc["map_type"]), value(r.map_type))
        check("pair", q, "dist", calc["dist"], int(r.dist))
        check("pair", q, "messages", p["messages"], _msgs(r))
        d = kernel.distance_many(fabric, profile, prov, [cl], verbose=True)
        check("pair", q, "distance_many", p["distance"], int(d.distance))
    for m in data["distance_many"]:
        prov = Bdf.parse(m["provider"])
        clients = [Bdf.parse(c) for c in m["clients"]]
        q = f"{prov} -> [{', '.join(m['clients'])}]"
        res.many += 1
        d = kernel.distance_many(fabric, profile, prov, clients, verbose=True)
        check("distance_many", q, "distance", m["distance"], int(d.distance))
        check("distance_many", q, "messages", m["messages"], _msgs(d))
    for f in data["find_many"]:
        clients = [Bdf.parse(c) for c in f["clients"]]
        q = f"[{', '.join(f['clients'])}]"
        res.finds += 1
        r = kernel.find_many(fabric, profile, clients, rng=random.Random(0))
        ours_ties = sorted(str(b) for b in (getattr(r, "ties", None) or ()))
        check("find_many", q, "ties", kernel_ties(f["candidates"]), ours_ties)
        if "none" not in f["chosen"]:
            check("find_many", q, "choice within kernel choices",
                  True, str(r.choice) in f["chosen"])
        elif r.choice is not None:
            check("find_many", q, "choice", None, str(r.choice))
    return res


def summary_line(results: list[Comparison], release: str) -> str:
    """The CI log line; 'pairs' are (provider, client) decisions, the rest in brackets."""
    pairs = sum(c.pairs for c in results)
    many = sum(c.many for c in results)
    finds = sum(c.finds for c in results)
    mism = sum(len(c.mismatches) for c in results)
    return (f"oracle: {len(results)} topologies, {pairs} pairs compared "
            f"(+{many} distance_many, {finds} find_many), "
            f"{mism} mismatches (kernel {release})")
