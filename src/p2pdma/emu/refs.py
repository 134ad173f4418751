"""Lifetime references: the pgmap percpu ref and page reference counts.

``PercpuRef`` mirrors the kernel's percpu_ref as P2PDMA uses it (spec §4.7):
live from memremap until teardown kills it; ``tryget_live`` fails once it is
dying; teardown then *waits* for the count to reach zero.  Unlike the kernel
it waits with a timeout and can say who still holds references, so a test or
a stuck removal reports instead of hanging.
"""

from __future__ import annotations

import threading
import time
from collections import Counter


class PercpuRef:
    def __init__(self, name: str) -> None:
        self.name = name
        self._count = 0
        self._dying = False
        self._holders: Counter[str] = Counter()
        self._cond = threading.Condition(threading.Lock())  # leaf lock

    def tryget_live(self, holder: str, n: int = 1) -> bool:
        with self._cond:
            if self._dying:
                return False
            self._count += n
            self._holders[holder] += n
            return True

    def get(self, holder: str, n: int = 1) -> None:
        """An extra reference when one is already held (allowed while dying)."""
        with self._cond:
            self._count += n
            self._holders[holder] += n

    def put(self, holder: str, n: int = 1) -> None:
        with self._cond:
            if self._holders[holder] < n:
                raise AssertionError(f"{self.name}: put of {n} by {holder!r}, which holds "
                                     f"{self._holders[holder]}")
            self._holders[holder] -= n
            if not self._holders[holder]:
                del self._holders[holder]
            self._count -= n
            if self._count == 0:
                self._cond.notify_all()

    def kill(self) -> None:
        """Switch to dying: new ``tryget_live`` fail.  Idempotent."""
        with self._cond:
            self._dying = True

    @property
    def dying(self) -> bool:
        return self._dying

    @property
    def count(self) -> int:
        return self._count

    def holders(self) -> dict[str, int]:
        with self._cond:
            return dict(self._holders)

    def wait_for_zero(self, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        with self._cond:
            while self._count:
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._cond.wait(left)
            return True
