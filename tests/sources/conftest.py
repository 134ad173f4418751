"""Synthetic trees are many small files: keep them in memory (/dev/shm) when possible,
so the suite stays fast on a loaded machine with a slow disk."""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from sources_strategies import FAST_TMP


@pytest.fixture
def tmp_path() -> Iterator[Path]:
    d = tempfile.mkdtemp(prefix="p2pdma-test-", dir=FAST_TMP)
    try:
        yield Path(d)
    finally:
        shutil.rmtree(d, ignore_errors=True)


@pytest.fixture(scope="module")
def tmp_path_factory_fast() -> Iterator[Path]:
    d = tempfile.mkdtemp(prefix="p2pdma-test-", dir=FAST_TMP)
    try:
        yield Path(d)
    finally:
        shutil.rmtree(d, ignore_errors=True)
