"""Allocation layer: add_resource, pool, alloc/free/virt_to_bus, sgl, sysfs, find, enable (§4)."""

from __future__ import annotations

import pytest

from p2pdma.emu import Machine
from p2pdma.emu.constants import PAGE_OFFSET
from p2pdma.errors import KernelError

from .conftest import MiB, Topo, cmb_machine, make_topo


def errno_of(fn: object, *args: object) -> str:
    with pytest.raises(KernelError) as e:
        fn(*args)  # type: ignore[operator]
    return e.value.errno_name


def test_add_resource_validation_order(machine: Machine, topo: Topo) -> None:
    n = topo.nvme
    assert errno_of(machine.add_resource, n, 1) == "EINVAL"  # no such (memory) BAR
    assert errno_of(machine.add_resource, n, 2, 0, 64 * MiB) == "EINVAL"  # offset >= len
    assert errno_of(machine.add_resource, n, 2, 64 * MiB, 2 * MiB) == "EINVAL"  # past end
    # Validation failed before init: no state was created.
    assert machine.device(n).p2pdma is None
    assert errno_of(machine.add_resource, n, 2, 1 * MiB, 0) == "EINVAL"  # subsection align
    assert machine.device(n).p2pdma is not None  # init ran; memremap failed afterwards
    assert machine.alloc_layer.sysfs_files(n) == ["allocate", "available", "published", "size"]


def test_add_resource_size_zero_takes_rest_and_logs_i1(machine: Machine, topo: Topo) -> None:
    res = machine.add_resource(topo.nvme, 2, 0, 16 * MiB)
    bar = machine.device(topo.nvme).function.bar(2)
    assert bar is not None and res.size == 48 * MiB
    start = bar.start + 16 * MiB
    line = f"nvme {topo.nvme}: added peer-to-peer DMA memory {start:#x}-{start + 48 * MiB - 1:#x}"
    assert machine.dmesg.lines()[-1] == line
    assert machine.sysfs_read(topo.nvme, "size") == f"{48 * MiB}\n"
    assert machine.sysfs_read(topo.nvme, "published") == "0\n"
    assert errno_of(machine.add_resource, topo.nvme, 2, 32 * MiB, 2 * MiB) == "ENOMEM"


def test_add_resource_config_n() -> None:
    t = make_topo(config=False)
    m = Machine(t.fabric)
    assert errno_of(m.add_resource, t.nvme, 2) == "EOPNOTSUPP"
    assert m.alloc(t.nvme, 4096) is None and m.virt_to_bus(t.nvme, 1) == 0
    assert m.find(t.nic) is None and m.distance(t.nvme, t.nic) == -1


def test_chunks_newest_first_and_alloc_arithmetic() -> None:
    t = make_topo(bus_offset=0x2000_0000)
    m = Machine(t.fabric)
    r1 = m.add_resource(t.nvme, 2, 16 * MiB, 0)
    r2 = m.add_resource(t.nvme, 2, 16 * MiB, 32 * MiB)
    kva = m.alloc(t.nvme, 100)
    assert kva == r2.kva_start  # the newest chunk is tried first
    bar = m.device(t.nvme).function.bar(2)
    assert bar is not None
    # bus address = pci_bus_address(bar) + offset + (va - chunk va)
    assert m.virt_to_bus(t.nvme, kva + 0x123) == bar.bus_address + 32 * MiB + 0x123
    assert m.kva_to_phys(kva) == bar.start + 32 * MiB
    assert kva - PAGE_OFFSET == r2.phys_start
    assert int(m.sysfs_read(t.nvme, "available")) == 32 * MiB - 4096  # whole page
    assert r2.ref.count == 1 and r1.ref.count == 0
    big = m.alloc(t.nvme, 16 * MiB)  # r2 is no longer big enough: falls to r1
    assert big == r1.kva_start
    assert m.alloc(t.nvme, 17 * MiB) is None  # never spans chunks
    m.free(t.nvme, kva, 100)
    assert big is not None
    m.free(t.nvme, big, 16 * MiB)
    assert r1.ref.count == r2.ref.count == 0
    assert m.sysfs_read(t.nvme, "available") == f"{32 * MiB}\n"
    assert m.virt_to_bus(t.nvme, None) == 0
    assert m.virt_to_bus(t.nvme, PAGE_OFFSET + 0x1000) == (1 << 64) - 1  # foreign


def test_sgl_is_one_entry(topo: Topo) -> None:
    m = cmb_machine(topo)
    sgl = m.alloc_sgl(topo.nvme, 3 * MiB + 5)
    assert sgl is not None and sgl.nents == 1 and sgl.entries[0][1] == 3 * MiB + 5
    assert int(m.sysfs_read(topo.nvme, "available")) == 64 * MiB - 3 * MiB - 4096
    m.free_sgl(topo.nvme, sgl)
    assert int(m.sysfs_read(topo.nvme, "available")) == 64 * MiB
    assert m.alloc_sgl(topo.nvme, 65 * MiB) is None


def test_alloc_fails_once_ref_is_dying(topo: Topo) -> None:
    m = cmb_machine(topo)
    res = m.device(topo.nvme).p2pdma.resources[0]  # type: ignore[union-attr]
    res.ref.kill()
    assert m.alloc(topo.nvme, 4096) is None
    assert int(m.sysfs_read(topo.nvme, "available")) == 64 * MiB  # range given back


def test_publish_and_find(topo: Topo) -> None:
    m = Machine(topo.fabric)
    m.add_resource(topo.nvme, 2)
    assert not m.has_p2pmem(topo.nvme) and m.find(topo.nic) is None
    m.publish(topo.nvme)
    assert m.sysfs_read(topo.nvme, "published") == "1\n"
    assert m.find_many([topo.nic, topo.nvme]) == topo.nvme
    m.publish(topo.gpu)  # no state: silently ignored
    assert not m.has_p2pmem(topo.gpu)


def test_find_fills_provider_cache(topo: Topo) -> None:
    from p2pdma.kernel import MapType

    m = cmb_machine(topo)
    cache = m.device(topo.nvme).p2pdma.map_types  # type: ignore[union-attr]
    assert cache.lookup(topo.nic) is MapType.UNKNOWN
    m.find(topo.nic)
    assert cache.lookup(topo.nic) is MapType.BUS_ADDR


@pytest.mark.parametrize(("page", "use", "dev_is_nvme"), [
    ("0", False, False), ("1", True, False), ("1\n", True, False), ("y", True, False),
    ("off", False, False), ("on\n", True, False), ("N", False, False),
])
def test_enable_store_booleans(topo: Topo, page: str, use: bool, dev_is_nvme: bool) -> None:
    m = cmb_machine(topo)
    r = m.enable_store(page)
    assert r.use is use and r.p2p_dev is None


@pytest.mark.parametrize("page", ["10", "0000:09:00.0", "bogus", "1x", "o"])
def test_enable_store_errors_e2(topo: Topo, page: str) -> None:
    m = cmb_machine(topo)
    with pytest.raises(KernelError) as e:
        m.enable_store(page)
    assert e.value.errno_name == "ENODEV"
    assert m.dmesg.lines()[-1] == f"pci-p2pdma: No such PCI device: {page}"


def test_enable_store_device(topo: Topo) -> None:
    m = cmb_machine(topo)
    r = m.enable_store(f"{topo.nvme}\n")
    assert r.use and r.p2p_dev == topo.nvme
    assert m.enable_show(r.use, r.p2p_dev) == f"{topo.nvme}\n"
    with pytest.raises(KernelError) as e:
        m.enable_store(f"{topo.nic}\n")  # exists, but no p2pmem: E1 with the raw page
    assert e.value.errno_name == "ENODEV"
    assert m.dmesg.lines()[-1] == (f"mlx5_core {topo.nic}: PCI device has no peer-to-peer "
                                   f"memory: {topo.nic}\n")
    assert m.enable_show(False, None) == "0\n" and m.enable_show(True, None) == "1\n"
    assert m.enable_show(True, topo.nvme, config=False) == "none\n"


def test_enable_store_config_n() -> None:
    t = make_topo(config=False)
    r = Machine(t.fabric).enable_store("1")
    assert r.use is False


@pytest.mark.parametrize(("release", "expect"), [("7.2", True), (None, False)])
def test_has_p2pmem_pool_requirement_per_profile(release: str | None, expect: bool) -> None:
    """A published pool-less provider: only pci/next also requires a pool (§3 step 3)."""
    t = make_topo(release=release)
    m = Machine(t.fabric)
    m.p2pdma_init(t.gpu)
    m.publish(t.gpu)
    assert m.has_p2pmem(t.gpu) is expect


def test_nvmet_configfs_attribute(topo: Topo) -> None:
    from p2pdma.emu.enable import NvmetP2pmemAttr

    m = cmb_machine(topo)
    attr = NvmetP2pmemAttr(m, nsid=1)
    assert attr.show() == "0\n"
    attr.store(f"{topo.nvme}\n")
    assert attr.show() == f"{topo.nvme}\n"
    with pytest.raises(KernelError):
        attr.store("bogus")
    assert attr.show() == f"{topo.nvme}\n"  # a failed store changes nothing
    attr.store("1")
    assert attr.show() == "1\n" and attr.p2p_dev is None
    attr.ns_enabled = True
    with pytest.raises(KernelError) as e:
        attr.store("0")
    assert e.value.errno_name == "EBUSY"
    with pytest.raises(KernelError) as e:
        NvmetP2pmemAttr(Machine(make_topo(config=False).fabric))
    assert e.value.errno_name == "ENOENT"
