"""One exception hierarchy for the whole package.

Every error says *what* went wrong, *where* (a file, a snapshot member, a BDF,
a sysfs path) and *what to do*.  The CLI prints ``str(err)`` and exits non-zero;
it never shows a traceback for a :class:`P2PDMAError`.

Errors that mirror a kernel return code carry the errno name the kernel would
use (``EINVAL``, ``ENOMEM``, ``ENODEV``, ``EREMOTEIO``, ``EBUSY``,
``EOPNOTSUPP``), so that tests and callers can compare against the kernel.
"""

from __future__ import annotations

import errno as _errno


class P2PDMAError(Exception):
    """Base class.  ``what``/``where``/``hint`` are kept separately for JSON output."""

    exit_code = 1

    def __init__(self, what: str, *, where: str | None = None, hint: str | None = None) -> None:
        self.what = what
        self.where = where
        self.hint = hint
        super().__init__(self.__str__())

    def __str__(self) -> str:
        parts = [self.what]
        if self.where:
            parts[0] = f"{self.where}: {self.what}"
        if self.hint:
            parts.append(f"hint: {self.hint}")
        return "\n".join(parts)

    def to_json(self) -> dict[str, object]:
        return {
            "error": type(self).__name__,
            "what": self.what,
            "where": self.where,
            "hint": self.hint,
        }


class InputError(P2PDMAError):
    """Bad input from the user: a malformed BDF, fabric file, snapshot, option."""

    exit_code = 2


class SnapshotError(InputError):
    """A snapshot archive is corrupt, truncated, hostile or of an unknown version."""


class FabricFileError(InputError):
    """A fabric (TOML) file does not describe a valid fabric."""


class SysfsError(InputError):
    """A sysfs tree could not be read or holds a malformed value."""


class UnknownDeviceError(InputError):
    """A BDF that is not part of the fabric."""


class KernelError(P2PDMAError):
    """An error the kernel itself would return, with its errno name.

    ``errno_name`` is e.g. ``"EINVAL"``; ``errno`` the matching number.
    """

    def __init__(
        self,
        errno_name: str,
        what: str,
        *,
        where: str | None = None,
        hint: str | None = None,
    ) -> None:
        if not hasattr(_errno, errno_name):
            raise ValueError(f"unknown errno name {errno_name!r}")
        self.errno_name = errno_name
        self.errno: int = getattr(_errno, errno_name)
        super().__init__(what, where=where, hint=hint)

    def __str__(self) -> str:
        base = super().__str__()
        first, _, rest = base.partition("\n")
        first = f"{first} (-{self.errno_name})"
        return f"{first}\n{rest}" if rest else first

    def to_json(self) -> dict[str, object]:
        data = super().to_json()
        data["errno"] = self.errno_name
        return data


def kerr(errno_name: str, what: str, *, where: str | None = None,
         hint: str | None = None) -> KernelError:
    """Shorthand used by the emulator: ``raise kerr("EINVAL", "...")``."""
    return KernelError(errno_name, what, where=where, hint=hint)
