"""`p2pdma report`, the main job: live machine, or a sample when it has no P2P provider."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from p2pdma.cli.main import main
from p2pdma.fabric.builder import FabricBuilder
from p2pdma.fabric.model import HostContext
from p2pdma.sources.synthetic import write_sysfs


def _machine(tmp_path: Path, *, cmb: bool) -> Path:
    b = FabricBuilder(HostContext(kernel_release="6.12.117", cpu_vendor="GenuineIntel",
                                  cpu_family=6, arch="x86_64"))
    hb = b.host_bridge(first=(0x8086, 0x09A2))
    rp = b.root_port(hb)
    _usp, dsps = b.switch(rp, ports=2)
    b.nvme(dsps[0], cmb_size=(64 << 20) if cmb else 0)
    b.nvme(dsps[1])
    root = tmp_path / "root"
    write_sysfs(b.build(), root)
    return root


def test_no_provider_here_falls_back_to_a_sample_and_says_so(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("P2PDMA_ROOT", str(_machine(tmp_path, cmb=False)))
    assert main(["report", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["schema"] == "p2pdma-report/1"
    assert data["fallback"]["sample"] == "xeon-2s"
    assert "no P2P provider" in data["fallback"]["reason"]
    assert data["topo"]["origin"] == "sample:xeon-2s"
    assert main(["report", "--color", "never"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("note: this machine (7 PCI functions, kernel 6.12.117) has no P2P")
    assert "Showing the bundled sample 'xeon-2s' instead" in out


def test_a_machine_with_a_provider_is_reported_itself(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("P2PDMA_ROOT", str(_machine(tmp_path, cmb=True)))
    assert main(["report", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["fallback"] is None
    m = data["matrix"]
    # The two NVMe under one switch without ACS redirect: BUS_ADDR both ways.
    assert m["clients"] == ["0000:03:00.0", "0000:04:00.0"]
    assert m["map_types"][0] == ["BUS_ADDR", "BUS_ADDR"]
    assert m["published"] == ["0000:03:00.0"]
    assert main(["report", "--color", "never"]) == 0
    out = capsys.readouterr().out
    assert "note:" not in out
    assert "── P2P providers" in out and "published" in out
    assert "── why, for one pair" in out and "0000:03:00.0 -> 0000:04:00.0: BUS_ADDR" in out


def test_an_explicit_source_is_never_replaced(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["report", "--sample", "desktop", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["fallback"] is None and data["topo"]["origin"] == "sample:desktop"
    # desktop: GPUs on separate root ports of a non-whitelisted Intel host bridge.
    assert "NOT_SUPPORTED" in {t for row in data["matrix"]["map_types"] for t in row}
