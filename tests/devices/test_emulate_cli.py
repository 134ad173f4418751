"""`p2pdma emulate`: text and JSON reports, P2P vs bounce side by side."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from p2pdma.cli.main import main
from p2pdma.fabric.builder import FabricBuilder
from p2pdma.sources.fabricfile import dumps_fabric


def test_json_report_on_a_sample(capsys: pytest.CaptureFixture[str]) -> None:
    rc = main(["emulate", "nvmeof-write", "--sample", "epyc", "--size", "2M", "--chunk", "64K",
               "--seed", "3", "--json"])
    out = json.loads(capsys.readouterr().out)
    assert rc == 0 and out["verified"] is True
    p2p, bounce = out["p2p"], out["bounce"]
    assert p2p["requests"]["acknowledged"] == 32 and p2p["seed"] == 3
    assert [d["role"] for d in p2p["devices"]] == ["rdma-nic", "nvme"]
    assert p2p["p2pmem"]["provider"] and not p2p["p2pmem"]["host_memory_fallback"]
    # The bounce moves every byte through host memory twice; P2P not at all.
    assert p2p["host_memory_bytes"] == 0
    assert bounce["host_memory_bytes"] == 2 * (2 << 20)
    assert out["host_memory_saved_bytes"] == 2 * (2 << 20)
    assert bounce["p2pmem"]["host_memory_fallback"] is True and bounce["warnings"]
    # Predictions and their assumptions are part of the report.
    pred = p2p["prediction"]
    assert pred["throughput_bytes_per_s"] > 0 and pred["bottleneck"].startswith("link ")
    assert pred["assumptions"] and bounce["prediction"]["host_memory_bytes"] == 2 * (2 << 20)


def test_text_report_and_fabric_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    b = FabricBuilder()
    hb = b.host_bridge()
    rp = b.root_port(hb)
    _usp, dsps = b.switch(rp, ports=2)
    b.nvme(dsps[0], cmb_size=64 << 20)
    b.nvme(dsps[1])
    f = tmp_path / "two.toml"
    f.write_text(dumps_fabric(b.build()), encoding="utf-8")
    rc = main(["emulate", "nvme-copy", "--fabric", str(f), "--size", "1M", "--color", "never",
               "--workdir", str(tmp_path / "w")])
    text = capsys.readouterr().out
    assert rc == 0
    assert "p2p     verified" in text and "bounce  verified" in text
    assert "bytes per link" in text and "host memory traffic saved by P2P" in text
    assert "predicted (throughput model)" in text and "assumptions:" in text
    assert (tmp_path / "w" / "p2p" / "nvme1n1.img").exists()  # --workdir keeps the files


def test_forced_host_memory_warns(capsys: pytest.CaptureFixture[str]) -> None:
    rc = main(["emulate", "nvme-copy", "--sample", "qemu-q35", "--size", "256K",
               "--provider", "host", "--json"])
    out = json.loads(capsys.readouterr().out)
    assert rc == 0 and "bounce" not in out
    assert any("host memory" in w for w in out["warnings"])


def test_missing_device_is_a_clear_error(capsys: pytest.CaptureFixture[str]) -> None:
    rc = main(["emulate", "nvmeof-write", "--sample", "qemu-q35", "--size", "256K"])
    err = capsys.readouterr().err
    assert rc == 2 and "no network controller" in err and "hint:" in err


def test_link_bound_prediction_explains_why_p2p_is_not_faster(
        capsys: pytest.CaptureFixture[str]) -> None:
    args = ["emulate", "nvmeof-write", "--sample", "xeon-2s", "--size", "1M", "--chunk", "256K",
            "--color", "never"]
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "note: both paths are limited by a device link" in out
    # With slow host memory the bounce is the bottleneck, and no such note appears.
    assert main([*args, "--host-mem", "2"]) == 0
    out = capsys.readouterr().out
    assert "note: both paths are limited" not in out
    assert "host-memory" in out
