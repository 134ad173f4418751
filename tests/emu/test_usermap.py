"""sysfs ``allocate`` mmap, page lifetime, GUP, revocation and teardown (§4.8, §6)."""

from __future__ import annotations

import threading

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from p2pdma.emu import (
    FOLL_LONGTERM,
    FOLL_PCI_P2PDMA,
    MAP_PRIVATE,
    MAP_SHARED,
    Machine,
    SigBus,
    Vma,
)
from p2pdma.emu.constants import PAGE_SIZE
from p2pdma.errors import KernelError

from .conftest import MiB, Topo, cmb_machine, make_topo


def avail(m: Machine, t: Topo) -> int:
    return int(m.sysfs_read(t.nvme, "available"))


def test_mmap_rules_and_messages(topo: Topo) -> None:
    m = cmb_machine(topo)
    f = m.open_allocate(topo.nvme)
    with pytest.raises(KernelError) as e:
        f.mmap(PAGE_SIZE, MAP_PRIVATE, comm="fio")
    assert e.value.errno_name == "EINVAL"
    assert m.dmesg.lines()[-1] == f"nvme {topo.nvme}: fio: fail, attempted private mapping"
    with pytest.raises(KernelError) as e:
        f.mmap(PAGE_SIZE, MAP_SHARED, offset=PAGE_SIZE, comm="fio")
    assert e.value.errno_name == "EINVAL"
    assert m.dmesg.lines()[-1] == (f"nvme {topo.nvme}: fio: fail, attempted mapping with "
                                   "non-zero offset")
    with pytest.raises(KernelError) as e:
        f.mmap(65 * MiB)
    assert e.value.errno_name == "ENOMEM"
    with pytest.raises(KernelError) as e:
        f.read()
    assert e.value.errno_name == "EIO"
    assert avail(m, topo) == 64 * MiB


def test_each_mmap_gets_fresh_real_memory(topo: Topo) -> None:
    m = cmb_machine(topo)
    f = m.open_allocate(topo.nvme)
    a, b = f.mmap(8192), f.mmap(3)  # rounded up to a page
    assert b.length == PAGE_SIZE and avail(m, topo) == 64 * MiB - 3 * PAGE_SIZE
    a.write(100, b"peer")
    b.write(0, b"other")
    assert a.read(100, 4) == b"peer" and b.read(0, 5) == b"other"
    pa = m.kva_to_phys(a.pages[0])  # type: ignore[arg-type]
    pb = m.kva_to_phys(b.pages[0])  # type: ignore[arg-type]
    assert pa != pb
    assert m.memory.read_phys(pa + 100, 4) == b"peer"  # the CPU view of the BAR
    bus = m.virt_to_bus(topo.nvme, a.pages[0])
    assert m.memory.read_bus(bus + 100, 4) == b"peer"  # the bus view
    m.memory.write_phys(pa + 200, b"device")  # a device write shows in the mapping
    assert a.read(200, 6) == b"device"
    res = m.device(topo.nvme).p2pdma.resources[0]  # type: ignore[union-attr]
    assert res.ref.count == 3 and res.pages_in_use() == 3
    assert res.page_ref_count(a.pages[0]) == 1  # type: ignore[arg-type]


def test_partial_munmap_frees_page_by_page(topo: Topo) -> None:
    m = cmb_machine(topo)
    vma = m.open_allocate(topo.nvme).mmap(4 * PAGE_SIZE)
    base = avail(m, topo)
    vma.munmap(PAGE_SIZE, PAGE_SIZE)
    assert avail(m, topo) == base + PAGE_SIZE
    with pytest.raises(SigBus):
        vma.read(PAGE_SIZE, 1)
    assert vma.read(0, 1) == b"\0"
    with pytest.raises(SigBus):
        vma.read(PAGE_SIZE - 1, 2)  # straddles into the unmapped page
    vma.munmap(0, 4 * PAGE_SIZE)
    assert avail(m, topo) == 64 * MiB
    assert m.device(topo.nvme).p2pdma.user_vmas == set()  # type: ignore[union-attr]


def test_gup_rules(topo: Topo) -> None:
    m = cmb_machine(topo)
    vma = m.open_allocate(topo.nvme).mmap(2 * PAGE_SIZE)
    with pytest.raises(KernelError) as e:
        m.pin_user_pages(vma, 0, PAGE_SIZE, 0, "read(2)")
    assert e.value.errno_name == "EREMOTEIO"
    with pytest.raises(KernelError) as e:
        m.pin_user_pages(vma, 0, PAGE_SIZE, FOLL_LONGTERM | FOLL_PCI_P2PDMA, "ibv_reg_mr")
    assert e.value.errno_name == "EOPNOTSUPP"
    with pytest.raises(KernelError) as e:
        m.pin_user_pages(vma, 0, PAGE_SIZE, FOLL_LONGTERM, "io_uring fixed")
    assert e.value.errno_name == "EREMOTEIO"
    pin = m.pin_user_pages(vma, 0, 2 * PAGE_SIZE, FOLL_PCI_P2PDMA, "O_DIRECT")
    before = avail(m, topo)
    vma.munmap()  # the pinned pages outlive their PTEs
    assert avail(m, topo) == before
    pin.unpin()
    assert avail(m, topo) == 64 * MiB


def test_removal_zaps_mappings_and_later_access_sigbus(topo: Topo) -> None:
    m = cmb_machine(topo)
    f = m.open_allocate(topo.nvme)
    vma = f.mmap(PAGE_SIZE)
    vma.write(0, b"secret")
    m.remove_device(topo.nvme, timeout=1)
    for op in (lambda: vma.read(0, 1), lambda: vma.write(0, b"x")):
        with pytest.raises(SigBus, match="revoked"):
            op()
    with pytest.raises(KernelError) as e:
        f.mmap(PAGE_SIZE)  # an fd opened before removal
    assert e.value.errno_name == "ENODEV"
    with pytest.raises(KernelError) as e:
        m.open_allocate(topo.nvme)
    assert e.value.errno_name in ("ENOENT", "ENODEV")
    assert m.alloc(topo.nvme, PAGE_SIZE) is None


def test_removal_waits_for_pins_and_names_holders(topo: Topo) -> None:
    m = cmb_machine(topo)
    vma = m.open_allocate(topo.nvme).mmap(2 * PAGE_SIZE)
    pin = m.pin_user_pages(vma, 0, PAGE_SIZE, FOLL_PCI_P2PDMA, "O_DIRECT to nvme1n1")
    kva = m.alloc(topo.nvme, PAGE_SIZE)
    with pytest.raises(KernelError) as e:
        m.remove_device(topo.nvme, timeout=0.05)
    assert e.value.errno_name == "EBUSY"
    assert "O_DIRECT to nvme1n1" in str(e.value) and "pci_alloc_p2pmem" in str(e.value)
    with pytest.raises(SigBus):
        vma.read(0, 1)  # zapped already, before the wait
    assert m.alloc(topo.nvme, PAGE_SIZE) is None  # ref is dying
    # Released from another thread while removal waits: removal then completes.
    def release() -> None:
        pin.unpin()
        m.free(topo.nvme, kva, PAGE_SIZE)  # type: ignore[arg-type]
    t = threading.Timer(0.05, release)
    t.start()
    m.remove_device(topo.nvme, timeout=5)
    t.join()
    assert m.find_device(topo.nvme) is None


def test_teardown_order(topo: Topo) -> None:
    m = cmb_machine(topo)
    m.open_allocate(topo.nvme).mmap(PAGE_SIZE)
    events: list[str] = []
    m.subscribe(lambda ev: events.append(ev.kind.value), topo.nvme)
    m.remove_device(topo.nvme, timeout=1)
    steps = [s for b, s in m.teardown_log if b == topo.nvme]
    assert [s.split(" ")[0] for s in steps] == [
        "zap", "kill", "pgmap", "release:", "map-type", "pool"]
    assert steps[0] == "zap user mappings (1)"
    assert events == ["removing", "removed"]


def test_insert_failure_gives_everything_back(topo: Topo) -> None:
    """vm_insert_page fails at page 2: remainder freed, inserted pages torn down, and the
    temporary pgmap ref dropped (7.0 fix) so removal does not hang."""
    m = cmb_machine(topo)
    res = m.device(topo.nvme).p2pdma.resources[0]  # type: ignore[union-attr]

    def hook(vma: Vma, page: int, kva: int) -> None:
        if page == 2:
            raise KernelError("EBUSY", "injected vm_insert_page failure")

    m.insert_hook = hook
    with pytest.raises(KernelError) as e:
        m.open_allocate(topo.nvme).mmap(5 * PAGE_SIZE)
    assert e.value.errno_name == "EBUSY"
    assert avail(m, topo) == 64 * MiB
    assert res.ref.count == 0 and res.pages_in_use() == 0
    m.insert_hook = None
    m.remove_device(topo.nvme, timeout=1)


def test_mmap_enomem_when_no_single_chunk_fits(topo: Topo) -> None:
    m = Machine(topo.fabric)
    m.add_resource(topo.nvme, 2, 4 * MiB, 0)
    m.add_resource(topo.nvme, 2, 4 * MiB, 8 * MiB)
    assert avail(m, topo) == 8 * MiB
    f = m.open_allocate(topo.nvme)
    with pytest.raises(KernelError) as e:
        f.mmap(6 * MiB)  # 8 MiB free in total, but at most 4 MiB in one chunk
    assert e.value.errno_name == "ENOMEM"
    whole = f.mmap(4 * MiB)
    assert whole.mapped_pages() == 1024 and avail(m, topo) == 4 * MiB


@settings(max_examples=40, deadline=None)
@given(npages=st.integers(1, 12),
       cuts=st.lists(st.tuples(st.integers(0, 11), st.integers(1, 4)), max_size=8))
def test_available_rises_exactly_by_the_pages_unmapped(npages: int,
                                                       cuts: list[tuple[int, int]]) -> None:
    t = make_topo()
    m = cmb_machine(t)
    vma = m.open_allocate(t.nvme).mmap(npages * PAGE_SIZE)
    res = m.device(t.nvme).p2pdma.resources[0]  # type: ignore[union-attr]
    gone: set[int] = set()
    for first, n in cuts:
        first %= npages
        vma.munmap(first * PAGE_SIZE, n * PAGE_SIZE)
        gone |= set(range(first, min(npages, first + n)))
        assert avail(m, t) == 64 * MiB - (npages - len(gone)) * PAGE_SIZE
        assert res.ref.count == res.pages_in_use() == npages - len(gone)
        for p in range(npages):
            assert vma.is_mapped(p) is (p not in gone)
    m.close()
