"""Core layer: init, per-BAR providers, map_type via the kernel's cache (§4.1-4.2, §5.1)."""

from __future__ import annotations

import pytest

from p2pdma.emu import Machine
from p2pdma.errors import KernelError, P2PDMAError
from p2pdma.fabric.model import ACS_CR, ACS_RR
from p2pdma.kernel import MapType, NonPciClient

from .conftest import Topo, make_topo


def test_init_is_idempotent_and_creates_no_pool(machine: Machine, topo: Topo) -> None:
    machine.p2pdma_init(topo.nvme)
    state = machine.device(topo.nvme).p2pdma
    machine.p2pdma_init(topo.nvme)
    assert machine.device(topo.nvme).p2pdma is state
    assert state is not None and state.pool is None
    assert machine.alloc_layer.sysfs_files(topo.nvme) == []  # no p2pmem group
    assert machine.alloc(topo.nvme, 4096) is None


def test_init_eopnotsupp_cases(topo: Topo) -> None:
    m = Machine(make_topo(config=False).fabric)
    with pytest.raises(KernelError) as e:
        m.p2pdma_init(topo.nvme)
    assert e.value.errno_name == "EOPNOTSUPP"
    m2 = Machine(topo.fabric)
    m2.device(topo.nvme).non_mappable_bars = True
    with pytest.raises(KernelError) as e:
        m2.p2pdma_init(topo.nvme)
    assert e.value.errno_name == "EOPNOTSUPP"


def test_provider_per_memory_bar_with_bus_offset() -> None:
    t = make_topo(bus_offset=0x1000_0000)
    m = Machine(t.fabric)
    assert m.provider(t.nvme, 2) is None  # before init: no provider
    m.p2pdma_init(t.nvme)
    p0, p2 = m.provider(t.nvme, 0), m.provider(t.nvme, 2)
    assert p0 is not None and p2 is not None and p0 is not p2
    assert p2.bus_offset == 0x1000_0000 and p2.bar == 2 and p2.owner == t.nvme
    assert m.provider(t.nvme, 1) is None  # no such BAR
    with pytest.raises(KernelError):
        m.provider(t.nvme, 6)


def test_negative_bus_offset_wraps_unsigned() -> None:
    t = make_topo(bus_offset=-0x1000)
    m = Machine(t.fabric)
    m.p2pdma_init(t.nvme)
    p = m.provider(t.nvme, 2)
    assert p is not None and p.bus_offset == (1 << 64) - 0x1000
    assert p.bus_addr_map(0x5000) == 0x4000


def test_map_type_computed_verbosely_once_then_cached() -> None:
    t = make_topo(host_bridge=(0x8086, 0x4C43), switch_acs=ACS_RR | ACS_CR)
    m = Machine(t.fabric)
    m.p2pdma_init(t.nvme)
    prov = m.provider(t.nvme, 2)
    assert prov is not None
    assert m.map_type(prov, t.nic) is MapType.NOT_SUPPORTED
    lines = m.dmesg.lines()
    assert any("ACS redirect is set between the client and provider (0000:" in x for x in lines)
    assert any("Host bridge not in P2PDMA whitelist: 8086:4c43" in x for x in lines)
    assert any(x.startswith("mlx5_core ") and "do not share an upstream bridge" in x
               for x in lines)
    seq = m.dmesg.seq
    assert m.map_type(prov, t.nic) is MapType.NOT_SUPPORTED
    assert m.dmesg.since(seq) == []  # cached: silent


def test_stale_cache_after_live_acs_change(topo: Topo) -> None:
    """setpci-like ACS change: the cached answer stays until a calc rewrites it (§10.4)."""
    m = Machine(topo.fabric)
    m.p2pdma_init(topo.nvme)
    prov = m.provider(topo.nvme, 2)
    assert prov is not None
    assert m.map_type(prov, topo.nic) is MapType.BUS_ADDR
    m.set_acs_control(topo.dsp1, ACS_RR | ACS_CR)
    assert m.fabric.get(topo.dsp1).acs is not None
    assert m.map_type(prov, topo.nic) is MapType.BUS_ADDR  # stale, like the kernel
    # A fresh provider state (re-created after release) sees the live register.
    other = Machine(m.fabric)
    other.p2pdma_init(topo.nvme)
    p2 = other.provider(topo.nvme, 2)
    assert p2 is not None
    assert other.map_type(p2, topo.nic) is MapType.THRU_HOST_BRIDGE
    # Any distance calc on the pair writes the cache again.
    m.distance(topo.nvme, topo.nic)
    assert m.map_type(prov, topo.nic) is MapType.THRU_HOST_BRIDGE


def test_map_type_without_state_or_for_non_pci(topo: Topo, machine: Machine) -> None:
    from p2pdma.emu.core import Provider

    fake = Provider(topo.nvme, 2, 0)
    assert machine.map_type(fake, topo.nic) is MapType.NOT_SUPPORTED  # no p2pdma state
    machine.p2pdma_init(topo.nvme)
    prov = machine.provider(topo.nvme, 2)
    assert prov is not None
    ib = NonPciClient("mlx5_0", "mlx5_0", topo.nic)
    assert machine.map_type(prov, ib) is MapType.NOT_SUPPORTED  # no parent walk here
    assert machine.distance(topo.nvme, ib) == 4  # distance does walk to the parent


def test_release_destroys_cache_and_later_map_type_is_not_supported(topo: Topo) -> None:
    m = Machine(topo.fabric)
    m.p2pdma_init(topo.nvme)
    prov = m.provider(topo.nvme, 2)
    assert prov is not None
    assert m.map_type(prov, topo.nic) is MapType.BUS_ADDR
    cache = m.device(topo.nvme).p2pdma.map_types  # type: ignore[union-attr]
    m.remove_device(topo.nvme, timeout=1)
    assert cache.destroyed and not cache.entries
    assert m.map_type(prov, topo.nic) is MapType.NOT_SUPPORTED


def test_stale_cache_when_another_device_reuses_the_bdf(topo: Topo) -> None:
    m = Machine(topo.fabric)
    m.p2pdma_init(topo.nvme)
    prov = m.provider(topo.nvme, 2)
    assert prov is not None
    assert m.map_type(prov, topo.nic) is MapType.BUS_ADDR
    old = m.fabric.get(topo.nic)
    m.remove_device(topo.nic, timeout=1)
    m.set_acs_control(topo.dsp1, ACS_RR | ACS_CR)
    import dataclasses

    m.add_device(dataclasses.replace(old, vendor=0x8086, device=0x1593, driver="ice"))
    assert m.fabric.get(topo.nic).driver == "ice"
    assert m.map_type(prov, topo.nic) is MapType.BUS_ADDR  # keyed by BDF: stale
    assert m.distance(topo.nvme, topo.nic) == 4
    assert m.map_type(prov, topo.nic) is MapType.THRU_HOST_BRIDGE


def test_removing_a_bridge_removes_what_is_below_first(topo: Topo) -> None:
    m = Machine(topo.fabric)
    m.add_resource(topo.nvme, 2)
    cmb = m.fabric.get(topo.nvme).bars[1]
    order: list[tuple[str, str]] = []
    m.subscribe(lambda ev: order.append((ev.kind.value, str(ev.bdf))))
    m.remove_device(topo.dsp0, timeout=1)
    assert order == [("removing", str(topo.nvme)), ("removed", str(topo.nvme)),
                     ("removing", str(topo.dsp0)), ("removed", str(topo.dsp0))]
    assert topo.nvme not in m.fabric and topo.dsp0 not in m.fabric
    with pytest.raises(KernelError) as e:
        m.remove_device(topo.nvme)
    assert e.value.errno_name == "ENODEV"
    with pytest.raises(KernelError) as e:
        m.memory.read_phys(cmb.start, 1)  # nothing decodes the old BAR any more
    assert e.value.errno_name == "EFAULT"


def test_hot_add_with_overlapping_bar_leaves_no_half_device(topo: Topo) -> None:
    import dataclasses

    m = Machine(topo.fabric)
    nic = m.fabric.get(topo.nic)
    clash = dataclasses.replace(nic, bdf=nic.bdf._replace(fn=1))
    with pytest.raises(P2PDMAError, match="overlaps"):
        m.add_device(clash)  # the fabric or the address space refuses it
    assert clash.bdf not in m.fabric and m.find_device(clash.bdf) is None
    m.memory.write_phys(nic.bars[0].start, b"still the nic")
    assert m.memory.read_bus(nic.bars[0].bus_address, 13) == b"still the nic"


def test_host_ram_goes_where_no_bar_decodes() -> None:
    from p2pdma.fabric.builder import FabricBuilder
    from p2pdma.fabric.model import HostContext

    b = FabricBuilder(HostContext(kernel_release="7.2"))
    hb = b.host_bridge(mmio_base=0x1_0000_0000)  # BARs right where RAM would go
    ep = b.endpoint(b.root_port(hb), bars=[(0, 1 << 30)])
    with Machine(b.build(), ram_size=1 << 30) as m:
        bar = m.fabric.get(ep).bars[0]
        assert not bar.start <= m.ram_base < bar.start + bar.size
        phys = m.alloc_ram(4096)
        m.memory.write_phys(phys, b"ram")
        m.memory.write_phys(bar.start, b"bar")
        assert m.memory.read_phys(phys, 3) == b"ram"
        assert m.memory.read_phys(bar.start, 3) == b"bar"
