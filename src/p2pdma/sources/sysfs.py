"""Read a Linux sysfs/procfs tree (live, synthetic or snapshot) into a :class:`Fabric`.

Everything is read under a *root*: ``ROOT/sys/...`` and ``ROOT/proc/...``;
``read_sysfs("/")`` is this machine.  The same reader runs over a snapshot
(:mod:`p2pdma.sources.snapshot`) through the :class:`~p2pdma.sources.tree.Tree`
abstraction, so the two can never disagree.

What is read, and from where:

- functions: ``sys/bus/pci/devices/*`` (links), resolved inside the tree to the
  device directory; its parent directory is the bridge above it (``bus->self``)
  or a host bridge ``pciDDDD:BB`` (then the function sits on a root bus).
- ids, class, revision, numa_node, link speed/width: the sysfs attributes.
- header type, multi-function bit, PCIe port type, MPS, bridge bus numbers, BAR
  bus addresses and the ACS capability: ``config`` (see :mod:`.pciconfig`).
- BARs: ``resource`` (CPU ranges and ``IORESOURCE_*`` flags).
- driver, iommu_group, physfn: the symlinks' names.
- ``p2pmem/`` (size, available, published, allocate present).
- NVMe: ``sys/class/nvme/*`` mapped to the PCI function through ``device``.
- host: proc/sys/kernel/osrelease, proc/cmdline, proc/cpuinfo,
  proc/sys/kernel/arch, sys/class/iommu, sys/kernel/iommu_groups/*/type,
  proc/config.gz (else boot/config-RELEASE).

A value the OS refused to give is recorded in ``Fabric.unreadable`` and left
unknown (None); a *malformed* value is a :class:`SysfsError` (or
:class:`SnapshotError`) naming the file.
"""

from __future__ import annotations

import re
import zlib
from dataclasses import dataclass
from pathlib import Path

from p2pdma.errors import InputError, SysfsError
from p2pdma.fabric.bdf import Bdf
from p2pdma.fabric.model import (
    IORESOURCE_IO,
    IORESOURCE_MEM,
    IORESOURCE_MEM_64,
    IORESOURCE_PREFETCH,
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
)
from p2pdma.sources import pciconfig
from p2pdma.sources.tree import Missing, RealTree, Tree, Unreadable, join, split

BDF_DIR_RE = re.compile(r"^([0-9a-f]{4,8}):([0-9a-f]{2}):([0-9a-f]{2})\.([0-7])$")
HB_DIR_RE = re.compile(r"^pci([0-9a-f]{4,8}):([0-9a-f]{2})$")
NS_RE = re.compile(r"^nvme\d+(?:c\d+)?n\d+$")
CMB_RE = re.compile(r"^cmbloc\s*:\s*x([0-9a-fA-F]{1,8})\s*\ncmbsz\s*:\s*x([0-9a-fA-F]{1,8})\s*$")
HEX_RE = re.compile(r"^0x[0-9a-fA-F]{1,16}$")
INT_RE = re.compile(r"^-?[0-9]{1,20}$")
SPEED_RE = re.compile(r"^([0-9][0-9.eE+-]*) GT/s")

PCI_DEVICES = "sys/bus/pci/devices"
NVME_CLASS = "sys/class/nvme"
IOMMU_CLASS = "sys/class/iommu"
IOMMU_GROUPS = "sys/kernel/iommu_groups"
CONFIG_GZ = "proc/config.gz"
MAX_CONFIG_GZ = 16 << 20  # compressed
MAX_CONFIG_TEXT = 64 << 20  # decompressed
MAX_CPUINFO = 16 << 20
ATTR_LIMIT = 64 << 10

# Entry names of /sys/class/iommu by driver; anything else is "<driver>-<n>".
IOMMU_ENTRY_PREFIX = {"dmar": "dmar", "amd-iommu": "ivhd"}


def read_sysfs(root: str | Path) -> Fabric:
    """The fabric of the machine whose sysfs and procfs are under ``root``."""
    tree = RealTree(root)
    if tree.kind("sys") != "dir":
        raise SysfsError("no sys/ directory here", where=str(root),
                         hint="--root must be the directory that holds sys/ and proc/ "
                              "(use / for this machine)")
    return read_tree(tree, origin=f"sysfs:{root}")


def read_tree(tree: Tree, *, origin: str, unreadable: tuple[str, ...] = ()) -> Fabric:
    return _Reader(tree).run(origin, unreadable)


def iommu_driver_from_entry(name: str) -> str:
    for drv, prefix in IOMMU_ENTRY_PREFIX.items():
        if re.fullmatch(re.escape(prefix) + r"\d+", name):
            return drv
    m = re.fullmatch(r"(.+?)-?\d+", name)
    return m[1] if m else name


def iommu_entry_name(driver: str) -> str:
    prefix = IOMMU_ENTRY_PREFIX.get(driver)
    return f"{prefix}0" if prefix else f"{driver}-0"


@dataclass
class _Found:
    bdf: Bdf
    path: str  # resolved device directory inside the tree
    parent: Bdf | None


class _Reader:
    def __init__(self, tree: Tree) -> None:
        self.t = tree
        self.unreadable: list[str] = []
        self.max_config = 0
        self.any_p2pmem = False

    # -- small helpers -----------------------------------------------------------

    def err(self, path: str | None, what: str, hint: str | None = None) -> InputError:
        return self.t.error(path, what, hint)

    def text(self, path: str, limit: int = ATTR_LIMIT) -> str | None:
        try:
            return self.t.read_text(path, limit)
        except Missing:
            return None
        except Unreadable as e:
            self.unreadable.append(f"{path}: {e.reason}")
            return None

    def hexattr(self, path: str, hi: int) -> int | None:
        s = self.text(path)
        if s is None:
            return None
        v = s.strip()
        if not HEX_RE.match(v) or int(v, 16) > hi:
            raise self.err(path, f"malformed value {v[:40]!r}",
                           hint=f"expected 0x... up to {hi:#x}")
        return int(v, 16)

    def intattr(self, path: str, lo: int, hi: int) -> int | None:
        s = self.text(path)
        if s is None:
            return None
        v = s.strip()
        if not INT_RE.match(v):
            raise self.err(path, f"malformed value {v[:40]!r}", hint="expected an integer")
        n = int(v, 10)
        if not lo <= n <= hi:
            raise self.err(path, f"value {n} is out of range {lo}..{hi}")
        return n

    @staticmethod
    def line(s: str | None) -> str | None:
        """A one-line procfs value without its newline."""
        if s is None:
            return None
        return s[:-1] if s.endswith("\n") else s

    # -- the walk ----------------------------------------------------------------

    def run(self, origin: str, unreadable: tuple[str, ...]) -> Fabric:
        self.unreadable.extend(unreadable)
        found, hbs = self.discover()
        funcs = [self.function(f) for f in found]
        by_path = {f.path: f.bdf for f in found}
        funcs = self.nvme(funcs, by_path)
        host = self.host(bool(funcs))
        try:
            return Fabric(functions=tuple(funcs), host_bridges=tuple(hbs.values()), host=host,
                          origin=origin, unreadable=tuple(self.unreadable)).validate()
        except InputError as e:
            raise self.err(None, f"the tree does not describe a consistent PCI fabric: {e.what}",
                           hint=e.hint) from None

    def discover(self) -> tuple[list[_Found], dict[tuple[int, int], HostBridge]]:
        hbs: dict[tuple[int, int], HostBridge] = {}
        try:
            top = self.t.list_dir("sys/devices")
        except Missing:
            top = []
        except Unreadable as e:
            self.unreadable.append(f"sys/devices: {e.reason}")
            top = []
        for name in top:
            m = HB_DIR_RE.match(name)
            if m and self.t.lkind(f"sys/devices/{name}") == "dir":
                self.add_hb(hbs, m, f"sys/devices/{name}")
        found: list[_Found] = []
        try:
            names = self.t.list_dir(PCI_DEVICES)
        except Missing:
            return found, hbs  # no PCI bus at all: an empty fabric is the truth
        except Unreadable as e:
            raise self.err(PCI_DEVICES, f"cannot list: {e.reason}") from None
        for name in names:
            path = f"{PCI_DEVICES}/{name}"
            m = BDF_DIR_RE.match(name)
            if not m:
                raise self.err(path, "is not named as a PCI address (DDDD:BB:DD.F)")
            try:
                real = self.t.resolve(path)
            except Missing:
                self.unreadable.append(f"{path}: dangling link")
                continue
            if self.t.kind(real) != "dir":
                raise self.err(path, "does not lead to a device directory")
            parts = split(real)
            if not parts or parts[-1] != name:
                raise self.err(path, f"leads to {real!r}, not to a directory named {name}")
            parent: Bdf | None = None
            up = parts[-2] if len(parts) >= 2 else ""
            pm = BDF_DIR_RE.match(up)
            if pm:
                parent = _bdf(pm)
            else:
                hm = HB_DIR_RE.match(up)
                if not hm:
                    raise self.err(path, f"leads to {real!r}, which is neither below a host "
                                         "bridge directory (pciDDDD:BB) nor below a PCI bridge")
                self.add_hb(hbs, hm, join(*parts[:-1]))
            found.append(_Found(_bdf(m), real, parent))
        return found, hbs

    def add_hb(self, hbs: dict[tuple[int, int], HostBridge], m: re.Match[str], path: str) -> None:
        dom, bus = int(m[1], 16), int(m[2], 16)
        if (dom, bus) in hbs:
            return
        # Not a kernel attribute: synthetic trees (write_sysfs) carry it here.
        numa = None
        if self.t.lkind(f"{path}/numa_node") == "file":
            numa = self.intattr(f"{path}/numa_node", -1, 1 << 20)
            numa = None if numa == -1 else numa
        hbs[(dom, bus)] = HostBridge(domain=dom, bus=bus, numa_node=numa)

    # -- one function --------------------------------------------------------------

    def function(self, f: _Found) -> PciFunction:
        d = f.path
        try:
            entries = set(self.t.list_dir(d))
        except Unreadable as e:
            raise self.err(d, f"cannot list: {e.reason}") from None
        cpath = f"{d}/config"
        try:
            cfg = self.t.read_bytes(cpath, pciconfig.FULL)
        except Missing:
            raise self.err(cpath, "missing: every PCI function has a config file") from None
        except Unreadable as e:
            raise self.err(cpath, f"cannot read: {e.reason}") from None
        def opt_hex(name: str, hi: int) -> int | None:
            return self.hexattr(f"{d}/{name}", hi) if name in entries else None

        vendor = opt_hex("vendor", 0xFFFF)
        device = opt_hex("device", 0xFFFF)
        class_code = opt_hex("class", 0xFFFFFF)
        try:
            facts = pciconfig.decode(cfg, class_code)
        except pciconfig.ConfigError as e:
            raise self.err(cpath, str(e)) from None
        if facts.acs_unknown == pciconfig.ALL_ONES_REASON:
            self.unreadable.append(f"{cpath}: {pciconfig.ALL_ONES_REASON}")
        self.max_config = max(self.max_config, facts.readable)
        if class_code is None:
            class_code = int.from_bytes(cfg[pciconfig.CFG_CLASS:pciconfig.CFG_CLASS + 3],
                                        "little")
        numa = None
        if "numa_node" in entries:
            numa = self.intattr(f"{d}/numa_node", -1, 1 << 20)
            numa = None if numa == -1 else numa
        bars = self.bars(f"{d}/resource", facts) if "resource" in entries else ()
        driver = self.link_name(d, "driver", entries)
        group_s = self.link_name(d, "iommu_group", entries)
        group = None
        if group_s is not None:
            if not group_s.isdigit():
                raise self.err(f"{d}/iommu_group", f"links to {group_s!r}, not a group number")
            group = int(group_s)
        physfn = None
        pf_s = self.link_name(d, "physfn", entries)
        if pf_s is not None:
            pm = BDF_DIR_RE.match(pf_s)
            if not pm:
                raise self.err(f"{d}/physfn", f"links to {pf_s!r}, not a PCI function")
            physfn = _bdf(pm)
        try:
            return PciFunction(
                bdf=f.bdf,
                vendor=facts.vendor if vendor is None else vendor,
                device=facts.device if device is None else device,
                class_code=class_code,
                subsystem_vendor=opt_hex("subsystem_vendor", 0xFFFF),
                subsystem_device=opt_hex("subsystem_device", 0xFFFF),
                revision=opt_hex("revision", 0xFF),
                header_type=facts.header_type,
                multifunction=facts.multifunction,
                port_type=facts.port_type,
                parent=f.parent,
                physfn=physfn,
                secondary_bus=facts.secondary_bus,
                subordinate_bus=facts.subordinate_bus,
                link=self.link(d, entries),
                mps=facts.mps,
                mps_supported=facts.mps_supported,
                bars=bars,
                driver=driver,
                iommu_group=group,
                numa_node=numa,
                acs=facts.acs,
                acs_unknown=facts.acs_unknown,
                p2pmem=self.p2pmem(f"{d}/p2pmem") if "p2pmem" in entries else None,
            )
        except ValueError as e:
            raise self.err(d, str(e)) from None

    def link_name(self, d: str, name: str, entries: set[str]) -> str | None:
        if name not in entries:
            return None
        path = f"{d}/{name}"
        try:
            target = self.t.read_link(path)
        except Missing:
            raise self.err(path, "is not a symbolic link") from None
        base = target.rstrip("/").rpartition("/")[2]
        if not base or base in (".", ".."):
            raise self.err(path, f"link target {target!r} has no name")
        return base

    def bars(self, path: str, facts: pciconfig.ConfigFacts) -> tuple[Bar, ...]:
        s = self.text(path)
        if s is None:
            return ()
        rows: list[tuple[int, int, int, int]] = []
        for i, ln in enumerate(s.splitlines()[:6]):
            parts = ln.split()
            if len(parts) != 3 or not all(HEX_RE.match(p) for p in parts):
                raise self.err(path, f"line {i + 1} {ln[:60]!r} is not three hex numbers")
            start, end, flags = (int(p, 16) for p in parts)
            if not flags & (IORESOURCE_IO | IORESOURCE_MEM):
                continue  # unused BAR
            if end < start - 1:
                raise self.err(path, f"line {i + 1}: end {end:#x} is before start {start:#x}")
            rows.append((i, start, end - start + 1, flags))
        if not rows:
            return ()
        indices = {r[0] for r in rows}
        out = []
        for i, start, size, flags in rows:
            is_mem = bool(flags & IORESOURCE_MEM)
            b = Bar(index=i, start=start, size=size, is_memory=is_mem,
                    is_64bit=is_mem and bool(flags & IORESOURCE_MEM_64),
                    prefetchable=is_mem and bool(flags & IORESOURCE_PREFETCH))
            bus = pciconfig.bar_bus_address(b, facts.bar_regs, indices, b.is_64bit)
            if bus is not None and bus != start:
                b = Bar(index=i, start=start, size=size, is_memory=b.is_memory,
                        is_64bit=b.is_64bit, prefetchable=b.prefetchable, bus_start=bus)
            out.append(b)
        return tuple(out)

    def speed(self, path: str) -> float | None:
        s = self.text(path)
        if s is None:
            return None
        v = s.strip()
        if v.startswith("Unknown"):
            return None
        m = SPEED_RE.match(v)
        try:
            if not m:
                raise ValueError
            return float(m[1])
        except ValueError:
            raise self.err(path, f"malformed link speed {v[:40]!r}",
                           hint='expected e.g. "16.0 GT/s PCIe"') from None

    def link(self, d: str, entries: set[str]) -> Link | None:
        def width(name: str) -> int | None:
            if name not in entries:
                return None
            w = self.intattr(f"{d}/{name}", 0, 255)
            # 0xff is the kernel's PCIE_LNK_WIDTH_UNKNOWN (e.g. a root port with no
            # link trained, as a real 6.12 kernel shows under QEMU): unknown, not bad.
            if w == 0xFF:
                return None
            if w is not None and w > 32:
                raise self.err(f"{d}/{name}", f"link width {w} is not a PCIe width",
                               hint="PCIe widths are 1..32 lanes (255 = unknown)")
            return w

        def spd(name: str) -> float | None:
            return self.speed(f"{d}/{name}") if name in entries else None

        link = Link(max_speed=spd("max_link_speed"), max_width=width("max_link_width"),
                    speed=spd("current_link_speed"), width=width("current_link_width"))
        return None if link == Link() else link

    def p2pmem(self, d: str) -> P2PMem | None:
        if self.t.kind(d) != "dir":
            return None
        size = self.intattr(f"{d}/size", 0, 1 << 64)
        avail = self.intattr(f"{d}/available", 0, 1 << 64)
        pub = self.intattr(f"{d}/published", 0, 1)
        if size is None or avail is None or pub is None:
            self.unreadable.append(f"{d}: size/available/published incomplete")
            return None
        self.any_p2pmem = True
        return P2PMem(size=size, available=avail, published=bool(pub),
                      allocate=self.t.lkind(f"{d}/allocate") is not None)

    # -- NVMe ------------------------------------------------------------------------

    def nvme(self, funcs: list[PciFunction], by_path: dict[str, Bdf]) -> list[PciFunction]:
        try:
            names = self.t.list_dir(NVME_CLASS)
        except Missing:
            return funcs
        except Unreadable as e:
            self.unreadable.append(f"{NVME_CLASS}: {e.reason}")
            return funcs
        ctrls: dict[Bdf, NvmeController] = {}
        for name in names:
            path = f"{NVME_CLASS}/{name}"
            try:
                real = self.t.resolve(path)
                dev = self.t.resolve(f"{real}/device")
            except Missing:
                continue  # not backed by a device (or dangling): not a PCI controller
            bdf = by_path.get(dev)
            if bdf is None:
                continue  # NVMe over fabrics, or a function outside the PCI tree
            if bdf in ctrls:
                self.unreadable.append(f"{path}: second NVMe controller on {bdf} ignored")
                continue
            entries = self.t.list_dir(real)
            cmb = None
            if "cmb" in entries:
                s = self.text(f"{real}/cmb")
                if s is not None:
                    m = CMB_RE.match(s)
                    if not m:
                        raise self.err(f"{real}/cmb", f"malformed CMB registers {s[:60]!r}",
                                       hint='expected "cmbloc : x%08x\\ncmbsz  : x%08x"')
                    loc, sz = int(m[1], 16), int(m[2], 16)
                    cmb = Cmb(cmbloc=loc, cmbsz=sz) if sz else None
            ns = tuple(sorted(n for n in entries
                              if NS_RE.match(n) and self.t.kind(f"{real}/{n}") == "dir"))
            ctrls[bdf] = NvmeController(name=name, cmb=cmb, namespaces=ns)
        if not ctrls:
            return funcs
        out = []
        for f in funcs:
            c = ctrls.get(f.bdf)
            out.append(f if c is None else _replace(f, nvme=c))
        return out

    # -- host context --------------------------------------------------------------

    def host(self, have_funcs: bool) -> HostContext:
        release = self.line(self.text("proc/sys/kernel/osrelease"))
        cmdline = self.line(self.text("proc/cmdline", 1 << 20))
        arch = self.line(self.text("proc/sys/kernel/arch"))
        cpu = self.cpuinfo()
        if arch is None:
            arch = cpu.get("_arch")
        fam = cpu.get("cpu family")
        model = cpu.get("model")
        iommu, drv = self.iommu()
        cfg = self.kconfig(release)
        if self.any_p2pmem:
            cfg = True  # a p2pmem directory proves CONFIG_PCI_P2PDMA
        priv = None
        if have_funcs:
            priv = self.max_config > pciconfig.UNPRIVILEGED
        return HostContext(
            kernel_release=release, cmdline=cmdline, arch=arch,
            cpu_vendor=cpu.get("vendor_id"),
            cpu_family=self.cpu_int(fam, "cpu family"),
            cpu_model=self.cpu_int(model, "model"),
            iommu=iommu, iommu_driver=drv, p2pdma_config=cfg, privileged=priv)

    def cpu_int(self, v: str | None, key: str) -> int | None:
        if v is None:
            return None
        if not INT_RE.match(v) or v.startswith("-"):
            raise self.err("proc/cpuinfo", f"{key!r} is {v[:40]!r}, not a number")
        return int(v, 10)

    def cpuinfo(self) -> dict[str, str]:
        s = self.text("proc/cpuinfo", MAX_CPUINFO)
        out: dict[str, str] = {}
        if s is None:
            return out
        for ln in s.splitlines():
            if not ln.strip():
                if out:
                    break  # the first processor's block is enough
                continue
            key, sep, val = ln.partition(":")
            if sep:
                out.setdefault(key.strip(), val.strip())
        flags = out.get("flags", "").split()
        if "lm" in flags:
            out["_arch"] = "x86_64"
        elif out.get("CPU architecture") == "8":
            out["_arch"] = "aarch64"
        return out

    def iommu(self) -> tuple[IommuMode | None, str | None]:
        present: bool | None = None
        drv = None
        try:
            # class entries are (links to) device directories; ignore stray files
            names = [n for n in self.t.list_dir(IOMMU_CLASS)
                     if self.t.kind(f"{IOMMU_CLASS}/{n}") == "dir"]
            present = bool(names)
            if names:
                drv = iommu_driver_from_entry(names[0])
        except Missing:
            pass
        except Unreadable as e:
            self.unreadable.append(f"{IOMMU_CLASS}: {e.reason}")
        types: set[str] = set()
        try:
            groups = self.t.list_dir(IOMMU_GROUPS)
        except Missing:
            groups = []
        except Unreadable as e:
            self.unreadable.append(f"{IOMMU_GROUPS}: {e.reason}")
            groups = []
        for g in groups:
            if g.isdigit() and self.t.kind(f"{IOMMU_GROUPS}/{g}/type") == "file":
                v = self.text(f"{IOMMU_GROUPS}/{g}/type")
                if v is not None:
                    types.add(v.strip())
        if types & {"DMA", "DMA-FQ"}:
            return IommuMode.TRANSLATED, drv
        if "identity" in types:
            return IommuMode.PASSTHROUGH, drv
        if present is False:
            return IommuMode.OFF, drv
        return None, drv  # no class directory, or units present but their use unknown

    def kconfig(self, release: str | None) -> bool | None:
        """CONFIG_PCI_P2PDMA from proc/config.gz, else boot/config-RELEASE (optional:
        it lies outside sys/ and proc/, but distributions install it)."""
        try:
            raw = self.t.read_bytes(CONFIG_GZ, MAX_CONFIG_GZ)
        except Missing:
            raw = None
        except Unreadable as e:
            self.unreadable.append(f"{CONFIG_GZ}: {e.reason}")
            raw = None
        if raw is not None:
            d = zlib.decompressobj(16 + zlib.MAX_WBITS)
            try:
                text = d.decompress(raw, MAX_CONFIG_TEXT)
            except zlib.error as e:
                raise self.err(CONFIG_GZ, f"is not gzip data ({e})") from None
            if d.unconsumed_tail:
                raise self.err(CONFIG_GZ, f"decompresses to more than {MAX_CONFIG_TEXT} bytes")
        else:
            if not release or "/" in release or release in (".", ".."):
                return None
            boot = f"boot/config-{release}"
            try:
                text = self.t.read_bytes(boot, MAX_CONFIG_TEXT)
            except Missing:
                return None
            except Unreadable as e:
                self.unreadable.append(f"{boot}: {e.reason}")
                return None
        for ln in text.splitlines():
            if ln.startswith(b"CONFIG_PCI_P2PDMA="):
                return ln.strip() == b"CONFIG_PCI_P2PDMA=y"
        return False  # absent or "# ... is not set": not built in


def _bdf(m: re.Match[str]) -> Bdf:
    return Bdf(int(m[1], 16), int(m[2], 16), int(m[3], 16), int(m[4]))


def _replace(f: PciFunction, **kw: object) -> PciFunction:
    import dataclasses

    return dataclasses.replace(f, **kw)  # type: ignore[arg-type]
