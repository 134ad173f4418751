"""VFIO exports a GPU BAR range as a dma-buf; a reset revokes it (spec §7.3).

The importer (an RDMA NIC) attaches with peer2peer, maps, and on reset gets
``move_notify``: it unmaps, waits for the restore, and maps again.  Removing
the device revokes the buffer for good.

    python examples/vfio_dmabuf.py
"""

from __future__ import annotations

from p2pdma.emu import DmaBufAttachment, Machine, vfio_dmabuf_export
from p2pdma.errors import KernelError
from p2pdma.samples import load_sample


def main() -> None:
    # The sample was captured on 6.12; BAR dma-buf export needs the 6.19+ provider core.
    m = Machine(load_sample("xeon-2s"), profile="6.19")
    gpu = m.fabric.by_vendor_device(0x10DE, 0x20B5)[0].bdf
    nic = m.fabric.by_vendor_device(0x15B3, 0x101B)[0].bdf

    try:
        vfio_dmabuf_export(m, gpu, 1, [(100, 4096)])
    except KernelError as e:
        print("export with a misaligned range ->", str(e).splitlines()[0])
    buf = vfio_dmabuf_export(m, gpu, 1, [(0, 2 << 20), (8 << 20, 2 << 20)])
    print(f"exported {buf.name}: {buf.size >> 20} MiB in {len(buf.phys_vec)} ranges")

    def move_notify(att: DmaBufAttachment) -> None:
        state = "revoked" if att.buf.revoked else "restored"
        print(f"  move_notify -> {att.importer}: buffer {state}; unmapping {len(att.mapped)}")
        for sgt in list(att.mapped):
            att.unmap(sgt)

    try:
        buf.attach(nic, peer2peer=False)
    except KernelError as e:
        print("attach without peer2peer ->", str(e).splitlines()[0])
    att = buf.attach(nic, peer2peer=True, move_notify=move_notify)
    sgt = att.map()
    print(f"mapped for {nic}: " + ", ".join(
        f"{e.dma_address:#x}+{e.dma_length:#x}" for e in sgt.entries))

    print("function-level reset:")
    m.reset_device(gpu)
    sgt = att.map()
    print(f"  mapped again: {len(sgt.entries)} entr{'y' if len(sgt.entries) == 1 else 'ies'}")

    print("device removed:")
    m.remove_device(gpu, timeout=2.0)
    try:
        att.map()
    except KernelError as e:
        print("  map after removal ->", str(e).splitlines()[0])
    m.close()


if __name__ == "__main__":
    main()
