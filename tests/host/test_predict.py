"""Predicting the kernel's verdict before I/O, and how refusals and removals are reported.

The fabrics are synthetic sysfs trees written by ``sources.write_sysfs``; predictions come
from the real ``kernel`` rule engine.  Where a test needs a P2P buffer it uses a 1 TiB sparse
regular file as ``allocate``: that checks OUR sequence (predict, map, move, verify), never the
kernel; kernel refusals are injected at the syscall and say so.
"""

from __future__ import annotations

import errno
import os
from pathlib import Path

import pytest
from host_fakes import Machine, write_random

from p2pdma.errors import KernelError, P2PDMAError
from p2pdma.fabric.bdf import Bdf
from p2pdma.host import io as host_io
from p2pdma.host.io import IoFailure
from p2pdma.host.predict import Client, client_of, nvme_namespaces, predict, refusal_errno
from p2pdma.host.runner import CopyRequest, classify_io_error, run_copy

M = 1 << 20


def nvme_client(m: Machine, bdf: Bdf) -> Client:
    name = m.fabric.get(bdf).nvme.name  # type: ignore[union-attr]
    return Client(f"/dev/{name}n1", f"{name}n1", name, bdf, True)


def test_same_switch_is_predicted_allowed(machine: Machine) -> None:
    p = predict(machine.root, machine.provider, nvme_client(machine, machine.peer))
    assert p.map_type == "BUS_ADDR" and p.refuse is False
    assert any("common upstream bridge" in e and "None" not in e for e in p.explanation)
    assert p.profile is not None and "6.12" in str(p.extra["profile_reason"])


def test_across_root_ports_is_predicted_refused_with_the_kernels_reason(
    machine: Machine,
) -> None:
    p = predict(machine.root, machine.provider, nvme_client(machine, machine.far))
    assert p.map_type == "NOT_SUPPORTED" and p.refuse is True
    text = "\n".join(p.explanation)
    assert "no common upstream bridge" in text
    assert "8086:29c0" in text
    assert any("do not share an upstream bridge or whitelisted host bridge" in m
               for m in p.messages)
    assert "REFUSED" in p.summary()


def test_client_of_maps_a_file_to_its_nvme_function(machine: Machine, tmp_path: Path) -> None:
    f = tmp_path / "data"
    f.write_bytes(b"x")
    machine.route_files_to(machine.far, f)
    c = client_of(str(f), machine.root)
    assert (c.bdf, c.block, c.controller, c.is_nvme) == (machine.far, "nvme2n1", "nvme2", True)
    assert set(nvme_namespaces(machine.root)) == set()  # write_sysfs makes no class/block


def test_client_of_unknown_block_device(tmp_path: Path) -> None:
    f = tmp_path / "data"
    f.write_bytes(b"x")
    c = client_of(str(f), tmp_path / "empty-root")
    assert c.bdf is None and c.why_unknown and "not a block device" in c.why_unknown


def test_non_nvme_block_device_is_refused_by_the_block_layer(machine: Machine) -> None:
    c = Client("/dev/vda", "vda", None, machine.peer, False)
    p = predict(machine.root, machine.provider, c)
    assert p.refuse is True and "BLK_FEAT_PCI_P2PDMA" in p.explanation[0]


def test_refusal_errno_by_release(tmp_path: Path) -> None:
    d = tmp_path / "proc/sys/kernel"
    d.mkdir(parents=True)
    (d / "osrelease").write_text("6.12.117\n")
    assert refusal_errno(tmp_path) == "EREMOTEIO"
    (d / "osrelease").write_text("7.2.0-rc3\n")
    assert refusal_errno(tmp_path) == "EINVAL"


def test_prediction_is_shown_before_any_io(machine: Machine, odirect_dir: Path) -> None:
    src, dst = odirect_dir / "src", odirect_dir / "dst"
    data = write_random(src, 512 * 1024)
    machine.route_files_to(machine.peer, src)
    seen: list[bool] = []

    def shown(preds: list[object]) -> None:
        # Called before DST is opened, the buffer mapped, or any byte moved.
        seen.append(not dst.exists())
        assert preds and all(p.map_type == "BUS_ADDR" for p in preds)  # type: ignore[attr-defined]

    req = CopyRequest(src=str(src), dst=str(dst), via=machine.provider, chunk=128 * 1024,
                      threads=2, root=str(machine.root))
    report = run_copy(req, on_predictions=shown)
    assert seen == [True]
    assert report.ok and report.buffer == "p2p" and dst.read_bytes() == data
    assert report.pool_before is not None and report.pool_before.size == 64 * M


def test_kernel_refusal_reports_the_prediction(
    machine: Machine, odirect_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The kernel's EREMOTEIO is injected at preadv (no P2P hardware here)."""
    src, dst = odirect_dir / "src", odirect_dir / "dst"
    write_random(src, 64 * 1024)
    machine.route_files_to(machine.far, src)
    real_preadv = os.preadv

    def refuse(fd: int, bufs: list[memoryview], off: int) -> int:
        if fd == opened["src"]:
            raise OSError(errno.EREMOTEIO, "Remote I/O error")
        return real_preadv(fd, bufs, off)

    opened: dict[str, int] = {}
    real_open_source = host_io.open_source

    def track(path: str, root: object = "/") -> host_io.Target:
        t = real_open_source(path, root)  # type: ignore[arg-type]
        opened["src"] = t.fd
        return t

    monkeypatch.setattr("p2pdma.host.runner.open_source", track)
    monkeypatch.setattr(host_io.os, "preadv", refuse)
    req = CopyRequest(src=str(src), dst=str(dst), via=machine.provider, root=str(machine.root))
    with pytest.raises(KernelError) as e:
        run_copy(req)
    err = e.value
    assert err.errno_name == "EREMOTEIO"
    assert "as predicted before the copy" in err.what
    assert "do not share an upstream bridge" in err.what  # the kernel's own reason
    assert "8086:29c0" in err.what


def test_provider_removed_during_copy_is_an_error_not_a_success(
    machine: Machine, odirect_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Revocation is simulated: after the first chunk the provider's sysfs dir disappears
    and the next DMA into the buffer fails with EFAULT, as GUP does on a zapped VMA."""
    src, dst = odirect_dir / "src", odirect_dir / "dst"
    write_random(src, 256 * 1024)
    dev = machine.root / "sys/bus/pci/devices" / str(machine.provider)
    real_preadv = os.preadv
    calls = {"n": 0}

    def revoked(fd: int, bufs: list[memoryview], off: int) -> int:
        calls["n"] += 1
        if calls["n"] == 2:
            os.rename(dev / "p2pmem", dev / "p2pmem.gone")
        if calls["n"] >= 2:
            raise OSError(errno.EFAULT, "Bad address")
        return real_preadv(fd, bufs, off)

    monkeypatch.setattr(host_io.os, "preadv", revoked)
    req = CopyRequest(src=str(src), dst=str(dst), via=machine.provider, chunk=64 * 1024,
                      root=str(machine.root))
    with pytest.raises(KernelError) as e:
        run_copy(req)
    assert e.value.errno_name == "ENODEV"
    assert "removed or unbound during the copy" in e.value.what
    assert "Nothing was reported as copied" in e.value.what


def test_classify_generic_errors(machine: Machine) -> None:
    err = classify_io_error(IoFailure("write", "/x", 4096, OSError(errno.ENOSPC, "full")),
                            p2p=None, predictions=[], root=str(machine.root))
    assert isinstance(err, P2PDMAError) and "no space" in err.what and "0x1000" in str(err.where)


def test_file_without_block_device_is_flagged_as_a_cpu_copy(
    machine: Machine, odirect_dir: Path
) -> None:
    """Seen on a real 6.12 guest: tmpfs accepts O_DIRECT with a P2P buffer and copies with
    the CPU.  Here the file system has no sys/dev/block entry in the tree, like tmpfs."""
    src, dst = odirect_dir / "src", odirect_dir / "dst"
    write_random(src, 64 * 1024)
    client = client_of(str(src), machine.root)
    assert client.no_block
    p = predict(machine.root, machine.provider, client)
    assert p.refuse is False and p.extra["cpu_copy"] and "no DMA" in p.summary()
    report = run_copy(CopyRequest(src=str(src), dst=str(dst), via=machine.provider,
                                  root=str(machine.root)))
    assert report.ok
    assert any("no P2P DMA took place" in n for n in report.notes)


def test_efault_while_sysfs_teardown_is_still_running_is_a_revocation(
    machine: Machine, odirect_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Seen on a real 6.12 guest: the DMA fails with EFAULT while p2pmem/allocate still
    exists (teardown in progress).  That must read as a revocation, not as a refusal."""
    src, dst = odirect_dir / "src", odirect_dir / "dst"
    write_random(src, 64 * 1024)

    def faulting(fd: int, bufs: list[memoryview], off: int) -> int:
        raise OSError(errno.EFAULT, "Bad address")

    monkeypatch.setattr(host_io.os, "preadv", faulting)
    req = CopyRequest(src=str(src), dst=str(dst), via=machine.provider, root=str(machine.root))
    with pytest.raises(KernelError) as e:
        run_copy(req)
    assert e.value.errno_name == "ENODEV"
    assert "teardown still in progress" in e.value.what
    assert "refused" not in e.value.what


def test_bus_address_of_a_cmb_offset(machine: Machine) -> None:
    from p2pdma.host.p2pmem import _bus_address, locate, map_p2pmem

    bar2 = machine.fabric.get(machine.provider).bar(2)
    assert bar2 is not None
    with map_p2pmem(machine.root, machine.provider, 4096) as buf:
        bus, note = _bus_address(buf, 2, 0x20000)
        assert bus == bar2.bus_address + 0x20000 and "CPU address" in note
        # The stand-in's pages are RAM, not the BAR: the origin must not claim a BAR.
        assert locate(buf).bar is None


def test_a_7x_kernel_refuses_with_einval_and_it_is_read_as_the_refusal(
    machine: Machine, odirect_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """7.x refuses a NOT_SUPPORTED pair with EINVAL (injected here at preadv)."""
    (machine.root / "proc/sys/kernel/osrelease").write_text("7.2.0\n")
    src, dst = odirect_dir / "src", odirect_dir / "dst"
    write_random(src, 64 * 1024)
    machine.route_files_to(machine.far, src)

    def refuse(fd: int, bufs: list[memoryview], off: int) -> int:
        raise OSError(errno.EINVAL, "Invalid argument")

    monkeypatch.setattr(host_io.os, "preadv", refuse)
    req = CopyRequest(src=str(src), dst=str(dst), via=machine.provider, root=str(machine.root))
    with pytest.raises(KernelError) as e:
        run_copy(req)
    assert e.value.errno_name == "EINVAL"
    assert "refuses a NOT_SUPPORTED pair with EINVAL" in e.value.what
    assert "as predicted before the copy" in e.value.what
    assert not dst.exists()  # we created it and nothing reached it
