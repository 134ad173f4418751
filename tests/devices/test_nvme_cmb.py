"""The NVMe driver's CMB registration steps (spec §7.1) and file-backed namespaces."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from p2pdma.emu.devices.nvme import (
    CMBMSC_CMSE,
    CMBMSC_CRE,
    CmbPlan,
    CmbRegisters,
    Namespace,
    plan_cmb,
)
from p2pdma.errors import InputError, KernelError
from p2pdma.fabric.model import Cmb

MiB = 1 << 20
BAR_START = 0x40_0000_0000


def plan(cmb: Cmb | None, *, bar_size: int = 256 * MiB, bar_start: int = BAR_START,
         cap_cmbs: bool = True, cmbsz: int | None = None) -> CmbPlan:
    regs = CmbRegisters.from_cmb(cmb, cap_cmbs=cap_cmbs)
    if cmbsz is not None:
        regs = CmbRegisters(regs.cmbloc, cmbsz, cap_cmbs)
    return plan_cmb(regs, bar_size=lambda b: bar_size, bar_start=lambda b: bar_start,
                    bar_bus_address=lambda b: bar_start + 0x1000_0000)


def test_no_cmb_when_cmbsz_is_zero() -> None:
    p = plan(None)
    assert not p.register and "CMBSZ is 0" in p.reason
    assert p.cmbmsc_writes == [CMBMSC_CRE]  # CAP.CMBS: enable the registers first
    assert plan(None, cap_cmbs=False).cmbmsc_writes == []


def test_registers_publishes_and_programs_cmbmsc() -> None:
    p = plan(Cmb.encode(size=64 * MiB, bar=2, offset=4 * MiB))
    assert (p.register, p.publish, p.bar, p.offset, p.size) == (True, True, 2, 4 * MiB, 64 * MiB)
    assert p.use_sqes  # Cmb.encode sets SQS by default
    assert p.cmbmsc_writes[-1] == CMBMSC_CRE | CMBMSC_CMSE | (BAR_START + 0x1000_0000 + 4 * MiB)


def test_offset_beyond_bar_is_not_mapped() -> None:
    p = plan(Cmb.encode(size=4 * MiB, bar=2, offset=128 * MiB), bar_size=64 * MiB)
    assert not p.register and "beyond BAR2" in p.reason


def test_cmb_larger_than_bar_is_clipped() -> None:
    p = plan(Cmb.encode(size=128 * MiB, bar=2, offset=32 * MiB), bar_size=64 * MiB)
    assert p.register and p.size == 32 * MiB


def test_unaligned_size_or_bar_start_is_skipped_silently() -> None:
    p = plan(Cmb.encode(size=512 << 10, bar=2))  # 512 KiB
    assert not p.register and "aligned" in p.reason
    p = plan(Cmb.encode(size=64 * MiB, bar=2), bar_start=BAR_START + MiB)
    assert not p.register and "aligned" in p.reason


def test_published_only_with_wds_and_rds() -> None:
    for wds, rds in ((True, False), (False, True), (False, False)):
        p = plan(Cmb.encode(size=64 * MiB, bar=2, wds=wds, rds=rds))
        assert p.register and not p.publish, (wds, rds)
        assert "not published" in p.reason
    p = plan(Cmb.encode(size=64 * MiB, bar=2, sqs=False))
    assert p.publish and not p.use_sqes


def test_namespace_is_a_sparse_file(tmp_path: Path) -> None:
    ns = Namespace(tmp_path / "ns1.img", size=1 << 30)
    try:
        assert os.stat(ns.path).st_size == 1 << 30
        assert os.stat(ns.path).st_blocks * 512 < 1 << 20  # nothing allocated yet
        data = bytes(range(256)) * 16
        ns.write_from(4096 * 10, memoryview(data))
        assert ns.read(4096 * 10, 4096) == data
        assert ns.read(0, 4096) == bytes(4096)  # never written: zeros
        with pytest.raises(KernelError) as e:
            ns.read((1 << 30) - 512, 1024)
        assert e.value.errno_name == "EINVAL"
    finally:
        ns.close()
    # Reopened, the data is still there (it is a real file).
    ns2 = Namespace(tmp_path / "ns1.img", size=1 << 30)
    assert ns2.read(4096 * 10, 4096) == data
    ns2.close()


def test_namespace_validation(tmp_path: Path) -> None:
    with pytest.raises(InputError):
        Namespace(tmp_path / "x", size=1000)
    with pytest.raises(InputError):
        Namespace(tmp_path / "x", size=4096, lba_size=1024)


# ---------------------------------------------------------------------------
# The controller on a machine


def test_probe_registers_publishes_and_sqs_take_cmb_space() -> None:
    from devrig import build_rig

    from p2pdma.emu.devices import NvmeController
    from p2pdma.emu.dma_engine import DmaEngine
    from p2pdma.emu.machine import Machine

    rig = build_rig()
    m = Machine(rig.fabric, ram_size=16 << 20)
    try:
        eng = DmaEngine(m)
        ctrl = NvmeController(m, rig.cmb, eng, io_queues=2, queue_depth=1024)
        p = ctrl.probe()
        assert p.register and p.publish and p.use_sqes
        assert m.sysfs_read(rig.cmb, "size") == f"{64 * MiB}\n"
        # 2 queues x 1024 entries x 64 B = 128 KiB of submission queues in the CMB.
        assert m.sysfs_read(rig.cmb, "available") == f"{64 * MiB - (128 << 10)}\n"
        assert m.sysfs_read(rig.cmb, "published") == "1\n"
        assert ctrl.cmbmsc & (CMBMSC_CRE | CMBMSC_CMSE) == CMBMSC_CRE | CMBMSC_CMSE
        assert ctrl.probe() is p  # already mapped: nothing happens twice
        # A controller without a CMB registers nothing.
        other = NvmeController(m, rig.nvme, eng)
        assert not other.probe().register and not m.has_p2pmem(rig.nvme)
        # Removal: the driver gives the SQ memory back, so teardown completes.
        m.remove_device(rig.cmb, timeout=2.0)
        assert ctrl.sq_kva is None and m.find_device(rig.cmb) is None
    finally:
        m.close()


def test_registration_failure_disables_the_cmb() -> None:
    from devrig import build_rig

    from p2pdma.emu.devices import NvmeController
    from p2pdma.emu.dma_engine import DmaEngine
    from p2pdma.emu.machine import Machine

    rig = build_rig()
    m = Machine(rig.fabric.with_host(p2pdma_config=False), ram_size=16 << 20)
    try:
        ctrl = NvmeController(m, rig.cmb, DmaEngine(m))
        p = ctrl.probe()
        assert not p.register and ctrl.cmbmsc == 0
        assert "nvme nvme1: failed to register the CMB" in m.dmesg.lines()
    finally:
        m.close()


def test_namespace_o_direct(tmp_path: Path) -> None:
    import mmap

    try:
        ns = Namespace(tmp_path / "d.img", size=1 << 20, lba_size=4096, o_direct=True)
    except InputError as e:
        assert "O_DIRECT" in (e.hint or "")  # the file system refuses O_DIRECT
        return
    try:
        buf = mmap.mmap(-1, 8192)  # page-aligned, as DMA buffers are
        buf[:] = b"\x5a" * 8192
        ns.write_from(4096, memoryview(buf))
        out = mmap.mmap(-1, 8192)
        ns.read_into(4096, memoryview(out))
        assert out[:] == b"\x5a" * 8192
        with pytest.raises(KernelError):
            ns.write_from(100, memoryview(buf)[:4096])  # unaligned offset
    finally:
        ns.close()
