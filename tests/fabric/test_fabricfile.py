from __future__ import annotations

from pathlib import Path

import pytest

from p2pdma.errors import FabricFileError
from p2pdma.fabric import Bdf, PortType
from p2pdma.samples import SAMPLES, load_sample, sample_text
from p2pdma.samples.definitions import DEFINITIONS, render_sample
from p2pdma.sources.fabricfile import dumps_fabric, load_fabric_file, loads_fabric

MINIMAL = """
format = "p2pdma-fabric/1"
[host]
kernel = "6.12.117"
cpu = "AuthenticAMD"
cpu_family = "0x19"
iommu = "off"

[[host_bridge]]
bus = 0

[[function]]
bdf = "00:00.0"
id = "8086:29c0"
class = "0x060000"

[[function]]
bdf = "00:02.0"
id = "1b36:000c"
type = "root-port"
secondary_bus = 1
acs = { cap = "0x005f", ctrl = "0x001d", offset = "0x148" }

[[function]]
bdf = "01:00.0"
id = "1b36:0010"
class = "0x010802"
driver = "nvme"
bars = [ { index = 0, start = "0xfe000000", size = "16K" },
         { index = 2, start = "0x800000000", size = "64M", mem64 = true, prefetch = true } ]
nvme = { name = "nvme0", namespaces = ["nvme0n1"], cmb = { size = "64M", bar = 2 } }
p2pmem = { size = "64M", available = "63M", published = true }
"""


def test_minimal_file_infers_parent_and_bridge() -> None:
    f = loads_fabric(MINIMAL, origin="t.toml")
    ep = f.get(Bdf(0, 1, 0, 0))
    assert ep.parent == Bdf(0, 0, 2, 0)  # from the root port's secondary_bus
    rp = f.get(Bdf(0, 0, 2, 0))
    assert rp.is_bridge and rp.port_type is PortType.ROOT_PORT
    assert rp.acs is not None and rp.acs.control == 0x1D
    assert f.host.cpu_family == 0x19
    assert ep.nvme is not None and ep.nvme.cmb is not None
    assert ep.nvme.cmb.size == 64 << 20 and ep.nvme.cmb.bar == 2
    assert ep.p2pmem is not None and ep.p2pmem.available == 63 << 20
    assert ep.bar(2) is not None and ep.bar(2).prefetchable  # type: ignore[union-attr]


def test_dump_load_is_identity() -> None:
    f = loads_fabric(MINIMAL)
    assert loads_fabric(dumps_fabric(f)) == f


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (('id = "1b36:0010"', 'id = "1b36:10"'), "is not a vendor:device id"),
        (('bdf = "01:00.0"', 'bdf = "01:00.9"'), "not a PCI address"),
        (('driver = "nvme"', 'drivr = "nvme"'), "unknown key(s) drivr"),
        (('secondary_bus = 1', 'secondary_bus = 2'), "neither a host bridge's root bus"),
        (('ctrl = "0x001d"', 'ctrl = "0x1001d"'), "out of range"),
        (('size = "16K"', 'size = "16Q"'), "is not a number or size"),
        (('iommu = "off"', 'iommu = "maybe"'), "is not an IOMMU mode"),
        (('available = "63M"', 'available = "65M"'), "more available than"),
        (('format = "p2pdma-fabric/1"', 'format = "p2pdma-fabric/9"'), "unsupported format"),
        (('type = "root-port"', 'type = "root-complex"'), "is not a port type"),
        (('start = "0x800000000"', 'start = "0xfe002000"'), "overlaps"),
    ],
)
def test_errors_name_the_place(edit: tuple[str, str], message: str) -> None:
    bad = MINIMAL.replace(*edit)
    assert bad != MINIMAL
    with pytest.raises(FabricFileError) as ei:
        loads_fabric(bad, origin="bad.toml")
    text = str(ei.value)
    assert message in text
    assert text.startswith("bad.toml")


def test_not_toml_and_missing_file(tmp_path: Path) -> None:
    with pytest.raises(FabricFileError, match="not valid TOML"):
        loads_fabric("[[function]\nbdf=", origin="x")
    with pytest.raises(FabricFileError, match="no such file"):
        load_fabric_file(tmp_path / "nope.toml")
    with pytest.raises(FabricFileError, match="is a directory"):
        load_fabric_file(tmp_path)
    (tmp_path / "bin.toml").write_bytes(b"\xff\xfe\x00")
    with pytest.raises(FabricFileError, match="not UTF-8"):
        load_fabric_file(tmp_path / "bin.toml")


@pytest.mark.parametrize("name", list(SAMPLES))
def test_samples_are_in_sync_with_definitions(name: str) -> None:
    assert sample_text(name) == render_sample(name), (
        "run `python -m p2pdma.samples.definitions` to regenerate")
    assert load_sample(name) == DEFINITIONS[name]()
