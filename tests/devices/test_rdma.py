"""The RDMA NIC: memory regions, the wire, the remote peer."""

from __future__ import annotations

import pytest
from devrig import Rig

from p2pdma.emu.devices import NvmeController, RdmaNic, RemotePeer, wire_pair
from p2pdma.emu.devices.rdma import HEADER, pattern_chunks
from p2pdma.emu.dma_engine import DmaEngine
from p2pdma.emu.machine import Machine
from p2pdma.errors import KernelError


@pytest.mark.parametrize("kind", ["unix", "tcp"])
def test_receive_into_p2p_memory_and_send_back(rig: Rig, machine: Machine, kind: str) -> None:
    eng = DmaEngine(machine)
    NvmeController(machine, rig.cmb, eng).probe()
    kva = machine.alloc(rig.cmb, 1 << 20)
    assert kva is not None
    addr = machine.dma.map_phys(rig.nic, machine.kva_to_phys(kva), 1 << 20).dma_addr
    mine, theirs = wire_pair(kind)
    nic = RdmaNic(rig.nic, eng, mine)
    mr = nic.reg_mr(addr, 1 << 20)
    peer = RemotePeer(theirs)
    peer.write_stream(seed=1, total=256 << 10, chunk=64 << 10)
    off = 0
    while (hdr := nic.recv_header()) is not None:
        o, n = hdr
        assert o == off
        nic.receive(mr, addr + o, n)
        off += n
    assert peer.join(5).sent == 256 << 10
    expected = b"".join(bytes(p) for p in pattern_chunks(1, 256 << 10, 64 << 10))
    assert machine.memory.read_virt(kva, 256 << 10) == expected
    # Outside the registered region: refused before any byte moves.
    with pytest.raises(KernelError) as e:
        nic.receive(mr, addr + (1 << 20) - 4096, 8192)
    assert e.value.errno_name == "EFAULT"
    nic.dereg_mr(mr)
    with pytest.raises(KernelError):
        nic.send(mr, addr, 4096)
    mine.close()
    theirs.close()


def test_pattern_chunks_differ_and_are_deterministic() -> None:
    a = [bytes(p) for p in pattern_chunks(9, 64 << 10, 16 << 10)]
    b = [bytes(p) for p in pattern_chunks(9, 64 << 10, 16 << 10)]
    assert a == b and len(set(a)) == 4
    assert [bytes(p) for p in pattern_chunks(10, 64 << 10, 16 << 10)] != a
    assert HEADER.size == 12
