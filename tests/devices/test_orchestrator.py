"""End to end: the offload pipelines move real data, verified against the namespace files;
nvmet's provider choice and messages; provider removal mid-run."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import pytest
from devrig import Rig, build_rig

from p2pdma.emu.devices.rdma import pattern_chunks
from p2pdma.emu.machine import Machine
from p2pdma.emu.orchestrator import Request, Runner, RunReport, WorkloadSpec
from p2pdma.errors import InputError, KernelError

MiB = 1 << 20


def run(rig: Rig, tmp_path: Path, kind: str, *, size: int = 4 * MiB, chunk: int = 128 << 10,
        **kw: Any) -> tuple[Machine, RunReport]:
    m = Machine(rig.fabric, ram_size=32 << 20)
    spec = WorkloadSpec(kind=kind, workdir=tmp_path, size=size, chunk=chunk, **kw)
    runner = Runner(m, spec)
    try:
        report = runner.run()
    finally:
        runner.close()
    return m, report


def expected(size: int, chunk: int, seed: int = 0) -> bytes:
    return b"".join(bytes(p) for p in pattern_chunks(seed, size, chunk))


def test_nvmeof_write_data_reads_back_identical_from_the_file(rig: Rig, tmp_path: Path) -> None:
    m, r = run(rig, tmp_path, "nvmeof-write", nvme=str(rig.nvme), seed=7)
    try:
        assert r.verified, r.verify_detail
        assert r.provider == rig.cmb and r.provider_how == "find_many"
        assert f"nvmet: using p2pmem on {rig.cmb} for nsid 1" in r.messages
        assert r.stats.acknowledged == 32 and r.stats.host_requests == 0
        # Independently of the runner's own check: the file on disk holds the data.
        data = (tmp_path / "nvme0n1.img").read_bytes()[:4 * MiB]
        assert data == expected(4 * MiB, 128 << 10, seed=7)
        # P2P: not one byte through host memory; NIC up and the CMB's link down/up.
        assert r.host_memory_bytes == 0
        assert r.traffic["by_map_type"] == {"BUS_ADDR": 8 * MiB}
        assert not r.warnings
    finally:
        m.close()


def test_nvmeof_read_remote_host_receives_the_namespace(rig: Rig, tmp_path: Path) -> None:
    m, r = run(rig, tmp_path, "nvmeof-read", nvme=str(rig.nvme), wire="tcp")
    try:
        assert r.verified, r.verify_detail
        assert r.provider == rig.cmb and r.host_memory_bytes == 0
    finally:
        m.close()


def test_nvme_to_gpu_checksum_on_the_gpu(rig: Rig, tmp_path: Path) -> None:
    m, r = run(rig, tmp_path, "nvme-to-gpu", nvme=str(rig.nvme))
    try:
        assert r.verified, r.verify_detail
        assert r.provider == rig.gpu and r.host_memory_bytes == 0
        assert r.traffic["by_map_type"]["BUS_ADDR"] == 4 * MiB
    finally:
        m.close()


def test_nvme_copy_between_namespaces(rig: Rig, tmp_path: Path) -> None:
    m, r = run(rig, tmp_path, "nvme-copy", nvme=str(rig.nvme), nvme_dst=str(rig.far))
    try:
        assert r.verified, r.verify_detail
        # far sits on another root port, ACS off, whitelisted host bridge: the CMB is
        # reachable by both (through the host bridge for far).
        assert r.provider == rig.cmb
        assert set(r.traffic["by_map_type"]) == {"BUS_ADDR", "THRU_HOST_BRIDGE"}
        assert (tmp_path / "nvme2n1.img").read_bytes()[:4 * MiB] == expected(4 * MiB, 128 << 10)
    finally:
        m.close()


def test_bounce_uses_host_memory_twice_and_says_so(rig: Rig, tmp_path: Path) -> None:
    m, r = run(rig, tmp_path, "nvmeof-write", nvme=str(rig.nvme), provider="host")
    try:
        assert r.verified
        assert r.host_memory_bytes == 2 * 4 * MiB
        assert r.stats.host_requests == r.stats.requests
        assert any("host memory" in w for w in r.warnings)
        assert r.to_json()["p2pmem"]["host_memory_fallback"] is True
    finally:
        m.close()


def test_no_p2pmem_for_the_pair_falls_back_loudly(tmp_path: Path) -> None:
    # Desktop-style host bridge (not whitelisted): the CMB under the switch serves the
    # NVMe next to it, but not the NIC on another root port -> nvmet's message, host
    # memory, and (unlike nvmet) a warning.
    rig = build_rig(host_bridge=(0x8086, 0x4C43))
    m, r = run(rig, tmp_path, "nvmeof-write", nvme=str(rig.nvme), nic=str(rig.far_nic))
    try:
        assert r.verified
        assert r.provider is None
        line = (f"nvmet: no peer-to-peer memory is available that's supported by "
                f"{rig.far_nic} and nvme0n1")
        assert line in r.messages
        assert any(line in w for w in r.warnings)
        assert r.to_json()["warnings"] == r.warnings
        assert r.host_memory_bytes == 2 * 4 * MiB
    finally:
        m.close()


def test_no_p2pmem_for_the_namespace(tmp_path: Path) -> None:
    rig = build_rig(host_bridge=(0x8086, 0x4C43))
    m, r = run(rig, tmp_path, "nvmeof-write", nvme=str(rig.far), nic=str(rig.nic))
    try:
        assert r.verified and r.provider is None
        assert "nvmet: no peer-to-peer memory is available for nvme2n1" in r.messages
        assert any("nvmet refuses to enable p2pmem" in w for w in r.warnings)
    finally:
        m.close()


def test_explicit_provider_without_p2pmem_is_enodev(rig: Rig, tmp_path: Path) -> None:
    with pytest.raises(KernelError) as e:
        run(rig, tmp_path, "nvmeof-write", nvme=str(rig.nvme), provider=str(rig.far))
    assert e.value.errno_name == "ENODEV"
    assert "PCI device has no peer-to-peer memory" in e.value.what


def test_explicit_provider_out_of_reach_is_einval(tmp_path: Path) -> None:
    rig = build_rig(host_bridge=(0x8086, 0x4C43))
    with pytest.raises(KernelError) as e:
        run(rig, tmp_path, "nvmeof-write", nvme=str(rig.far), provider=str(rig.cmb))
    assert e.value.errno_name == "EINVAL"


def test_explicit_provider_out_of_reach_of_the_nic_uses_host_memory(tmp_path: Path) -> None:
    # nvmet checks the named device against the port's RDMA device per controller and
    # silently skips it; we warn.
    rig = build_rig(host_bridge=(0x8086, 0x4C43))
    m, r = run(rig, tmp_path, "nvmeof-write", nvme=str(rig.nvme), nic=str(rig.far_nic),
               provider=str(rig.cmb))
    try:
        assert r.verified and r.provider is None and r.provider_how == "explicit"
        assert any(f"{rig.cmb} is not reachable from {rig.far_nic}" in w for w in r.warnings)
        assert r.host_memory_bytes == 2 * 4 * MiB
    finally:
        m.close()


def test_explicit_provider_is_used(rig: Rig, tmp_path: Path) -> None:
    m, r = run(rig, tmp_path, "nvmeof-write", nvme=str(rig.nvme), provider=str(rig.cmb))
    try:
        assert r.verified and r.provider == rig.cmb and r.provider_how == "explicit"
        assert f"nvmet: using p2pmem on {rig.cmb} for nsid 1" in r.messages
    finally:
        m.close()


def test_bad_spec_is_an_input_error(tmp_path: Path) -> None:
    with pytest.raises(InputError):
        WorkloadSpec(kind="nvme-teleport", workdir=tmp_path)
    with pytest.raises(InputError):
        WorkloadSpec(kind="nvme-copy", workdir=tmp_path, chunk=1000)


def test_provider_removed_mid_run_fails_inflight_and_keeps_acknowledged(
        rig: Rig, tmp_path: Path) -> None:
    m = Machine(rig.fabric, ram_size=32 << 20)
    removed: list[str] = []

    def pull_the_cmb(req: Request, step: str) -> None:
        # Request 10 has its data in the CMB (the NIC wrote it); the drive has not
        # written it yet.  Hot-unplug the provider right now.
        if req.index == 10 and step == "nvme-write":
            m.remove_device(rig.cmb, timeout=2.0)
            removed.append(step)

    spec = WorkloadSpec(kind="nvmeof-write", workdir=tmp_path, size=4 * MiB, chunk=128 << 10,
                        nvme=str(rig.nvme), seed=3)
    runner = Runner(m, spec, hooks=[pull_the_cmb])
    try:
        r = runner.run()
    finally:
        runner.close()
    try:
        assert removed == ["nvme-write"]
        st = r.stats
        assert st.failed == 1 and st.acknowledged == 31
        assert "being removed" in st.errors[0] and "request 10" in st.errors[0]
        # Requests before the removal used the CMB; after it, host memory (loudly).
        assert st.p2p_requests == 11 and st.host_requests == 21
        assert any("removed during the run" in w for w in r.warnings)
        assert not r.verified  # a request failed
        # Nothing acknowledged is lost: every acked chunk is in the file, byte for byte.
        data = (tmp_path / "nvme0n1.img").read_bytes()
        chunks = [bytes(p) for p in pattern_chunks(3, 4 * MiB, 128 << 10)]
        acked = {o for o, _ in st.acked}
        assert len(acked) == 31 and 10 * (128 << 10) not in acked
        for i, c in enumerate(chunks):
            off = i * (128 << 10)
            if off in acked:
                assert data[off:off + len(c)] == c, i
        assert data[10 * (128 << 10):11 * (128 << 10)] != chunks[10]
        assert m.find_device(rig.cmb) is None  # the removal completed (nothing leaked)
    finally:
        m.close()


def test_provider_removed_from_another_thread(rig: Rig, tmp_path: Path) -> None:
    m = Machine(rig.fabric, ram_size=32 << 20)
    started = threading.Event()
    errors: list[BaseException] = []

    def note(req: Request, step: str) -> None:
        if req.index == 4:
            started.set()

    def unplug() -> None:
        started.wait(10)
        try:
            m.remove_device(rig.cmb, timeout=5.0)
        except BaseException as e:  # reported below
            errors.append(e)

    t = threading.Thread(target=unplug)
    t.start()
    spec = WorkloadSpec(kind="nvmeof-write", workdir=tmp_path, size=8 * MiB, chunk=64 << 10,
                        nvme=str(rig.nvme), seed=5)
    runner = Runner(m, spec, hooks=[note])
    try:
        r = runner.run()
    finally:
        runner.close()
        t.join(10)
    try:
        assert not errors
        st = r.stats
        assert st.acknowledged + st.failed == st.requests == 128
        assert st.failed <= 1  # at most the one request caught in flight
        data = (tmp_path / "nvme0n1.img").read_bytes()
        for i, c in enumerate(pattern_chunks(5, 8 * MiB, 64 << 10)):
            off = i * (64 << 10)
            if off in {o for o, _ in st.acked}:
                assert data[off:off + len(c)] == bytes(c), i
        assert m.find_device(rig.cmb) is None
    finally:
        m.close()


@pytest.mark.parametrize("kind", ["nvmeof-write", "nvmeof-read", "nvme-to-gpu", "nvme-copy"])
def test_every_workload_with_a_translating_iommu_and_acs(kind: str, tmp_path: Path) -> None:
    from p2pdma.fabric.model import IommuMode

    # Linux with the IOMMU on sets ACS redirect on the switch ports: P2P goes through
    # the (whitelisted) host bridge with IOVAs, and the data must still be right.
    rig = build_rig(iommu=IommuMode.TRANSLATED, acs_ctrl=0x001D)
    kw: dict[str, Any] = {"nvme": str(rig.nvme)}
    if kind == "nvme-copy":
        kw["nvme_dst"] = str(rig.far)
    m, r = run(rig, tmp_path, kind, size=2 * MiB, **kw)
    try:
        assert r.verified, (r.verify_detail, r.stats.errors)
        assert r.provider is not None and r.host_memory_bytes == 0
        assert "THRU_HOST_BRIDGE" in r.traffic["by_map_type"]
    finally:
        m.close()
