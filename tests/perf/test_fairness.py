"""Max-min fairness of the model, as properties over random workloads."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from p2pdma.fabric.builder import FabricBuilder
from p2pdma.fabric.model import Link
from p2pdma.perf import HOST, Platform, Route, Transfer, predict

_B = FabricBuilder()
_hb = _B.host_bridge()
_rp = _B.root_port(_hb, link=Link(16.0, 16, 16.0, 16))
_usp, _dsps = _B.switch(_rp, ports=4, link=Link(16.0, 8, 16.0, 8))
_EPS = [_B.nvme(d, link=Link(8.0 * (1 + i % 2), 4, 8.0 * (1 + i % 2), 4))
        for i, d in enumerate(_dsps)]
_rp2 = _B.root_port(_hb, link=Link(16.0, 4, 16.0, 4))
_EPS.append(_B.nvme(_rp2, link=Link(16.0, 4, 16.0, 4)))
FABRIC = _B.build()

transfer = st.tuples(st.sampled_from(range(len(_EPS))), st.sampled_from(range(len(_EPS))),
                     st.sampled_from([Route.DIRECT, Route.ROOT_COMPLEX, Route.BOUNCE,
                                      Route.HOST]),
                     st.sampled_from(["src", "dst"]),
                     st.none() | st.floats(min_value=1e8, max_value=2e10))


@settings(max_examples=60, deadline=None)
@given(st.lists(transfer, min_size=1, max_size=6),
       st.floats(min_value=1e9, max_value=3e10), st.floats(min_value=5e9, max_value=1e11))
def test_max_min_fair(specs: list[tuple[int, int, Route, str, float | None]], rc: float,
                      mem: float) -> None:
    work = []
    for i, (a, b, route, init, limit) in enumerate(specs):
        src, dst = _EPS[a], _EPS[b]
        if a == b and route is not Route.HOST:
            route = Route.HOST
        if route is Route.DIRECT and (src.bus == _EPS[-1].bus) != (dst.bus == _EPS[-1].bus):
            route = Route.ROOT_COMPLEX  # no common bridge below the root complex
        work.append(Transfer.simple(f"t{i}", src, HOST if route is Route.HOST else dst, route,
                                    initiator=init, limit_bytes_per_s=limit))
    p = predict(FABRIC, work, Platform(rc_p2p_bytes_per_s=rc, host_memory_bytes_per_s=mem))
    used = {r.key: r for r in p.resources}
    # 1. No resource is over its capacity.
    for r in p.resources:
        assert r.used <= r.capacity * (1 + 1e-6), r.key
    # 2. Every transfer is either at its own limit, or on a saturated resource where no
    #    other transfer gets more (so it cannot grow without taking from a poorer one).
    rates = {t.name: t.rate for t in p.transfers}
    for t, spec in zip(p.transfers, work, strict=True):
        assert t.rate > 0
        if t.bottleneck.startswith("limit of"):
            assert spec.limit_bytes_per_s is not None
            assert abs(t.rate - spec.limit_bytes_per_s) <= 1e-6 * spec.limit_bytes_per_s
            continue
        res = used[t.bottleneck]
        assert res.used >= res.capacity * (1 - 1e-6)
        sharing = [o.name for o in p.transfers if t.bottleneck in _keys(o.links)]
        assert all(rates[o] <= t.rate * (1 + 1e-6) for o in sharing)


def _keys(links: list[str]) -> set[str]:
    # The resources a transfer uses, from its described path.
    out = set()
    for d in links:
        if d.startswith("root-complex"):
            out.add(d)
        elif d == HOST:
            out.add(HOST)
        else:
            link, direction = d.rsplit(" ", 1)
            other = "down" if direction == "up" else "up"
            out.add(f"link {link} {direction}")
            out.add(f"link {link} {other}")  # ACKs and read requests go the other way
    return out
