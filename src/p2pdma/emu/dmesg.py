"""The emulated kernel log: a bounded ring of lines, newest last."""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Iterable


class Dmesg:
    def __init__(self, capacity: int = 4096) -> None:
        self._lines: deque[str] = deque(maxlen=capacity)
        self._seq = 0  # total lines ever logged, so callers can ask "what is new since"
        self._lock = threading.Lock()  # leaf

    def log(self, line: str) -> None:
        with self._lock:
            self._lines.append(line)
            self._seq += 1

    def extend(self, lines: Iterable[str]) -> None:
        for line in lines:
            self.log(line)

    def lines(self) -> list[str]:
        with self._lock:
            return list(self._lines)

    @property
    def seq(self) -> int:
        return self._seq

    def since(self, seq: int) -> list[str]:
        """Lines logged after the moment ``seq`` was read (within the ring's capacity)."""
        with self._lock:
            n = min(self._seq - seq, len(self._lines))
            return list(self._lines)[len(self._lines) - n:] if n > 0 else []

    def clear(self) -> None:
        with self._lock:
            self._lines.clear()

    def __contains__(self, text: object) -> bool:
        return any(isinstance(text, str) and text in line for line in self.lines())
