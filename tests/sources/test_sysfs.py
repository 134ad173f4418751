"""read_sysfs on synthetic trees: facts, malformed values, hostile trees given with --root."""

from __future__ import annotations

import gzip
import os
import struct
from pathlib import Path

import pytest

from p2pdma.errors import SysfsError
from p2pdma.fabric.builder import FabricBuilder
from p2pdma.fabric.model import Cmb, Fabric, HostContext, IommuMode, PortType
from p2pdma.samples import load_sample
from p2pdma.sources import pciconfig
from p2pdma.sources.snapshot import gather, read_snapshot
from p2pdma.sources.synthetic import write_sysfs
from p2pdma.sources.sysfs import iommu_driver_from_entry, iommu_entry_name, read_sysfs


@pytest.fixture
def xeon(tmp_path: Path) -> tuple[Fabric, Path]:
    f = load_sample("xeon-2s")
    write_sysfs(f, tmp_path / "r")
    return f, tmp_path / "r"


def dev(root: Path, bdf: str) -> Path:
    return (root / "sys/bus/pci/devices" / bdf).resolve()


def test_tree_layout_is_what_sysfs_looks_like(xeon: tuple[Fabric, Path]) -> None:
    f, root = xeon
    nvme = next(x for x in f.functions if x.nvme and x.nvme.cmb)
    d = dev(root, str(nvme.bdf))
    # nested under the host bridge and every bridge above it
    rel = d.relative_to(root.resolve())
    parts = rel.parts
    assert parts[:3] == ("sys", "devices", "pci0000:16")
    assert parts[-1] == str(nvme.bdf) and len(parts) == 7
    cfg = (d / "config").read_bytes()
    assert len(cfg) == 4096
    assert struct.unpack_from("<HH", cfg, 0) == (nvme.vendor, nvme.device)
    assert (d / "driver").resolve().name == "nvme"
    assert (d / "p2pmem/published").read_text() == "1\n"
    assert (d / "max_link_speed").read_text() == "16.0 GT/s PCIe\n"
    assert os.readlink(d / "iommu_group").endswith(f"iommu_groups/{nvme.iommu_group}")
    assert nvme.nvme is not None and nvme.nvme.cmb is not None
    c = nvme.nvme.cmb
    cmb = (root / "sys/class/nvme" / nvme.nvme.name / "cmb").read_text()
    assert cmb == f"cmbloc : x{c.cmbloc:08x}\ncmbsz  : x{c.cmbsz:08x}\n"
    res = (d / "resource").read_text().splitlines()
    b0 = nvme.bars[0]
    assert res[0] == f"0x{b0.start:016x} 0x{b0.end:016x} 0x{b0.flags:016x}"
    assert (root / "proc/sys/kernel/osrelease").read_text() == "6.12.48\n"
    assert (root / "sys/kernel/iommu_groups/0/type").read_text() == "DMA\n"


def test_acs_walk_and_pcie_cap(xeon: tuple[Fabric, Path]) -> None:
    f, root = xeon
    rp = next(x for x in f.functions if x.port_type is PortType.ROOT_PORT)
    cfg = (dev(root, str(rp.bdf)) / "config").read_bytes()
    facts = pciconfig.decode(cfg)
    assert facts.port_type is PortType.ROOT_PORT
    assert facts.acs == rp.acs and facts.acs is not None and facts.acs.offset == 0x148
    assert (facts.secondary_bus, facts.subordinate_bus) == (rp.secondary_bus, rp.subordinate_bus)
    assert facts.mps == 256 and facts.mps_supported == 512
    # the first extended capability points on to ACS
    hdr = struct.unpack_from("<I", cfg, 0x100)[0]
    assert (hdr >> 20) & 0xFFC == 0x148


def test_decode_edge_cases() -> None:
    cfg = bytearray(256)
    struct.pack_into("<HH", cfg, 0, 0x1AF4, 0x1041)
    cfg[0x06] = 0x10  # capability list
    cfg[0x34] = 0x40
    cfg[0x40], cfg[0x41] = 0x09, 0x40  # vendor cap pointing at itself: the TTL ends it
    facts = pciconfig.decode(bytes(cfg))
    assert facts.port_type is PortType.NOT_PCIE and facts.acs_unknown is None
    with pytest.raises(pciconfig.ConfigError, match="64-byte"):
        pciconfig.decode(bytes(cfg[:40]))
    cfg[0x0E] = 0x05
    with pytest.raises(pciconfig.ConfigError, match="header type"):
        pciconfig.decode(bytes(cfg))
    cfg[0x0E] = 0
    cfg[0x41] = 0x50
    cfg[0x50] = 0x10
    struct.pack_into("<H", cfg, 0x52, 0x0B << 4)  # reserved port type
    with pytest.raises(pciconfig.ConfigError, match="reserved"):
        pciconfig.decode(bytes(cfg))
    struct.pack_into("<H", cfg, 0x52, 0x0 << 4)
    facts = pciconfig.decode(bytes(cfg))
    assert facts.port_type is PortType.ENDPOINT
    assert facts.acs_unknown == pciconfig.acs_unknown_reason(256)
    # 64 bytes of a function with a capability list: port type unknown
    facts = pciconfig.decode(bytes(cfg[:64]))
    assert facts.port_type is PortType.UNKNOWN and facts.mps is None
    assert facts.acs_unknown is not None and "root" in facts.acs_unknown
    # extended list that loops back on itself ends; 0xffffffff means none
    full = bytearray(cfg) + bytearray(4096 - 256)
    struct.pack_into("<I", full, 0x100, 0x0001 | (0x100 << 20))
    assert pciconfig.decode(bytes(full)).acs is None
    struct.pack_into("<I", full, 0x100, 0xFFFFFFFF)
    assert pciconfig.decode(bytes(full)).acs is None


def corrupt(root: Path, bdf: str, name: str, data: bytes) -> Path:
    p = dev(root, bdf) / name
    p.unlink()
    p.write_bytes(data)
    return p


@pytest.mark.parametrize("name,data,needle", [
    ("vendor", b"0xzz\n", "malformed"),
    ("class", b"0x1234567\n", "malformed"),
    ("numa_node", b"abc\n", "malformed"),
    ("numa_node", b"-5\n", "out of range"),
    ("resource", b"0x1 0x2\n", "three hex numbers"),
    ("resource", b"0x1000 0x10 0x200\n", "before start"),
    ("max_link_speed", b"fast\n", "link speed"),
    ("max_link_width", b"40\n", "is not a PCIe width"),
    ("config", b"\x00" * 10, "64-byte header"),
    ("config", b"\x00" * 5000, "larger than"),
    ("p2pmem/published", b"2\n", "out of range"),
])
def test_malformed_values_name_the_file(xeon: tuple[Fabric, Path], name: str, data: bytes,
                                        needle: str) -> None:
    f, root = xeon
    nvme = next(x for x in f.functions if x.nvme and x.p2pmem)
    p = corrupt(root, str(nvme.bdf), name, data)
    with pytest.raises(SysfsError) as ei:
        read_sysfs(root)
    assert needle in str(ei.value)
    assert ei.value.where is not None and ei.value.where.endswith(name)
    assert str(nvme.bdf) in ei.value.where and p.exists()


def test_link_width_255_is_the_kernels_unknown(xeon: tuple[Fabric, Path]) -> None:
    # A real 6.12 kernel shows 255 (PCIE_LNK_WIDTH_UNKNOWN) for untrained links.
    f, root = xeon
    nvme = next(x for x in f.functions if x.nvme and x.p2pmem)
    corrupt(root, str(nvme.bdf), "max_link_width", b"255\n")
    got = read_sysfs(root).get(nvme.bdf).link
    assert got is not None and got.max_width is None
    assert nvme.link is not None and got.width == nvme.link.width


def test_malformed_cmb_and_cpuinfo(xeon: tuple[Fabric, Path]) -> None:
    _f, root = xeon
    cmb = root / "sys/class/nvme/nvme0/cmb"
    cmb.resolve().write_text("cmbloc : 0\n")
    with pytest.raises(SysfsError, match="CMB"):
        read_sysfs(root)
    cmb.resolve().write_text("cmbloc : x00000004\ncmbsz  : x00000000\n")
    got = read_sysfs(root)
    nv = next(x for x in got.functions if x.nvme and x.nvme.name == "nvme0")
    assert nv.nvme is not None and nv.nvme.cmb is None  # CMBSZ 0: no CMB
    (root / "proc/cpuinfo").write_text("vendor_id : x\ncpu family : many\n")
    with pytest.raises(SysfsError, match="cpu family"):
        read_sysfs(root)


def test_symlink_escape_from_root_is_refused(tmp_path: Path) -> None:
    f = load_sample("desktop")
    root = tmp_path / "r"
    write_sysfs(f, root)
    (tmp_path / "outside").mkdir()
    link = root / "sys/bus/pci/devices" / str(f.functions[0].bdf)
    link.unlink()
    link.symlink_to("../../../../../outside")
    with pytest.raises(SysfsError, match="climbs above"):
        read_sysfs(root)
    link.unlink()
    link.symlink_to(str(tmp_path / "outside"))
    with pytest.raises(SysfsError, match="absolute"):
        read_sysfs(root)
    link.unlink()
    link.symlink_to(link.name)  # a loop
    with pytest.raises(SysfsError, match="symbolic links"):
        read_sysfs(root)


def test_fifo_and_device_files_are_not_opened(tmp_path: Path) -> None:
    f = load_sample("desktop")
    root = tmp_path / "r"
    write_sysfs(f, root)
    cfg = dev(root, str(f.functions[0].bdf)) / "config"
    cfg.unlink()
    os.mkfifo(cfg)  # opening it would block forever
    with pytest.raises(SysfsError, match="not a regular file"):
        read_sysfs(root)


def test_not_a_root(tmp_path: Path) -> None:
    with pytest.raises(SysfsError, match="no sys/"):
        read_sysfs(tmp_path)
    (tmp_path / "sys").mkdir()
    empty = read_sysfs(tmp_path)  # a machine without PCI: an empty fabric, not an error
    assert empty.functions == () and empty.host.privileged is None


def test_host_context_sources(tmp_path: Path) -> None:
    b = FabricBuilder(HostContext(kernel_release="6.1.0-28-amd64", cmdline="iommu=pt",
                                  arch="x86_64", cpu_vendor="AuthenticAMD", cpu_family=0x19,
                                  cpu_model=0x11, iommu=IommuMode.PASSTHROUGH,
                                  iommu_driver="amd-iommu", p2pdma_config=False))
    hb = b.host_bridge()
    b.nvme(b.root_port(hb), cmb_size=64 << 20)
    f = b.build()
    write_sysfs(f, tmp_path)
    assert (tmp_path / "sys/class/iommu/ivhd0").is_symlink()
    got = read_sysfs(tmp_path)
    h = got.host
    assert (h.kernel_release, h.cmdline, h.arch) == ("6.1.0-28-amd64", "iommu=pt", "x86_64")
    assert (h.cpu_vendor, h.cpu_family, h.cpu_model) == ("AuthenticAMD", 0x19, 0x11)
    assert (h.iommu, h.iommu_driver) == (IommuMode.PASSTHROUGH, "amd-iommu")
    assert h.p2pdma_config is True  # the p2pmem directory proves it, whatever config.gz says
    assert h.privileged is True
    # without the arch file, cpuinfo's "lm" flag says x86_64
    (tmp_path / "proc/sys/kernel/arch").unlink()
    (tmp_path / "proc/cpuinfo").write_text("processor\t: 0\nvendor_id\t: GenuineIntel\n"
                                           "flags\t\t: fpu lm sse\n\nprocessor\t: 1\n")
    assert read_sysfs(tmp_path).host.arch == "x86_64"
    (tmp_path / "proc/config.gz").write_bytes(b"not gzip")
    with pytest.raises(SysfsError, match="gzip"):
        read_sysfs(tmp_path)


def test_kconfig_without_p2pmem(tmp_path: Path) -> None:
    f = FabricBuilder(HostContext()).build()
    write_sysfs(f, tmp_path)
    assert read_sysfs(tmp_path).host.p2pdma_config is None
    (tmp_path / "proc/config.gz").write_bytes(gzip.compress(b"# CONFIG_PCI_P2PDMA is not set\n"))
    assert read_sysfs(tmp_path).host.p2pdma_config is False
    (tmp_path / "proc/config.gz").write_bytes(gzip.compress(b"CONFIG_PCI_P2PDMA=y\n"))
    assert read_sysfs(tmp_path).host.p2pdma_config is True


@pytest.mark.parametrize("driver", ["dmar", "amd-iommu", "virtio-iommu", "smmu3", "x-1", "5"])
def test_iommu_entry_names_round_trip(driver: str) -> None:
    assert iommu_driver_from_entry(iommu_entry_name(driver)) == driver


def test_gather_of_synthetic_tree_equals_reading_it(xeon: tuple[Fabric, Path],
                                                   tmp_path: Path) -> None:
    f, root = xeon
    g = gather(root, tmp_path / "x.zip")
    assert g == f == read_snapshot(tmp_path / "x.zip")
    assert read_snapshot(tmp_path / "x.zip").origin == f"snapshot:{tmp_path / 'x.zip'}"


def test_write_refuses_existing_tree(xeon: tuple[Fabric, Path]) -> None:
    from p2pdma.errors import InputError

    f, root = xeon
    with pytest.raises(InputError, match="already exists"):
        write_sysfs(f, root)


def test_write_refuses_names_that_would_escape(tmp_path: Path) -> None:
    from p2pdma.errors import InputError

    b = FabricBuilder(HostContext())
    hb = b.host_bridge()
    e = b.endpoint(b.root_port(hb), driver="../../../../etc")
    with pytest.raises(InputError, match="file name"):
        write_sysfs(b.build(), tmp_path / "r")
    assert not (tmp_path / "etc").exists()
    b.update(e, driver="ok")
    f = b.build()
    cmb = Cmb.encode(size=1 << 20, bar=2)
    from p2pdma.fabric.model import NvmeController

    f = f.replace_function(e, nvme=NvmeController("../x", cmb))
    with pytest.raises(InputError, match="file name"):
        write_sysfs(f, tmp_path / "r2")


def test_config_of_all_ones_is_unknown_not_an_error(xeon: tuple[Fabric, Path]) -> None:
    """A device in D3cold or gone answers config reads with 0xff: facts unknown, and
    the rest of the machine still reads."""
    f, root = xeon
    dsp = next(x for x in f.functions if x.port_type is PortType.DOWNSTREAM_PORT)
    corrupt(root, str(dsp.bdf), "config", b"\xff" * 4096)
    got = read_sysfs(root)
    g = got.get(dsp.bdf)
    assert g.port_type is PortType.UNKNOWN and g.acs is None
    assert g.acs_unknown == pciconfig.ALL_ONES_REASON
    assert g.header_type == 1 and g.vendor == dsp.vendor  # class and ids from sysfs
    assert g.mps is None and g.secondary_bus is None
    assert any(str(dsp.bdf) in u and "all ones" in u for u in got.unreadable)
    assert len(got.functions) == len(f.functions)


def test_kconfig_from_boot_when_no_proc_config(tmp_path: Path) -> None:
    f = FabricBuilder(HostContext(kernel_release="6.1.0-9-amd64")).build()
    write_sysfs(f, tmp_path)
    (tmp_path / "boot").mkdir()
    (tmp_path / "boot/config-6.1.0-9-amd64").write_text("CONFIG_PCI=y\nCONFIG_PCI_P2PDMA=y\n")
    assert read_sysfs(tmp_path).host.p2pdma_config is True
    (tmp_path / "boot/config-6.1.0-9-amd64").write_text("CONFIG_PCI=y\n")  # option absent
    assert read_sysfs(tmp_path).host.p2pdma_config is False
    (tmp_path / "proc/config.gz").write_bytes(gzip.compress(b"CONFIG_PCI_P2PDMA=y\n"))
    assert read_sysfs(tmp_path).host.p2pdma_config is True  # proc/config.gz comes first
