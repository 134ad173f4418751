"""Real O_DIRECT copies on real files through the host-memory buffer: chunking, offsets,
threads, verification, mismatch detection and destination safety."""

from __future__ import annotations

import errno
import hashlib
import os
from pathlib import Path

import pytest
from host_fakes import FakeTree, Machine, write_random

from p2pdma.errors import InputError, KernelError, P2PDMAError
from p2pdma.host import p2pmem
from p2pdma.host.io import (
    FILE_ALIGN,
    Plan,
    Target,
    TransferResult,
    block_device_in_use,
    detect_signature,
    first_difference,
    logical_block_size,
    make_plan,
    open_source,
    parse_size,
)
from p2pdma.host.runner import CopyRequest, run_copy

K = 1024
M = 1 << 20


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def copy(src: Path, dst: Path, **kw: object) -> object:
    req = CopyRequest(src=str(src), dst=str(dst), host_memory=True, **kw)  # type: ignore[arg-type]
    return run_copy(req)


# --- sizes -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "value"),
    [("4096", 4096), ("0x1000", 4096), ("64K", 65536), ("64KiB", 65536), ("2M", 2 * M),
     ("1MB", 1_000_000), ("1.5G", 3 << 29), ("1T", 1 << 40)],
)
def test_parse_size(text: str, value: int) -> None:
    assert parse_size(text) == value


@pytest.mark.parametrize("text", ["", "12Q", "-1", "1.3", "M"])
def test_parse_size_rejects(text: str) -> None:
    with pytest.raises(InputError, match="not a"):
        parse_size(text)


# --- the plan --------------------------------------------------------------


def _fake_source(size: int, align: int = FILE_ALIGN) -> Target:
    return Target("src", -1, False, size, align, 0, 0)


def test_plan_arithmetic() -> None:
    plan = make_plan(_fake_source(1 * M), dst_align=512, size=None, chunk=256 * K, chunks=None,
                     offset=64 * K, threads=3, duration=None, buffer_offset=8 * K)
    assert plan.size == M - 64 * K and plan.align == 4096
    assert plan.nchunks == 4  # 960 KiB in 256 KiB chunks: 3 full + 192 KiB
    assert plan.chunk_at(0) == (64 * K, 256 * K)
    assert plan.chunk_at(3) == (64 * K + 768 * K, 192 * K)
    assert plan.buffer_length == 8 * K + 3 * 256 * K


def test_plan_from_chunk_count() -> None:
    plan = make_plan(_fake_source(M), dst_align=4096, size=None, chunk=8 * K, chunks=3,
                     offset=0, threads=1, duration=None)
    assert (plan.size, plan.nchunks) == (24 * K, 3)


def test_plan_uses_the_larger_alignment() -> None:
    with pytest.raises(InputError, match="multiple of 8192"):
        make_plan(_fake_source(M, align=512), dst_align=8192, size=None, chunk=4096,
                  chunks=None, offset=0, threads=1, duration=None)


@pytest.mark.parametrize(
    ("kw", "msg"),
    [
        ({"chunk": 1000}, "--chunk 1000 is not a multiple of 4096"),
        ({"offset": 100}, "--offset 100 is not a multiple"),
        ({"size": 5000}, "--size 5000 is not a multiple"),
        ({"size": 2 * M}, "runs past the end of SRC"),
        ({"offset": 4 * M}, "beyond the end of SRC"),
        ({"threads": 0}, "outside 1..256"),
        ({"duration": 0.0}, "--duration must be positive"),
    ],
)
def test_plan_rejects(kw: dict[str, object], msg: str) -> None:
    args: dict[str, object] = {"size": None, "chunk": 64 * K, "chunks": None, "offset": 0,
                               "threads": 1, "duration": None}
    args.update(kw)
    with pytest.raises(InputError, match=msg.replace(".", r"\.")):
        make_plan(_fake_source(M), dst_align=4096, **args)  # type: ignore[arg-type]


def test_short_last_chunk_when_chunk_exceeds_remaining() -> None:
    plan = Plan(size=12 * K, chunk=8 * K, offset=0, threads=1, duration=None,
                buffer_offset=0, align=4096)
    assert [plan.chunk_at(i) for i in range(plan.nchunks)] == [(0, 8 * K), (8 * K, 4 * K)]


def test_percentiles() -> None:
    r = TransferResult(100, 1.0, [i * 1000 for i in range(1, 101)], 100, 1.0)
    assert r.percentile_us(50) == 50 and r.percentile_us(99) == 99
    assert r.mb_per_s == pytest.approx(100 / 1e6)


# --- real O_DIRECT copies ---------------------------------------------------


def test_copy_all_of_src_with_threads(odirect_dir: Path) -> None:
    src, dst = odirect_dir / "src", odirect_dir / "dst"
    data = write_random(src, 3 * M + 1000)
    report = copy(src, dst, chunk=256 * K, threads=3)
    assert report.ok and report.verify.compared == 3 * M  # type: ignore[attr-defined]
    assert report.transfer.chunks_done == 12  # type: ignore[attr-defined]
    assert dst.read_bytes() == data[: 3 * M]
    assert any("last 1000 bytes" in n for n in report.notes)  # type: ignore[attr-defined]
    assert report.dst_created  # type: ignore[attr-defined]


def test_copy_with_offset_and_chunks(odirect_dir: Path) -> None:
    src, dst = odirect_dir / "src", odirect_dir / "dst"
    data = write_random(src, M)
    copy(src, dst, chunk=16 * K, chunks=4, offset=128 * K)
    out = dst.read_bytes()
    assert len(out) == 128 * K + 64 * K
    assert out[128 * K :] == data[128 * K : 192 * K]
    assert out[: 128 * K] == b"\0" * (128 * K)  # nothing invented before the offset


def test_duration_repeats_whole_passes_and_still_verifies(odirect_dir: Path) -> None:
    src, dst = odirect_dir / "src", odirect_dir / "dst"
    write_random(src, 64 * K)
    report = copy(src, dst, chunk=16 * K, threads=2, duration=0.05)
    assert report.ok and report.transfer.passes >= 1  # type: ignore[attr-defined]
    assert report.transfer.chunks_done >= 4  # type: ignore[attr-defined]
    assert digest(src) == digest(dst)


@pytest.mark.parametrize("where", [0, 4095, 70_000, 256 * K - 1])
def test_verification_reports_the_first_corrupted_byte(odirect_dir: Path, where: int) -> None:
    src, dst = odirect_dir / "src", odirect_dir / "dst"
    data = write_random(src, 256 * K)

    def corrupt(target: Target) -> None:
        with open(target.path, "r+b") as f:
            f.seek(where)
            f.write(bytes([data[where] ^ 0xFF]))
            f.flush()
            os.fsync(f.fileno())

    req = CopyRequest(src=str(src), dst=str(dst), host_memory=True, chunk=64 * K)
    with pytest.raises(P2PDMAError) as e:
        run_copy(req, before_verify=corrupt)
    assert f"at byte offset {where} " in e.value.what
    assert f"expected {data[where]:#04x}, found {data[where] ^ 0xFF:#04x}" in e.value.what


def test_first_difference() -> None:
    a = bytes(10_000)
    b = bytearray(a)
    b[9000] = 1
    assert first_difference(memoryview(a), memoryview(bytes(b))) == 9000
    assert first_difference(memoryview(a), memoryview(a)) is None


def test_existing_dst_is_not_touched_without_force(odirect_dir: Path) -> None:
    src, dst = odirect_dir / "src", odirect_dir / "dst"
    write_random(src, 64 * K, seed=1)
    write_random(dst, 100 * K, seed=2)
    before = digest(dst)
    with pytest.raises(InputError, match="--force"):
        copy(src, dst)
    assert digest(dst) == before


def test_force_overwrites_in_place_and_never_truncates(odirect_dir: Path) -> None:
    src, dst = odirect_dir / "src", odirect_dir / "dst"
    data = write_random(src, 64 * K, seed=1)
    old = write_random(dst, 100 * K + 7, seed=2)
    report = copy(src, dst, force=True)
    assert report.ok  # type: ignore[attr-defined]
    out = dst.read_bytes()
    assert len(out) == 100 * K + 7
    assert out[: 64 * K] == data and out[64 * K :] == old[64 * K :]


def test_empty_existing_dst_is_fine(odirect_dir: Path) -> None:
    src, dst = odirect_dir / "src", odirect_dir / "dst"
    data = write_random(src, 32 * K)
    dst.touch()
    copy(src, dst)
    assert dst.read_bytes() == data


def test_src_equal_dst_is_refused_even_with_force(odirect_dir: Path) -> None:
    src = odirect_dir / "src"
    write_random(src, 32 * K)
    before = digest(src)
    with pytest.raises(InputError, match="same file"):
        copy(src, src, force=True)
    with pytest.raises(InputError, match="same file"):
        copy(src, odirect_dir / "." / "src", force=True)
    assert digest(src) == before


def test_missing_src_and_missing_dst_dir(odirect_dir: Path) -> None:
    with pytest.raises(InputError, match="no such file"):
        copy(odirect_dir / "nope", odirect_dir / "dst")
    src = odirect_dir / "src"
    write_random(src, 8 * K)
    with pytest.raises(InputError, match="directory for DST does not exist"):
        copy(src, odirect_dir / "no" / "dst")


def test_no_buffer_chosen_is_an_input_error(odirect_dir: Path) -> None:
    src = odirect_dir / "src"
    write_random(src, 8 * K)
    with pytest.raises(InputError, match="--via BDF"):
        run_copy(CopyRequest(src=str(src), dst=str(odirect_dir / "dst")))
    assert not (odirect_dir / "dst").exists()


def test_src_must_be_file_or_block(odirect_dir: Path) -> None:
    with pytest.raises(InputError, match="regular file or a block device"):
        open_source(str(odirect_dir))


# --- block device safety (signatures and sysfs/procfs under a fake root) ----


def _head_with(offset: int, magic: bytes) -> bytes:
    head = bytearray(68 * K)
    head[offset : offset + len(magic)] = magic
    return bytes(head)


@pytest.mark.parametrize(
    ("offset", "magic", "name"),
    [(510, b"\x55\xaa", "MBR"), (512, b"EFI PART", "GPT"), (1080, b"\x53\xef", "ext2/3/4"),
     (0, b"XFSB", "XFS"), (65600, b"_BHRfS_M", "btrfs"), (0, b"LUKS\xba\xbe", "LUKS"),
     (4086, b"SWAPSPACE2", "swap")],
)
def test_signatures(offset: int, magic: bytes, name: str) -> None:
    found = detect_signature(_head_with(offset, magic))
    assert found is not None and name in found


def test_blank_or_random_head_has_no_signature() -> None:
    assert detect_signature(bytes(68 * K)) is None
    assert detect_signature(b"\x01" * (68 * K)) is None


def test_mounted_partition_makes_the_disk_busy(tree: FakeTree) -> None:
    tree.device("0000:04:00.0", cls=0x010802, driver="nvme")
    ctrl = tree.nvme("0000:04:00.0", "nvme0", cmbloc=None, cmbsz=None)
    disk = tree.namespace(ctrl, "nvme0n1", "259:0", lbs=4096)
    tree.partition(disk, "nvme0n1p1", "259:1")
    dev = os.makedev(259, 0)
    assert logical_block_size(tree.root, dev) == 4096
    assert logical_block_size(tree.root, os.makedev(259, 1)) == 4096  # from the disk's queue
    tree.mountinfo(["22 1 8:1 / / rw - ext4 /dev/sda1 rw"])
    assert block_device_in_use(tree.root, dev, "/dev/nvme0n1") is None
    tree.mountinfo(["22 1 8:1 / / rw - ext4 /dev/sda1 rw",
                    "30 22 259:1 / /data rw - xfs /dev/nvme0n1p1 rw"])
    why = block_device_in_use(tree.root, dev, "/dev/nvme0n1")
    assert why is not None and "259:1" in why and "mounted" in why


def test_holders_make_the_disk_busy(tree: FakeTree) -> None:
    tree.device("0000:04:00.0", cls=0x010802, driver="nvme")
    ctrl = tree.nvme("0000:04:00.0", "nvme0", cmbloc=None, cmbsz=None)
    disk = tree.namespace(ctrl, "nvme0n1", "259:0")
    (disk / "holders" / "dm-0").mkdir(parents=True)
    why = block_device_in_use(tree.root, os.makedev(259, 0), "/dev/nvme0n1")
    assert why is not None and "dm-0" in why


def test_failed_copy_leaves_no_empty_dst_behind(
    odirect_dir: Path, machine: Machine, monkeypatch: pytest.MonkeyPatch
) -> None:
    """DST is created, then the kernel refuses the P2P mapping (ENOMEM injected at mmap):
    the empty DST we created must not be left behind."""
    src, dst = odirect_dir / "src", odirect_dir / "dst"
    write_random(src, 64 * K)

    def refuse(*_a: object, **_k: object) -> object:
        assert dst.exists()  # the failure really happens after DST was created
        raise OSError(errno.ENOMEM, "Cannot allocate memory")

    monkeypatch.setattr(p2pmem.mmap, "mmap", refuse)
    req = CopyRequest(src=str(src), dst=str(dst), via=machine.provider, root=str(machine.root))
    with pytest.raises(KernelError, match="no contiguous free run"):
        run_copy(req)
    assert not dst.exists()


def test_a_dying_worker_is_a_failure_not_a_short_success(odirect_dir: Path) -> None:
    from p2pdma.host.io import HostBuffer, IoFailure, open_destination, run_transfer

    src_p, dst_p = odirect_dir / "src", odirect_dir / "dst"
    write_random(src_p, 256 * K)
    src = open_source(str(src_p))
    plan = make_plan(src, dst_align=4096, size=None, chunk=64 * K, chunks=None, offset=0,
                     threads=2, duration=None)
    dst = open_destination(str(dst_p), "/", offset=0, end=plan.size, source=src, force=False)

    def broken_progress(moved: int, total: int) -> None:
        raise RuntimeError("progress bar bug")

    try:
        with HostBuffer(plan.buffer_length) as buf, pytest.raises(IoFailure) as e:
            run_transfer(src, dst, buf.view, plan, progress=broken_progress)
        assert "worker failed" in str(e.value) and "progress bar bug" in str(e.value)
    finally:
        src.close()
        dst.close()


def test_progress_adapter_is_open_ended_for_durations() -> None:
    import io

    from p2pdma.cli.copy import ProgressAdapter

    a = ProgressAdapter("copy", None, enabled=False)
    a.bar.stream = io.StringIO()
    a(4096, 0)
    assert a.bar.total is None and a.bar.done == 4096
    a(8192, 16384)
    assert a.bar.total == 16384 and a.bar.done == 8192
