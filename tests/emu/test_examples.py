"""Every runnable example in examples/ runs to completion and shows what it promises."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"

EXPECT = {
    "p2pmem_userspace.py": ["added peer-to-peer DMA memory", "removal blocked",
                            "GUP pin by O_DIRECT send", "SIGBUS"],
    "vma_importer.py": ["invalidated 0x0-0x1000", "no longer valid",
                        "invalidations seen by the importer: 2"],
    "vfio_dmabuf.py": ["-EINVAL", "-EOPNOTSUPP", "buffer revoked", "buffer restored",
                       "mapped again", "-ENODEV"],
}


def test_every_example_is_covered() -> None:
    assert sorted(p.name for p in EXAMPLES.glob("*.py")) == sorted(EXPECT)


@pytest.mark.parametrize("name", sorted(EXPECT))
def test_example_runs(name: str) -> None:
    r = subprocess.run([sys.executable, str(EXAMPLES / name)], capture_output=True, text=True,
                       timeout=120, check=False)
    assert r.returncode == 0, r.stderr
    for needle in EXPECT[name]:
        assert needle in r.stdout, (needle, r.stdout)
