"""A dependency-free progress bar for long work (copies, emulated runs, harness boots).

On a terminal it redraws one line on stderr; elsewhere it stays silent unless
``log_every`` asks for periodic plain lines, so scripts and CI logs stay clean.
"""

from __future__ import annotations

import sys
import time
from types import TracebackType
from typing import TextIO


def human_bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    raise AssertionError("unreachable")


class Progress:
    def __init__(
        self,
        total: int | None,
        *,
        label: str = "",
        unit: str = "B",
        stream: TextIO | None = None,
        enabled: bool | None = None,
        log_every: float | None = None,
    ) -> None:
        self.total = total
        self.label = label
        self.unit = unit
        self.stream = stream or sys.stderr
        if enabled is None:
            try:
                enabled = self.stream.isatty()
            except (AttributeError, ValueError):
                enabled = False
        self.enabled = enabled
        self.log_every = log_every
        self.done = 0
        self._start = time.monotonic()
        self._last_draw = 0.0
        self._last_log = self._start

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, et: type[BaseException] | None, ev: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

    def _fmt(self, n: float) -> str:
        return human_bytes(n) if self.unit == "B" else f"{n:.0f} {self.unit}"

    def line(self) -> str:
        elapsed = max(time.monotonic() - self._start, 1e-9)
        rate = self.done / elapsed
        rate_s = f"{self._fmt(rate)}/s"
        if self.total:
            frac = min(self.done / self.total, 1.0)
            width = 28
            fill = int(frac * width)
            bar = "█" * fill + "░" * (width - fill)
            eta = (self.total - self.done) / rate if rate > 0 else 0.0
            return (f"{self.label} {bar} {frac * 100:5.1f}%  {self._fmt(self.done)}/"
                    f"{self._fmt(self.total)}  {rate_s}  eta {eta:4.0f}s")
        return f"{self.label} {self._fmt(self.done)}  {rate_s}"

    def update(self, n: int) -> None:
        self.done += n
        now = time.monotonic()
        if self.enabled and (now - self._last_draw > 0.1 or
                             (self.total is not None and self.done >= self.total)):
            self._last_draw = now
            self.stream.write("\r" + self.line() + "\x1b[K")
            self.stream.flush()
        elif not self.enabled and self.log_every and now - self._last_log >= self.log_every:
            self._last_log = now
            self.stream.write(self.line() + "\n")
            self.stream.flush()

    def close(self) -> None:
        if self.enabled:
            self.stream.write("\r" + self.line() + "\x1b[K\n")
            self.stream.flush()
