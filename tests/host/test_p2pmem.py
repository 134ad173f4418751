"""p2pmem/allocate: state parsing, diagnosis of every failure, our mmap call sequence."""

from __future__ import annotations

import errno
import mmap
import os
import shutil
import signal
import tempfile
from pathlib import Path

import pytest
from host_fakes import TIB, FakeTree

from p2pdma.errors import InputError, KernelError, SysfsError
from p2pdma.fabric.bdf import Bdf
from p2pdma.fabric.model import Cmb
from p2pdma.host import p2pmem
from p2pdma.host.p2pmem import (
    PAGE_SIZE,
    cpu_pattern_check,
    decode_cmb,
    diagnose_missing_p2pmem,
    map_p2pmem,
    parse_cmb_attr,
    read_p2pmem_state,
    round_up_pages,
)

NVME = 0x010802
BDF = Bdf.parse("0000:03:00.0")
MIB = 1 << 20


def test_state_is_parsed(tree: FakeTree) -> None:
    tree.device(str(BDF))
    tree.p2pmem(str(BDF), size=64 * MIB, available=64 * MIB - 128 * 1024, published=1)
    st = read_p2pmem_state(tree.root, BDF)
    assert (st.size, st.available, st.published, st.has_allocate) == (
        64 * MIB, 64 * MIB - 131072, True, True)


def test_malformed_available_is_a_sysfs_error(tree: FakeTree) -> None:
    tree.device(str(BDF))
    d = tree.p2pmem(str(BDF), size=MIB, available=MIB)
    (d / "available").write_text("lots\n")
    with pytest.raises(SysfsError) as e:
        read_p2pmem_state(tree.root, BDF)
    assert "available" in str(e.value) and "'lots'" in str(e.value)


def test_no_such_device_names_neighbours(tree: FakeTree) -> None:
    tree.device("0000:03:00.1")
    with pytest.raises(KernelError) as e:
        map_p2pmem(tree.root, BDF, 4096)
    assert e.value.errno_name == "ENODEV"
    assert "no PCI device 0000:03:00.0" in str(e.value)
    assert "0000:03:00.1" in str(e.value)  # neighbours on the same bus
    assert "rescan" in str(e.value)


def test_kernel_without_config_pci_p2pdma(tree: FakeTree) -> None:
    tree.device(str(BDF), cls=NVME, driver="nvme")
    tree.release("6.12.95-amd64")
    path = tree.config("CONFIG_PCI=y\n# CONFIG_PCI_P2PDMA is not set\n")
    err = diagnose_missing_p2pmem(tree.root, BDF)
    assert err.errno_name == "EOPNOTSUPP"
    assert "without CONFIG_PCI_P2PDMA" in err.what and "6.12.95-amd64" in err.what
    assert err.where == str(path)
    assert "ZONE_DEVICE" in (err.hint or "")


def test_config_read_from_boot_when_no_proc_config(tree: FakeTree) -> None:
    tree.device(str(BDF))
    tree.release("6.1.0-9")
    path = tree.config("CONFIG_PCI=y\n", gz=False, release="6.1.0-9")  # option absent
    err = diagnose_missing_p2pmem(tree.root, BDF)
    assert err.where == str(path) and "CONFIG_PCI_P2PDMA" in err.what


def test_old_kernel_has_p2pmem_but_no_allocate(tree: FakeTree) -> None:
    tree.device(str(BDF), cls=NVME, driver="nvme")
    tree.release("5.15.0")
    tree.p2pmem(str(BDF), size=64 * MIB, available=64 * MIB, allocate=False)
    with pytest.raises(KernelError) as e:
        map_p2pmem(tree.root, BDF, MIB)
    assert e.value.errno_name == "EOPNOTSUPP"
    assert "Linux 6.2" in e.value.what and "5.15.0" in e.value.what


def test_device_that_is_no_provider(tree: FakeTree) -> None:
    tree.device(str(BDF), cls=0x020000, driver="mlx5_core")
    tree.release("6.12.117")
    tree.config("CONFIG_PCI_P2PDMA=y\n")
    err = diagnose_missing_p2pmem(tree.root, BDF)
    assert err.errno_name == "ENODEV"
    assert "not a P2P memory provider" in err.what and "mlx5_core" in err.what
    assert "p2pmem" in (err.hint or "")


def test_unknown_config_is_said_not_guessed(tree: FakeTree) -> None:
    tree.device(str(BDF))
    tree.release("6.12.117")
    err = diagnose_missing_p2pmem(tree.root, BDF)
    assert "could not be checked" in err.what


def test_nvme_without_driver(tree: FakeTree) -> None:
    tree.device(str(BDF), cls=NVME, driver=None)
    tree.config("CONFIG_PCI_P2PDMA=y\n")
    err = diagnose_missing_p2pmem(tree.root, BDF)
    assert "no driver bound" in err.what
    assert "drivers/nvme/bind" in (err.hint or "")


@pytest.mark.parametrize(
    ("cmb", "bar_start", "bar_size", "expect"),
    [
        # 512 KiB CMB: smaller than (so not a multiple of) the 2 MiB hotplug subsection.
        (Cmb.encode(size=512 * 1024, bar=2, unit=4096), 0xF000_0000, 1 * MIB,
         "size is not a multiple of 2 MiB"),
        # 64 MiB CMB in a BAR that starts 1 MiB off a 2 MiB boundary.
        (Cmb.encode(size=64 * MIB, bar=2), 0xF010_0000, 64 * MIB,
         "BAR start is not a multiple of 2 MiB"),
        # Offset beyond the BAR.
        (Cmb.encode(size=4 * MIB, bar=2, offset=128 * MIB), 0xF000_0000, 64 * MIB,
         "beyond BAR2"),
        # BAR with no memory assigned.
        (Cmb.encode(size=4 * MIB, bar=4), 0xF000_0000, 64 * MIB, "BAR4, which has no"),
    ],
)
def test_cmb_that_the_driver_skips(
    tree: FakeTree, cmb: Cmb, bar_start: int, bar_size: int, expect: str
) -> None:
    tree.device(str(BDF), cls=NVME, driver="nvme", resources={2: (bar_start, bar_size)})
    tree.config("CONFIG_PCI_P2PDMA=y\n")
    tree.nvme(str(BDF), "nvme0", cmbloc=cmb.cmbloc, cmbsz=cmb.cmbsz)
    err = diagnose_missing_p2pmem(tree.root, BDF)
    assert err.errno_name == "ENODEV"
    assert "nvme0" in err.what and expect in err.what, err.what


def test_registrable_cmb_without_pool_points_at_registration(tree: FakeTree) -> None:
    cmb = Cmb.encode(size=64 * MIB, bar=2)
    tree.device(str(BDF), cls=NVME, driver="nvme", resources={2: (0xF000_0000, 64 * MIB)})
    tree.config("CONFIG_PCI_P2PDMA=y\n")
    tree.nvme(str(BDF), "nvme0", cmbloc=cmb.cmbloc, cmbsz=cmb.cmbsz)
    err = diagnose_missing_p2pmem(tree.root, BDF)
    assert "failed to register the CMB" in err.what


def test_cmb_bigger_than_bar_is_clipped() -> None:
    cmb = Cmb.encode(size=128 * MIB, bar=2)
    f = decode_cmb("nvme1", cmb.cmbloc, cmb.cmbsz, {2: (0xE000_0000, 64 * MIB)})
    assert f.registers_ok and f.size == 64 * MIB and "clipped" in f.reason


def test_unpublished_cmb_reason_names_missing_bits() -> None:
    cmb = Cmb.encode(size=64 * MIB, bar=2, wds=False)
    f = decode_cmb("nvme0", cmb.cmbloc, cmb.cmbsz, {2: (0xF000_0000, 64 * MIB)})
    assert f.registers_ok and not f.publishable
    assert "lacks WDS" in f.reason and "does not publish" in f.reason


def test_cmb_attribute_parsing() -> None:
    assert parse_cmb_attr("cmbloc : x00000002\ncmbsz  : x0004001f\n") == (2, 0x4001F)
    assert parse_cmb_attr("garbage") is None


def test_size_larger_than_available_is_refused_before_mmap(tree: FakeTree) -> None:
    tree.device(str(BDF))
    tree.p2pmem(str(BDF), size=8 * MIB, available=2 * MIB)
    with pytest.raises(KernelError) as e:
        map_p2pmem(tree.root, BDF, 3 * MIB)
    assert e.value.errno_name == "ENOMEM"
    assert "3 MiB requested but only 2 MiB of 8 MiB is available" in e.value.what


def test_unpublished_memory_maps_with_a_note(tree: FakeTree) -> None:
    tree.device(str(BDF))
    tree.p2pmem(str(BDF), size=8 * MIB, available=8 * MIB, published=0)
    with map_p2pmem(tree.root, BDF, 4096) as buf:
        assert any("not published" in n for n in buf.notes)


def test_mmap_call_sequence_on_a_sparse_stand_in(tree: FakeTree) -> None:
    """Checks OUR mmap call (length rounded to pages, MAP_SHARED, offset 0, munmap), using a
    1 TiB sparse regular file as `allocate`; it says nothing about the kernel's file."""
    tree.device(str(BDF))
    d = tree.p2pmem(str(BDF), size=8 * MIB, available=8 * MIB)
    buf = map_p2pmem(tree.root, BDF, PAGE_SIZE + 1)
    assert buf.length == 2 * PAGE_SIZE == round_up_pages(PAGE_SIZE + 1)
    assert len(buf.view) == buf.length
    buf.view[:4] = b"P2P!"  # MAP_SHARED at offset 0: visible through the file
    with open(d / "allocate", "rb") as f:
        assert f.read(4) == b"P2P!"
    assert buf.after_map is not None and buf.before.available == 8 * MIB
    buf.close()
    assert buf.mapping is None and buf.after_unmap is not None
    with pytest.raises(Exception, match="already unmapped"):
        _ = buf.view
    assert os.path.getsize(d / "allocate") == TIB  # never truncated or written past


def test_permission_denied_as_unprivileged_user() -> None:
    if os.geteuid() != 0:
        pytest.skip("needs root to drop to an unprivileged user")
    base = Path(tempfile.mkdtemp(prefix="p2pdma-perm-"))
    os.chmod(base, 0o755)  # traversable by the unprivileged child; allocate stays 0660
    tree = FakeTree(base)
    tree.device(str(BDF))
    tree.p2pmem(str(BDF), size=8 * MIB, available=8 * MIB)
    try:
        _check_eacces(tree)
    finally:
        shutil.rmtree(base)


def _check_eacces(tree: FakeTree) -> None:
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:
        try:
            os.close(r)
            os.setgid(65534)
            os.setuid(65534)
            try:
                map_p2pmem(tree.root, BDF, 4096)
                msg = "mapped"
            except KernelError as err:
                msg = f"{err.errno_name}|{err}"
            except Exception as err:
                msg = f"other|{type(err).__name__}: {err}"
            os.write(w, msg.encode())
        finally:
            os._exit(0)
    os.close(w)
    out = b""
    while chunk := os.read(r, 4096):
        out += chunk
    os.close(r)
    os.waitpid(pid, 0)
    text = out.decode()
    if text.startswith("other|") and "Permission" in text:
        pytest.skip("the temp directory is not traversable by an unprivileged user")
    name, _, msg = text.partition("|")
    assert name == "EACCES", text
    assert "0660" in msg and "root" in msg and "group" in msg


@pytest.mark.parametrize(
    ("code", "expect"),
    [
        (errno.ENOMEM, "no contiguous free run of 2 MiB"),
        (errno.ENODEV, "is being torn down"),
        (errno.EINVAL, "MAP_SHARED, file offset 0"),
    ],
)
def test_kernel_refusals_of_mmap_are_explained(
    tree: FakeTree, monkeypatch: pytest.MonkeyPatch, code: int, expect: str
) -> None:
    """The kernel's mmap errnos cannot be produced here; inject them at the mmap call."""
    tree.device(str(BDF))
    tree.p2pmem(str(BDF), size=64 * MIB, available=40 * MIB)

    def refuse(*_a: object, **_k: object) -> mmap.mmap:
        raise OSError(code, os.strerror(code))

    monkeypatch.setattr(p2pmem.mmap, "mmap", refuse)
    with pytest.raises(KernelError) as e:
        map_p2pmem(tree.root, BDF, 2 * MIB)
    assert e.value.errno_name == errno.errorcode[code]
    assert expect in e.value.what
    if code == errno.ENOMEM:
        assert "40 MiB of 64 MiB is available" in e.value.what


def test_device_gone_during_mmap_says_removed(
    tree: FakeTree, monkeypatch: pytest.MonkeyPatch
) -> None:
    tree.device(str(BDF))
    tree.p2pmem(str(BDF), size=64 * MIB, available=64 * MIB)

    def removed(*_a: object, **_k: object) -> mmap.mmap:
        os.unlink(tree.root / "sys/bus/pci/devices" / str(BDF))
        raise OSError(errno.ENODEV, "No such device")

    monkeypatch.setattr(p2pmem.mmap, "mmap", removed)
    with pytest.raises(KernelError, match="was removed") as e:
        map_p2pmem(tree.root, BDF, MIB)
    assert e.value.errno_name == "ENODEV"


def test_allocate_smaller_than_request_is_not_a_traceback(tree: FakeTree) -> None:
    tree.device(str(BDF))
    tree.p2pmem(str(BDF), size=64 * MIB, available=64 * MIB, allocate_size=4096)
    with pytest.raises(InputError, match="1 TiB"):
        map_p2pmem(tree.root, BDF, 2 * MIB)


def test_cpu_check_passes_on_memory() -> None:
    mm = mmap.mmap(-1, 16 * PAGE_SIZE)
    result = cpu_pattern_check(memoryview(mm))
    assert result.ok and result.touched > 0 and result.signal is None
    # The child wrote through the MAP_SHARED mapping, as it would into P2P memory.
    assert bytes(mm[:64]) == p2pmem._pattern(0, 64, 0x5A)
    mm.close()


def test_revoked_mapping_gives_a_clean_sigbus_report(tmp_path: Path) -> None:
    """A file mapping whose pages vanish (truncate) faults with SIGBUS like a revoked
    p2pmem mapping; the check must survive it and say so."""
    path = tmp_path / "backing"
    path.write_bytes(b"\0" * (4 * PAGE_SIZE))
    with open(path, "r+b") as f:
        mm = mmap.mmap(f.fileno(), 4 * PAGE_SIZE, flags=mmap.MAP_SHARED)
    view = memoryview(mm)
    assert cpu_pattern_check(view).ok
    os.truncate(path, 0)
    result = cpu_pattern_check(view)
    assert not result.ok and result.signal == signal.SIGBUS
    assert "SIGBUS" in result.detail
    view.release()
    mm.close()  # munmap still works after the fault
