"""Userspace P2P memory: ``/sys/bus/pci/devices/<BDF>/p2pmem/allocate`` (Linux >= 6.2).

Each ``mmap()`` of ``allocate`` (MAP_SHARED, file offset 0) takes one contiguous
range from the provider's pool; ``munmap()`` returns it page by page.  Everything
that can go wrong is diagnosed *before* the attempt (missing device, missing
``p2pmem`` dir and why, permissions, a size larger than ``available``) and again
*after* a refusal (the errno the kernel returned, read against a fresh look at
sysfs).

CPU access to P2P memory is uncached MMIO (slow), and after the provider is
removed any access raises SIGBUS.  So the CPU only touches the buffer in a forked
child (:func:`cpu_pattern_check`): a SIGBUS kills the child, not us.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import faulthandler
import gc
import mmap
import os
import signal
import stat
import struct
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType

from p2pdma.errors import InputError, KernelError, P2PDMAError
from p2pdma.fabric.bdf import Bdf
from p2pdma.fabric.model import Cmb
from p2pdma.host.sysroot import (
    kernel_config_option,
    kernel_release,
    pci_device_dir,
    read_int,
    read_text,
    release_tuple,
    under,
)

PAGE_SIZE = mmap.PAGESIZE
#: ``memremap_compat_align()`` on x86-64 (one memory-hotplug subsection): a CMB whose
#: size or BAR start is not a multiple of it is skipped silently by nvme_map_cmb().
COMPAT_ALIGN = 2 << 20
NVME_CLASS = 0x010802


def round_up_pages(n: int) -> int:
    return -(-n // PAGE_SIZE) * PAGE_SIZE


def human(n: int) -> str:
    """``2 MiB``, ``1.5 GiB``, ``512 B``."""
    for unit, scale in (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if n >= scale:
            return f"{n / scale:.2f}".rstrip("0").rstrip(".") + f" {unit}"
    return f"{n} B"


# ---------------------------------------------------------------------------
# sysfs state


@dataclass(frozen=True)
class P2PMemState:
    """``p2pmem/{size,available,published}`` and whether ``allocate`` exists."""

    size: int
    available: int
    published: bool
    has_allocate: bool

    def to_json(self) -> dict[str, object]:
        return {
            "size": self.size,
            "available": self.available,
            "published": self.published,
            "allocate": self.has_allocate,
        }


def read_p2pmem_state(root: str | os.PathLike[str], bdf: Bdf) -> P2PMemState:
    """Read the provider's pool counters; raises when there is no ``p2pmem`` dir."""
    d = pci_device_dir(root, bdf) / "p2pmem"
    if not d.is_dir():
        raise diagnose_missing_p2pmem(root, bdf)
    published = read_int(d / "published")
    return P2PMemState(
        size=read_int(d / "size"),
        available=read_int(d / "available"),
        published=published != 0,
        has_allocate=(d / "allocate").exists(),
    )


# ---------------------------------------------------------------------------
# NVMe CMB decoding: why a CMB did or did not become P2P memory (spec §7.1)


@dataclass(frozen=True)
class CmbFinding:
    controller: str
    cmbloc: int
    cmbsz: int
    registers_ok: bool  # the kernel's nvme_map_cmb() checks would pass
    publishable: bool  # WDS and RDS set
    reason: str
    bar: int | None = None
    offset: int | None = None
    size: int | None = None

    def to_json(self) -> dict[str, object]:
        return {
            "controller": self.controller,
            "cmbloc": f"{self.cmbloc:#010x}",
            "cmbsz": f"{self.cmbsz:#010x}",
            "bar": self.bar,
            "offset": self.offset,
            "size": self.size,
            "registers_ok": self.registers_ok,
            "publishable": self.publishable,
            "reason": self.reason,
        }


def nvme_controllers_of(root: str | os.PathLike[str], bdf: Bdf) -> list[str]:
    """Names (``nvme0``) of the NVMe controllers bound to a PCI function."""
    names: set[str] = set()
    nvme_dir = pci_device_dir(root, bdf) / "nvme"
    if nvme_dir.is_dir():
        names.update(p.name for p in nvme_dir.iterdir())
    cls = under(root, "sys/class/nvme")
    if cls.is_dir():
        for ctrl in cls.iterdir():
            try:
                target = os.readlink(ctrl / "device")
            except OSError:
                continue
            if Path(target).name == str(bdf):
                names.add(ctrl.name)
    return sorted(names)


def parse_cmb_attr(text: str) -> tuple[int, int] | None:
    """``cmbloc : x%08x`` / ``cmbsz  : x%08x`` → (cmbloc, cmbsz)."""
    values: dict[str, int] = {}
    for line in text.splitlines():
        key, sep, val = line.partition(":")
        if not sep:
            continue
        val = val.strip().lstrip("x").removeprefix("0x")
        try:
            values[key.strip()] = int(val, 16)
        except ValueError:
            return None
    if "cmbloc" in values and "cmbsz" in values:
        return values["cmbloc"], values["cmbsz"]
    return None


def read_bar_resources(root: str | os.PathLike[str], bdf: Bdf) -> dict[int, tuple[int, int]]:
    """BAR index → (CPU start, size) from the device's ``resource`` file."""
    text = read_text(pci_device_dir(root, bdf) / "resource")
    bars: dict[int, tuple[int, int]] = {}
    if not text:
        return bars
    for index, line in enumerate(text.splitlines()[:6]):
        parts = line.split()
        if len(parts) < 2:
            continue
        try:
            start, end = int(parts[0], 16), int(parts[1], 16)
        except ValueError:
            continue
        if end > start:
            bars[index] = (start, end - start + 1)
    return bars


def decode_cmb(
    controller: str, cmbloc: int, cmbsz: int, bars: dict[int, tuple[int, int]]
) -> CmbFinding:
    """Replay nvme_map_cmb()'s checks on the register values (spec §7.1 steps 3-11)."""
    cmb = Cmb(cmbloc=cmbloc, cmbsz=cmbsz)
    flags = cmb.flags
    publishable = flags["WDS"] and flags["RDS"]

    def finding(ok: bool, reason: str, size: int | None = None) -> CmbFinding:
        return CmbFinding(controller, cmbloc, cmbsz, ok, publishable, reason,
                          cmb.bar, cmb.offset, cmb.size if size is None else size)

    if cmbsz == 0:
        return finding(False, "the controller reports no CMB (CMBSZ = 0)")
    if cmb.bar not in bars:
        return finding(False, f"the CMB is in BAR{cmb.bar}, which has no assigned memory range")
    bar_start, bar_size = bars[cmb.bar]
    if cmb.offset > bar_size:
        return finding(
            False,
            f"the CMB offset {cmb.offset:#x} lies beyond BAR{cmb.bar} "
            f"({human(bar_size)}); the driver skips it",
        )
    size = min(cmb.size, bar_size - cmb.offset)
    clipped = (
        f" (clipped from {human(cmb.size)} to the BAR)" if size < cmb.size else ""
    )
    if size % COMPAT_ALIGN or bar_start % COMPAT_ALIGN:
        what = "size" if size % COMPAT_ALIGN else "BAR start"
        return finding(
            False,
            f"the CMB {what} is not a multiple of {human(COMPAT_ALIGN)} "
            f"(size {human(size)}{clipped}, BAR{cmb.bar} at {bar_start:#x}): "
            "nvme_map_cmb() skips misaligned or too small CMBs silently",
            size,
        )
    if not publishable:
        missing = [k for k in ("WDS", "RDS") if not flags[k]]
        return finding(
            True,
            f"the CMB ({human(size)}{clipped}) can be registered but lacks "
            f"{'/'.join(missing)} in CMBSZ, so the driver does not publish it",
            size,
        )
    return finding(True, f"the CMB ({human(size)}{clipped}) is registrable and publishable", size)


def read_cmb_findings(root: str | os.PathLike[str], bdf: Bdf) -> list[CmbFinding]:
    bars = read_bar_resources(root, bdf)
    out: list[CmbFinding] = []
    for name in nvme_controllers_of(root, bdf):
        text = read_text(under(root, "sys/class/nvme", name, "cmb"))
        if text is None:
            text = read_text(pci_device_dir(root, bdf) / "nvme" / name / "cmb")
        if text is None:
            # 6.16+ only shows the attribute when a CMB is mapped.
            continue
        regs = parse_cmb_attr(text)
        if regs is not None:
            out.append(decode_cmb(name, regs[0], regs[1], bars))
    return out


# ---------------------------------------------------------------------------
# Diagnosis


def _device_exists(root: str | os.PathLike[str], bdf: Bdf) -> bool:
    return pci_device_dir(root, bdf).is_dir()


def missing_device_error(root: str | os.PathLike[str], bdf: Bdf) -> KernelError:
    base = under(root, "sys/bus/pci/devices")
    near = ""
    if base.is_dir():
        same_bus = sorted(p.name for p in base.iterdir() if p.name[:7] == str(bdf)[:7])
        if same_bus:
            near = f"; devices on that bus: {', '.join(same_bus[:8])}"
    return KernelError(
        "ENODEV",
        f"no PCI device {bdf}",
        where=str(pci_device_dir(root, bdf)),
        hint=f"check the address with lspci -D (or p2pdma topo){near}; a device that "
        "was removed comes back with: echo 1 > /sys/bus/pci/rescan",
    )


def diagnose_missing_p2pmem(root: str | os.PathLike[str], bdf: Bdf) -> KernelError:
    """Why a device has no ``p2pmem`` directory (or no ``allocate`` in it)."""
    dev = pci_device_dir(root, bdf)
    if not dev.is_dir():
        return missing_device_error(root, bdf)
    release = kernel_release(root)
    rel = release_tuple(release)
    where = str(dev / "p2pmem")
    if (dev / "p2pmem").is_dir():
        # The dir exists but allocate does not: a kernel older than 6.2.
        return KernelError(
            "EOPNOTSUPP",
            f"{bdf} has P2P memory but no p2pmem/allocate (kernel {release or 'unknown'}): "
            "userspace allocation appeared in Linux 6.2",
            where=where,
            hint="boot a kernel >= 6.2 built with CONFIG_PCI_P2PDMA=y",
        )
    config, config_src = kernel_config_option(root, "CONFIG_PCI_P2PDMA", release)
    if config == "n":
        return KernelError(
            "EOPNOTSUPP",
            f"kernel {release or '?'} is built without CONFIG_PCI_P2PDMA, so no device "
            "has P2P memory",
            where=config_src,
            hint="build or install a kernel with CONFIG_PCI_P2PDMA=y (it needs ZONE_DEVICE, "
            "MEMORY_HOTPLUG/HOTREMOVE and SPARSEMEM_VMEMMAP); most distro kernels lack it",
        )
    notes: list[str] = []
    tail: list[str] = []  # kernel-wide caveats, after the device-specific reasons
    if config is None:
        tail.append(
            "(the kernel config is unreadable: no /proc/config.gz or /boot/config-"
            f"{release}, so CONFIG_PCI_P2PDMA could not be checked)"
        )
    if rel is not None and rel < (6, 2):
        notes.append(f"kernel {release} is older than 6.2 and has no p2pmem/allocate at all")
    cls = read_text(dev / "class")
    driver: str | None = None
    with contextlib.suppress(OSError):
        driver = Path(os.readlink(dev / "driver")).name
    if cls is not None and _int_or_none(cls) == NVME_CLASS:
        if driver is None:
            return KernelError(
                "ENODEV",
                f"{bdf} is an NVMe controller with no driver bound, so its CMB is not mapped",
                where=where,
                hint=f"bind it: echo {bdf} > /sys/bus/pci/drivers/nvme/bind",
            )
        findings = read_cmb_findings(root, bdf)
        if not findings:
            notes.append(
                "the NVMe controller shows no CMB (no 'cmb' attribute): it has no "
                "Controller Memory Buffer, or the kernel did not map one"
            )
        for f in findings:
            if not f.registers_ok:
                notes.append(f"{f.controller}: {f.reason}")
            else:
                notes.append(
                    f"{f.controller}: {f.reason}, yet no pool exists: registration "
                    "failed (look for 'failed to register the CMB' in dmesg; VM BAR "
                    "layouts often cause it) or CONFIG_PCI_P2PDMA is off"
                )
        return KernelError(
            "ENODEV",
            f"{bdf} ({driver}) has no P2P memory: "
            + ("; ".join(notes + tail) if notes else "the NVMe driver registered no CMB"),
            where=where,
            hint="pick a controller whose CMB is 2 MiB aligned with WDS+RDS (p2pdma topo "
            "lists providers); in QEMU use -device nvme,cmb_size_mb=64",
        )
    notes.insert(
        0,
        f"{bdf} (driver {driver or 'none'}) is not a P2P memory provider: only drivers that "
        "register memory (NVMe CMBs, p2pmem-pci, some RDMA/accelerator drivers) create "
        "p2pmem/",
    )
    return KernelError(
        "ENODEV",
        "; ".join(notes + tail),
        where=where,
        hint="list the providers on this machine with: ls -d /sys/bus/pci/devices/*/p2pmem",
    )


def _int_or_none(text: str) -> int | None:
    try:
        return int(text, 0)
    except ValueError:
        return None


def _access_error(path: Path, err: OSError) -> KernelError:
    try:
        st = path.stat()
        mode = stat.filemode(st.st_mode)
        owner = f"mode {mode} ({st.st_mode & 0o777:04o}), uid {st.st_uid}, gid {st.st_gid}"
    except OSError:
        owner = "mode unknown"
    return KernelError(
        "EACCES",
        f"permission denied opening p2pmem/allocate for read+write ({owner})",
        where=str(path),
        hint="run as root, or as a member of the file's group (the kernel creates it 0660 "
        "root:root; a udev rule can chgrp it)",
    )


# ---------------------------------------------------------------------------
# The mapping


@dataclass
class P2PBuffer:
    """One live mapping of ``allocate``: ``length`` bytes of one provider's pool."""

    root: str
    bdf: Bdf
    requested: int
    length: int
    before: P2PMemState
    mapping: mmap.mmap | None
    after_map: P2PMemState | None = None
    after_unmap: P2PMemState | None = None
    notes: list[str] = field(default_factory=list)

    kind = "p2p"

    @property
    def view(self) -> memoryview:
        if self.mapping is None:
            raise P2PDMAError("the P2P buffer is already unmapped", where=str(self.bdf))
        return memoryview(self.mapping)

    def address(self) -> int:
        """The buffer's virtual address in this process (for pagemap)."""
        if self.mapping is None:
            raise P2PDMAError("the P2P buffer is already unmapped", where=str(self.bdf))
        anchor = ctypes.c_char.from_buffer(self.mapping)
        try:
            return ctypes.addressof(anchor)
        finally:
            del anchor

    def provider_present(self) -> bool:
        return (pci_device_dir(self.root, self.bdf) / "p2pmem").is_dir()

    def close(self) -> P2PMemState | None:
        """munmap; returns the pool state afterwards (None if the device is gone)."""
        if self.mapping is not None:
            try:
                self.mapping.close()
            except BufferError:
                # A memoryview slice is still alive somewhere (e.g. in a traceback); collect
                # it and retry, else the pages go back to the pool at process exit.
                gc.collect()
                try:
                    self.mapping.close()
                except BufferError:
                    self.notes.append("the buffer could not be unmapped before exit (a view "
                                      "of it is still referenced); it is freed at exit")
                    return None
            self.mapping = None
            try:
                self.after_unmap = read_p2pmem_state(self.root, self.bdf)
            except P2PDMAError:
                self.after_unmap = None
        return self.after_unmap

    def __enter__(self) -> P2PBuffer:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


def precheck(
    root: str | os.PathLike[str], bdf: Bdf, size: int, *, check_available: bool = True
) -> tuple[P2PMemState, list[str]]:
    """Everything that can be known to fail before mmap: returns (pool state, notes)."""
    if size <= 0:
        raise InputError(f"size must be positive, got {size}", hint="e.g. 2M or 64KiB")
    length = round_up_pages(size)
    if not _device_exists(root, bdf):
        raise missing_device_error(root, bdf)
    before = read_p2pmem_state(root, bdf)
    if not before.has_allocate:
        raise diagnose_missing_p2pmem(root, bdf)
    notes: list[str] = []
    if not before.published:
        notes.append(
            f"{bdf}'s P2P memory is registered but not published: mapping it works, but "
            "kernel users that search for a provider (nvmet auto mode) ignore it"
        )
    if check_available and length > before.available:
        raise KernelError(
            "ENOMEM",
            f"{human(length)} requested but only {human(before.available)} of "
            f"{human(before.size)} is available",
            where=str(pci_device_dir(root, bdf) / "p2pmem" / "available"),
            hint="ask for less, or release other mappings of this provider (each mmap holds "
            "its pages until munmap or process exit)",
        )
    return before, notes


def map_p2pmem(
    root: str | os.PathLike[str], bdf: Bdf, size: int, *, check_available: bool = True
) -> P2PBuffer:
    """Map ``size`` bytes (rounded up to pages) of ``bdf``'s P2P memory."""
    root_s = str(root)
    before, notes = precheck(root_s, bdf, size, check_available=check_available)
    length = round_up_pages(size)
    alloc_path = pci_device_dir(root_s, bdf) / "p2pmem" / "allocate"
    try:
        fd = os.open(alloc_path, os.O_RDWR | os.O_CLOEXEC)
    except PermissionError as err:
        raise _access_error(alloc_path, err) from None
    except FileNotFoundError:
        if not _device_exists(root_s, bdf):
            raise missing_device_error(root_s, bdf) from None
        raise diagnose_missing_p2pmem(root_s, bdf) from None
    try:
        try:
            mm = mmap.mmap(
                fd, length, flags=mmap.MAP_SHARED,
                prot=mmap.PROT_READ | mmap.PROT_WRITE, offset=0,
            )
        except OSError as err:
            raise _mmap_error(root_s, bdf, length, err) from None
        except ValueError as err:
            # Python checks the length against st_size; the kernel's file is 1 TiB.
            raise InputError(
                f"cannot map {human(length)}: {err}",
                where=str(alloc_path),
                hint="p2pmem/allocate should report a size of 1 TiB; is this the kernel's file?",
            ) from None
    finally:
        os.close(fd)  # the mapping keeps the file alive
    buf = P2PBuffer(root_s, bdf, size, length, before, mm, notes=notes)
    try:
        buf.after_map = read_p2pmem_state(root_s, bdf)
    except P2PDMAError:
        buf.after_map = None
    return buf


def _mmap_error(root: str, bdf: Bdf, length: int, err: OSError) -> KernelError:
    where = str(pci_device_dir(root, bdf) / "p2pmem" / "allocate")
    code = err.errno
    if code == errno.ENOMEM:
        try:
            now = read_p2pmem_state(root, bdf)
            avail = f"{human(now.available)} of {human(now.size)} is available"
        except P2PDMAError:
            avail = "the pool could not be read back"
        return KernelError(
            "ENOMEM",
            f"no contiguous free run of {human(length)} in any one chunk of {bdf}'s pool "
            f"({avail}; free space may be fragmented or split across chunks)",
            where=where,
            hint="ask for a smaller buffer, or unmap other buffers of this provider",
        )
    if code == errno.ENODEV:
        gone = not _device_exists(root, bdf)
        return KernelError(
            "ENODEV",
            f"{bdf} " + ("was removed" if gone else "is being torn down (driver unbinding)")
            + " while mapping its P2P memory",
            where=where,
            hint="re-bind the driver or rescan the bus (echo 1 > /sys/bus/pci/rescan), "
            "then try again",
        )
    if code in (errno.EACCES, errno.EPERM):
        return _access_error(Path(where), err)
    if code == errno.EINVAL:
        return KernelError(
            "EINVAL",
            f"the kernel refused the mapping of {human(length)} (it needs MAP_SHARED, file "
            "offset 0 and a length > 0)",
            where=where,
            hint="this is a bug in p2pdma if it happens; please report it",
        )
    name = errno.errorcode.get(code or 0, "EIO")
    return KernelError(name, f"mmap failed: {os.strerror(code or errno.EIO)}", where=where)


# ---------------------------------------------------------------------------
# Where did the memory come from


def physical_address(virtual: int) -> int | None:
    """The CPU physical address behind ``virtual`` from /proc/self/pagemap (root only)."""
    try:
        with open("/proc/self/pagemap", "rb") as f:
            f.seek((virtual // PAGE_SIZE) * 8)
            raw = f.read(8)
    except OSError:
        return None
    if len(raw) != 8:
        return None
    entry: int = struct.unpack("<Q", raw)[0]
    present = bool(entry >> 63 & 1)
    pfn = entry & ((1 << 55) - 1)
    if not present or pfn == 0:  # PFNs are hidden from non-root readers
        return None
    return pfn * PAGE_SIZE + virtual % PAGE_SIZE


@dataclass(frozen=True)
class Origin:
    phys: int | None
    bar: int | None
    bar_start: int | None
    bar_offset: int | None
    cmb_offset: int | None
    controller: str | None
    bus: int | None = None  # the PCI bus address peers DMA to
    bus_note: str | None = None

    def to_json(self) -> dict[str, object]:
        return {
            "cpu_physical": None if self.phys is None else f"{self.phys:#x}",
            "bar": self.bar,
            "bar_start": None if self.bar_start is None else f"{self.bar_start:#x}",
            "offset_in_bar": self.bar_offset,
            "offset_in_cmb": self.cmb_offset,
            "controller": self.controller,
            "bus_address": None if self.bus is None else f"{self.bus:#x}",
            "bus_note": self.bus_note,
        }


def locate(buf: P2PBuffer) -> Origin:
    """Which BAR (and CMB offset) the buffer's first page lives in, when knowable."""
    phys = physical_address(buf.address())
    bars = read_bar_resources(buf.root, buf.bdf)
    for index, (start, size) in bars.items():
        if phys is not None and start <= phys < start + size:
            cmb_off = None
            ctrl = None
            for f in read_cmb_findings(buf.root, buf.bdf):
                if f.bar == index and f.offset is not None:
                    cmb_off, ctrl = phys - start - f.offset, f.controller
            bus, note = _bus_address(buf, index, phys - start)
            return Origin(phys, index, start, phys - start, cmb_off, ctrl, bus, note)
    return Origin(phys, None, None, None, None, None)


def _bus_address(buf: P2PBuffer, bar: int, offset: int) -> tuple[int | None, str]:
    """The bus address from the fabric's BAR (config space); the CPU address otherwise."""
    try:
        from p2pdma.sources.sysfs import read_sysfs  # lazy: heavy, and optional here

        fabric = read_sysfs(buf.root)
        b = fabric.get(buf.bdf).bar(bar)
    except Exception as err:  # the origin is informative only; never fail the run
        return None, f"bus address unknown ({type(err).__name__}: {err})"
    if b is None:
        return None, "bus address unknown (BAR not in the fabric)"
    if b.bus_start is not None:
        return b.bus_address + offset, "from the BAR register (the host bridge translates)"
    if fabric.host.privileged is False:
        return b.start + offset, ("assumed equal to the CPU address (config space, which holds "
                                  "the BAR register, is unreadable without root)")
    return b.start + offset, "equal to the CPU address (the BAR register shows no translation)"


# ---------------------------------------------------------------------------
# CPU access, SIGBUS-safe


@dataclass(frozen=True)
class CpuCheck:
    ok: bool
    touched: int  # bytes written and read back
    detail: str
    signal: int | None = None


def _pattern(offset: int, n: int, seed: int) -> bytes:
    # Position-dependent so a misplaced page is caught, not just a stuck byte.
    word = struct.pack("<Q", (offset * 0x9E3779B97F4A7C15 + seed) & 0xFFFFFFFFFFFFFFFF)
    return (word * (n // 8 + 1))[:n]


def cpu_pattern_check(
    view: memoryview, *, sample: int = 64, seed: int = 0x5A, stride: int | None = None
) -> CpuCheck:
    """Write and read back a small pattern at a few offsets, in a forked child.

    Only ``sample`` bytes per page-sized stride are touched: CPU access to BAR memory is
    uncached MMIO and slow.  A SIGBUS (revoked mapping) or any fault kills only the
    child, and is reported as a clean result.
    """
    length = len(view)
    stride = stride or max(PAGE_SIZE, length // 16 // PAGE_SIZE * PAGE_SIZE)
    offsets = list(range(0, length, stride))
    if length - sample not in offsets and length >= sample:
        offsets.append(length - sample)
    rfd, wfd = os.pipe()
    pid = os.fork()
    if pid == 0:  # child: no Python-level cleanup, just the byte checks
        try:
            os.close(rfd)
            # Die of the signal quietly; the parent reports it.
            faulthandler.disable()
            signal.signal(signal.SIGBUS, signal.SIG_DFL)
            signal.signal(signal.SIGSEGV, signal.SIG_DFL)
            bad = -1
            for off in offsets:
                n = min(sample, length - off)
                view[off : off + n] = _pattern(off, n, seed)
            for off in offsets:
                n = min(sample, length - off)
                if bytes(view[off : off + n]) != _pattern(off, n, seed):
                    bad = off
                    break
            os.write(wfd, str(bad).encode())
        finally:
            os._exit(0)
    os.close(wfd)
    try:
        chunks = []
        while True:
            piece = os.read(rfd, 64)
            if not piece:
                break
            chunks.append(piece)
    finally:
        os.close(rfd)
    _, status = os.waitpid(pid, 0)
    touched = sum(min(sample, length - o) for o in offsets)
    if os.WIFSIGNALED(status):
        sig = os.WTERMSIG(status)
        name = signal.Signals(sig).name
        return CpuCheck(False, 0, f"CPU access to the buffer raised {name}", sig)
    text = b"".join(chunks).decode() or "-2"
    bad = int(text)
    if bad == -2:
        return CpuCheck(False, 0, "the checking child exited without a result")
    if bad >= 0:
        return CpuCheck(False, touched, f"pattern read back wrong at offset {bad:#x}")
    return CpuCheck(True, touched, f"{touched} bytes at {len(offsets)} offsets read back intact")
