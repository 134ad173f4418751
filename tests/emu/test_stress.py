"""Concurrency stress: alloc/free, mmap/access/unmap, pins, DMA map/unmap, while the
provider is hot-unplugged and re-plugged.  Bounded by iterations; every join has a
timeout so a deadlock fails the test instead of hanging it."""

from __future__ import annotations

import dataclasses
import random
import threading

from p2pdma.emu import FOLL_PCI_P2PDMA, EventKind, Machine, Pin, PoolBug, SigBus, Vma
from p2pdma.emu.constants import PAGE_SIZE
from p2pdma.errors import KernelError
from p2pdma.fabric.model import IommuMode

from .conftest import MiB, make_topo

WORKERS = 4
ITERATIONS = 600
CYCLES = 3
JOIN_TIMEOUT = 60.0


def test_stress_mixed_operations_with_removal() -> None:
    t = make_topo(iommu=IommuMode.TRANSLATED)
    m = Machine(t.fabric)
    nvme_func = m.fabric.get(t.nvme)

    def plug() -> None:
        m.add_resource(t.nvme, 2, 16 * MiB)
        m.publish(t.nvme)

    plug()
    removing = threading.Event()
    m.subscribe(lambda ev: removing.set() if ev.kind is EventKind.REMOVING else None, t.nvme)
    violations: list[str] = []
    errors: list[BaseException] = []
    sigbus_seen = [0]
    lock = threading.Lock()

    def note(msg: str) -> None:
        with lock:
            violations.append(msg)

    def worker(seed: int) -> None:
        rng = random.Random(seed)
        allocs: list[tuple[int, int, bytes]] = []
        vmas: list[tuple[Vma, bytes]] = []
        pins: list[Pin] = []

        def release_kernel_side() -> None:
            for pin in pins:
                pin.unpin()
            pins.clear()
            for kva, size, _ in allocs:
                m.free(t.nvme, kva, size)
            allocs.clear()

        try:
            for it in range(ITERATIONS):
                if removing.is_set():
                    release_kernel_side()  # what a driver's remove() does
                op = rng.randrange(7)
                try:
                    if op == 0:  # also while removal runs: must fail cleanly
                        size = rng.choice((1, PAGE_SIZE, 3 * PAGE_SIZE, 64 << 10))
                        kva = m.alloc(t.nvme, size)
                        if kva is not None:
                            pat = f"k{seed}.{it}".encode()
                            m.memory.write_virt(kva, pat)
                            allocs.append((kva, size, pat))
                    elif op == 1 and allocs:
                        kva, size, pat = allocs.pop(rng.randrange(len(allocs)))
                        if m.memory.read_virt(kva, len(pat)) != pat:
                            note(f"kernel buffer {kva:#x} corrupted")
                        m.free(t.nvme, kva, size)
                    elif op == 2:
                        vma = m.open_allocate(t.nvme).mmap(rng.choice((1, 2, 4)) * PAGE_SIZE)
                        pat = f"u{seed}.{it}".encode()
                        for p in range(vma.length // PAGE_SIZE):
                            vma.write(p * PAGE_SIZE, pat)
                        vmas.append((vma, pat))
                    elif op == 3 and vmas:
                        vma, pat = vmas[rng.randrange(len(vmas))]
                        p = rng.randrange(vma.length // PAGE_SIZE)
                        was_revoked = vma.revoked
                        was_unmapped = not vma.is_mapped(p)
                        try:
                            data = vma.read(p * PAGE_SIZE, len(pat))
                        except SigBus:
                            with lock:
                                sigbus_seen[0] += 1
                        else:
                            if was_revoked or was_unmapped:
                                note("access to a revoked/unmapped page succeeded")
                            if data != pat:
                                note(f"user page of {vma.name} holds foreign data {data!r}")
                    elif op == 4 and vmas:
                        vma, _ = vmas[rng.randrange(len(vmas))]
                        p = rng.randrange(vma.length // PAGE_SIZE)
                        vma.munmap(p * PAGE_SIZE, PAGE_SIZE)
                        if vma.mapped_pages() == 0:
                            vmas.remove(next(x for x in vmas if x[0] is vma))
                    elif op == 5 and vmas:
                        vma, _ = vmas[rng.randrange(len(vmas))]
                        pins.append(m.pin_user_pages(vma, 0, PAGE_SIZE, FOLL_PCI_P2PDMA,
                                                     f"worker {seed} O_DIRECT"))
                    elif op == 6 and allocs:
                        kva, size, pat = allocs[rng.randrange(len(allocs))]
                        client = rng.choice((t.nic, t.gpu))
                        mp = m.dma.map_phys(client, m.kva_to_phys(kva), size)
                        try:
                            n = min(len(pat), size)  # only what was mapped
                            if m.dma_read(client, mp.dma_addr, n) != pat[:n]:
                                note(f"{client} read wrong bytes through {mp.kind}")
                        finally:
                            m.dma.unmap(mp)
                    if pins and rng.random() < 0.3:
                        pins.pop(rng.randrange(len(pins))).unpin()
                except SigBus:
                    with lock:
                        sigbus_seen[0] += 1
                except KernelError as e:
                    if e.errno_name not in ("ENODEV", "ENOENT", "ENOMEM", "EFAULT"):
                        raise
            release_kernel_side()
            for vma, _ in vmas:
                vma.munmap()
        except (AssertionError, PoolBug, Exception) as e:  # any other failure is a bug
            with lock:
                errors.append(e)

    def remover() -> None:
        try:
            for _ in range(CYCLES):
                # Own mapping + pin held into the removal: deterministic revocation.
                vma = m.open_allocate(t.nvme).mmap(2 * PAGE_SIZE)
                vma.write(0, b"remover")
                pin = m.pin_user_pages(vma, 0, PAGE_SIZE, FOLL_PCI_P2PDMA, "remover I/O")
                timer = threading.Timer(0.05, pin.unpin)
                timer.start()
                m.remove_device(t.nvme, timeout=20)
                timer.join()
                try:
                    vma.read(0, 1)
                    note("remover's mapping readable after removal")
                except SigBus:
                    pass
                m.add_device(nvme_func)
                plug()
                removing.clear()
        except BaseException as e:
            with lock:
                errors.append(e)

    threads = [threading.Thread(target=worker, args=(s,), daemon=True) for s in range(WORKERS)]
    threads.append(threading.Thread(target=remover, daemon=True))
    for th in threads:
        th.start()
    for th in threads:
        th.join(JOIN_TIMEOUT)
    assert not any(th.is_alive() for th in threads), "deadlock: threads still running"
    assert errors == []
    assert violations == []
    print(f"SigBus observed by workers: {sigbus_seen[0]}")
    # Exact accounting on the re-plugged device: everything came back.
    state = m.device(t.nvme).p2pdma
    assert state is not None and state.pool is not None
    assert m.sysfs_read(t.nvme, "available") == m.sysfs_read(t.nvme, "size") == f"{16 * MiB}\n"
    for res in state.resources:
        assert res.ref.count == 0 and res.pages_in_use() == 0
    assert state.user_vmas == set()
    for bdf in (t.nic, t.gpu):
        dom = m.iommu_domain(bdf)
        assert dom is not None and dom.mapped_bytes() == 0
    assert all(not r for r in m.dma._bus_maps.values()), m.dma._bus_maps
    removals = [s for b, s in m.teardown_log if b == t.nvme and s.startswith("release")]
    assert len(removals) == CYCLES
    m.remove_device(t.nvme, timeout=1)  # nothing left to wait for
    assert dataclasses.replace(nvme_func) == nvme_func


def test_alloc_racing_removal_never_leaks_into_a_destroyed_pool() -> None:
    """The RCU read section: an alloc that saw the old state finishes (and gives a dying
    pgmap's range back) before release destroys the pool."""
    t = make_topo()
    m = Machine(t.fabric)
    m.add_resource(t.nvme, 2, 4 * MiB)
    stop = threading.Event()
    errors: list[BaseException] = []
    got = [0, 0]

    def hammer() -> None:
        try:
            while not stop.is_set():
                kva = m.alloc(t.nvme, PAGE_SIZE)
                if kva is None:
                    got[1] += 1
                    continue
                got[0] += 1
                m.free(t.nvme, kva, PAGE_SIZE)
        except KernelError as e:
            if e.errno_name != "ENODEV":  # free after the state went: not in this loop
                errors.append(e)
        except BaseException as e:
            errors.append(e)

    threads = [threading.Thread(target=hammer, daemon=True) for _ in range(3)]
    for th in threads:
        th.start()
    while got[0] < 50:
        threading.Event().wait(0.001)
    m.remove_device(t.nvme, timeout=10)  # PoolBug here would mean a leaked range
    stop.set()
    for th in threads:
        th.join(JOIN_TIMEOUT)
    assert not any(th.is_alive() for th in threads)
    assert errors == [] and got[0] >= 50
    assert m.alloc(t.nvme, PAGE_SIZE) is None
