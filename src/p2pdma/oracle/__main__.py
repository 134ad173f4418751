"""``python -m p2pdma.oracle``: the differential harness as a plain runner."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from p2pdma.errors import P2PDMAError
from p2pdma.oracle import compare, harness
from p2pdma.oracle.kbuild import KERNELS, ensure_kernel, ensure_module
from p2pdma.oracle.topology import generate_variants


def _print(msg: str) -> None:
    print(msg, flush=True)


DESCRIPTION = ("Differential tests of p2pdma's kernel rules against a real Linux kernel "
               "booted under QEMU (pinned Debian kernel sources, built and cached).")


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="python -m p2pdma.oracle", description=DESCRIPTION)
    configure(ap)
    return ap


def configure(ap: argparse.ArgumentParser) -> None:
    """Add the oracle's subcommands to ``ap`` (also used by ``p2pdma oracle``)."""
    sub = ap.add_subparsers(dest="oracle_cmd", required=True, metavar="ACTION")
    r = sub.add_parser("run", help="build (cached), boot every variant, compare")
    r.add_argument("--kernel", default="6.12", choices=sorted(KERNELS))
    r.add_argument("--variant", action="append", default=[],
                   help="only this variant (repeatable); see 'list'")
    r.add_argument("--workdir", type=Path, help="where captures go (default: in the cache)")
    r.add_argument("--save-fixtures", type=Path, metavar="DIR",
                   help="copy every capture to DIR/<variant>/")
    r.add_argument("--no-compare", action="store_true", help="capture only")
    r.add_argument("--timeout", type=float, default=300.0, help="per-guest timeout (s)")
    b = sub.add_parser("build", help="build (or find cached) kernel and oracle module")
    b.add_argument("--kernel", default="6.12", choices=sorted(KERNELS))
    g = sub.add_parser("guest", help="boot one variant and run a command in it (chrooted "
                       "into this host's / shared read-only); prints its output")
    g.add_argument("--kernel", default="6.12", choices=sorted(KERNELS))
    g.add_argument("--variant", required=True)
    g.add_argument("--workdir", type=Path, default=Path("/tmp/p2pdma-oracle-guest"))
    g.add_argument("--timeout", type=float, default=600.0)
    g.add_argument("command", nargs=argparse.REMAINDER,
                   help="shell command line (after --), run with the guest's cwd /")
    sub.add_parser("list", help="list the generated variants")
    c = sub.add_parser("compare", help="compare saved captures (fixtures) with the rule engine")
    c.add_argument("captures", nargs="+", type=Path)
    c.add_argument("--profile", help="profile override")


def _guest(args: argparse.Namespace) -> int:
    from p2pdma.oracle.topology import variant_by_name

    cmd = [c for c in args.command if c != "--"] if args.command else []
    if not cmd:
        _print("give the command after --")
        return 2
    try:
        topo = variant_by_name(args.variant)
    except KeyError:
        _print(f"unknown variant {args.variant}; see 'list'")
        return 2
    res = harness.run_in_guest(topo, cmd, series=args.kernel, workdir=args.workdir,
                               timeout=args.timeout, log=_print)
    print(res.output, end="" if res.output.endswith("\n") else "\n")
    _print(f"oracle: guest {topo.name} ran in {res.seconds:.1f} s, exit status "
           f"{res.returncode if res.returncode is not None else 'unknown'}")
    return 0 if res.returncode == 0 else 1


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return dispatch(args)
    except P2PDMAError as e:
        print(str(e), file=sys.stderr)
        return e.exit_code


def dispatch(args: argparse.Namespace) -> int:
    """Run the parsed oracle action; errors propagate as :class:`P2PDMAError`."""
    if args.oracle_cmd == "list":
        for t in generate_variants():
            _print(f"{t.name:28} {t.nvme_count():2} NVMe  {t.description}")
        return 0
    if args.oracle_cmd == "build":
        kb = ensure_kernel(args.kernel, log=_print)
        ko = ensure_module(kb, log=_print)
        _print(f"kernel {kb.release}: {kb.bzimage}\nmodule: {ko}")
        return 0
    if args.oracle_cmd == "compare":
        why = compare.engine_available()
        if why:
            _print(f"oracle: rule engine unavailable: {why}")
            return 1
        results = []
        by_release: dict[str, list[compare.Comparison]] = {}
        errors = 0
        captures = compare.expand_captures(args.captures)
        if not captures:
            _print("oracle: no captures (directories with kernel.json) given")
            return 2
        for p in captures:
            try:
                cres = compare.compare_capture(p, profile_override=args.profile)
                results.append(cres)
                by_release.setdefault(str(compare.load_capture(p)["kernel_release"]),
                                      []).append(cres)
            except P2PDMAError as e:
                errors += 1
                _print(f"oracle: {p.name}: cannot compare: {e}")
        for cres in results:
            for m in cres.mismatches:
                _print(str(m))
        for rel, group in sorted(by_release.items()):
            _print(compare.summary_line(group, rel))
        if errors:
            _print(f"oracle: {errors} captures could not be compared")
        return 1 if errors or any(c.mismatches for c in results) else 0
    if args.oracle_cmd == "guest":
        return _guest(args)
    variants = generate_variants()
    if args.variant:
        known = {t.name: t for t in variants}
        bad = [v for v in args.variant if v not in known]
        if bad:
            _print(f"unknown variant(s): {', '.join(bad)}; see 'list'")
            return 2
        variants = [known[v] for v in args.variant]
    res = harness.run(args.kernel, variants=variants, workdir=args.workdir, log=_print,
                      do_compare=not args.no_compare, timeout=args.timeout)
    if args.save_fixtures:
        for cap in res.captures:
            harness.save_fixture(cap, args.save_fixtures / cap.name)
        _print(f"oracle: {len(res.captures)} captures saved under {args.save_fixtures}")
    bad_cmp = any(c.mismatches for c in res.comparisons) or bool(res.compare_errors)
    return 1 if res.failures or bad_cmp else 0


if __name__ == "__main__":
    sys.exit(main())
