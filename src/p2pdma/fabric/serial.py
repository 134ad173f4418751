"""Fabric <-> plain data (dicts of str/int/float/bool/list).

One format serves three purposes: the fabric file (TOML, hand-written), the
``--json`` form of ``p2pdma topo`` (``fabric`` key) and test fixtures.  Reading is
strict: every unknown key or malformed value is an error naming the exact place
(``function[3] (0000:03:00.0).acs.ctrl``), so a typo never silently becomes a
different machine.  See ``docs/fabric-file.md`` for the format.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from p2pdma.errors import FabricFileError, InputError
from p2pdma.fabric.bdf import Bdf
from p2pdma.fabric.model import (
    Acs,
    Bar,
    Cmb,
    Fabric,
    HostBridge,
    HostContext,
    IommuMode,
    Link,
    NvmeController,
    P2PMem,
    PciFunction,
    PortType,
)

FORMAT = "p2pdma-fabric/1"

_SIZE_RE = re.compile(r"^\s*(0x[0-9a-fA-F]+|\d+)\s*([KMGTP]i?B?|[kmgtp])?\s*$")
_SUFFIX = {"K": 10, "M": 20, "G": 30, "T": 40, "P": 50}


class _Ctx:
    """Where we are in the document, for error messages."""

    def __init__(self, origin: str) -> None:
        self.origin = origin

    def err(self, path: str, what: str, hint: str | None = None) -> FabricFileError:
        return FabricFileError(f"{path}: {what}", where=self.origin, hint=hint)


def parse_int(value: object, ctx: _Ctx, path: str, *, lo: int = 0, hi: int | None = None) -> int:
    """An integer given as a number, ``"0x1f"``, or a size such as ``"64M"``/``"2GiB"``."""
    if isinstance(value, bool):
        raise ctx.err(path, f"expected a number, got {value!r}")
    if isinstance(value, int):
        n = value
    elif isinstance(value, str):
        m = _SIZE_RE.match(value)
        if not m:
            raise ctx.err(path, f"{value!r} is not a number or size",
                          hint='write e.g. 4096, "0x1000" or "64M"')
        n = int(m[1], 0)
        if m[2]:
            n <<= _SUFFIX[m[2][0].upper()]
    else:
        raise ctx.err(path, f"expected a number, got {type(value).__name__}")
    if n < lo or (hi is not None and n > hi):
        rng = f"{lo}..{hi:#x}" if hi is not None else f">= {lo}"
        raise ctx.err(path, f"{n:#x} is out of range ({rng})")
    return n


def _id_pair(value: object, ctx: _Ctx, path: str) -> tuple[int, int]:
    if not isinstance(value, str) or not re.fullmatch(r"[0-9a-fA-F]{4}:[0-9a-fA-F]{4}", value):
        raise ctx.err(path, f"{value!r} is not a vendor:device id", hint='write e.g. "8086:09a2"')
    v, d = value.split(":")
    return int(v, 16), int(d, 16)


def _bool(value: object, ctx: _Ctx, path: str) -> bool:
    if not isinstance(value, bool):
        raise ctx.err(path, f"expected true or false, got {value!r}")
    return value


def _str(value: object, ctx: _Ctx, path: str) -> str:
    if not isinstance(value, str):
        raise ctx.err(path, f"expected a string, got {value!r}")
    return value


def _float(value: object, ctx: _Ctx, path: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ctx.err(path, f"expected a number, got {value!r}")
    return float(value)


def _table(value: object, ctx: _Ctx, path: str, allowed: set[str]) -> Mapping[str, Any]:
    if not isinstance(value, Mapping):
        raise ctx.err(path, f"expected a table, got {type(value).__name__}")
    unknown = sorted(set(value) - allowed)
    if unknown:
        raise ctx.err(path, f"unknown key(s) {', '.join(unknown)}",
                      hint=f"allowed: {', '.join(sorted(allowed))}")
    return value


def _bdf(value: object, ctx: _Ctx, path: str) -> Bdf:
    s = _str(value, ctx, path)
    try:
        return Bdf.parse(s)
    except InputError as e:
        raise ctx.err(path, e.what, e.hint) from None


# ---------------------------------------------------------------------------
# reading

_HOST_KEYS = {"kernel", "cmdline", "arch", "cpu", "cpu_family", "cpu_model", "iommu",
              "iommu_driver", "p2pdma_config", "privileged"}
_FUNC_KEYS = {"bdf", "id", "class", "subsystem", "revision", "header_type", "bridge",
              "multifunction", "type", "parent", "physfn", "secondary_bus", "subordinate_bus",
              "link", "mps", "mps_supported", "bars", "driver", "iommu_group", "numa_node",
              "acs", "acs_unknown", "p2pmem", "nvme", "name"}
_BRIDGE_TYPES = {PortType.ROOT_PORT, PortType.UPSTREAM_PORT, PortType.DOWNSTREAM_PORT,
                 PortType.PCIE_TO_PCI_BRIDGE, PortType.PCI_TO_PCIE_BRIDGE}


def _host(data: object, ctx: _Ctx) -> HostContext:
    t = _table(data, ctx, "host", _HOST_KEYS)
    iommu = None
    if "iommu" in t:
        raw = t["iommu"]
        if isinstance(raw, bool):
            iommu = IommuMode.TRANSLATED if raw else IommuMode.OFF
        else:
            try:
                iommu = IommuMode(_str(raw, ctx, "host.iommu"))
            except ValueError:
                raise ctx.err("host.iommu", f"{raw!r} is not an IOMMU mode",
                              hint="one of: off, translated, passthrough") from None

    def opt_int(key: str) -> int | None:
        return parse_int(t[key], ctx, f"host.{key}") if key in t else None

    def opt_str(key: str) -> str | None:
        return _str(t[key], ctx, f"host.{key}") if key in t else None

    def opt_bool(key: str) -> bool | None:
        return _bool(t[key], ctx, f"host.{key}") if key in t else None

    return HostContext(
        kernel_release=opt_str("kernel"),
        cmdline=opt_str("cmdline"),
        arch=opt_str("arch"),
        cpu_vendor=opt_str("cpu"),
        cpu_family=opt_int("cpu_family"),
        cpu_model=opt_int("cpu_model"),
        iommu=iommu,
        iommu_driver=opt_str("iommu_driver"),
        p2pdma_config=opt_bool("p2pdma_config"),
        privileged=opt_bool("privileged"),
    )


def _bar(data: object, ctx: _Ctx, path: str) -> Bar:
    t = _table(data, ctx, path, {"index", "start", "size", "io", "mem64", "prefetch", "bus"})
    for k in ("index", "start", "size"):
        if k not in t:
            raise ctx.err(path, f"missing {k!r}")
    index = parse_int(t["index"], ctx, f"{path}.index", hi=5)
    start = parse_int(t["start"], ctx, f"{path}.start", hi=2**64 - 1)
    size = parse_int(t["size"], ctx, f"{path}.size", hi=2**64 - 1)
    if size and start + size - 1 >= 2**64:
        raise ctx.err(path, "BAR extends past the 64-bit address space")
    bus = parse_int(t["bus"], ctx, f"{path}.bus", hi=2**64 - 1) if "bus" in t else None
    is_io = _bool(t.get("io", False), ctx, f"{path}.io")
    return Bar(
        index=index,
        start=start,
        size=size,
        is_memory=not is_io,
        is_64bit=_bool(t.get("mem64", False), ctx, f"{path}.mem64"),
        prefetchable=_bool(t.get("prefetch", False), ctx, f"{path}.prefetch"),
        bus_start=None if bus is None or bus == start else bus,
    )


def _cmb(data: object, ctx: _Ctx, path: str) -> Cmb:
    t = _table(data, ctx, path, {"cmbloc", "cmbsz", "size", "bar", "offset", "unit",
                                 "sqs", "cqs", "lists", "rds", "wds"})
    if "cmbloc" in t or "cmbsz" in t:
        if set(t) != {"cmbloc", "cmbsz"}:
            raise ctx.err(path, "give either raw cmbloc+cmbsz or decoded size/bar/... fields")
        return Cmb(parse_int(t["cmbloc"], ctx, f"{path}.cmbloc", hi=0xFFFFFFFF),
                   parse_int(t["cmbsz"], ctx, f"{path}.cmbsz", hi=0xFFFFFFFF))
    if "size" not in t or "bar" not in t:
        raise ctx.err(path, "a CMB needs 'size' and 'bar' (or raw cmbloc/cmbsz)")
    flags = {k: _bool(t.get(k, d), ctx, f"{path}.{k}")
             for k, d in (("sqs", True), ("cqs", False), ("lists", False), ("rds", True),
                          ("wds", True))}
    try:
        return Cmb.encode(
            size=parse_int(t["size"], ctx, f"{path}.size"),
            bar=parse_int(t["bar"], ctx, f"{path}.bar", hi=5),
            offset=parse_int(t.get("offset", 0), ctx, f"{path}.offset"),
            unit=parse_int(t["unit"], ctx, f"{path}.unit") if "unit" in t else None,
            **flags,
        )
    except ValueError as e:
        raise ctx.err(path, str(e)) from None


def _function(data: object, ctx: _Ctx, i: int) -> tuple[PciFunction, bool]:
    """Returns the function and whether its parent was given explicitly."""
    base = f"function[{i}]"
    if not isinstance(data, Mapping):
        raise ctx.err(base, "expected a table")
    if "bdf" not in data:
        raise ctx.err(base, "missing 'bdf'")
    bdf = _bdf(data["bdf"], ctx, f"{base}.bdf")
    path = f"{base} ({bdf})"
    t = _table(data, ctx, path, _FUNC_KEYS)
    if "id" not in t:
        raise ctx.err(path, "missing 'id' (vendor:device)")
    vendor, device = _id_pair(t["id"], ctx, f"{path}.id")
    ptype = PortType.ENDPOINT
    if "type" in t:
        try:
            ptype = PortType(_str(t["type"], ctx, f"{path}.type"))
        except ValueError:
            raise ctx.err(f"{path}.type", f"{t['type']!r} is not a port type",
                          hint="one of: " + ", ".join(p.value for p in PortType)) from None
    class_code = parse_int(t["class"], ctx, f"{path}.class", hi=0xFFFFFF) if "class" in t else (
        0x060400 if ptype in _BRIDGE_TYPES else 0xFF0000)
    if "header_type" in t:
        header = parse_int(t["header_type"], ctx, f"{path}.header_type", hi=2)
    elif "bridge" in t:
        header = 1 if _bool(t["bridge"], ctx, f"{path}.bridge") else 0
    else:
        header = 1 if (ptype in _BRIDGE_TYPES or class_code >> 8 == 0x0604) else 0
    sub_v = sub_d = None
    if "subsystem" in t:
        sub_v, sub_d = _id_pair(t["subsystem"], ctx, f"{path}.subsystem")

    link = None
    if "link" in t:
        lt = _table(t["link"], ctx, f"{path}.link", {"speed", "width", "max_speed", "max_width"})
        link = Link(
            max_speed=_float(lt["max_speed"], ctx, f"{path}.link.max_speed")
            if "max_speed" in lt else None,
            max_width=parse_int(lt["max_width"], ctx, f"{path}.link.max_width", hi=32)
            if "max_width" in lt else None,
            speed=_float(lt["speed"], ctx, f"{path}.link.speed") if "speed" in lt else None,
            width=parse_int(lt["width"], ctx, f"{path}.link.width", hi=32)
            if "width" in lt else None,
        )
        if link.max_speed is None and link.speed is not None:
            link = Link(link.speed, link.width if link.max_width is None else link.max_width,
                        link.speed, link.width)

    bars_raw = t.get("bars", [])
    if not isinstance(bars_raw, list):
        raise ctx.err(f"{path}.bars", "expected a list of tables")
    bars = tuple(sorted((_bar(b, ctx, f"{path}.bars[{k}]") for k, b in enumerate(bars_raw)),
                        key=lambda b: b.index))
    if len({b.index for b in bars}) != len(bars):
        raise ctx.err(f"{path}.bars", "a BAR index appears twice")

    acs = None
    if "acs" in t:
        at = _table(t["acs"], ctx, f"{path}.acs", {"cap", "ctrl", "offset"})
        if "cap" not in at:
            raise ctx.err(f"{path}.acs", "missing 'cap' (ACS Capability register)")
        acs = Acs(
            offset=parse_int(at.get("offset", 0x100), ctx, f"{path}.acs.offset", lo=0x100,
                             hi=0xFFC),
            capability=parse_int(at["cap"], ctx, f"{path}.acs.cap", hi=0xFFFF),
            control=parse_int(at.get("ctrl", 0), ctx, f"{path}.acs.ctrl", hi=0xFFFF),
        )
    acs_unknown = _str(t["acs_unknown"], ctx, f"{path}.acs_unknown") if "acs_unknown" in t else None
    if acs is not None and acs_unknown is not None:
        raise ctx.err(path, "give either 'acs' or 'acs_unknown', not both")

    p2pmem = None
    if "p2pmem" in t:
        pt = _table(t["p2pmem"], ctx, f"{path}.p2pmem",
                    {"size", "available", "published", "allocate"})
        if "size" not in pt:
            raise ctx.err(f"{path}.p2pmem", "missing 'size'")
        size = parse_int(pt["size"], ctx, f"{path}.p2pmem.size")
        avail = parse_int(pt.get("available", size), ctx, f"{path}.p2pmem.available")
        if avail > size:
            raise ctx.err(f"{path}.p2pmem.available", "more available than the pool's size")
        p2pmem = P2PMem(size=size, available=avail,
                        published=_bool(pt.get("published", True), ctx,
                                        f"{path}.p2pmem.published"),
                        allocate=_bool(pt.get("allocate", True), ctx, f"{path}.p2pmem.allocate"))

    nvme = None
    if "nvme" in t:
        nt = _table(t["nvme"], ctx, f"{path}.nvme", {"name", "cmb", "namespaces"})
        if "name" not in nt:
            raise ctx.err(f"{path}.nvme", "missing 'name' (e.g. \"nvme0\")")
        ns = nt.get("namespaces", [])
        if not isinstance(ns, list) or not all(isinstance(x, str) for x in ns):
            raise ctx.err(f"{path}.nvme.namespaces", "expected a list of names")
        nvme = NvmeController(
            name=_str(nt["name"], ctx, f"{path}.nvme.name"),
            cmb=_cmb(nt["cmb"], ctx, f"{path}.nvme.cmb") if "cmb" in nt else None,
            namespaces=tuple(sorted(ns)),
        )

    def opt_int(key: str, hi: int | None = None, lo: int = 0) -> int | None:
        return parse_int(t[key], ctx, f"{path}.{key}", hi=hi, lo=lo) if key in t else None

    try:
        func = PciFunction(
            bdf=bdf,
            vendor=vendor,
            device=device,
            class_code=class_code,
            subsystem_vendor=sub_v,
            subsystem_device=sub_d,
            revision=opt_int("revision", 0xFF),
            header_type=header,
            multifunction=_bool(t.get("multifunction", False), ctx, f"{path}.multifunction"),
            port_type=ptype,
            parent=_bdf(t["parent"], ctx, f"{path}.parent") if "parent" in t else None,
            physfn=_bdf(t["physfn"], ctx, f"{path}.physfn") if "physfn" in t else None,
            secondary_bus=opt_int("secondary_bus", 0xFF),
            subordinate_bus=opt_int("subordinate_bus", 0xFF),
            link=link,
            mps=opt_int("mps", 4096, 128),
            mps_supported=opt_int("mps_supported", 4096, 128),
            bars=bars,
            driver=_str(t["driver"], ctx, f"{path}.driver") if "driver" in t else None,
            iommu_group=opt_int("iommu_group"),
            numa_node=opt_int("numa_node", 1023),
            acs=acs,
            acs_unknown=acs_unknown,
            p2pmem=p2pmem,
            nvme=nvme,
        )
    except ValueError as e:
        raise ctx.err(path, str(e)) from None
    return func, "parent" in t


def fabric_from_dict(data: Mapping[str, Any], *, origin: str = "<fabric>") -> Fabric:
    """Build and validate a Fabric from plain data.  Raises :class:`FabricFileError`."""
    ctx = _Ctx(origin)
    top = _table(data, ctx, "(top level)",
                 {"format", "description", "host", "host_bridge", "function"})
    fmt = top.get("format", FORMAT)
    if fmt != FORMAT:
        raise ctx.err("format", f"unsupported format {fmt!r}",
                      hint=f'this version reads "{FORMAT}"')
    host = _host(top.get("host", {}), ctx)
    hbs_raw = top.get("host_bridge", [])
    if not isinstance(hbs_raw, list):
        raise ctx.err("host_bridge", "expected an array of tables ([[host_bridge]])")
    hbs = []
    for i, h in enumerate(hbs_raw):
        ht = _table(h, ctx, f"host_bridge[{i}]", {"domain", "bus", "numa_node"})
        hbs.append(HostBridge(
            domain=parse_int(ht.get("domain", 0), ctx, f"host_bridge[{i}].domain", hi=0xFFFFFFFF),
            bus=parse_int(ht.get("bus", 0), ctx, f"host_bridge[{i}].bus", hi=0xFF),
            numa_node=parse_int(ht["numa_node"], ctx, f"host_bridge[{i}].numa_node")
            if "numa_node" in ht else None,
        ))
    funcs_raw = top.get("function", [])
    if not isinstance(funcs_raw, list):
        raise ctx.err("function", "expected an array of tables ([[function]])")
    parsed = [_function(f, ctx, i) for i, f in enumerate(funcs_raw)]
    funcs = _infer_parents(parsed, hbs, ctx)
    try:
        return Fabric(functions=tuple(funcs), host_bridges=tuple(hbs), host=host,
                      origin=origin).validate()
    except FabricFileError:
        raise
    except InputError as e:
        raise FabricFileError(e.what, where=origin, hint=e.hint) from None


def _infer_parents(parsed: list[tuple[PciFunction, bool]], hbs: list[HostBridge],
                   ctx: _Ctx) -> list[PciFunction]:
    """A function without ``parent`` sits on a root bus, or below the bridge whose
    ``secondary_bus`` is its bus."""
    import dataclasses

    roots = {(h.domain, h.bus) for h in hbs}
    by_secondary = {(f.bdf.domain, f.secondary_bus): f.bdf for f, _ in parsed
                    if f.is_bridge and f.secondary_bus is not None}
    out = []
    for f, explicit in parsed:
        if explicit or f.physfn is not None:
            out.append(f)
            continue
        key = (f.bdf.domain, f.bdf.bus)
        if key in roots:
            out.append(f)
        elif key in by_secondary:
            out.append(dataclasses.replace(f, parent=by_secondary[key]))
        else:
            raise ctx.err(
                f"function ({f.bdf})",
                f"bus {f.bdf.bus:02x} is neither a host bridge's root bus nor any bridge's "
                "secondary bus",
                hint="add 'parent = \"<bridge BDF>\"', or declare the bridge's secondary_bus",
            )
    return out


# ---------------------------------------------------------------------------
# writing


def _hex(n: int, width: int = 4) -> str:
    return f"0x{n:0{width}x}"


def function_to_dict(f: PciFunction) -> dict[str, Any]:
    d: dict[str, Any] = {"bdf": str(f.bdf), "id": f.vendor_device, "class": _hex(f.class_code, 6)}
    if f.subsystem_vendor is not None and f.subsystem_device is not None:
        d["subsystem"] = f"{f.subsystem_vendor:04x}:{f.subsystem_device:04x}"
    if f.revision is not None:
        d["revision"] = f.revision
    d["header_type"] = f.header_type
    if f.multifunction:
        d["multifunction"] = True
    d["type"] = f.port_type.value
    if f.parent is not None:
        d["parent"] = str(f.parent)
    if f.physfn is not None:
        d["physfn"] = str(f.physfn)
    if f.secondary_bus is not None:
        d["secondary_bus"] = f.secondary_bus
    if f.subordinate_bus is not None:
        d["subordinate_bus"] = f.subordinate_bus
    if f.link is not None:
        d["link"] = {k: v for k, v in (("max_speed", f.link.max_speed),
                                       ("max_width", f.link.max_width),
                                       ("speed", f.link.speed), ("width", f.link.width))
                     if v is not None}
    if f.mps is not None:
        d["mps"] = f.mps
    if f.mps_supported is not None:
        d["mps_supported"] = f.mps_supported
    if f.bars:
        bars = []
        for b in f.bars:
            bd: dict[str, Any] = {"index": b.index, "start": _hex(b.start, 1),
                                  "size": _hex(b.size, 1)}
            if not b.is_memory:
                bd["io"] = True
            if b.is_64bit:
                bd["mem64"] = True
            if b.prefetchable:
                bd["prefetch"] = True
            if b.bus_start is not None:
                bd["bus"] = _hex(b.bus_start, 1)
            bars.append(bd)
        d["bars"] = bars
    if f.driver is not None:
        d["driver"] = f.driver
    if f.iommu_group is not None:
        d["iommu_group"] = f.iommu_group
    if f.numa_node is not None:
        d["numa_node"] = f.numa_node
    if f.acs is not None:
        d["acs"] = {"offset": _hex(f.acs.offset, 3), "cap": _hex(f.acs.capability),
                    "ctrl": _hex(f.acs.control)}
    if f.acs_unknown is not None:
        d["acs_unknown"] = f.acs_unknown
    if f.p2pmem is not None:
        d["p2pmem"] = {"size": f.p2pmem.size, "available": f.p2pmem.available,
                       "published": f.p2pmem.published, "allocate": f.p2pmem.allocate}
    if f.nvme is not None:
        nd: dict[str, Any] = {"name": f.nvme.name}
        if f.nvme.cmb is not None:
            nd["cmb"] = {"cmbloc": _hex(f.nvme.cmb.cmbloc, 8), "cmbsz": _hex(f.nvme.cmb.cmbsz, 8)}
        if f.nvme.namespaces:
            nd["namespaces"] = list(f.nvme.namespaces)
        d["nvme"] = nd
    return d


def host_to_dict(h: HostContext) -> dict[str, Any]:
    pairs: list[tuple[str, Any]] = [
        ("kernel", h.kernel_release), ("cmdline", h.cmdline), ("arch", h.arch),
        ("cpu", h.cpu_vendor), ("cpu_family", h.cpu_family), ("cpu_model", h.cpu_model),
        ("iommu", h.iommu.value if h.iommu else None), ("iommu_driver", h.iommu_driver),
        ("p2pdma_config", h.p2pdma_config), ("privileged", h.privileged),
    ]
    return {k: v for k, v in pairs if v is not None}


def fabric_to_dict(fabric: Fabric) -> dict[str, Any]:
    """The canonical plain-data form; ``fabric_from_dict`` reads it back to an equal Fabric."""
    hbs = []
    for h in fabric.host_bridges:
        hd: dict[str, Any] = {"domain": h.domain, "bus": h.bus}
        if h.numa_node is not None:
            hd["numa_node"] = h.numa_node
        hbs.append(hd)
    return {
        "format": FORMAT,
        "host": host_to_dict(fabric.host),
        "host_bridge": hbs,
        "function": [function_to_dict(f) for f in fabric.functions],
    }
