"""Differential testing against a real Linux kernel booted under QEMU.

The pieces, in the order they run:

- :mod:`~p2pdma.oracle.kbuild` — download a pinned Debian ``linux-source`` package,
  configure ``allnoconfig`` + ``data/p2pdma-guest.config``, verify every requested
  option survived, build ``bzImage`` and ``modules``; cache the result under
  ``${P2PDMA_CACHE:-/var/cache/p2pdma}`` keyed by version + fragment hash.  Builds
  the out-of-tree module ``data/p2pdma_oracle.c`` against the same tree.
- :mod:`~p2pdma.oracle.topology` — the generated guest topologies (switches, nested
  switches, root ports, root-bus devices, pxb-pcie host bridges, multifunction
  NVMe, CMBs that register or not, IOMMU, ``pci=disable_acs_redir=`` subsets, CPU
  models of three vendors).
- :mod:`~p2pdma.oracle.guest` — a busybox initramfs with ``data/init.sh``; QEMU q35
  under TCG (always inside ``timeout``); results come back over a writable 9p share.
  Optionally runs a command chrooted into the host's ``/`` shared read-only.
- :mod:`~p2pdma.oracle.harness` — boots every variant, writes one capture per
  variant (``root/`` = the guest's sysfs files, ``kernel.json`` = the kernel's own
  verdicts) and compares.
- :mod:`~p2pdma.oracle.compare` — the project's rule engine on a capture vs. the
  kernel: map type, distance and messages per pair, distance_many, find_many ties.

Command line: ``python -m p2pdma.oracle run --kernel 6.12`` (or ``p2pdma oracle run``).
"""
