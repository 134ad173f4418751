"""PCI addresses: domain:bus:device.function."""

from __future__ import annotations

import re
from typing import NamedTuple

from p2pdma.errors import InputError

_BDF_RE = re.compile(
    r"^(?:(?P<dom>[0-9a-fA-F]{1,8}):)?(?P<bus>[0-9a-fA-F]{1,2}):(?P<dev>[0-9a-fA-F]{1,2})"
    r"\.(?P<fn>[0-7])$"
)


class Bdf(NamedTuple):
    """A PCI function address.  Orders like the kernel's device names sort."""

    domain: int
    bus: int
    dev: int
    fn: int

    @property
    def devfn(self) -> int:
        return (self.dev << 3) | self.fn

    @property
    def dev_id(self) -> int:
        """``pci_dev_id()``: bus << 8 | devfn."""
        return (self.bus << 8) | self.devfn

    @property
    def cache_index(self) -> int:
        """The key of the provider's map-type cache: ``(domain << 16) | pci_dev_id``."""
        return (self.domain << 16) | self.dev_id

    def __str__(self) -> str:
        return f"{self.domain:04x}:{self.bus:02x}:{self.dev:02x}.{self.fn:x}"

    def short(self) -> str:
        """``bb:dd.f`` when the domain is 0, as lspci prints it."""
        if self.domain == 0:
            return f"{self.bus:02x}:{self.dev:02x}.{self.fn:x}"
        return str(self)

    @classmethod
    def parse(cls, text: str, *, where: str | None = None) -> Bdf:
        """Parse ``0000:03:00.0`` or ``03:00.0`` (domain 0).  Raises :class:`InputError`."""
        m = _BDF_RE.match(text.strip())
        if not m:
            raise InputError(
                f"{text!r} is not a PCI address",
                where=where,
                hint="write it as DDDD:BB:DD.F (e.g. 0000:03:00.0) or BB:DD.F",
            )
        dom = int(m["dom"], 16) if m["dom"] else 0
        bus, dev, fn = int(m["bus"], 16), int(m["dev"], 16), int(m["fn"])
        if dev > 31:
            raise InputError(
                f"{text!r}: device number {dev:#x} is out of range (0..1f)", where=where
            )
        if dom > 0xFFFF:
            # Linux allows 32-bit domains (VMD) but writes them as 4+ hex digits.
            pass
        return cls(dom, bus, dev, fn)


def is_bdf(text: str) -> bool:
    return bool(_BDF_RE.match(text.strip()))
