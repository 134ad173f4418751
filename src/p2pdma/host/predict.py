"""Predict, before any I/O, whether the kernel will DMA between a P2P buffer and a file.

A file or block device is mapped to the PCI function that will do the DMA
(file → its block device → the NVMe controller → the PCI function, all via sysfs
under the root).  The verdict itself comes from the ``kernel`` layer
(``resolve_profile`` + ``calc_map_type_and_dist`` over a ``Fabric`` read by
``sources.read_sysfs``); those are imported lazily so this module works (and says
"unknown") where they are not available.

Besides the map type there is a block-layer rule (spec §6.5): only queues with
BLK_FEAT_PCI_P2PDMA (NVMe) accept P2P pages; every other block device refuses with
EREMOTEIO whatever the PCI topology.
"""

from __future__ import annotations

import importlib
import os
import stat
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from p2pdma.fabric.bdf import Bdf
from p2pdma.host.sysroot import is_bdf_name, kernel_release, read_text, under


@dataclass(frozen=True)
class Client:
    """The PCI function behind a file or block device."""

    path: str
    block: str | None  # nvme0n1 (the whole disk, partitions resolved)
    controller: str | None  # nvme0
    bdf: Bdf | None
    is_nvme: bool
    why_unknown: str | None = None
    stacked: bool = False  # dm/md over other devices: the verdict depends on those
    no_block: bool = False  # on a file system without a block device (tmpfs, NFS, ...)

    def to_json(self) -> dict[str, object]:
        return {
            "path": self.path, "block": self.block, "controller": self.controller,
            "pci": None if self.bdf is None else str(self.bdf), "nvme": self.is_nvme,
            "unknown": self.why_unknown,
        }


def _bdf_in(path: Path) -> Bdf | None:
    found = None
    for part in path.parts:
        if is_bdf_name(part):
            found = Bdf.parse(part)
    return found


def client_of(path: str, root: str | os.PathLike[str] = "/") -> Client:
    """Resolve ``path`` (a file or block device) to the PCI function doing its DMA."""
    try:
        st = os.stat(path)
    except OSError as err:
        return Client(path, None, None, None, False, f"cannot stat: {err.strerror}")
    dev = st.st_rdev if stat.S_ISBLK(st.st_mode) else st.st_dev
    link = under(root, "sys/dev/block", f"{os.major(dev)}:{os.minor(dev)}")
    if not link.exists():
        return Client(path, None, None, None, False,
                      f"{os.major(dev)}:{os.minor(dev)} is not a block device (tmpfs, NFS, "
                      "overlay?): no DMA client", no_block=True)
    d = link.resolve()
    if (d / "partition").exists():
        d = d.parent
    block = d.name
    slaves = d / "slaves"
    if slaves.is_dir():
        below = sorted(slaves.iterdir())
        if below:
            names = ", ".join(p.name for p in below)
            return Client(path, block, None, None, False,
                          f"{block} is a stacked device (dm/md over {names}); "
                          "P2P needs the NVMe namespace itself", stacked=True)
    bdf = _bdf_in(d)
    controller = None
    is_nvme = block.startswith("nvme")
    if bdf is None and is_nvme:
        # Native NVMe multipath: the head lives under nvme-subsystem; take a path's controller.
        for ctrl_path in sorted((d / "multipath").glob("*")) if (d / "multipath").is_dir() else []:
            bdf = _bdf_in(ctrl_path.resolve())
            if bdf is not None:
                break
    for part in d.parts:
        if part.startswith("nvme") and part[4:].isdigit():
            controller = part
    if bdf is None:
        return Client(path, block, controller, None, is_nvme,
                      f"no PCI function found above {d}")
    return Client(path, block, controller, bdf, is_nvme)


@dataclass(frozen=True)
class Prediction:
    provider: Bdf
    client: Client
    map_type: str | None  # "BUS_ADDR", "THRU_HOST_BRIDGE", "NOT_SUPPORTED", ... or None
    refuse: bool | None  # True: the kernel will refuse the I/O; None: unknown
    explanation: tuple[str, ...]
    messages: tuple[str, ...] = ()
    distance: int | None = None
    profile: str | None = None
    extra: dict[str, object] = field(default_factory=dict)

    def to_json(self) -> dict[str, object]:
        return {
            "provider": str(self.provider), "client": self.client.to_json(),
            "map_type": self.map_type, "refuse": self.refuse,
            "distance": self.distance, "profile": self.profile,
            "explanation": list(self.explanation), "kernel_messages": list(self.messages),
            "cpu_copy": bool(self.extra.get("cpu_copy")),
        }

    def summary(self) -> str:
        who = f"{self.client.path} ({self.client.bdf or '?'})"
        if self.extra.get("cpu_copy"):
            verdict = "no DMA (the kernel copies with the CPU)"
        elif self.refuse is None:
            verdict = "unknown"
        elif self.refuse:
            verdict = f"REFUSED ({self.map_type or 'block layer'})"
        else:
            verdict = f"allowed ({self.map_type})"
        return f"P2P {self.provider} <-> {who}: {verdict}"


def _find(name: str, modules: tuple[str, ...]) -> Any:
    """``name`` from the first of ``modules`` that defines it (the package first)."""
    for modname in modules:
        try:
            mod = importlib.import_module(modname)
        except ImportError:
            continue
        if hasattr(mod, name):
            return getattr(mod, name)
    raise ImportError(f"{name} not found in {', '.join(modules)}")


def _load_kernel() -> tuple[Any, Any, Any] | str:
    try:
        return (
            _find("resolve_profile", ("p2pdma.kernel", "p2pdma.kernel.profiles")),
            _find("calc_map_type_and_dist",
                  ("p2pdma.kernel", "p2pdma.kernel.distance", "p2pdma.kernel.calc",
                   "p2pdma.kernel.p2pdma")),
            _find("read_sysfs", ("p2pdma.sources", "p2pdma.sources.sysfs")),
        )
    except ImportError as err:
        return f"the kernel rule engine is not available in this build ({err})"


def predict(
    root: str | os.PathLike[str], provider: Bdf, client: Client, *, kernel: str | None = None
) -> Prediction:
    """Ask the kernel layer what it will decide for (provider, client)."""
    if client.no_block:
        # tmpfs and friends accept O_DIRECT but copy through the page cache with the CPU:
        # the P2P buffer then works as slow uncached memory, and no device DMAs into it.
        return Prediction(
            provider, client, None, False,
            (f"no DMA: {client.path} is on a file system without a block device "
             f"({client.why_unknown}); the kernel copies with the CPU, so the P2P buffer is "
             "only slow uncached memory here, not a peer-to-peer DMA target",),
            extra={"cpu_copy": True},
        )
    if client.block is not None and not client.is_nvme and not client.stacked:
        return Prediction(
            provider, client, None, True,
            (f"{client.block} is not an NVMe namespace: only block queues with "
             "BLK_FEAT_PCI_P2PDMA (NVMe) accept P2P pages; O_DIRECT fails with EREMOTEIO",),
        )
    if client.bdf is None:
        return Prediction(provider, client, None, None,
                          (client.why_unknown or "the client's PCI function is unknown",))
    loaded = _load_kernel()
    if isinstance(loaded, str):
        return Prediction(provider, client, None, None, (loaded,))
    resolve_profile, calc, read_sysfs = loaded
    try:
        fabric = read_sysfs(root)
        choice = resolve_profile(kernel_release(root), kernel)
        result = calc(fabric, choice.profile, provider, client.bdf, verbose=True)
    except Exception as err:  # the rule engine must never break a copy; say why
        return Prediction(provider, client, None, None,
                          (f"prediction failed: {type(err).__name__}: {err}",))
    map_type = getattr(result.map_type, "name", str(result.map_type))
    messages = tuple(str(m) for m in getattr(result, "messages", ()))
    unknown = getattr(result, "unknown", None)
    explanation: list[str] = []
    if unknown:
        explanation.append(f"verdict uncertain: {unknown}")
    path = getattr(result, "path", ())
    if path:
        explanation.append("path: " + " -> ".join(str(b) for b in path))
    common = getattr(result, "common_upstream", None)
    explanation.append(f"common upstream bridge: {common}" if common is not None
                       else "no common upstream bridge: the traffic would cross a host bridge")
    acs = tuple(getattr(result, "acs_redirect", ()) or ())
    if acs:
        explanation.append("ACS redirect set on " + ", ".join(str(b) for b in acs))
    whitelist = getattr(result, "whitelist", None)
    for lookup in getattr(whitelist, "lookups", ()) or ():
        explanation.append(f"host-bridge whitelist: {getattr(lookup, 'reason', lookup)}")
    cpu = getattr(result, "cpu", None)
    if getattr(result, "cpu_rule", None) is not None and cpu is not None and common is None:
        explanation.append(f"CPU rule: {getattr(cpu, 'reason', cpu)}")
    danger = getattr(result, "danger", None)
    if danger:
        explanation.append(f"DANGER: {danger}")
    explanation.extend(f"kernel log: {m}" for m in messages)
    refuse = None if unknown or map_type == "UNKNOWN" else map_type == "NOT_SUPPORTED"
    return Prediction(
        provider, client, map_type, refuse, tuple(explanation),
        messages, getattr(result, "dist", None),
        str(getattr(choice.profile, "name", choice.profile)),
        {"profile_reason": getattr(choice, "reason", None), "danger": danger},
    )


def refusal_errno(root: str | os.PathLike[str]) -> str:
    """How this kernel refuses O_DIRECT with a NOT_SUPPORTED P2P buffer."""
    release = kernel_release(root) or ""
    major = release.split(".", 1)[0]
    return "EINVAL" if major.isdigit() and int(major) >= 7 else "EREMOTEIO"


def nvme_namespaces(root: str | os.PathLike[str]) -> dict[str, Bdf | None]:
    """Every ``nvme*n*`` block device under root → its PCI function."""
    out: dict[str, Bdf | None] = {}
    blk = under(root, "sys/class/block")
    if not blk.is_dir():
        return out
    for entry in sorted(blk.iterdir()):
        name = entry.name
        if not name.startswith("nvme") or (entry / "partition").exists():
            continue
        if read_text(entry / "dev") is None:
            continue
        out[name] = _bdf_in(entry.resolve())
    return out
