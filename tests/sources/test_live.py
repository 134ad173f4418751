"""This machine: a captured fixture (always) and the live /sys (marked live)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from p2pdma.fabric.bdf import Bdf
from p2pdma.fabric.model import IommuMode, PortType
from p2pdma.samples import load_sample
from p2pdma.sources import pciconfig
from p2pdma.sources.snapshot import gather, read_snapshot
from p2pdma.sources.synthetic import write_sysfs
from p2pdma.sources.sysfs import read_sysfs

REPO = Path(__file__).resolve().parents[2]
FIXTURE = REPO / "tests/fixtures/live/firecracker"


def test_firecracker_fixture_facts() -> None:
    f = read_sysfs(FIXTURE)
    assert [str(x.bdf) for x in f.functions] == [f"0000:00:0{i}.0" for i in range(6)]
    assert [(h.domain, h.bus) for h in f.host_bridges] == [(0, 0)]
    hb = f.get(Bdf(0, 0, 0, 0))
    assert hb.vendor_device == "8086:0d57" and hb.class_code == 0x060000
    assert hb.driver is None and hb.bars == ()
    virtio = f.functions[1:]
    assert {x.vendor for x in virtio} == {0x1AF4}
    assert [x.device for x in virtio] == [0x1045, 0x1042, 0x1041, 0x1053, 0x1044]
    assert [x.class_code for x in virtio] == [0xFFFF00, 0x018000, 0x020000, 0xFFFF00, 0xFFFF00]
    for x in f.functions:
        assert x.parent is None and x.physfn is None and x.numa_node is None
        assert x.header_type == 0 and not x.multifunction
        # 256 bytes of config (the host bridge shows 4096 of zeros), no PCIe capability:
        # conventional PCI, which has no extended config space, so "no ACS" is known
        assert x.port_type is PortType.NOT_PCIE
        assert x.acs is None and x.acs_unknown is None and x.link is None and x.mps is None
    b0 = f.get(Bdf(0, 0, 1, 0)).bars
    assert len(b0) == 1 and (b0[0].index, b0[0].start, b0[0].size) == (0, 0x40_0000_0000, 0x80000)
    assert b0[0].is_memory and b0[0].is_64bit and not b0[0].prefetchable
    assert b0[0].bus_start is None  # the BAR register holds the CPU address
    assert all(x.driver == "virtio-pci" for x in virtio)
    h = f.host
    assert (h.cpu_vendor, h.cpu_family, h.arch) == ("AuthenticAMD", 0x19, "x86_64")
    assert h.kernel_release == "6.18.44-fc-v769"
    assert h.iommu is IommuMode.OFF and h.iommu_driver is None
    assert h.p2pdma_config is False  # "# CONFIG_PCI_P2PDMA is not set" in proc/config.gz
    assert h.privileged is True


def test_firecracker_fixture_snapshot_and_synthetic_agree(tmp_path: Path) -> None:
    f = read_sysfs(FIXTURE)
    assert gather(FIXTURE, tmp_path / "fc.zip") == f
    assert read_snapshot(tmp_path / "fc.zip") == f
    write_sysfs(f, tmp_path / "synth")
    assert read_sysfs(tmp_path / "synth") == f


live = pytest.mark.skipif(not Path("/sys/bus/pci/devices").is_dir(),
                          reason="no /sys/bus/pci on this machine (not Linux, or no PCI)")


@pytest.mark.live
@live
def test_live_read_sysfs() -> None:
    f = read_sysfs("/")
    assert f.origin == "sysfs:/"
    assert len(f.functions) == len(os.listdir("/sys/bus/pci/devices"))
    assert f.host.kernel_release == os.uname().release
    if os.geteuid() == 0:
        assert f.host.privileged is True
        assert all(x.port_type is not PortType.UNKNOWN for x in f.functions)


def _unpriv_cmd() -> list[str]:
    if os.geteuid() != 0:
        pytest.skip("needs root to switch to an unprivileged user")
    setpriv = shutil.which("setpriv")
    if setpriv is None:
        pytest.skip("setpriv (util-linux) is not installed")
    py = "/usr/bin/python3" if os.access("/usr/bin/python3", os.X_OK) else sys.executable
    return [setpriv, "--reuid=65534", "--regid=65534", "--clear-groups", py, "-c"]


_SCRIPT = """
import json, sys
sys.path.insert(0, {src!r})
from p2pdma.sources.sysfs import read_sysfs
f = read_sysfs(sys.argv[1])
print(json.dumps({{"privileged": f.host.privileged, "unreadable": list(f.unreadable),
    "functions": [[str(x.bdf), x.port_type.value, x.acs is not None, x.acs_unknown]
                  for x in f.functions]}}))
"""


def _run_unprivileged(root: str) -> dict[str, object]:
    cmd = [*_unpriv_cmd(), _SCRIPT.format(src=str(REPO / "src")), root]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=120, check=False)
    assert out.returncode == 0, out.stderr
    data = json.loads(out.stdout)
    assert isinstance(data, dict)
    return data


@pytest.mark.live
@live
def test_live_unprivileged_marks_acs_unknown() -> None:
    as_root = {str(x.bdf): x for x in read_sysfs("/").functions}
    data = _run_unprivileged("/")
    assert data["privileged"] is False
    funcs = data["functions"]
    assert isinstance(funcs, list) and len(funcs) == len(as_root)
    for bdf, ptype, has_acs, unknown in funcs:
        root_view = as_root[bdf]
        cfg = Path(f"/sys/bus/pci/devices/{bdf}/config").read_bytes()
        if cfg[0x06] & 0x10:
            # a capability list beyond byte 64: PCIe or not, ACS cannot be known
            assert ptype == "unknown" and not has_acs
            assert unknown and "64 bytes" in unknown
        else:
            # no capability list at all: conventional PCI, no ACS (a fact, even unprivileged)
            assert ptype == "not-pcie" and not has_acs and unknown is None
            assert root_view.port_type is PortType.NOT_PCIE
        if root_view.port_type not in (PortType.NOT_PCIE, PortType.UNKNOWN):
            assert unknown  # every PCIe function: ACS unknown without root


def test_unprivileged_reader_on_synthetic_64_byte_tree() -> None:
    """The unprivileged path on PCIe hardware this VM lacks, by a real non-root process:
    a tree whose configs hold the 64 bytes a non-root reader of sysfs gets."""
    _unpriv_cmd()  # skips early when it cannot run
    f = load_sample("xeon-2s")
    top = Path(tempfile.mkdtemp(prefix="p2pdma-unpriv-"))
    try:
        top.chmod(0o755)  # pytest's tmp_path is private to root
        write_sysfs(f, top / "full")
        # a root-only file, as some sysfs attributes are: recorded, left unknown, no guess
        (top / "full/proc/cmdline").chmod(0o600)
        data = _run_unprivileged(str(top / "full"))
        unreadable = data["unreadable"]
        assert isinstance(unreadable, list)
        assert any("proc/cmdline" in u and "permission" in u for u in unreadable)
        write_sysfs(f, top / "u", unprivileged=True)
        data = _run_unprivileged(str(top / "u"))
    finally:
        shutil.rmtree(top)
    assert data["privileged"] is False
    reason = pciconfig.acs_unknown_reason(64)
    pcie = {str(x.bdf) for x in f.functions if x.port_type.pcie_type_value is not None}
    funcs = data["functions"]
    assert isinstance(funcs, list) and {x[0] for x in funcs} >= pcie
    for bdf, ptype, has_acs, unknown in funcs:
        if bdf in pcie:
            assert ptype == "unknown" and not has_acs and unknown == reason
