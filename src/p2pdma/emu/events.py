"""Device add / remove / reset events and their listeners.

Listeners are called synchronously, outside every emulator lock, in
subscription order.  ``REMOVING`` fires before teardown starts (drivers
release their allocations and revoke dma-bufs, like their ``remove()``),
``REMOVED`` after the device is gone.  A listener's exception is recorded in
``Machine.listener_errors`` and does not stop the others.
"""

from __future__ import annotations

import enum
import threading
from collections.abc import Callable
from dataclasses import dataclass

from p2pdma.fabric.bdf import Bdf


class EventKind(enum.Enum):
    ADDED = "added"
    REMOVING = "removing"
    REMOVED = "removed"
    RESET_PREPARE = "reset-prepare"
    RESET_DONE = "reset-done"
    MEMORY_DECODING = "memory-decoding"  # PCI_COMMAND_MEMORY changed
    ACS_CHANGED = "acs-changed"


@dataclass(frozen=True)
class DeviceEvent:
    kind: EventKind
    bdf: Bdf
    detail: str = ""


Listener = Callable[[DeviceEvent], None]


class EventBus:
    def __init__(self) -> None:
        self._listeners: list[tuple[Listener, Bdf | None]] = []
        self._lock = threading.Lock()  # leaf; never held while calling listeners
        self.errors: list[tuple[DeviceEvent, BaseException]] = []

    def subscribe(self, listener: Listener, bdf: Bdf | None = None) -> Callable[[], None]:
        """Call ``listener`` for events (of ``bdf`` only, if given); returns unsubscribe."""
        entry = (listener, bdf)
        with self._lock:
            self._listeners.append(entry)

        def unsubscribe() -> None:
            with self._lock:
                if entry in self._listeners:
                    self._listeners.remove(entry)

        return unsubscribe

    def emit(self, event: DeviceEvent) -> None:
        with self._lock:
            targets = [fn for fn, b in self._listeners if b is None or b == event.bdf]
        for fn in targets:
            try:
                fn(event)
            except Exception as e:  # a broken driver must not stop the others
                self.errors.append((event, e))
