"""Fixtures for the host layer: fake sysfs trees and an O_DIRECT-capable directory."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from host_fakes import FakeTree, Machine


def _supports_odirect(d: Path) -> bool:
    probe = d / f".odirect-{uuid.uuid4().hex}"
    try:
        fd = os.open(probe, os.O_RDWR | os.O_CREAT | os.O_DIRECT, 0o600)
    except OSError:
        probe.unlink(missing_ok=True)
        return False
    os.close(fd)
    probe.unlink()
    return True


@pytest.fixture
def odirect_dir(tmp_path: Path) -> Iterator[Path]:
    """A directory on a file system that supports O_DIRECT (tmp_path, else under /work)."""
    if _supports_odirect(tmp_path):
        yield tmp_path
        return
    base = Path("/work/main/.pytest-host-odirect") / uuid.uuid4().hex
    base.mkdir(parents=True)
    if not _supports_odirect(base):
        pytest.skip("no file system here supports O_DIRECT (needed for real O_DIRECT I/O)")
    try:
        yield base
    finally:
        for p in sorted(base.rglob("*"), reverse=True):
            p.unlink() if p.is_file() else p.rmdir()
        base.rmdir()


@pytest.fixture
def tree(tmp_path: Path) -> FakeTree:
    root = tmp_path / "root"
    root.mkdir()
    return FakeTree(root)


@pytest.fixture
def machine(tmp_path: Path) -> Machine:
    root = tmp_path / "machine-root"
    root.mkdir()
    return Machine(root)
