from __future__ import annotations

import json

import pytest

from p2pdma.cli.main import main
from p2pdma.samples import SAMPLES, load_sample


def _count(nodes: list[dict]) -> int:  # type: ignore[type-arg]
    return sum(1 + _count(n["children"]) for n in nodes)


@pytest.mark.parametrize("name", list(SAMPLES))
def test_topo_json_covers_every_function(name: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["topo", "--sample", name, "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["schema"] == "p2pdma-topo/1"
    fabric = load_sample(name)
    devices = [d for hb in data["tree"] for d in hb["devices"]]
    assert _count(devices) == len(fabric.functions)
    # The embedded fabric reads back to the same facts.
    from p2pdma.fabric.serial import fabric_from_dict
    assert fabric_from_dict(data["fabric"]) == fabric


def test_topo_text_marks_redirect_bits(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["topo", "--sample", "xeon-2s", "--color", "never"]) == 0
    out = capsys.readouterr().out
    assert "ACS ctrl 0x001d [SV RR CR UF] redirect" in out
    assert "CMB 256.0 MiB in BAR4" in out
    assert "pci0000:80" in out


def test_bad_sample_is_a_clear_error(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["topo", "--sample", "nope"]) == 2
    err = capsys.readouterr().err
    assert "no sample named 'nope'" in err and "Traceback" not in err


def test_bad_fabric_file_is_a_clear_error(tmp_path, capsys) -> None:  # type: ignore[no-untyped-def]
    p = tmp_path / "f.toml"
    p.write_text('[[function]]\nbdf = "zz"\n')
    assert main(["topo", "--fabric", str(p), "--json"]) == 2
    out = capsys.readouterr()
    assert json.loads(out.out)["error"] == "FabricFileError"
    assert "not a PCI address" in out.err


def test_samples_listing(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["samples", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert {s["name"] for s in data["samples"]} == set(SAMPLES)


def test_vfs_hang_under_their_pf_once(tmp_path, capsys) -> None:  # type: ignore[no-untyped-def]
    from p2pdma.fabric.bdf import Bdf
    from p2pdma.fabric.builder import FabricBuilder
    from p2pdma.sources.fabricfile import save_fabric_file

    b = FabricBuilder()
    hb = b.host_bridge()
    rp = b.root_port(hb)
    pf = b.endpoint(rp, vendor=0x15B3, device=0x101B, class_code=0x020000)
    for fn in (1, 2):  # VFs sit behind the same bridge as their PF, as sysfs shows them
        b.endpoint(rp, vendor=0x15B3, device=0x101C, class_code=0x020000, fn=fn, physfn=pf)
    fabric = b.build()
    p = tmp_path / "vf.toml"
    save_fabric_file(fabric, p)
    assert main(["topo", "--fabric", str(p), "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    devices = [d for hb in data["tree"] for d in hb["devices"]]
    assert _count(devices) == len(fabric.functions)
    port = devices[1]
    assert [c["bdf"] for c in port["children"]] == [str(pf)]
    assert [c["bdf"] for c in port["children"][0]["children"]] == [
        str(Bdf(0, 1, 0, 1)), str(Bdf(0, 1, 0, 2))]
