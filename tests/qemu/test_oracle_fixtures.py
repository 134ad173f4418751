"""Fast differential tests: the rule engine against real-kernel verdicts saved as fixtures.

No QEMU here: each fixture under tests/fixtures/qemu/ is a guest's captured sysfs
plus what the 6.12 kernel itself computed (see the README there).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from oracle_known_gaps import KNOWN_GAPS

from p2pdma.fabric.bdf import Bdf
from p2pdma.oracle import compare
from p2pdma.sources.snapshot import read_snapshot

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures" / "qemu"
CAPTURES = sorted(p.parent for p in FIXTURES.glob("*/kernel.json"))



def _params() -> list[object]:
    return [
        pytest.param(c, id=c.name, marks=pytest.mark.xfail(reason=KNOWN_GAPS[c.name]))
        if c.name in KNOWN_GAPS else pytest.param(c, id=c.name)
        for c in CAPTURES
    ]


def test_fixtures_exist() -> None:
    assert len(CAPTURES) >= 10


@pytest.mark.parametrize("capture", CAPTURES, ids=[c.name for c in CAPTURES])
def test_fixture_is_complete(capture: Path) -> None:
    data = json.loads((capture / "kernel.json").read_text())
    n = len(data["nvme"])
    assert n >= 2
    assert len(data["pairs"]) == n * n
    assert all(len(p["calcs"]) == 1 for p in data["pairs"])
    # The guest's own `p2pdma gather` snapshot: read as root, of the same kernel,
    # holding every NVMe function the kernel was asked about.
    fabric = read_snapshot(capture / "snapshot.zip")
    assert fabric.host.privileged is True
    assert fabric.host.kernel_release == data["kernel_release"]
    for bdf in data["nvme"]:
        f = fabric.get(Bdf.parse(bdf))
        assert f.driver == "nvme" and f.nvme is not None


@pytest.mark.parametrize("capture", _params())
def test_rule_engine_matches_real_kernel(capture: Path) -> None:
    why = compare.engine_available()
    if why:
        pytest.skip(f"rule engine not in this checkout yet: {why}")
    result = compare.compare_capture(capture)
    for m in result.mismatches:
        print(m)
    assert result.pairs == len(json.loads((capture / "kernel.json").read_text())["pairs"])
    assert result.mismatches == []
