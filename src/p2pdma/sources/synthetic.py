"""Write any :class:`Fabric` as a synthetic sysfs/procfs tree that :func:`read_sysfs` reads back.

``read_sysfs(write_sysfs(F)) == sysfs_canonical(F)``, and ``sysfs_canonical(F) == F``
for every fabric the builder, the samples and a real machine produce.  What a
sysfs tree cannot carry (so :func:`sysfs_canonical` changes it, and
:func:`sysfs_losses` lists it):

- ``acs_unknown`` texts: the reader words the reason itself from how much config
  space was readable (:func:`pciconfig.acs_unknown_reason`).  A PCIe function with
  unknown ACS is written with 256 bytes of config; ``PortType.UNKNOWN`` with 64
  (then ACS is unknown and MPS None too).  A conventional (NOT_PCIE) function
  cannot have unknown ACS: it has no extended config space.
- MPS on a function without a PCIe capability (None), and MPS values that are not
  a power of two in 128..4096 (None).
- bridge bus numbers 0 (= not assigned: None) and bus numbers on a type-0 header.
- BAR bus addresses a BAR register cannot hold (unaligned, 0, above 4 GiB in a
  32-bit BAR, a 64-bit BAR whose upper slot holds another BAR): "same as CPU".
  BARs of size 0 (sysfs shows unassigned BARs as zeros) and the 64-bit/prefetch
  bits of I/O BARs.
- an ACS capability offset that is not a dword-aligned place for 8 bytes in
  0x100..0xFF8 moves to the nearest one that is.
- a CMB with CMBSZ 0 (no CMB); NVMe namespace names not like ``nvme0n1``
  (order and duplicates too).
- ``Link()`` with no field set (None).
- a host bridge's NUMA node is written to ``pciDDDD:BB/numa_node``, a file the
  kernel does not have (a real tree leaves it unknown).
- host: ``privileged`` is what the tree shows (config longer than 64 bytes);
  ``p2pdma_config`` is True when any ``p2pmem`` exists; with IOMMU mode OFF no
  IOMMU driver can be named; ``cpu_vendor`` loses surrounding white space.
"""

from __future__ import annotations

import dataclasses
import gzip
import os
import re
from collections.abc import Callable
from pathlib import Path

from p2pdma.errors import InputError
from p2pdma.fabric.bdf import Bdf
from p2pdma.fabric.model import (
    Acs,
    Bar,
    Fabric,
    HostBridge,
    HostContext,
    IommuMode,
    Link,
    NvmeController,
    PciFunction,
    PortType,
)
from p2pdma.sources import pciconfig
from p2pdma.sources.sysfs import NS_RE, iommu_entry_name

_LINK_SPEED_TEXT = {2.5: "2.5", 5.0: "5.0", 8.0: "8.0", 16.0: "16.0", 32.0: "32.0",
                    64.0: "64.0"}


# ---------------------------------------------------------------------------
# canonical form


def _canonical_bars(f: PciFunction) -> tuple[Bar, ...]:
    bars = []
    for b in f.bars:
        if b.size == 0:
            continue
        if not b.is_memory:
            b = dataclasses.replace(b, is_64bit=False, prefetchable=False)
        bars.append(b)
    tmp = dataclasses.replace(f, bars=tuple(bars))
    out = []
    for b in bars:
        if b.bus_start is not None and (b.bus_start == b.start or
                                        pciconfig.bar_register_value(b, tmp) is None):
            b = dataclasses.replace(b, bus_start=None)
        out.append(b)
    return tuple(out)


def _canonical_mps(v: int | None) -> int | None:
    return None if pciconfig.mps_encoding(v) == pciconfig.MPS_RESERVED else v


def canonical_function(f: PciFunction) -> PciFunction:
    kw: dict[str, object] = {"bars": _canonical_bars(f)}
    if f.port_type is PortType.UNKNOWN:
        kw.update(acs=None, acs_unknown=pciconfig.acs_unknown_reason(pciconfig.UNPRIVILEGED),
                  mps=None, mps_supported=None)
    elif f.port_type is PortType.NOT_PCIE:
        kw.update(acs_unknown=None, mps=None, mps_supported=None)
    else:
        kw.update(mps=_canonical_mps(f.mps), mps_supported=_canonical_mps(f.mps_supported))
        if f.acs_unknown is not None:
            kw["acs_unknown"] = pciconfig.acs_unknown_reason(pciconfig.CONVENTIONAL)
    acs = kw.get("acs", f.acs)
    if isinstance(acs, Acs):
        kw["acs"] = dataclasses.replace(acs, offset=pciconfig.acs_write_offset(acs.offset))
    if f.header_type in (1, 2):
        kw.update(secondary_bus=f.secondary_bus or None, subordinate_bus=f.subordinate_bus or None)
    else:
        kw.update(secondary_bus=None, subordinate_bus=None)
    if f.link is not None and f.link == Link():
        kw["link"] = None
    if f.nvme is not None:
        cmb = f.nvme.cmb if f.nvme.cmb is not None and f.nvme.cmb.cmbsz else None
        ns = tuple(sorted({n for n in f.nvme.namespaces if NS_RE.match(n)}))
        kw["nvme"] = NvmeController(name=f.nvme.name, cmb=cmb, namespaces=ns)
    return dataclasses.replace(f, **kw)  # type: ignore[arg-type]


def sysfs_canonical(fabric: Fabric) -> Fabric:
    """The fabric as a sysfs tree can carry it (see the module docstring)."""
    funcs = tuple(canonical_function(f) for f in fabric.functions)
    h = fabric.host
    priv = None
    if funcs:
        priv = any(pciconfig.config_length(f) > pciconfig.UNPRIVILEGED for f in funcs)
    cfg = True if any(f.p2pmem is not None for f in funcs) else h.p2pdma_config
    host = dataclasses.replace(
        h, privileged=priv, p2pdma_config=cfg,
        iommu_driver=None if h.iommu is IommuMode.OFF else h.iommu_driver,
        cpu_vendor=h.cpu_vendor.strip() if h.cpu_vendor is not None else None)
    return dataclasses.replace(fabric, functions=funcs, host=host)


def unprivileged_view(fabric: Fabric) -> Fabric:
    """What a non-root reader sees of ``write_sysfs(fabric)``: 64 bytes of config,
    so no capability list, no port type, no MPS and no ACS (unknown, with the
    reason) wherever the config has a capability list."""
    canon = sysfs_canonical(fabric)
    reason = pciconfig.acs_unknown_reason(pciconfig.UNPRIVILEGED)
    funcs = tuple(
        dataclasses.replace(f, port_type=PortType.UNKNOWN, acs=None, acs_unknown=reason,
                            mps=None, mps_supported=None)
        if pciconfig.has_cap_list(f) else f
        for f in canon.functions)
    host = dataclasses.replace(canon.host, privileged=False if funcs else None)
    return dataclasses.replace(canon, functions=funcs, host=host)


def sysfs_losses(fabric: Fabric) -> list[str]:
    """Human-readable list of the facts a synthetic tree cannot carry as given."""
    canon = sysfs_canonical(fabric)
    out = []
    for a, b in zip(fabric.functions, canon.functions, strict=True):
        for fld in dataclasses.fields(PciFunction):
            va, vb = getattr(a, fld.name), getattr(b, fld.name)
            if va != vb:
                out.append(f"{a.bdf}: {fld.name} {va!r} is written as {vb!r}")
    for fld in dataclasses.fields(HostContext):
        va, vb = getattr(fabric.host, fld.name), getattr(canon.host, fld.name)
        if va != vb:
            out.append(f"host: {fld.name} {va!r} reads back as {vb!r}")
    return out


# ---------------------------------------------------------------------------
# writing

_BAD_NAME = re.compile(r"[/\x00]")


def _check_name(name: str, what: str) -> str:
    if not name or name in (".", "..") or _BAD_NAME.search(name) or len(name) > 255:
        raise InputError(f"{what} {name!r} cannot be a file name in a sysfs tree",
                         hint="use a plain name without '/' (e.g. nvme0, mlx5_core)")
    return name


class _Writer:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.made: set[Path] = set()  # directories known to exist: no syscall twice

    def p(self, rel: str) -> Path:
        return self.root / rel

    def _mkdir(self, path: Path) -> None:
        if path not in self.made:
            path.mkdir(parents=True, exist_ok=True)
            self.made.add(path)

    def mkdir(self, rel: str) -> None:
        self._mkdir(self.p(rel))

    def file(self, rel: str, data: str | bytes) -> None:
        path = self.p(rel)
        self._mkdir(path.parent)
        raw = data.encode("utf-8") if isinstance(data, str) else data
        # O_EXCL: never follow or overwrite something already there
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0),
                     0o644)
        with os.fdopen(fd, "wb") as fh:
            fh.write(raw)

    def link(self, rel: str, target_rel: str) -> None:
        path = self.p(rel)
        self._mkdir(path.parent)
        os.symlink(os.path.relpath(self.p(target_rel), path.parent), path)


def _hb_dir(hb: HostBridge | tuple[int, int]) -> str:
    dom, bus = (hb.domain, hb.bus) if isinstance(hb, HostBridge) else hb
    return f"sys/devices/pci{dom:04x}:{bus:02x}"


def _speed_text(v: float) -> str:
    return f"{_LINK_SPEED_TEXT.get(v, repr(v))} GT/s PCIe"


def write_sysfs(fabric: Fabric, root: str | Path, *, unprivileged: bool = False) -> Path:
    """Materialise ``fabric`` under ``root`` (``root/sys``, ``root/proc``).

    ``unprivileged``: every ``config`` holds only its first 64 bytes, as a non-root
    reader of a real sysfs sees it.  Refuses to write where ``sys`` or ``proc``
    already exist.  Returns ``root``."""
    root = Path(root)
    for sub in ("sys", "proc"):
        if os.path.lexists(root / sub):
            raise InputError(f"{root / sub} already exists",
                             hint="write a synthetic tree into a new or empty directory")
    fabric.validate()
    try:
        _write_all(fabric, root, unprivileged)
    except OSError as e:
        raise InputError(f"cannot write the tree: {e.strerror}",
                         where=str(e.filename or root)) from None
    return root


def _write_all(fabric: Fabric, root: Path, unprivileged: bool) -> None:
    root.mkdir(parents=True, exist_ok=True)
    w = _Writer(root)
    for hb in fabric.host_bridges:
        w.mkdir(_hb_dir(hb))
        if hb.numa_node is not None:
            w.file(f"{_hb_dir(hb)}/numa_node", f"{hb.numa_node}\n")
    dirs: dict[Bdf, str] = {}

    def dir_of(f: PciFunction) -> str:
        if f.bdf in dirs:
            return dirs[f.bdf]
        if f.parent is not None:
            up = dir_of(fabric.get(f.parent))
        else:
            up = _hb_dir(fabric.host_bridge_of(f.bdf))
        dirs[f.bdf] = f"{up}/{f.bdf}"
        return dirs[f.bdf]

    nvme_names: set[str] = set()
    groups: set[int] = set()
    for f in fabric.functions:
        _write_function(w, fabric, f, dir_of(f), dir_of, unprivileged)
        if f.iommu_group is not None:
            groups.add(f.iommu_group)
        if f.nvme is not None:
            if f.nvme.name in nvme_names:
                raise InputError(f"two NVMe controllers are named {f.nvme.name!r}")
            nvme_names.add(f.nvme.name)
            _write_nvme(w, f.nvme, dir_of(f))
    _write_host(w, fabric, groups)


def _write_function(w: _Writer, fabric: Fabric, f: PciFunction, d: str,
                    dir_of: Callable[[PciFunction], str], unprivileged: bool) -> None:
    w.mkdir(d)
    bdf = str(f.bdf)
    if f.vendor > 0xFFFF or f.device > 0xFFFF or f.class_code > 0xFFFFFF:
        raise InputError(f"{bdf}: vendor/device/class out of range")
    if f.header_type not in pciconfig.BARS_PER_HEADER:
        raise InputError(f"{bdf}: header type {f.header_type} is not 0, 1 or 2")
    w.file(f"{d}/vendor", f"0x{f.vendor:04x}\n")
    w.file(f"{d}/device", f"0x{f.device:04x}\n")
    w.file(f"{d}/class", f"0x{f.class_code:06x}\n")
    if f.subsystem_vendor is not None:
        w.file(f"{d}/subsystem_vendor", f"0x{f.subsystem_vendor:04x}\n")
    if f.subsystem_device is not None:
        w.file(f"{d}/subsystem_device", f"0x{f.subsystem_device:04x}\n")
    if f.revision is not None:
        w.file(f"{d}/revision", f"0x{f.revision:02x}\n")
    w.file(f"{d}/numa_node", f"{-1 if f.numa_node is None else f.numa_node}\n")
    w.file(f"{d}/irq", "0\n")  # lspci -v reads it
    cfg = pciconfig.encode(f)
    w.file(f"{d}/config", cfg[:pciconfig.UNPRIVILEGED] if unprivileged else cfg)
    lines = []
    bars = {b.index: b for b in f.bars}
    for i in range(11):  # 6 BARs, the ROM, 4 bridge windows
        b = bars.get(i)
        if b is None or b.size == 0:
            lines.append(f"0x{0:016x} 0x{0:016x} 0x{0:016x}")
            continue
        if b.end > 0xFFFF_FFFF_FFFF_FFFF:
            raise InputError(f"{bdf}: BAR {i} extends past the 64-bit address space")
        lines.append(f"0x{b.start:016x} 0x{b.end:016x} 0x{b.flags:016x}")
    w.file(f"{d}/resource", "\n".join(lines) + "\n")
    link = f.link
    if link is not None:
        if link.max_speed is not None:
            w.file(f"{d}/max_link_speed", _speed_text(link.max_speed) + "\n")
        if link.max_width is not None:
            w.file(f"{d}/max_link_width", f"{link.max_width}\n")
        if link.speed is not None:
            w.file(f"{d}/current_link_speed", _speed_text(link.speed) + "\n")
        if link.width is not None:
            w.file(f"{d}/current_link_width", f"{link.width}\n")
    if f.driver is not None:
        drv = _check_name(f.driver, f"{bdf}: driver")
        w.mkdir(f"sys/bus/pci/drivers/{drv}")
        w.link(f"{d}/driver", f"sys/bus/pci/drivers/{drv}")
        if not os.path.lexists(w.p(f"sys/bus/pci/drivers/{drv}/{bdf}")):
            w.link(f"sys/bus/pci/drivers/{drv}/{bdf}", d)
    if f.iommu_group is not None:
        g = f"sys/kernel/iommu_groups/{f.iommu_group}"
        w.mkdir(f"{g}/devices")
        w.link(f"{d}/iommu_group", g)
        w.link(f"{g}/devices/{bdf}", d)
    if f.physfn is not None:
        w.link(f"{d}/physfn", dir_of(fabric.get(f.physfn)))
    if f.p2pmem is not None:
        m = f.p2pmem
        w.file(f"{d}/p2pmem/size", f"{m.size}\n")
        w.file(f"{d}/p2pmem/available", f"{m.available}\n")
        w.file(f"{d}/p2pmem/published", f"{int(m.published)}\n")
        if m.allocate:
            w.file(f"{d}/p2pmem/allocate", b"")
    w.link(f"sys/bus/pci/devices/{bdf}", d)


def _write_nvme(w: _Writer, c: NvmeController, d: str) -> None:
    name = _check_name(c.name, "NVMe controller name")
    cd = f"{d}/nvme/{name}"
    w.mkdir(cd)
    w.link(f"{cd}/device", d)
    if c.cmb is not None:
        w.file(f"{cd}/cmb", f"cmbloc : x{c.cmb.cmbloc:08x}\ncmbsz  : x{c.cmb.cmbsz:08x}\n")
    for i, ns in enumerate(sorted(set(c.namespaces))):
        if NS_RE.match(ns):
            w.file(f"{cd}/{ns}/dev", f"259:{i}\n")
    w.link(f"sys/class/nvme/{name}", cd)


def _write_host(w: _Writer, fabric: Fabric, groups: set[int]) -> None:
    h = fabric.host
    w.mkdir("sys/bus/pci/devices")
    w.mkdir("proc/sys/kernel")
    if h.kernel_release is not None:
        w.file("proc/sys/kernel/osrelease", h.kernel_release + "\n")
    if h.arch is not None:
        w.file("proc/sys/kernel/arch", h.arch + "\n")
    if h.cmdline is not None:
        w.file("proc/cmdline", h.cmdline + "\n")
    cpu = []
    if h.cpu_vendor is not None:
        cpu.append(f"vendor_id\t: {h.cpu_vendor}")
    if h.cpu_family is not None:
        cpu.append(f"cpu family\t: {h.cpu_family}")
    if h.cpu_model is not None:
        cpu.append(f"model\t\t: {h.cpu_model}")
    if cpu:
        w.file("proc/cpuinfo", "processor\t: 0\n" + "\n".join(cpu) + "\n\n")
    cfg = h.p2pdma_config or any(f.p2pmem is not None for f in fabric.functions)
    if cfg or h.p2pdma_config is not None:
        line = b"CONFIG_PCI_P2PDMA=y\n" if cfg else b"# CONFIG_PCI_P2PDMA is not set\n"
        w.file("proc/config.gz", gzip.compress(b"CONFIG_PCI=y\n" + line, mtime=0))
    if h.iommu is not None or h.iommu_driver is not None:
        w.mkdir("sys/class/iommu")
        if h.iommu_driver is not None and h.iommu is not IommuMode.OFF:
            name = _check_name(iommu_entry_name(h.iommu_driver), "IOMMU driver")
            w.mkdir(f"sys/devices/virtual/iommu/{name}")
            w.link(f"sys/class/iommu/{name}", f"sys/devices/virtual/iommu/{name}")
    gtype = {IommuMode.TRANSLATED: "DMA", IommuMode.PASSTHROUGH: "identity"}.get(
        h.iommu) if h.iommu is not None else None
    if gtype is not None and not groups:
        groups = {0}
    for g in sorted(groups):
        w.mkdir(f"sys/kernel/iommu_groups/{g}/devices")
        if gtype is not None:
            w.file(f"sys/kernel/iommu_groups/{g}/type", gtype + "\n")
