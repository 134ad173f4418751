"""What-if: --iommu, --cmdline (disable_acs_redir / config_acs), --acs, --cpu, --kernel."""

from __future__ import annotations

import pytest
from kfabrics import DSP0, DSP1, INTEL, RP1, USP, A, B, topology_t

from p2pdma.errors import InputError
from p2pdma.fabric.bdf import Bdf
from p2pdma.fabric.model import Fabric, IommuMode
from p2pdma.kernel import PROFILES, MapType, calc_map_type_and_dist
from p2pdma.kernel.whatif import (
    WhatIf,
    apply_whatif,
    parse_cmdline,
    parse_config_acs_bits,
    parse_cpu,
    parse_devspec,
)


def ctrl(f: Fabric, b: Bdf) -> int:
    acs = f.get(b).acs
    assert acs is not None
    return acs.control


def iommu_fabric(kernel: str = "6.12.117") -> Fabric:
    """T read with an IOMMU on: ports already carry SV|RR|CR|UF (cap 0x5f -> 0x1d)."""
    from dataclasses import replace
    f = topology_t(host=replace(INTEL, kernel_release=kernel, iommu=IommuMode.TRANSLATED),
                   dsp_ctrl={0: 0x1D, 1: 0x1D})
    return f.with_acs_control(RP1, 0x1D)


def test_iommu_on_sets_supported_bits() -> None:
    f = topology_t()
    g, notes = apply_whatif(f, WhatIf(iommu=True))
    assert ctrl(g, DSP0) == 0x1D and ctrl(g, RP1) == 0x1D
    assert g.get(USP).acs is None  # no ACS capability: untouched
    assert g.host.iommu is IommuMode.TRANSLATED and notes
    r = calc_map_type_and_dist(g, PROFILES["6.11"], A, B, verbose=False)
    assert r.map_type is MapType.NOT_SUPPORTED


def test_iommu_off_restores_firmware() -> None:
    g, notes = apply_whatif(iommu_fabric(), WhatIf(iommu=False))
    assert ctrl(g, DSP0) == 0 and ctrl(g, RP1) == 0
    assert any("estimated" in n for n in notes)
    assert calc_map_type_and_dist(g, PROFILES["6.11"], A, B,
                                  verbose=False).map_type is MapType.BUS_ADDR


def test_disable_acs_redir_612_drops_iommu_bits() -> None:
    g, notes = apply_whatif(iommu_fabric(), WhatIf(cmdline="pci=disable_acs_redir=0000:02:00.0"))
    assert ctrl(g, DSP0) == 0x0000  # §13.2: firmware value with RR|CR|EC cleared
    assert ctrl(g, DSP1) == 0x1D
    assert "pci 0000:02:00.0: Configured ACS to 0x0000" in notes


def test_disable_acs_redir_before_611_keeps_sv_uf() -> None:
    g, notes = apply_whatif(iommu_fabric("6.8.0-45-generic"),
                            WhatIf(cmdline="pci=disable_acs_redir=0000:02:00.0"))
    assert ctrl(g, DSP0) == 0x0011
    assert "pci 0000:02:00.0: disabled ACS redirect" in notes


def test_disable_acs_redir_both_ports_allows_bus_addr() -> None:
    g, _ = apply_whatif(iommu_fabric(),
                        WhatIf(cmdline="quiet pci=disable_acs_redir=0000:02:00.0;0000:02:01.0"))
    r = calc_map_type_and_dist(g, PROFILES["6.11"], A, B, verbose=True)
    assert r.map_type is MapType.BUS_ADDR and r.messages == ()


def test_devices_without_acs_skipped_silently_612_warned_before() -> None:
    _, notes = apply_whatif(iommu_fabric(), WhatIf(cmdline="pci=disable_acs_redir=01:00.0"))
    assert not any("01:00.0" in n for n in notes if "Configured" in n or "cannot" in n)
    _, old = apply_whatif(iommu_fabric("6.1"), WhatIf(cmdline="pci=disable_acs_redir=01:00.0"))
    assert ("pci 0000:01:00.0: cannot disable ACS redirect for this hardware as it does not "
            "have ACS capabilities") in old


def test_path_form_and_ids() -> None:
    g, _ = apply_whatif(iommu_fabric(), WhatIf(cmdline="pci=disable_acs_redir=00:01.0/00.0/01.0"))
    assert ctrl(g, DSP1) == 0 and ctrl(g, DSP0) == 0x1D
    h, _ = apply_whatif(iommu_fabric(), WhatIf(cmdline="pci=disable_acs_redir=pci:10b5:9781"))
    assert ctrl(h, DSP0) == 0 and ctrl(h, DSP1) == 0 and ctrl(h, RP1) == 0x1D
    k, _ = apply_whatif(iommu_fabric(), WhatIf(cmdline="pci=disable_acs_redir=pci:0:0"))
    assert ctrl(k, RP1) == 0  # 0 matches any


def test_comma_ends_the_option() -> None:
    g, notes = apply_whatif(iommu_fabric(),
                            WhatIf(cmdline="pci=disable_acs_redir=0000:02:00.0,0000:02:01.0"))
    assert ctrl(g, DSP0) == 0 and ctrl(g, DSP1) == 0x1D
    assert any("';'" in n for n in notes)


def test_config_acs_x_keeps_firmware_and_wins() -> None:
    cmd = "pci=disable_acs_redir=0000:02:00.0 pci=config_acs=1x0@0000:02:00.0"
    g, _ = apply_whatif(iommu_fabric(), WhatIf(cmdline=cmd))
    # bit0 SV=0, bit1 TB=x (firmware 0), bit2 RR=1; the rest firmware (0)
    assert ctrl(g, DSP0) == 0x0004
    g2, _ = apply_whatif(iommu_fabric(), WhatIf(cmdline="pci=config_acs=0010001@0000:02:00.0"))
    assert ctrl(g2, DSP0) == 0x0011


def test_config_acs_only_from_611() -> None:
    g, notes = apply_whatif(iommu_fabric("6.10"),
                            WhatIf(cmdline="pci=config_acs=0000000@0000:02:00.0"))
    assert ctrl(g, DSP0) == 0x1D and any("from v6.11" in n for n in notes)


def test_config_acs_unsupported_bit_not_applied() -> None:
    _, notes = apply_whatif(iommu_fabric(), WhatIf(cmdline="pci=config_acs=1xxxxxxx@0000:02:00.0"))
    assert any("unsupported" in n for n in notes)  # bit 7 is not in cap 0x5f


@pytest.mark.parametrize("s,mask,bits", [("10x", 0b110, 0b100), ("x", 0, 0),
                                         ("1111111", 0x7F, 0x7F), ("0", 1, 0)])
def test_config_acs_bits(s: str, mask: int, bits: int) -> None:
    assert parse_config_acs_bits(s) == (mask, bits)


@pytest.mark.parametrize("bad", ["pci=config_acs=101", "pci=config_acs=12@00:01.0",
                                 "pci=disable_acs_redir=zz", "pci=disable_acs_redir=00:01.0/x",
                                 "pci=disable_acs_redir=pci:10b5"])
def test_cmdline_errors(bad: str) -> None:
    with pytest.raises(InputError):
        parse_cmdline(bad, PROFILES["6.11"])


def test_devspec_forms() -> None:
    assert parse_devspec("0000:02:00.0").path == ((0, 2, 0, 0), ())
    assert parse_devspec("02:00.0").path == ((0, 2, 0, 0), ())
    assert parse_devspec("00:01.0/00.0/01.0").path == ((0, 0, 1, 0), ((0, 0), (1, 0)))
    assert parse_devspec("pci:8086:2030").ids == (0x8086, 0x2030, 0, 0)


def test_acs_override_and_cpu_and_kernel() -> None:
    f = topology_t()
    g, _ = apply_whatif(f, WhatIf(acs={DSP0: 0x1D, DSP1: 0x1D}, cpu="amd:0x19", kernel="5.15"))
    assert ctrl(g, DSP0) == 0x1D
    assert g.host.cpu_vendor == "AuthenticAMD" and g.host.cpu_family == 0x19
    assert g.host.kernel_release == "5.15"
    assert calc_map_type_and_dist(g, PROFILES["5.14"], A, B,
                                  verbose=False).map_type is MapType.THRU_HOST_BRIDGE
    with pytest.raises(InputError):
        apply_whatif(f, WhatIf(acs={USP: 0}))  # no ACS capability
    with pytest.raises(InputError):
        apply_whatif(f, WhatIf(kernel="banana"))


@pytest.mark.parametrize("text,vendor,family,arch", [
    ("amd:0x19", "AuthenticAMD", 0x19, "x86_64"), ("amd:23", "AuthenticAMD", 23, "x86_64"),
    ("intel", "GenuineIntel", 6, "x86_64"), ("hygon:0x18", "HygonGenuine", 0x18, "x86_64"),
    ("arm64", None, None, "aarch64"),
])
def test_parse_cpu(text: str, vendor: str | None, family: int | None, arch: str) -> None:
    assert parse_cpu(text) == {"arch": arch, "cpu_vendor": vendor, "cpu_family": family}


@pytest.mark.parametrize("bad", ["via", "amd:zz", ""])
def test_parse_cpu_errors(bad: str) -> None:
    with pytest.raises(InputError):
        parse_cpu(bad)


def test_empty_whatif_is_identity() -> None:
    f = topology_t()
    g, notes = apply_whatif(f, WhatIf())
    assert g is f and notes == []
