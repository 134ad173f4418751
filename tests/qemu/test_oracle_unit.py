"""Fast tests of the oracle's own machinery (no QEMU, no kernel build)."""

from __future__ import annotations

import gzip
import subprocess
from pathlib import Path

import pytest

from p2pdma.oracle import compare, guest, kbuild
from p2pdma.oracle.topology import (
    Expander,
    Nvme,
    RootPort,
    Switch,
    Topology,
    generate_variants,
    qemu_device_args,
)


def test_fragment_parses_and_has_the_recipe_options() -> None:
    frag = kbuild.parse_fragment(kbuild.fragment_text())
    for opt in ("CONFIG_PCI_P2PDMA", "CONFIG_ZONE_DEVICE", "CONFIG_KRETPROBES",
                "CONFIG_PCI_MMCONFIG", "CONFIG_9P_FS", "CONFIG_NET_9P_VIRTIO",
                "CONFIG_VIRTIO_PCI", "CONFIG_INTEL_IOMMU", "CONFIG_DEBUG_FS"):
        assert frag[opt] == "y", opt


def test_missing_options_reports_dropped_and_changed() -> None:
    frag = {"CONFIG_A": "y", "CONFIG_B": "y", "CONFIG_C": "n"}
    cfg = "CONFIG_A=y\n# CONFIG_B is not set\nCONFIG_C=y\n"
    assert kbuild.missing_options(frag, cfg) == [
        "CONFIG_B: wanted y, got n", "CONFIG_C: wanted n, got y"]


def test_malformed_fragment_line_is_an_error() -> None:
    with pytest.raises(kbuild.OracleError, match="malformed"):
        kbuild.parse_fragment("PCI_P2PDMA\n")


def test_build_key_changes_with_fragment_and_version() -> None:
    spec = kbuild.KERNELS["6.12"]
    k1 = kbuild.build_key(spec, "CONFIG_X=y\n")
    assert k1 == kbuild.build_key(spec, "CONFIG_X=y\n")
    assert k1 != kbuild.build_key(spec, "CONFIG_X=n\n")
    assert k1 != kbuild.build_key(kbuild.KERNELS["6.1"], "CONFIG_X=y\n")
    assert k1.startswith("6.12-6.12.117")


def test_kernels_are_pinned() -> None:
    assert kbuild.KERNELS["6.12"].version == "6.12.117-1~deb12u1"
    assert kbuild.KERNELS["6.1"].version == "6.1.192-2"


def test_unknown_series_is_an_error() -> None:
    with pytest.raises(kbuild.OracleError, match="unknown kernel series"):
        kbuild.ensure_kernel("5.4")


def test_variants_are_generated_and_cover_the_axes() -> None:
    vs = generate_variants()
    names = [v.name for v in vs]
    assert len(vs) >= 24
    assert len(set(names)) == len(names)
    assert {v.cpu for v in vs} >= {"qemu64", "EPYC", "Skylake-Server", "Dhyana"}
    assert any(v.iommu for v in vs) and any(not v.iommu for v in vs)
    assert any(v.acs_redir_off for v in vs)
    shapes = [v.root for v in vs]
    assert any(any(isinstance(x, Expander) for x in r) for r in shapes)
    assert any(any(isinstance(x, Nvme) for x in r) for r in shapes)  # on pcie.0
    assert any(n.nvme_count() >= 5 for n in vs)


def test_qemu_args_for_a_switch_and_acs_paths() -> None:
    topo = Topology("t", (RootPort(Switch((Nvme(64), Nvme(1, functions=2)), acs_ports=True)),),
                    iommu=True)
    args, acs = qemu_device_args(topo)
    devs = [args[i + 1] for i, a in enumerate(args) if a == "-device"]
    assert devs[0] == "intel-iommu"
    assert devs[1].startswith("pcie-root-port,") and "addr=0x2.0x0" in devs[1]
    assert devs[2].startswith("x3130-upstream,")
    assert sum(d.startswith("nvme,") for d in devs) == 3
    assert any("multifunction=on" in d and "cmb_size_mb=1" in d for d in devs)
    assert acs == ["0000:00:02.0", "0000:00:02.0/00.0/00.0", "0000:00:02.0/00.0/01.0"]
    assert topo.cmdline() == "intel_iommu=on"


def test_cpio_writer_is_readable_by_cpio(tmp_path: Path) -> None:
    data = guest._cpio_newc([("bin", 0o40755, b"", 0), ("bin/hello", 0o100644, b"hi\n", 0)])
    (tmp_path / "a.cpio").write_bytes(data)
    out = subprocess.run(["cpio", "-it"], input=data, capture_output=True, check=False)
    if out.returncode != 0 and b"not found" in out.stderr:
        pytest.skip("cpio not installed")
    assert out.stdout.decode().split() == ["bin", "bin/hello"]
    assert gzip.decompress(gzip.compress(data)) == data


RESULTS = """\
@@ distance 1 0000:02:00.0 0000:03:00.0
calc 0000:02:00.0 0000:03:00.0 2 4
distance -1
@@ dmesg
nvme 0000:03:00.0: cannot be used for peer-to-peer DMA as the client and provider \
(0000:02:00.0) do not share an upstream bridge or whitelisted host bridge
@@ end
@@ distance 1 0000:02:00.0 0000:02:00.0 0000:03:00.0
calc 0000:02:00.0 0000:02:00.0 3 0
calc 0000:02:00.0 0000:03:00.0 2 4
distance -1
@@ dmesg
@@ end
@@ find 48 0000:03:00.0
candidate 0000:02:00.0 -1
candidate 0000:03:00.0 0
chosen 0000:03:00.0
@@ dmesg
@@ end
@@ done
"""


def test_parse_results() -> None:
    r = guest.parse_results(RESULTS)
    assert len(r["pairs"]) == 1 and len(r["distance_many"]) == 1 and len(r["find_many"]) == 1
    p = r["pairs"][0]
    assert p["calcs"] == [{"provider": "0000:02:00.0", "client": "0000:03:00.0",
                           "map_type": 2, "dist": 4}]
    assert p["distance"] == -1 and p["messages"][0].startswith("nvme 0000:03:00.0: cannot")
    assert r["distance_many"][0]["clients"] == ["0000:02:00.0", "0000:03:00.0"]
    f = r["find_many"][0]
    assert f["candidates"] == {"0000:02:00.0": -1, "0000:03:00.0": 0}
    assert f["chosen"] == ["0000:03:00.0"]
    assert compare.kernel_ties(f["candidates"]) == ["0000:03:00.0"]


def test_incomplete_results_are_an_error() -> None:
    with pytest.raises(kbuild.OracleError, match="incomplete"):
        guest.parse_results(RESULTS.replace("@@ done\n", ""))


def test_kernel_ties() -> None:
    assert compare.kernel_ties({"a": 4, "b": 4, "c": 6, "d": -1}) == ["a", "b"]
    assert compare.kernel_ties({"a": -1}) == []


def test_unrelated_kernel_lines_are_kept_apart() -> None:
    text = RESULTS.replace(
        "@@ dmesg\nnvme", "@@ dmesg\nclocksource: Switched to clocksource tsc\nnvme", 1)
    p = guest.parse_results(text)["pairs"][0]
    assert p["other_messages"] == ["clocksource: Switched to clocksource tsc"]
    assert len(p["messages"]) == 1


def test_boot_lines_filter() -> None:
    dmesg = ("Kernel command line: pci=disable_acs_redir=0000:00:02.0\n"
             "nvme 0000:03:00.0: added peer-to-peer DMA memory 0xf8000000-0xfbffffff\n"
             "tsc: Refined TSC clocksource calibration\n")
    assert guest.p2pdma_lines(dmesg) == [
        "nvme 0000:03:00.0: added peer-to-peer DMA memory 0xf8000000-0xfbffffff"]


def test_file_backed_namespaces(tmp_path: Path) -> None:
    topo = Topology("t", (RootPort(Nvme(64)),))
    args, _ = qemu_device_args(topo, str(tmp_path))
    blk = [args[i + 1] for i, a in enumerate(args) if a == "-blockdev"]
    assert blk == [f"driver=raw,node-name=nb1,file.driver=file,file.filename={tmp_path}/nvme1.img"]
    assert (tmp_path / "nvme1.img").stat().st_size == 16 << 20
    null_args, _ = qemu_device_args(topo)
    assert any(a.startswith("driver=null-co,") for a in null_args)


def test_expand_and_load_captures(tmp_path: Path) -> None:
    cap = tmp_path / "v1"
    cap.mkdir()
    (cap / "kernel.json").write_text('{"variant": "v1"}')
    (tmp_path / "README.md").write_text("x")
    assert compare.expand_captures([tmp_path]) == [cap]
    assert compare.expand_captures([cap]) == [cap]
    with pytest.raises(kbuild.OracleError, match="not an oracle capture"):
        compare.load_capture(tmp_path / "README.md")


def test_map_type_names_read_from_the_tree(tmp_path: Path) -> None:
    from p2pdma.oracle.harness import map_type_names

    hdr = tmp_path / "include" / "linux" / "dma-map-ops.h"
    hdr.parent.mkdir(parents=True)
    hdr.write_text("enum pci_p2pdma_map_type {\n\t/* unknown */\n\tPCI_P2PDMA_MAP_UNKNOWN = 0,\n"
                   "\tPCI_P2PDMA_MAP_NOT_SUPPORTED,\n\t/* bus */\n\tPCI_P2PDMA_MAP_BUS_ADDR,\n"
                   "\tPCI_P2PDMA_MAP_THRU_HOST_BRIDGE,\n};\n")
    kb = kbuild.KernelBuild(kbuild.KERNELS["6.12"], tmp_path, tmp_path, tmp_path / "bz",
                            "6.12.117", 0.0)
    assert map_type_names(kb) == {0: "UNKNOWN", 1: "NOT_SUPPORTED", 2: "BUS_ADDR",
                                  3: "THRU_HOST_BRIDGE"}
