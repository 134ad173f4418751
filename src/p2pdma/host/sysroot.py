"""Small readers for a sysfs/procfs tree under a root path.

Every path the host layer reads goes through :func:`under`, so tests can drive the
code with a synthetic tree (``root/sys/...``, ``root/proc/...``); ``root="/"`` is
the live machine.
"""

from __future__ import annotations

import gzip
import os
import re
from pathlib import Path

from p2pdma.errors import SysfsError
from p2pdma.fabric.bdf import Bdf

_BDF_NAME = re.compile(r"^[0-9a-fA-F]{4,8}:[0-9a-fA-F]{2}:[0-9a-fA-F]{2}\.[0-7]$")


def under(root: str | os.PathLike[str], *parts: str) -> Path:
    """``root`` joined with an absolute-looking path (leading ``/`` ignored)."""
    p = Path(root)
    for part in parts:
        p = p / part.lstrip("/")
    return p


def pci_device_dir(root: str | os.PathLike[str], bdf: Bdf) -> Path:
    return under(root, "sys/bus/pci/devices", str(bdf))


def read_text(path: Path) -> str | None:
    """The stripped content of a small attribute, or None when absent/unreadable."""
    try:
        return path.read_text(encoding="ascii", errors="replace").strip()
    except (FileNotFoundError, NotADirectoryError, PermissionError, IsADirectoryError):
        return None
    except OSError:
        return None


def read_int(path: Path, *, base: int = 10) -> int:
    """An integer attribute (``"%zd\\n"``); raises :class:`SysfsError` when malformed."""
    text = read_text(path)
    if text is None:
        raise SysfsError(
            "attribute is missing or unreadable",
            where=str(path),
            hint="check that the device still exists and that you may read sysfs",
        )
    try:
        return int(text, base)
    except ValueError:
        raise SysfsError(
            f"expected an integer, found {text[:40]!r}",
            where=str(path),
            hint="the sysfs tree looks damaged; re-read it on the live machine",
        ) from None


def is_bdf_name(name: str) -> bool:
    return bool(_BDF_NAME.match(name))


def kernel_release(root: str | os.PathLike[str]) -> str | None:
    """``uname -r`` of the kernel that owns the tree (procfs under root, else us)."""
    text = read_text(under(root, "proc/sys/kernel/osrelease"))
    if text:
        return text
    if str(Path(root).resolve()) == "/":
        return os.uname().release
    return None


def release_tuple(release: str | None) -> tuple[int, int] | None:
    if not release:
        return None
    m = re.match(r"^(\d+)\.(\d+)", release)
    return (int(m[1]), int(m[2])) if m else None


def kernel_config_option(
    root: str | os.PathLike[str], option: str, release: str | None
) -> tuple[str | None, str | None]:
    """Value of ``option`` in the running kernel's config: ``("y"|"m"|"n", source)``.

    Reads ``/proc/config.gz`` (CONFIG_IKCONFIG_PROC) or ``/boot/config-<release>``;
    ``(None, None)`` when neither is readable.
    """
    candidates: list[Path] = [under(root, "proc/config.gz")]
    if release:
        candidates.append(under(root, "boot", f"config-{release}"))
    for path in candidates:
        try:
            raw = path.read_bytes()
        except OSError:
            continue
        if path.suffix == ".gz":
            try:
                raw = gzip.decompress(raw)
            except (OSError, EOFError):
                continue
        text = raw.decode("ascii", errors="replace")
        for line in text.splitlines():
            if line.startswith(f"{option}="):
                return line.split("=", 1)[1].strip(), str(path)
            if line.strip() == f"# {option} is not set":
                return "n", str(path)
        return "n", str(path)
    return None, None
