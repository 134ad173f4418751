"""``p2pdma oracle``: differential tests against a real Linux kernel under QEMU.

A thin front for :mod:`p2pdma.oracle` (same actions as ``python -m p2pdma.oracle``):
``run`` builds the pinned kernel (cached), boots every generated topology and
compares the kernel's verdicts with p2pdma's; ``build``, ``list``, ``compare``
(saved captures) and ``guest`` (run a command inside one booted topology).
"""

from __future__ import annotations

import argparse
from typing import Any


def register(sub: Any) -> None:
    from p2pdma.oracle.__main__ import DESCRIPTION, configure

    p = sub.add_parser("oracle", help="compare p2pdma's verdicts with a real kernel under QEMU",
                       description=DESCRIPTION)
    configure(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from p2pdma.oracle.__main__ import dispatch

    return dispatch(args)
