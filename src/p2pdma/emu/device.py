"""The emulator's ``struct pci_dev``: a fabric function plus its live state."""

from __future__ import annotations

import enum
import threading
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from p2pdma.emu.memory import MemoryBacking
from p2pdma.fabric.bdf import Bdf
from p2pdma.fabric.model import PciFunction

if TYPE_CHECKING:
    from p2pdma.emu.core import P2PDmaState


class DeviceState(enum.Enum):
    PRESENT = "present"
    REMOVING = "removing"  # unbind started: refs killed, waiting for users to go
    REMOVED = "removed"


class Rcu:
    """Just enough RCU for ``pdev->p2pdma``: readers enter *before* loading the pointer;
    ``synchronize`` (after unpublishing it) waits until every reader that might still
    use the old state has left.  Read sections are short and never block.

    ``with dev.rcu:`` is the read section (a plain class, not a generator-based
    context manager: it sits on the alloc/free hot path)."""

    def __init__(self) -> None:
        self._readers = 0
        self._cond = threading.Condition(threading.Lock())  # leaf

    def __enter__(self) -> None:
        with self._cond:
            self._readers += 1

    def __exit__(self, *exc: object) -> None:
        with self._cond:
            self._readers -= 1
            if not self._readers:
                self._cond.notify_all()

    def synchronize(self) -> None:
        with self._cond:
            while self._readers:
                self._cond.wait()


@dataclass(eq=False)
class EmuPciDev:
    bdf: Bdf
    function: PciFunction
    backings: dict[int, MemoryBacking] = field(default_factory=dict)  # BAR index -> memory
    p2pdma: P2PDmaState | None = None  # the RCU pointer pdev->p2pdma
    state: DeviceState = DeviceState.PRESENT
    non_mappable_bars: bool = False
    memory_decoding: bool = True  # PCI_COMMAND_MEMORY
    # Serialises p2pdma state changes of this device (init, add_resource, publish,
    # release).  Lock order: Machine._lock -> EmuPciDev.lock -> mapping locks ->
    # page/pool/ref leaf locks.
    lock: threading.RLock = field(default_factory=threading.RLock)
    rcu: Rcu = field(default_factory=Rcu)
    # Serialises hot-unplug of this device (taken before Machine._lock; held while
    # teardown waits, which is fine: only removers take it, parents before children).
    removal_lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def name(self) -> str:
        return str(self.bdf)

    @property
    def prefix(self) -> str:
        """``dev_printk`` prefix: driver name (or bus name) and device name."""
        return f"{self.function.driver or 'pci'} {self.bdf}"

    def log_line(self, text: str) -> str:
        return f"{self.prefix}: {text}"
