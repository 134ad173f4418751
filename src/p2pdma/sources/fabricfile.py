"""Fabric files: a machine described by hand in TOML (see docs/fabric-file.md)."""

from __future__ import annotations

import math
import tomllib
from pathlib import Path
from typing import Any

from p2pdma.errors import FabricFileError
from p2pdma.fabric.model import Fabric
from p2pdma.fabric.serial import fabric_from_dict, fabric_to_dict

# A fabric file is small text; refuse anything absurd before parsing it.
MAX_FABRIC_FILE = 64 << 20


def load_fabric_file(path: str | Path) -> Fabric:
    p = Path(path)
    try:
        size = p.stat().st_size
        if size > MAX_FABRIC_FILE:
            raise FabricFileError(f"file is {size} bytes, more than the {MAX_FABRIC_FILE} allowed",
                                  where=str(p))
        raw = p.read_bytes()
    except FileNotFoundError:
        raise FabricFileError(
            "no such file", where=str(p),
            hint="give the path of a TOML fabric file, or --sample NAME") from None
    except IsADirectoryError:
        raise FabricFileError("is a directory, not a fabric file", where=str(p),
                              hint="to read a sysfs tree use --root DIR") from None
    except PermissionError:
        raise FabricFileError("permission denied", where=str(p)) from None
    return loads_fabric(raw, origin=str(p))


def loads_fabric(raw: bytes | str, *, origin: str = "<fabric>") -> Fabric:
    try:
        text = raw.decode("utf-8") if isinstance(raw, bytes) else raw
    except UnicodeDecodeError as e:
        raise FabricFileError(f"not UTF-8 text (byte {e.start})", where=origin) from None
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise FabricFileError(f"not valid TOML: {e}", where=origin) from None
    except RecursionError:
        raise FabricFileError("TOML nested too deeply", where=origin) from None
    return fabric_from_dict(data, origin=origin)


# ---------------------------------------------------------------------------
# writing TOML (the subset our format needs; no third-party writer)


def _scalar(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int):
        return str(v)
    if isinstance(v, float):
        if math.isfinite(v):
            return repr(v)
        raise ValueError("non-finite float")
    if isinstance(v, str):
        out = ['"']
        for ch in v:
            if ch == '"':
                out.append('\\"')
            elif ch == "\\":
                out.append("\\\\")
            elif ord(ch) < 0x20 or ord(ch) == 0x7F:
                out.append(f"\\u{ord(ch):04x}")
            else:
                out.append(ch)
        out.append('"')
        return "".join(out)
    if isinstance(v, list):
        return "[" + ", ".join(_scalar(x) for x in v) + "]"
    if isinstance(v, dict):
        return "{ " + ", ".join(f"{k} = {_scalar(x)}" for k, x in v.items()) + " }"
    raise TypeError(f"cannot write {type(v).__name__} to TOML")


def dumps_fabric(fabric: Fabric, *, description: str | None = None) -> str:
    d = fabric_to_dict(fabric)
    lines = [f"format = {_scalar(d['format'])}"]
    if description:
        lines.append(f"description = {_scalar(description)}")
    lines += ["", "[host]"]
    lines += [f"{k} = {_scalar(v)}" for k, v in d["host"].items()]
    for hb in d["host_bridge"]:
        lines += ["", "[[host_bridge]]"] + [f"{k} = {_scalar(v)}" for k, v in hb.items()]
    for fn in d["function"]:
        lines += ["", "[[function]]"] + [f"{k} = {_scalar(v)}" for k, v in fn.items()]
    return "\n".join(lines) + "\n"


def save_fabric_file(fabric: Fabric, path: str | Path, *, description: str | None = None) -> None:
    Path(path).write_text(dumps_fabric(fabric, description=description), encoding="utf-8")
