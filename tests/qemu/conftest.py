"""QEMU oracle tests: opt-in, because each run boots dozens of guests.

They run with the rest of the suite (``./run-tests`` installs what they need as
root); deselect them with ``pytest -m "not qemu"`` for a quick run.  They need
``qemu-system-x86_64``, ``busybox`` and the kernel build tools; a missing tool is a
skip that names it.
"""

from __future__ import annotations

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
    missing = [f"{t} ({hint})" for t, hint in TOOLS.items() if shutil.which(t) is None]
    if not missing:
        return
    for item in items:
        if item.get_closest_marker("qemu") is not None:
            item.add_marker(pytest.mark.skip(reason="missing tools: " + "; ".join(missing)))
