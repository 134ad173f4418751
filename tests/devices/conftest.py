"""Fixtures for the device, engine and orchestrator tests."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from devrig import Rig, build_rig

from p2pdma.emu.machine import Machine


@pytest.fixture
def rig() -> Rig:
    return build_rig()


@pytest.fixture
def machine(rig: Rig) -> Iterator[Machine]:
    m = Machine(rig.fabric, ram_size=64 << 20)
    yield m
    m.close()
