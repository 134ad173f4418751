"""QEMU oracle tests: opt-in, because each run boots dozens of guests.

Run them with ``pytest -m qemu tests/qemu`` (or set ``P2PDMA_QEMU=1``).  They need
``qemu-system-x86_64``, ``busybox`` and the kernel build tools; a missing tool is a
skip that names it.
"""

from __future__ import annotations

import os
import shutil

import pytest

TOOLS = {
    "qemu-system-x86_64": "apt-get install --no-install-recommends qemu-system-x86",
    "busybox": "apt-get install --no-install-recommends busybox-static",
    "make": "apt-get install make gcc flex bison bc libelf-dev libssl-dev xz-utils",
    "gcc": "apt-get install gcc",
    "flex": "apt-get install flex",
    "bison": "apt-get install bison",
    "bc": "apt-get install bc",
}


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    from oracle_report import LINES

    if LINES:
        terminalreporter.section("QEMU oracle: the rule engine against real kernels")
        for line in LINES:
            terminalreporter.write_line(line)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    opted_in = "qemu" in (config.getoption("-m") or "") or os.environ.get("P2PDMA_QEMU") == "1"
    missing = [f"{t} ({hint})" for t, hint in TOOLS.items() if shutil.which(t) is None]
    for item in items:
        if item.get_closest_marker("qemu") is None:
            continue
        if not opted_in:
            item.add_marker(pytest.mark.skip(
                reason="QEMU oracle tests are opt-in: run 'pytest -m qemu' or set P2PDMA_QEMU=1"))
        elif missing:
            item.add_marker(pytest.mark.skip(reason="missing tools: " + "; ".join(missing)))
