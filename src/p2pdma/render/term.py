"""Terminal styling: colour only when it helps (a TTY, NO_COLOR unset) or when asked."""

from __future__ import annotations

import os
import re
import sys
from typing import TextIO

_ANSI_RE = re.compile(r"\x1b\[[0-9;]*m")

_CODES = {
    "bold": "1",
    "dim": "2",
    "red": "31",
    "green": "32",
    "yellow": "33",
    "blue": "34",
    "magenta": "35",
    "cyan": "36",
}


def strip_ansi(text: str) -> str:
    return _ANSI_RE.sub("", text)


def visible_len(text: str) -> int:
    return len(strip_ansi(text))


class Style:
    """Applies ANSI styles when enabled; otherwise returns text unchanged."""

    def __init__(self, enabled: bool) -> None:
        self.enabled = enabled

    @classmethod
    def for_stream(cls, stream: TextIO = sys.stdout, mode: str = "auto") -> Style:
        if mode == "always":
            return cls(True)
        if mode == "never" or os.environ.get("NO_COLOR"):
            return cls(False)
        try:
            tty = stream.isatty()
        except (AttributeError, ValueError):
            tty = False
        return cls(tty and os.environ.get("TERM") != "dumb")

    def __call__(self, text: str, *styles: str) -> str:
        if not self.enabled or not styles:
            return text
        codes = ";".join(_CODES[s] for s in styles)
        return f"\x1b[{codes}m{text}\x1b[0m"

    def bold(self, t: str) -> str:
        return self(t, "bold")

    def dim(self, t: str) -> str:
        return self(t, "dim")

    def red(self, t: str) -> str:
        return self(t, "red")

    def green(self, t: str) -> str:
        return self(t, "green")

    def yellow(self, t: str) -> str:
        return self(t, "yellow")

    def cyan(self, t: str) -> str:
        return self(t, "cyan")


PLAIN = Style(False)
