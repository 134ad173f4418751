"""Real-kernel captures (tests/fixtures/qemu/*/kernel.json + root/, written by the QEMU
oracle): our engine must decide every recorded query exactly as the kernel did.
Skipped while no capture is checked in."""

from __future__ import annotations

from pathlib import Path

import pytest

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures" / "qemu"
CAPTURES = sorted(p.parent for p in FIXTURES.glob("*/kernel.json")) if FIXTURES.is_dir() else []


@pytest.mark.skipif(not CAPTURES, reason="no real-kernel captures under tests/fixtures/qemu")
@pytest.mark.parametrize("capture", CAPTURES, ids=[p.name for p in CAPTURES])
def test_engine_matches_real_kernel(capture: Path) -> None:
    from p2pdma.oracle.compare import compare_capture

    res = compare_capture(capture)
    assert res.pairs + res.many + res.finds > 0
    assert res.mismatches == [], "\n".join(str(m) for m in res.mismatches[:20])
