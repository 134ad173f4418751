"""The inspect commands (check, matrix, find, explain) through their run()."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import pytest
from kfabrics import topology_t

from p2pdma.cli import check, explain, find, matrix
from p2pdma.errors import InputError, UnknownDeviceError
from p2pdma.fabric.model import Fabric
from p2pdma.sources.fabricfile import save_fabric_file


def ns(fabric_path: Path | None = None, sample: str | None = None, **kw: Any) -> argparse.Namespace:
    base: dict[str, Any] = dict(fabric=str(fabric_path) if fabric_path else None, snapshot=None,
                                sample=sample, root=None, json=False, color="never", kernel=None,
                                cpu=None, iommu=None, cmdline=None, acs=[])
    base.update(kw)
    return argparse.Namespace(**base)


def write(tmp_path: Path, f: Fabric) -> Path:
    p = tmp_path / "t.toml"
    save_fabric_file(f, p)
    return p


def run_json(mod: Any, args: argparse.Namespace, capsys: Any) -> tuple[int, dict[str, Any]]:
    args.json = True
    rc = mod.run(args)
    return rc, json.loads(capsys.readouterr().out)


def test_check_json_not_supported(tmp_path: Path, capsys: Any) -> None:
    p = write(tmp_path, topology_t(dsp_ctrl={0: 0x1D}))
    rc, d = run_json(check, ns(p, provider="03:00.0", clients=["nvme1"]), capsys)
    assert rc == 1
    assert d["map_type"] == "NOT_SUPPORTED" and d["map_type_value"] == 1  # 6.12 numbering
    assert d["distance"] == -1
    assert "6.12.117" in d["profile"]["reason"]
    c = d["clients"][0]
    assert c["client"] == "0000:04:00.0" and c["dist"] == 4 and c["map_type"] == "NOT_SUPPORTED"
    assert c["common_upstream"] == "0000:01:00.0" and c["acs_redirect"] == ["0000:02:00.0"]
    assert c["path"][0] == "0000:03:00.0" and c["path"][-1] == "0000:04:00.0"
    assert d["messages"][1].endswith("pci=disable_acs_redir=0000:02:00.0")
    assert d["host_bridges"][0]["id"] == "8086:4c43" and not d["host_bridges"][0]["whitelisted"]
    assert d["cpu_rule"]["value"] is False
    assert any(f["text"] == "pci=disable_acs_redir=0000:02:00.0" for f in d["fix"])
    assert any("ECAP_ACS+6.w=0000:002c" in f["text"] for f in d["fix"])


def test_check_whatif_makes_it_possible(tmp_path: Path, capsys: Any) -> None:
    p = write(tmp_path, topology_t(dsp_ctrl={0: 0x1D}))
    rc, d = run_json(check, ns(p, provider="03:00.0", clients=["04:00.0", "03:00.0"],
                               cmdline="pci=disable_acs_redir=0000:02:00.0"), capsys)
    assert rc == 0 and d["distance"] == 4 + 0 and d["map_type"] == "BUS_ADDR"
    rc, d = run_json(check, ns(p, provider="03:00.0", clients=["04:00.0"], cpu="amd:0x17",
                               kernel="5.8"), capsys)
    assert rc == 1 and d["profile"]["key"] == "5.8"  # no CPU rule before 5.9
    rc, d = run_json(check, ns(p, provider="03:00.0", clients=["04:00.0"], cpu="amd:0x17"),
                     capsys)
    assert rc == 0 and d["map_type"] == "THRU_HOST_BRIDGE"


def test_check_text_says_profile_and_verdict(tmp_path: Path, capsys: Any) -> None:
    p = write(tmp_path, topology_t())
    rc = check.run(ns(p, provider="03:00.0", clients=["05:00.0"], kernel="5.15"))
    out = capsys.readouterr().out
    assert rc == 1
    assert out.startswith("profile: v5.14-v5.15  (--kernel 5.15")
    assert "P2P not possible" in out and "do not share an upstream bridge" in out


def test_check_unknown_exit_3(tmp_path: Path, capsys: Any) -> None:
    from p2pdma.fabric.bdf import Bdf
    f = topology_t().replace_function(Bdf(0, 2, 0, 0), acs=None, acs_unknown="not root")
    p = write(tmp_path, f)
    rc, d = run_json(check, ns(p, provider="03:00.0", clients=["03:00.1"]), capsys)
    assert rc == 3 and d["distance"] is None and d["map_type"] == "UNKNOWN"


def test_check_bad_device(tmp_path: Path) -> None:
    p = write(tmp_path, topology_t())
    with pytest.raises(UnknownDeviceError):
        check.run(ns(p, provider="09:00.0", clients=["03:00.0"]))
    with pytest.raises(InputError):
        check.run(ns(p, provider="03:00.0", clients=["03:00.1"], kernel="2.6"))


def test_matrix_json_and_text(tmp_path: Path, capsys: Any) -> None:
    p = write(tmp_path, topology_t(hb_id=(0x8086, 0x09A2)))
    rc, d = run_json(matrix, ns(p, all=False), capsys)
    assert rc == 0
    assert d["clients"] == ["0000:03:00.0", "0000:03:00.1", "0000:04:00.0", "0000:05:00.0",
                            "0000:00:04.0"] or set(d["clients"]) == {
        "0000:03:00.0", "0000:03:00.1", "0000:04:00.0", "0000:05:00.0", "0000:00:04.0"}
    i, j = d["providers"].index("0000:03:00.0"), d["clients"].index("0000:04:00.0")
    assert d["map_types"][i][j] == "BUS_ADDR" and d["dists"][i][j] == 4
    k = d["clients"].index("0000:05:00.0")
    assert d["map_types"][i][k] == "THRU_HOST_BRIDGE" and d["dists"][i][k] == 6
    assert "0000:03:00.0" in d["published"]
    rc = matrix.run(ns(p, all=True))
    out = capsys.readouterr().out
    assert "legend:" in out and "B4" in out and "H6" in out and "\x1b[" not in out


def test_find(tmp_path: Path, capsys: Any) -> None:
    p = write(tmp_path, topology_t())
    rc, d = run_json(find, ns(p, clients=["03:00.1"], seed=0), capsys)
    assert rc == 0 and d["choice"] == "0000:03:00.0" and d["best"] == 2
    assert d["losers"]["0000:04:00.0"].startswith("farther: distance 4 > 2")
    rc, d = run_json(find, ns(p, clients=["05:00.0"], seed=0), capsys)
    assert rc == 1 and d["choice"] is None
    assert d["losers"]["0000:03:00.0"].startswith("not supported")
    rc = find.run(ns(p, clients=["03:00.1"], seed=3))
    assert "pick: 0000:03:00.0" in capsys.readouterr().out


def test_explain(tmp_path: Path, capsys: Any) -> None:
    p = write(tmp_path, topology_t(dsp_ctrl={0: 0x1D, 1: 0x1D}))
    rc = explain.run(ns(p, provider="nvme0", client="nvme1"))
    out = capsys.readouterr().out
    assert rc == 1
    assert "switch downstream port; ACS ctrl 0x001d (SV|RR|CR|UF)  <- redirects" in out
    assert "pci=disable_acs_redir=0000:02:00.0;0000:02:01.0" in out
    assert "pci=config_acs=x0100x1@0000:02:00.0;x0100x1@0000:02:01.0" in out
    assert "unsafe" in out
    rc, d = run_json(explain, ns(p, provider="nvme0", client="nvme1", cpu="amd:0x19"), capsys)
    assert rc == 0 and d["map_type"] == "THRU_HOST_BRIDGE"
    assert any(r["kind"] == "slow" for r in d["explanation"]["risks"])


def test_samples_run(capsys: Any) -> None:
    for name in ("xeon-2s", "epyc", "desktop", "qemu-q35"):
        assert matrix.run(ns(sample=name, all=False)) == 0
    out = capsys.readouterr().out
    assert out.count("profile:") == 4


def test_register_adds_subcommands() -> None:
    parser = argparse.ArgumentParser()
    sub = parser.add_subparsers()
    for mod in (check, matrix, find, explain):
        mod.register(sub)
    a = parser.parse_args(["check", "03:00.0", "04:00.0", "--sample", "desktop", "--json"])
    assert a.func is check.run and a.clients == ["04:00.0"]
    a = parser.parse_args(["find", "nvme0", "--seed", "5", "--acs", "02:00.0=0x1d"])
    assert a.func is find.run and a.seed == 5
