"""``pci_p2pdma_enable_store`` / ``_show``: the nvmet configfs ``p2pmem`` file (spec §4.6).

store: an exact PCI device name (a trailing newline tolerated) selects that
device (-ENODEV with E1 unless it has published p2pmem); otherwise ``0``/``1``
followed by a control character, or a ``kstrtobool`` word, is a boolean;
anything else is -ENODEV with E2.  ``"10"`` or an absent BDF is an error, not
a boolean.  With CONFIG_PCI_P2PDMA=n store always gives ``use = False``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from p2pdma.emu import messages
from p2pdma.errors import kerr
from p2pdma.fabric.bdf import Bdf, is_bdf

if TYPE_CHECKING:
    from p2pdma.emu.machine import Machine


@dataclass(frozen=True)
class EnableResult:
    use: bool
    p2p_dev: Bdf | None  # None: "any device" (or unchanged, for a boolean)


_TRUE = {"y", "Y", "t", "T", "1"}
_FALSE = {"n", "N", "f", "F", "0"}


def kstrtobool(s: str) -> bool | None:
    """The kernel's kstrtobool: first character decides, ``on``/``off`` need two."""
    if not s:
        return None
    if s[0] in _TRUE:
        return True
    if s[0] in _FALSE:
        return False
    if s[0] in "oO" and len(s) > 1:
        if s[1] in "nN":
            return True
        if s[1] in "fF":
            return False
    return None


def _lookup(m: Machine, page: str) -> Bdf | None:
    """bus_find_device_by_name: exact name, ignoring one trailing newline."""
    name = page[:-1] if page.endswith("\n") else page
    if not is_bdf(name) or name != name.strip() or len(name) != 12:
        return None  # device names are always the full DDDD:BB:DD.F form
    bdf = Bdf.parse(name)
    if str(bdf) != name or m.find_device(bdf) is None:
        return None
    return bdf


def enable_store(m: Machine, page: str) -> EnableResult:
    if not m.config_p2pdma:
        return EnableResult(False, None)
    bdf = _lookup(m, page)
    if bdf is not None:
        if not m.has_p2pmem(bdf):
            m.dmesg.log(m.device(bdf).log_line(messages.E1_NO_P2PMEM.format(page=page)))
            raise kerr("ENODEV", "PCI device has no peer-to-peer memory", where=str(bdf),
                       hint="the device must have registered and published p2pmem")
        return EnableResult(True, bdf)
    if page[:1] in ("0", "1") and len(page) > 1 and not _is_cntrl(page[1]):
        _e2(m, page)
    val = kstrtobool(page)
    if val is None:
        _e2(m, page)
    return EnableResult(bool(val), None)


def _is_cntrl(c: str) -> bool:
    return ord(c) < 0x20 or ord(c) == 0x7F


def _e2(m: Machine, page: str) -> None:
    name = page.split("\n", 1)[0]
    m.dmesg.log(messages.E2_NO_DEVICE.format(name=name))
    raise kerr("ENODEV", f"no such PCI device: {name!r}",
               hint="write a device name (DDDD:BB:DD.F), or 0/1/y/n/on/off")


def enable_show(use: bool, p2p_dev: Bdf | None, *, config: bool = True) -> str:
    if not config:
        return "none\n"
    if not use:
        return "0\n"
    if p2p_dev is None:
        return "1\n"
    return f"{p2p_dev}\n"


class NvmetP2pmemAttr:
    """The nvmet configfs file ``subsystems/<nqn>/namespaces/<nsid>/p2pmem`` (spec §7.2).

    ``store`` refuses while the namespace is enabled (-EBUSY); otherwise it parses
    with :func:`enable_store` and replaces both ``use`` and the device (a boolean
    clears the device).  The file exists only with CONFIG_PCI_P2PDMA.
    """

    def __init__(self, machine: Machine, nsid: int = 1) -> None:
        if not machine.config_p2pdma:
            raise kerr("ENOENT", "namespaces/<nsid>/p2pmem: no such file",
                       hint="nvmet has this attribute only with CONFIG_PCI_P2PDMA")
        self.m = machine
        self.nsid = nsid
        self.use = False
        self.p2p_dev: Bdf | None = None
        self.ns_enabled = False

    def store(self, page: str) -> None:
        if self.ns_enabled:
            raise kerr("EBUSY", "namespace is enabled", where=f"nsid {self.nsid} p2pmem",
                       hint="disable the namespace (write 0 to its enable) first")
        r = enable_store(self.m, page)
        self.use, self.p2p_dev = r.use, r.p2p_dev

    def show(self) -> str:
        return enable_show(self.use, self.p2p_dev)
