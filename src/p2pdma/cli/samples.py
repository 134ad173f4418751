"""``p2pdma samples``: list the bundled sample fabrics, or print one as a fabric file."""

from __future__ import annotations

import argparse
from typing import Any

from p2pdma.cli.common import emit_json, style_for
from p2pdma.render import table
from p2pdma.samples import SAMPLES, load_sample, sample_text


def register(sub: Any) -> None:
    p = sub.add_parser("samples", help="list bundled sample fabrics (use with --sample NAME)")
    p.add_argument("name", nargs="?", help="print this sample as a fabric file (TOML)")
    p.add_argument("--json", action="store_true", help="list as JSON")
    p.add_argument("--color", choices=("auto", "always", "never"), default="auto")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    if args.name:
        print(sample_text(args.name), end="")
        return 0
    rows = []
    for name, desc in SAMPLES.items():
        f = load_sample(name)
        rows.append((name, len(f.functions), f.host.kernel_release or "?", desc))
    if args.json:
        emit_json({"schema": "p2pdma-samples/1",
                   "samples": [{"name": n, "functions": c, "kernel": k, "description": d}
                               for n, c, k, d in rows]})
        return 0
    st = style_for(args)
    print(table(["sample", "functions", "kernel", "description"],
                [(st.bold(n), str(c), k, d) for n, c, k, d in rows], align="lrll"))
    print("\nuse: p2pdma topo --sample NAME   (or check/matrix/find/emulate --sample NAME)")
    return 0
