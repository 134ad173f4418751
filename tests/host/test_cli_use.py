"""The `alloc`, `copy` and `bench` commands and the guest-side check script.

Real O_DIRECT on real files; the P2P buffer, where one is needed, is the 1 TiB sparse
stand-in of ``Machine`` (it checks our command pipeline, not the kernel).
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

import pytest
from host_fakes import M, Machine, write_random

from p2pdma.cli import alloc as alloc_cmd
from p2pdma.cli import bench as bench_cmd
from p2pdma.cli import copy as copy_cmd
from p2pdma.cli.common import add_root_arg
from p2pdma.errors import InputError, KernelError
from p2pdma.host import guest_check


def cli(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="p2pdma")
    add_root_arg(parser, suppress=False)
    sub = parser.add_subparsers(dest="command")
    for mod in (alloc_cmd, copy_cmd, bench_cmd):
        mod.register(sub)
    args = parser.parse_args(argv)
    return int(args.func(args))


def test_copy_host_memory_json(odirect_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    src, dst = odirect_dir / "src", odirect_dir / "dst"
    data = write_random(src, 1 * M)
    rc = cli(["copy", str(src), str(dst), "--host-memory", "--chunk", "128K", "--threads", "2",
              "--json"])
    out = json.loads(capsys.readouterr().out)
    assert rc == 0 and out["verified"] is True and out["buffer"] == "host"
    assert out["plan"]["chunks"] == 8 and out["plan"]["threads"] == 2
    assert out["verify"]["compared"] == M and out["transfer"]["bytes"] == M
    assert out["dst_created"] is True and dst.read_bytes() == data


def test_copy_text_and_force(odirect_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    src, dst = odirect_dir / "src", odirect_dir / "dst"
    write_random(src, 64 * 1024)
    write_random(dst, 8192, seed=9)
    with pytest.raises(InputError, match="--force"):
        cli(["copy", str(src), str(dst), "--host-memory", "--no-progress"])
    assert cli(["copy", str(src), str(dst), "--host-memory", "--force", "--no-progress"]) == 0
    text = capsys.readouterr().out
    assert "through host memory" in text and "every byte matches SRC" in text


def test_no_verify_is_reported_as_unverified(
    odirect_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    src, dst = odirect_dir / "src", odirect_dir / "dst"
    write_random(src, 16 * 1024)
    assert cli(["copy", str(src), str(dst), "--host-memory", "--no-verify"]) == 0
    assert "NOT verified" in capsys.readouterr().out


def test_root_on_the_top_level_parser_reaches_the_command(machine: Machine) -> None:
    with pytest.raises(KernelError, match=r"no PCI device 0000:7f:00\.0"):
        cli(["--root", str(machine.root), "alloc", "7f:00.0", "2M"])


def test_alloc_json_through_the_stand_in(
    machine: Machine, capsys: pytest.CaptureFixture[str]
) -> None:
    rc = cli(["alloc", str(machine.provider), "5000", "--root", str(machine.root), "--json"])
    out = json.loads(capsys.readouterr().out)
    assert rc == 0
    assert out["requested"] == 5000 and out["mapped"] == 8192
    assert out["pool"]["before"]["size"] == 64 * M
    # A regular file is no pool: available does not drop, and the report says so.
    assert out["pool"]["available_dropped_by"] == 0 and out["pool"]["drop_as_expected"] is False
    assert out["cpu_check"]["ok"] is True
    assert out["cmb"][0]["bar"] == 2 and out["cmb"][0]["publishable"] is True


def test_alloc_text_explains_touching(
    machine: Machine, capsys: pytest.CaptureFixture[str]
) -> None:
    assert cli(["alloc", str(machine.provider), "64K", "--root", str(machine.root)]) == 0
    text = capsys.readouterr().out
    assert "uncached MMIO" in text and "another user allocated or freed" in text


def test_alloc_larger_than_available(machine: Machine) -> None:
    with pytest.raises(KernelError) as e:
        cli(["alloc", str(machine.provider), "65M", "--root", str(machine.root)])
    assert e.value.errno_name == "ENOMEM" and "64 MiB is available" in e.value.what


def test_alloc_bad_inputs(machine: Machine) -> None:
    with pytest.raises(InputError, match="not a PCI address"):
        cli(["alloc", "zz", "2M"])
    with pytest.raises(InputError, match="not a size"):
        cli(["alloc", str(machine.provider), "two megs", "--root", str(machine.root)])


def test_bench_side_by_side_with_a_temporary_dst(
    machine: Machine, odirect_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    src = odirect_dir / "src"
    write_random(src, 512 * 1024)
    machine.route_files_to(machine.peer, src)
    rc = cli(["bench", "--via", str(machine.provider), str(src), "--chunk", "64K",
              "--root", str(machine.root), "--json"])
    out = json.loads(capsys.readouterr().out)
    assert rc == 0
    assert out["p2p"]["buffer"] == "p2p" and out["host"]["buffer"] == "host"
    assert out["p2p"]["verified"] and out["host"]["verified"]
    assert out["p2p"]["transfer"]["chunks"] == out["host"]["transfer"]["chunks"] == 8
    assert out["p2p"]["transfer"]["latency_us"]["p99"] is not None
    assert out["p2p"]["predictions"][0]["map_type"] == "BUS_ADDR"
    # the temporary DST is gone
    assert not [n for n in os.listdir(odirect_dir) if n.startswith(".p2pdma-bench-")]


def test_bench_needs_dst_for_a_device_source(machine: Machine) -> None:
    with pytest.raises(InputError, match="give DST explicitly"):
        cli(["bench", "--via", str(machine.provider), "/dev/null", "--root", str(machine.root)])


# --- the guest-side script ----------------------------------------------------


def checks(text: str) -> dict[str, dict[str, object]]:
    out = {}
    for line in text.splitlines():
        if line.startswith("P2PDMA-CHECK "):
            d = json.loads(line.split(" ", 1)[1])
            out[d["check"]] = d
    return out


def test_guest_check_without_providers(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "sys/bus/pci/devices").mkdir(parents=True)
    rc = guest_check.main(["--root", str(tmp_path)])
    text = capsys.readouterr().out
    got = checks(text)
    assert rc == 1 and got["env"]["status"] == "fail"
    assert {got[k]["status"] for k in guest_check.CHECKS} == {"skip"}
    assert 'P2PDMA-SUMMARY {"pass": 0, "fail": 1, "skip": 5}' in text


def test_guest_check_on_a_synthetic_machine(
    machine: Machine, capsys: pytest.CaptureFixture[str]
) -> None:
    """The stand-in `allocate` is a regular file, so `available` does not drop: the alloc
    check must FAIL (it checks the kernel's accounting); the refusal check must find the
    NOT_SUPPORTED namespace and fail cleanly because /dev/nvme2n1 does not exist here."""
    for bdf in (machine.peer, machine.far):
        ns = machine.ns_dir(bdf)
        cls = machine.root / "sys/class/block"
        cls.mkdir(parents=True, exist_ok=True)
        (cls / ns.name).symlink_to(os.path.relpath(ns, cls))
    rc = guest_check.main(["--root", str(machine.root), "--only", "alloc", "--only", "refusal",
                           "--only", "copy"])
    got = checks(capsys.readouterr().out)
    assert rc == 1
    assert got["env"]["status"] == "pass"
    preds = got["env"]["predictions"][str(machine.provider)]  # type: ignore[index]
    assert preds["nvme1n1"]["map_type"] == "BUS_ADDR"
    assert preds["nvme2n1"]["map_type"] == "NOT_SUPPORTED"
    assert got["alloc"]["status"] == "fail" and got["alloc"]["dropped"] == 0
    assert got["copy"]["status"] == "skip" and "--destructive" in str(got["copy"]["why"])
    assert got["refusal"]["status"] == "fail" and "nvme2n1" in str(got["refusal"]["error"])


def test_copy_via_prints_the_verdict_first(
    machine: Machine, odirect_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    src, dst = odirect_dir / "src", odirect_dir / "dst"
    write_random(src, 128 * 1024)
    machine.route_files_to(machine.far, src)
    rc = cli(["copy", str(src), str(dst), "--via", str(machine.provider), "--host-memory",
              "--root", str(machine.root), "--no-progress"])
    cap = capsys.readouterr()
    assert rc == 0
    assert f"predicted: P2P {machine.provider} <-> {src}" in cap.err
    assert "REFUSED (NOT_SUPPORTED)" in cap.err and "8086:29c0" in cap.err
    assert "through host memory" in cap.out
