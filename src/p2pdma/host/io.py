"""O_DIRECT I/O on files and block devices, into a P2P or a host-memory buffer.

The transfer itself never touches the buffer with the CPU: ``preadv`` fills it by
DMA from SRC and ``pwritev`` drains it by DMA into DST.  Verification reads SRC and
DST again through two *separate* host buffers (O_DIRECT, so from the devices, not
the page cache) and compares them byte for byte.

Destination safety: a block device that is mounted or used by another layer is
never written; one that holds a filesystem signature or partition table only with
``force``; an existing non-empty file only with ``force``, and even then it is
written in place and never truncated.
"""

from __future__ import annotations

import contextlib
import errno
import gc
import math
import mmap
import os
import re
import stat
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from p2pdma.errors import InputError, KernelError, P2PDMAError
from p2pdma.host.p2pmem import PAGE_SIZE, human, round_up_pages
from p2pdma.host.sysroot import read_text, under

FILE_ALIGN = 4096
_SIZE_RE = re.compile(r"^\s*(0x[0-9a-fA-F]+|\d+(?:\.\d+)?)\s*([a-zA-Z]*)\s*$")
_UNITS = {
    "": 1, "b": 1,
    "k": 1 << 10, "kib": 1 << 10, "kb": 1000,
    "m": 1 << 20, "mib": 1 << 20, "mb": 1000**2,
    "g": 1 << 30, "gib": 1 << 30, "gb": 1000**3,
    "t": 1 << 40, "tib": 1 << 40, "tb": 1000**4,
}


def parse_size(text: str, *, what: str = "size") -> int:
    """``4096``, ``0x1000``, ``64K``/``64KiB`` (binary), ``1MB`` (decimal)."""
    m = _SIZE_RE.match(text)
    unit = m[2].lower() if m else ""
    if not m or unit not in _UNITS:
        raise InputError(
            f"{what} {text!r} is not a size",
            hint="write a byte count with an optional unit: 4096, 64K, 2MiB, 1G, 0x200000",
        )
    number = int(m[1], 16) if m[1].startswith("0x") else float(m[1])
    value = number * _UNITS[unit]
    if value != int(value):
        raise InputError(f"{what} {text!r} is not a whole number of bytes")
    return int(value)


# ---------------------------------------------------------------------------
# Buffers


class HostBuffer:
    """Ordinary memory: an anonymous, page-aligned mapping (for comparison)."""

    kind = "host"

    def __init__(self, length: int) -> None:
        self.length = round_up_pages(max(length, 1))
        self.mapping: mmap.mmap | None = mmap.mmap(-1, self.length)

    @property
    def view(self) -> memoryview:
        if self.mapping is None:
            raise P2PDMAError("the host buffer is already unmapped")
        return memoryview(self.mapping)

    def close(self) -> None:
        if self.mapping is not None:
            try:
                self.mapping.close()
            except BufferError:
                gc.collect()  # a stray slice in a traceback; retry once, else exit frees it
                with contextlib.suppress(BufferError):
                    self.mapping.close()
            self.mapping = None

    def __enter__(self) -> HostBuffer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


# ---------------------------------------------------------------------------
# Targets (SRC / DST)


@dataclass
class Target:
    path: str
    fd: int
    is_block: bool
    size: int
    align: int
    device: int  # st_dev (file) or st_rdev (block device)
    inode: int
    block: str | None = None  # kernel name of the block device (nvme0n1)
    created: bool = False
    notes: list[str] = field(default_factory=list)

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


def block_sysfs_dir(root: str | os.PathLike[str], dev: int) -> Path | None:
    """``/sys/dev/block/MAJ:MIN`` resolved (the block device's sysfs dir), or None."""
    link = under(root, "sys/dev/block", f"{os.major(dev)}:{os.minor(dev)}")
    if not link.exists():
        return None
    return link.resolve()


def logical_block_size(root: str | os.PathLike[str], dev: int) -> int | None:
    d = block_sysfs_dir(root, dev)
    if d is None:
        return None
    for q in (d / "queue", d.parent / "queue"):  # a partition uses its disk's queue
        text = read_text(q / "logical_block_size")
        if text and text.isdigit():
            return int(text)
    return None


def _odirect_error(path: str, err: OSError, *, writing: bool) -> P2PDMAError:
    if err.errno == errno.EINVAL:
        return KernelError(
            "EINVAL",
            "this file system does not support O_DIRECT",
            where=path,
            hint="P2P buffers work only with O_DIRECT; use a file on ext4/xfs/btrfs on a "
            "real disk (not tmpfs/overlay) or a block device",
        )
    if err.errno in (errno.EACCES, errno.EPERM):
        return KernelError(
            "EACCES",
            f"permission denied opening for {'writing' if writing else 'reading'}",
            where=path,
            hint="run as root or fix the file's permissions",
        )
    if err.errno == errno.ENOENT:
        return InputError("no such file or device", where=path)
    if err.errno == errno.EBUSY:
        return KernelError(
            "EBUSY",
            "the block device is in use (mounted, or claimed by md/dm/another exclusive user)",
            where=path,
            hint="unmount it or stop the user first; p2pdma never writes a busy device",
        )
    name = errno.errorcode.get(err.errno or 0, "EIO")
    return KernelError(name, f"cannot open: {err.strerror}", where=path)


def _stat_target(path: str) -> os.stat_result:
    try:
        return os.stat(path)
    except FileNotFoundError:
        raise InputError("no such file or device", where=path) from None
    except PermissionError:
        raise KernelError("EACCES", "permission denied", where=path) from None


def open_source(path: str, root: str | os.PathLike[str] = "/") -> Target:
    st = _stat_target(path)
    if not (stat.S_ISREG(st.st_mode) or stat.S_ISBLK(st.st_mode)):
        raise InputError("SRC must be a regular file or a block device", where=path)
    try:
        fd = os.open(path, os.O_RDONLY | os.O_DIRECT | os.O_CLOEXEC)
    except OSError as err:
        raise _odirect_error(path, err, writing=False) from None
    return _describe(path, fd, st, root)


def _describe(
    path: str, fd: int, st: os.stat_result, root: str | os.PathLike[str], *, created: bool = False
) -> Target:
    if stat.S_ISBLK(st.st_mode):
        size = os.lseek(fd, 0, os.SEEK_END)
        align = logical_block_size(root, st.st_rdev) or 512
        d = block_sysfs_dir(root, st.st_rdev)
        return Target(path, fd, True, size, align, st.st_rdev, st.st_ino,
                      d.name if d else None, created)
    d = block_sysfs_dir(root, st.st_dev)
    return Target(path, fd, False, st.st_size, FILE_ALIGN, st.st_dev, st.st_ino,
                  d.name if d else None, created)


# Filesystem / partition-table signatures: (byte offset, magic, name).
_SIGNATURES: tuple[tuple[int, bytes, str], ...] = (
    (510, b"\x55\xaa", "an MBR/DOS partition table or boot sector"),
    (512, b"EFI PART", "a GPT partition table"),
    (4096, b"EFI PART", "a GPT partition table (4K sectors)"),
    (1080, b"\x53\xef", "an ext2/3/4 file system"),
    (0, b"XFSB", "an XFS file system"),
    (65600, b"_BHRfS_M", "a btrfs file system"),
    (0, b"LUKS\xba\xbe", "a LUKS encrypted volume"),
    (536, b"LVM2 001", "an LVM physical volume"),
    (4086, b"SWAPSPACE2", "swap space"),
    (65526, b"SWAPSPACE2", "swap space (64K pages)"),
    (3, b"NTFS    ", "an NTFS file system"),
    (0, b"hsqs", "a squashfs file system"),
    (1024, b"\x10\x20\xf5\xf2", "an F2FS file system"),
    (32769, b"CD001", "an ISO 9660 file system"),
    (4096, b"\xfc\x4e\x2b\xa9", "a bcachefs file system"),
    (3, b"EXFAT   ", "an exFAT file system"),
)
SIGNATURE_PROBE = 68 * 1024


def detect_signature(head: bytes) -> str | None:
    """A filesystem or partition table recognised in the first 68 KiB, or None."""
    for offset, magic, name in _SIGNATURES:
        if head[offset : offset + len(magic)] == magic:
            return name
    if head[54:59] == b"FAT12" or head[54:59] == b"FAT16" or head[82:87] == b"FAT32":
        return "a FAT file system"
    return None


def mounted_devices(root: str | os.PathLike[str]) -> set[str]:
    """``MAJ:MIN`` of everything mounted, from ``proc/self/mountinfo`` under root."""
    text = read_text(under(root, "proc/self/mountinfo")) or ""
    out: set[str] = set()
    for line in text.splitlines():
        parts = line.split()
        if len(parts) > 2:
            out.add(parts[2])
    return out


def swap_devices(root: str | os.PathLike[str]) -> set[str]:
    text = read_text(under(root, "proc/swaps")) or ""
    return {line.split()[0] for line in text.splitlines()[1:] if line.split()}


def block_device_in_use(root: str | os.PathLike[str], dev: int, path: str) -> str | None:
    """Why the block device must not be written (mounted, holders, swap), or None."""
    d = block_sysfs_dir(root, dev)
    names = {f"{os.major(dev)}:{os.minor(dev)}"}
    if d is not None:
        for child in d.iterdir():  # partitions of a whole disk
            dev_text = read_text(child / "dev")
            if dev_text and (child / "partition").exists():
                names.add(dev_text)
        holders = d / "holders"
        if holders.is_dir() and any(holders.iterdir()):
            users = ", ".join(sorted(p.name for p in holders.iterdir()))
            return f"it is held by {users} (device-mapper/md/bcache)"
    mounted = names & mounted_devices(root)
    if mounted:
        return f"it (or a partition, {', '.join(sorted(mounted))}) is mounted"
    if path in swap_devices(root) or os.path.realpath(path) in swap_devices(root):
        return "it is in use as swap"
    return None


def _read_head(fd: int, align: int) -> bytes:
    with HostBuffer(SIGNATURE_PROBE) as buf:
        n = os.preadv(fd, [buf.view[: SIGNATURE_PROBE // align * align]], 0)
        return bytes(buf.view[:n])


def open_destination(
    path: str,
    root: str | os.PathLike[str],
    *,
    offset: int,
    end: int,
    source: Target,
    force: bool,
) -> Target:
    """Open DST for O_DIRECT writes of ``[.., end)`` after every safety check."""
    exists = os.path.lexists(path)
    if not exists:
        parent = os.path.dirname(os.path.abspath(path))
        if not os.path.isdir(parent):
            raise InputError("the directory for DST does not exist", where=parent)
        try:
            fd = os.open(
                path, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_DIRECT | os.O_CLOEXEC, 0o644
            )
        except OSError as err:
            if os.path.exists(path) and os.path.getsize(path) == 0:
                os.unlink(path)  # we created it a moment ago; leave nothing behind
            raise _odirect_error(path, err, writing=True) from None
        return _describe(path, fd, os.fstat(fd), root, created=True)
    st = _stat_target(path)
    if stat.S_ISREG(st.st_mode):
        if (st.st_dev, st.st_ino) == (source.device, source.inode) and not source.is_block:
            raise InputError(
                "SRC and DST are the same file", where=path, hint="copy to another file"
            )
        if st.st_size > 0 and not force:
            raise InputError(
                f"DST exists and holds {human(st.st_size)}; the copy would overwrite its "
                f"bytes {offset:#x}..{end:#x}",
                where=path,
                hint="pass --force to overwrite it in place (it is never truncated), or "
                "choose a new file name",
            )
        try:
            fd = os.open(path, os.O_RDWR | os.O_DIRECT | os.O_CLOEXEC)
        except OSError as err:
            raise _odirect_error(path, err, writing=True) from None
        return _describe(path, fd, st, root)
    if stat.S_ISBLK(st.st_mode):
        if source.is_block and st.st_rdev == source.device:
            raise InputError("SRC and DST are the same block device", where=path)
        busy = block_device_in_use(root, st.st_rdev, path)
        if busy:
            raise InputError(
                f"refusing to write this block device: {busy}",
                where=path,
                hint="unmount it / stop its user first; p2pdma never writes a device in use, "
                "even with --force",
            )
        try:
            # O_EXCL on a block device: the kernel refuses (EBUSY) if anyone mounted it.
            fd = os.open(path, os.O_RDWR | os.O_DIRECT | os.O_EXCL | os.O_CLOEXEC)
        except OSError as err:
            raise _odirect_error(path, err, writing=True) from None
        target = _describe(path, fd, st, root)
        try:
            if end > target.size:
                raise InputError(
                    f"the copy needs {human(end)} but the device holds {human(target.size)}",
                    where=path,
                    hint="use a smaller --size/--offset",
                )
            head = _read_head(fd, target.align)
            found = detect_signature(head)
            if found is None and head.count(0) != len(head):
                # Unrecognised is not empty: raw data may be someone's too.
                found = "data (not a recognised file system, but not blank either)"
            if found and not force:
                raise InputError(
                    f"refusing to overwrite {found} on this block device",
                    where=path,
                    hint="if its content is expendable, pass --force (wipefs -n shows what "
                    "is there)",
                )
            if found:
                target.notes.append(f"--force: overwriting {found}")
        except BaseException:
            target.close()
            raise
        return target
    raise InputError("DST must be a regular file or a block device", where=path)


# ---------------------------------------------------------------------------
# The plan: chunks, offsets, threads


@dataclass(frozen=True)
class Plan:
    size: int
    chunk: int
    offset: int  # in SRC and DST
    threads: int
    duration: float | None
    buffer_offset: int
    align: int

    @property
    def nchunks(self) -> int:
        return -(-self.size // self.chunk)

    @property
    def buffer_length(self) -> int:
        """Bytes of buffer the transfer needs: one chunk slot per thread."""
        return self.buffer_offset + self.chunk * self.threads

    def chunk_at(self, index: int) -> tuple[int, int]:
        """(file offset, length) of chunk ``index``; the last one may be shorter."""
        start = index * self.chunk
        return self.offset + start, min(self.chunk, self.size - start)

    def to_json(self) -> dict[str, object]:
        return {
            "size": self.size, "chunk": self.chunk, "chunks": self.nchunks,
            "offset": self.offset, "threads": self.threads, "duration": self.duration,
            "buffer_offset": self.buffer_offset, "alignment": self.align,
        }


def make_plan(
    source: Target,
    *,
    dst_align: int,
    size: int | None,
    chunk: int,
    chunks: int | None,
    offset: int,
    threads: int,
    duration: float | None,
    buffer_offset: int = 0,
) -> Plan:
    align = max(source.align, dst_align)

    def need_aligned(value: int, name: str) -> None:
        if value % align:
            raise InputError(
                f"{name} {value} is not a multiple of {align}",
                hint=f"O_DIRECT needs {align}-byte aligned offsets and lengths "
                "(the logical block size; 4096 for files)",
            )

    if threads < 1 or threads > 256:
        raise InputError(f"--threads {threads} is outside 1..256")
    if chunk <= 0:
        raise InputError("--chunk must be positive")
    if duration is not None and duration <= 0:
        raise InputError("--duration must be positive")
    need_aligned(chunk, "--chunk")
    need_aligned(offset, "--offset")
    need_aligned(buffer_offset, "--buffer-offset")
    if offset > source.size:
        raise InputError(
            f"--offset {offset} is beyond the end of SRC ({source.size} bytes)",
            where=source.path,
        )
    if size is None and chunks is not None:
        size = chunk * chunks
    if size is None:
        size = (source.size - offset) // align * align
        tail = source.size - offset - size
        if tail:
            source.notes.append(
                f"the last {tail} bytes of SRC are not copied: O_DIRECT moves whole "
                f"{align}-byte blocks"
            )
    if size <= 0:
        raise InputError("nothing to copy (SRC is empty at this offset)", where=source.path)
    need_aligned(size, "--size")
    if offset + size > source.size:
        raise InputError(
            f"--offset {offset} + size {size} runs past the end of SRC ({source.size} bytes)",
            where=source.path,
            hint="use a smaller --size or --chunks",
        )
    return Plan(size, min(chunk, size), offset, threads, duration, buffer_offset, align)


# ---------------------------------------------------------------------------
# The transfer


@dataclass
class TransferResult:
    bytes_moved: int
    seconds: float
    latencies_ns: list[int]
    chunks_done: int
    passes: float

    @property
    def mb_per_s(self) -> float:
        return self.bytes_moved / self.seconds / 1e6 if self.seconds > 0 else 0.0

    def percentile_us(self, q: float) -> float | None:
        if not self.latencies_ns:
            return None
        ordered = sorted(self.latencies_ns)
        # Nearest rank: the smallest sample with at least q% of samples at or below it.
        index = min(len(ordered) - 1, max(0, math.ceil(q / 100 * len(ordered)) - 1))
        return ordered[index] / 1000

    def to_json(self) -> dict[str, object]:
        return {
            "bytes": self.bytes_moved, "seconds": round(self.seconds, 6),
            "mb_per_s": round(self.mb_per_s, 2), "chunks": self.chunks_done,
            "passes": round(self.passes, 3),
            "latency_us": {"p50": self.percentile_us(50), "p99": self.percentile_us(99)},
        }


class IoFailure(Exception):
    """An OSError during the transfer, with where it happened."""

    def __init__(self, op: str, path: str, offset: int, err: OSError) -> None:
        self.op, self.path, self.offset, self.err = op, path, offset, err
        super().__init__(f"{op} {path} at {offset:#x}: {err}")


def _full(op: Callable[[int, list[memoryview], int], int], fd: int, view: memoryview,
          offset: int, what: str, path: str) -> None:
    done = 0
    while done < len(view):
        try:
            n = op(fd, [view[done:]], offset + done)
        except OSError as err:
            # A fresh error without the traceback: its frames could pin buffer slices and
            # keep the mapping from being unmapped.
            clean = OSError(err.errno, err.strerror)
            del err
            raise IoFailure(what, path, offset + done, clean) from None
        if n <= 0:
            raise IoFailure(what, path, offset + done,
                            OSError(errno.EIO, "unexpected end of file/device"))
        done += n


Progress = Callable[[int, int], None]


def run_transfer(
    src: Target,
    dst: Target,
    buffer: memoryview,
    plan: Plan,
    *,
    progress: Progress | None = None,
) -> TransferResult:
    """Move ``plan.size`` bytes SRC → buffer → DST; raises :class:`IoFailure`."""
    if len(buffer) < plan.buffer_length:
        raise P2PDMAError(
            f"buffer of {len(buffer)} bytes is smaller than the plan needs "
            f"({plan.buffer_length})"
        )
    lock = threading.Lock()
    stop = threading.Event()
    state = {"next": 0, "bytes": 0, "done": 0}
    latencies: list[int] = []
    failures: list[IoFailure] = []
    deadline = None if plan.duration is None else time.monotonic() + plan.duration
    total_hint = plan.size

    def worker(slot: int) -> None:
        base = plan.buffer_offset + slot * plan.chunk
        while not stop.is_set():
            with lock:
                k = state["next"]
                if k >= plan.nchunks and (deadline is None or time.monotonic() >= deadline):
                    return
                state["next"] = k + 1
            file_off, length = plan.chunk_at(k % plan.nchunks)
            view = buffer[base : base + length]
            t0 = time.perf_counter_ns()
            try:
                _full(os.preadv, src.fd, view, file_off, "read", src.path)
                _full(os.pwritev, dst.fd, view, file_off, "write", dst.path)
            except IoFailure as failure:
                with lock:
                    failures.append(failure)
                stop.set()
                return
            finally:
                view.release()
            t1 = time.perf_counter_ns()
            with lock:
                latencies.append(t1 - t0)
                state["bytes"] += length
                state["done"] += 1
                moved = state["bytes"]
            if progress is not None:
                # 0: open-ended (--duration), the bar then shows bytes and rate only
                progress(moved, total_hint if deadline is None else 0)

    def guarded(slot: int) -> None:
        try:
            worker(slot)
        except BaseException as exc:  # a dead worker must never look like a finished one
            with lock:
                failures.append(IoFailure("transfer", src.path, 0,
                                          OSError(errno.EIO, f"worker failed: {exc!r}")))
            stop.set()

    start = time.perf_counter()
    threads = [threading.Thread(target=guarded, args=(i,), daemon=True)
               for i in range(plan.threads)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    seconds = time.perf_counter() - start
    if failures:
        raise failures[0]
    if state["done"] < plan.nchunks:
        raise IoFailure("transfer", src.path, 0, OSError(
            errno.EIO, f"only {state['done']} of {plan.nchunks} chunks were moved"))
    try:
        os.fsync(dst.fd)  # so the verification reads what reached the device
    except OSError as err:
        raise IoFailure("fsync", dst.path, 0, err) from None
    return TransferResult(state["bytes"], seconds, latencies, state["done"],
                          state["done"] / plan.nchunks)


# ---------------------------------------------------------------------------
# Verification


@dataclass(frozen=True)
class VerifyResult:
    ok: bool
    compared: int
    first_mismatch: int | None  # absolute offset in DST (== in SRC)
    expected: int | None = None  # SRC byte there
    found: int | None = None  # DST byte there

    def to_json(self) -> dict[str, object]:
        return {
            "ok": self.ok, "compared": self.compared, "first_mismatch": self.first_mismatch,
            "expected": self.expected, "found": self.found,
        }


def first_difference(a: memoryview, b: memoryview) -> int | None:
    """Index of the first differing byte (coarse-to-fine, so equal runs stay in C)."""
    if a == b:
        return None
    n = min(len(a), len(b))
    step = PAGE_SIZE
    for block in range(0, n, step):
        if a[block : block + step] != b[block : block + step]:
            for i in range(block, min(block + step, n)):
                if a[i] != b[i]:
                    return i
    return n


def verify_copy(
    src_path: str, dst_path: str, plan: Plan, *, chunk: int | None = None
) -> VerifyResult:
    """Read SRC and DST back through two host buffers (O_DIRECT) and compare."""
    step = min(chunk or max(plan.chunk, 1 << 20), 16 << 20)
    step = max(plan.align, step // plan.align * plan.align)
    fds: list[int] = []
    try:
        for path in (src_path, dst_path):
            try:
                fds.append(os.open(path, os.O_RDONLY | os.O_DIRECT | os.O_CLOEXEC))
            except OSError as err:
                raise _odirect_error(path, err, writing=False) from None
        with HostBuffer(step) as a, HostBuffer(step) as b:
            done = 0
            while done < plan.size:
                n = min(step, plan.size - done)
                off = plan.offset + done
                va, vb = a.view[:n], b.view[:n]
                try:
                    _full(os.preadv, fds[0], va, off, "verify-read", src_path)
                    _full(os.preadv, fds[1], vb, off, "verify-read", dst_path)
                    diff = first_difference(va, vb)
                    if diff is not None:
                        return VerifyResult(False, done + diff, off + diff, va[diff], vb[diff])
                finally:
                    va.release()
                    vb.release()
                done += n
            return VerifyResult(True, done, None)
    finally:
        for fd in fds:
            os.close(fd)
