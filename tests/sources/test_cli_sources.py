"""`p2pdma synth` and `p2pdma gather` through the real command line entry point."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from p2pdma.cli.main import main
from p2pdma.samples import load_sample
from p2pdma.sources.fabricfile import save_fabric_file
from p2pdma.sources.snapshot import read_snapshot
from p2pdma.sources.sysfs import read_sysfs


def test_synth_sample_then_gather(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["synth", "epyc", "-o", str(tmp_path / "t")]) == 0
    out = capsys.readouterr().out
    assert "10 PCI functions" in out and "--root" in out
    assert read_sysfs(tmp_path / "t") == load_sample("epyc")
    assert main(["gather", "-o", str(tmp_path / "s.zip"), "--root", str(tmp_path / "t"),
                 "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["functions"] == 10 and summary["privileged"] is True
    assert read_snapshot(tmp_path / "s.zip") == load_sample("epyc")


def test_synth_fabric_file_unprivileged_and_losses(tmp_path: Path,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    f = load_sample("desktop")
    nv = next(x for x in f.functions if x.mps is not None)
    f = f.replace_function(nv.bdf, mps=384)  # not a power of two: sysfs cannot carry it
    save_fabric_file(f, tmp_path / "f.toml")
    assert main(["synth", str(tmp_path / "f.toml"), "-o", str(tmp_path / "t"),
                 "--unprivileged", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["unprivileged"] is True
    assert any("mps 384" in x for x in data["not_carried"])
    cfg = (tmp_path / "t/sys/bus/pci/devices" / str(nv.bdf) / "config").read_bytes()
    assert len(cfg) == 64
    assert read_sysfs(tmp_path / "t").host.privileged is False


def test_cli_errors_are_clean(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["synth", "no-such-sample", "-o", str(tmp_path / "x")]) == 2
    assert "neither a fabric file nor a sample" in capsys.readouterr().err
    (tmp_path / "bad.zip").write_bytes(b"PK\x03\x04garbage")
    assert main(["topo", "--snapshot", str(tmp_path / "bad.zip")]) == 2
    err = capsys.readouterr().err
    assert "bad.zip" in err and "Traceback" not in err
    assert main(["gather", "-o", str(tmp_path / "g.zip"), "--root", str(tmp_path)]) == 2
    assert "no sys/" in capsys.readouterr().err
    assert not (tmp_path / "g.zip").exists()
    assert main(["synth", "epyc", "-o", str(tmp_path / "t")]) == 0
    assert main(["synth", "epyc", "-o", str(tmp_path / "t")]) == 2  # refuses to overwrite
    assert "already exists" in capsys.readouterr().err


def test_synth_onto_a_file_is_a_clean_error(tmp_path: Path,
                                            capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "afile").write_text("x")
    assert main(["synth", "epyc", "-o", str(tmp_path / "afile")]) == 2
    assert "cannot write the tree" in capsys.readouterr().err
    assert main(["gather", "-o", str(tmp_path), "--root", str(REPO_FIXTURE)]) == 2
    assert "cannot write the snapshot" in capsys.readouterr().err


REPO_FIXTURE = Path(__file__).resolve().parents[1] / "fixtures/live/firecracker"
