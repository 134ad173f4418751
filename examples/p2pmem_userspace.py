"""Allocate p2pmem from an NVMe CMB, map it to "userspace", DMA it, then hot-unplug.

Runs on the bundled xeon-2s sample (IOMMU on, ACS redirect on the switch ports,
whitelisted Ice Lake host bridge): the NVMe CMB and the RDMA NIC sit below one
switch, so their P2P traffic goes through the host bridge and gets an IOVA.

    python examples/p2pmem_userspace.py
"""

from __future__ import annotations

from p2pdma.emu import FOLL_PCI_P2PDMA, MAP_SHARED, Machine, SigBus
from p2pdma.errors import KernelError
from p2pdma.samples import load_sample


def main() -> None:
    m = Machine(load_sample("xeon-2s"))
    nvme = m.resolve("nvme0")
    nic = m.fabric.by_vendor_device(0x15B3, 0x101B)[0].bdf

    # What nvme_map_cmb does: register the CMB (BAR 4) and publish it.
    m.add_resource(nvme, bar=4, size=256 << 20)
    m.publish(nvme)
    print(m.dmesg.lines()[-1])
    print(f"p2pmem: size={m.sysfs_read(nvme, 'size').strip()} "
          f"available={m.sysfs_read(nvme, 'available').strip()}")

    # A process mmaps /sys/bus/pci/devices/<nvme>/p2pmem/allocate and fills it.
    buf = m.open_allocate(nvme).mmap(1 << 20, MAP_SHARED, comm="example")
    buf.write(0, b"written by userspace into the CMB")
    print(f"mapped 1 MiB; available now {m.sysfs_read(nvme, 'available').strip()}")

    # O_DIRECT-style I/O: pin with FOLL_PCI_P2PDMA, DMA-map for the NIC.
    pin = m.pin_user_pages(buf, 0, 4096, FOLL_PCI_P2PDMA, holder="O_DIRECT send")
    mapping = m.dma.map_phys(nic, pin.phys_pages[0], 4096)
    print(f"{nic} sees it at {mapping.dma_addr:#x} ({mapping.kind.value}, "
          f"{mapping.map_type.name}): {m.dma_read(nic, mapping.dma_addr, 33)!r}")
    for line in m.dmesg.lines()[1:]:
        print("  dmesg:", line)

    # Hot-unplug while the pin is still held: removal waits and says who holds it.
    try:
        m.remove_device(nvme, timeout=0.2)
    except KernelError as e:
        print("removal blocked:", str(e).splitlines()[0])
    m.dma.unmap(mapping)
    pin.unpin()
    m.remove_device(nvme, timeout=2.0)
    print("removed; teardown:", "; ".join(step for _, step in m.teardown_log))
    try:
        buf.read(0, 4)
    except SigBus as e:
        print("userspace access after removal ->", str(e).splitlines()[0])
    m.close()


if __name__ == "__main__":
    main()
