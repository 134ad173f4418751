"""Test fabrics: topology T of spec §2.11 and helpers."""

from __future__ import annotations

from p2pdma.fabric.bdf import Bdf
from p2pdma.fabric.builder import FabricBuilder
from p2pdma.fabric.model import Acs, Fabric, HostContext, PortType

INTEL = HostContext(kernel_release="6.12.117", arch="x86_64", cpu_vendor="GenuineIntel",
                    cpu_family=6)
AMD19 = HostContext(kernel_release="6.12.117", arch="x86_64", cpu_vendor="AuthenticAMD",
                    cpu_family=0x19)

A = Bdf(0, 3, 0, 0)
A1 = Bdf(0, 3, 0, 1)
B = Bdf(0, 4, 0, 0)
C = Bdf(0, 5, 0, 0)
D = Bdf(0, 0, 4, 0)
E = Bdf(0, 0x81, 0, 0)
USP = Bdf(0, 1, 0, 0)
DSP0 = Bdf(0, 2, 0, 0)
DSP1 = Bdf(0, 2, 1, 0)
RP1 = Bdf(0, 0, 1, 0)
RP2 = Bdf(0, 0, 2, 0)
HB_DEV = Bdf(0, 0, 0, 0)


def topology_t(*, host: HostContext = INTEL, hb_id: tuple[int, int] = (0x8086, 0x4C43),
               dsp_ctrl: dict[int, int] | None = None, usp_ctrl: int | None = None,
               usp_cap: int | None = None, second_hb: tuple[int, int] | None = None,
               drivers: bool = True) -> Fabric:
    """Spec §2.11 topology T.  ``dsp_ctrl`` {0: ctrl of 02:00.0, 1: ctrl of 02:01.0}."""
    dsp_ctrl = dsp_ctrl or {}
    b = FabricBuilder(host)
    hb = b.host_bridge(first=hb_id)
    rp1 = b.root_port(hb, dev=1)
    assert rp1 == RP1
    cap = 0x005F
    usp, dsps = b.switch(rp1, ports=2, acs_cap=cap, usp_acs_cap=usp_cap)
    assert usp == USP and dsps == [DSP0, DSP1]
    for k, ctrl in dsp_ctrl.items():
        b.update(dsps[k], acs=Acs(0x148, cap, ctrl))
    if usp_ctrl is not None:
        b.update(usp, acs=Acs(0x148, usp_cap or cap, usp_ctrl))
    drv = "nvme" if drivers else None
    b.nvme(dsps[0], cmb_size=64 << 20)  # A = 03:00.0
    b.endpoint(dsps[0], fn=1, driver=drv)  # A1
    b.nvme(dsps[1], cmb_size=64 << 20)  # B
    rp2 = b.root_port(hb, dev=2)
    assert rp2 == RP2
    b.endpoint(rp2, driver=drv)  # C
    b.endpoint(hb, dev=4, driver=drv, port_type=PortType.RC_INTEGRATED_ENDPOINT)  # D
    if second_hb is not None:
        hb1 = b.host_bridge(bus=0x80, first=second_hb)
        rp = b.root_port(hb1, dev=1)
        b.endpoint(rp, driver=drv)  # E = 81:00.0
    return b.build()
