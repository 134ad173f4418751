"""``p2pdma`` command line: parse, dispatch, and turn errors into clear messages."""

from __future__ import annotations

import argparse
import contextlib
import importlib
import importlib.util
import json
import os
import sys
import traceback
from collections.abc import Sequence

from p2pdma import __version__
from p2pdma.cli.common import add_root_arg
from p2pdma.errors import P2PDMAError

# Each module registers one subcommand; order is the order `--help` lists them.
COMMAND_MODULES: tuple[str, ...] = (
    "report", "topo", "check", "matrix", "find", "explain",      # inspect
    "alloc", "copy", "bench",                          # use (real kernel)
    "emulate",                                         # emulate
    "gather", "synth", "samples", "oracle",            # capture and tooling
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="p2pdma",
        description="Linux PCI peer-to-peer DMA, made visible, usable and testable.",
        epilog="Every command takes --help. Inspect commands read this machine by default; "
               "give --sample NAME, --fabric FILE or --snapshot FILE for another one.",
    )
    parser.add_argument("--version", action="version", version=f"p2pdma {__version__}")
    add_root_arg(parser, suppress=False)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMAND_MODULES:
        modname = f"p2pdma.cli.{name}"
        if importlib.util.find_spec(modname) is None:
            continue  # a command whose module is not part of this build
        importlib.import_module(modname).register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    want_json = bool(getattr(args, "json", False))
    try:
        rc = args.func(args)
        return int(rc or 0)
    except P2PDMAError as err:
        if want_json:
            json.dump(err.to_json(), sys.stdout, indent=2)
            sys.stdout.write("\n")
        print(f"p2pdma: error: {err}", file=sys.stderr)
        return err.exit_code
    except KeyboardInterrupt:
        print("p2pdma: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        # Output piped into `head` and closed: not an error worth a message.
        with contextlib.suppress(OSError):
            sys.stdout = open(os.devnull, "w")  # noqa: SIM115
        return 0
    except Exception as exc:  # a bug in p2pdma, not bad input
        if os.environ.get("P2PDMA_DEBUG"):
            traceback.print_exc()
        print(f"p2pdma: internal error: {type(exc).__name__}: {exc}\n"
              "This is a bug in p2pdma; rerun with P2PDMA_DEBUG=1 for details and report it.",
              file=sys.stderr)
        return 70


def entry() -> None:
    sys.exit(main())


if __name__ == "__main__":
    entry()
