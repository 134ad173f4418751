"""gen_pool semantics (spec §4.4)."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from p2pdma.emu.pool import GenPool, PoolBug

P = 4096


def test_newest_chunk_first_and_first_fit_lowest() -> None:
    pool = GenPool(12)
    pool.add_owner(0x10000, 0xA0000, 4 * P, owner="old")
    pool.add_owner(0x40000, 0xB0000, 4 * P, owner="new")
    a = pool.alloc_owner(P)
    assert a is not None and a.addr == 0x40000 and a.owner == "new"
    assert pool.alloc(P) == 0x41000
    pool.free(0x40000, P)
    assert pool.alloc(P) == 0x40000  # lowest free bit again


def test_page_granularity_and_avail() -> None:
    pool = GenPool(12)
    pool.add_owner(0x10000, 0, 8 * P)
    a = pool.alloc_owner(1)
    assert a is not None and a.size == P
    assert pool.avail() == 7 * P and pool.size() == 8 * P
    assert pool.alloc(0) == 0


def test_never_spans_chunks() -> None:
    pool = GenPool(12)
    pool.add_owner(0x10000, 0, 4 * P)
    pool.add_owner(0x14000, 0x4000, 4 * P)  # adjacent, yet a separate chunk
    assert pool.avail() == 8 * P
    assert pool.alloc(5 * P) == 0
    assert pool.alloc(4 * P) == 0x14000


def test_fragmentation_first_fit() -> None:
    pool = GenPool(12)
    pool.add_owner(0, 0, 8 * P)
    addrs = [pool.alloc(P) for _ in range(8)]
    pool.free(addrs[1], P)
    pool.free(addrs[4], P)
    pool.free(addrs[5], P)
    assert pool.alloc(2 * P) == addrs[4]
    assert pool.alloc(P) == addrs[1]


def test_foreign_and_double_free_are_bugs() -> None:
    pool = GenPool(12)
    pool.add_owner(0x10000, 0, 4 * P)
    with pytest.raises(PoolBug, match="in no chunk"):
        pool.free(0x90000, P)
    a = pool.alloc(P)
    pool.free(a, P)
    with pytest.raises(PoolBug, match="not allocated"):
        pool.free(a, P)


def test_virt_to_phys_and_destroy() -> None:
    pool = GenPool(12)
    pool.add_owner(0x10000, 0xABC000, 4 * P)
    assert pool.virt_to_phys(0x11234) == 0xABD234
    assert pool.virt_to_phys(0x90000) == -1
    a = pool.alloc(P)
    with pytest.raises(PoolBug, match="still allocated"):
        pool.destroy()
    pool.free(a, P)
    pool.destroy()
    assert pool.size() == 0


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.booleans(), st.integers(1, 5 * P)), max_size=60))
def test_matches_reference_first_fit(ops: list[tuple[bool, int]]) -> None:
    """Against a per-page list model: same addresses, same avail, never overlapping."""
    pool = GenPool(12)
    pool.add_owner(0, 0, 32 * P)
    used = [False] * 32
    live: list[tuple[int, int]] = []
    for do_alloc, size in ops:
        if do_alloc or not live:
            n = -(-size // P)
            expect = next((i for i in range(32 - n + 1) if not any(used[i:i + n])), None)
            got = pool.alloc(size)
            if expect is None:
                assert got == 0
            else:
                assert got == expect * P
                used[expect:expect + n] = [True] * n
                live.append((got, size))
        else:
            addr, size = live.pop(0)
            pool.free(addr, size)
            i = addr // P
            used[i:i + -(-size // P)] = [False] * -(-size // P)
        assert pool.avail() == used.count(False) * P
