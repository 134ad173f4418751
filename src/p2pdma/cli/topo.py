"""``p2pdma topo``: the fabric as an annotated tree (host bridges → ports → endpoints)."""

from __future__ import annotations

import argparse
from typing import Any

from p2pdma.cli.common import (
    add_output_args,
    add_source_args,
    emit_json,
    load_fabric,
    root_path,
    style_for,
)
from p2pdma.fabric.bdf import Bdf
from p2pdma.fabric.model import (
    ACS_CR,
    ACS_EC,
    ACS_RR,
    Fabric,
    PciFunction,
    decode_acs_bits,
)
from p2pdma.fabric.serial import fabric_to_dict, host_to_dict
from p2pdma.render import Style, TreeNode, human_bytes, tree
from p2pdma.sources.pciids import PciIds, load_pci_ids

SCHEMA = "p2pdma-topo/1"
REDIRECT = ACS_RR | ACS_CR | ACS_EC


def register(sub: Any) -> None:
    p = sub.add_parser("topo", help="show the PCI fabric as an annotated tree",
                       description="Show host bridges, ports, switches and endpoints with ids, "
                                   "port types, links, ACS, drivers, BARs and p2pmem/CMB state.")
    add_source_args(p)
    add_output_args(p)
    p.set_defaults(func=run)


def link_text(f: PciFunction) -> str | None:
    ln = f.link
    if ln is None or (ln.speed is None and ln.max_speed is None):
        return None
    gen = {2.5: 1, 5.0: 2, 8.0: 3, 16.0: 4, 32.0: 5, 64.0: 6}
    cur = ln.speed if ln.speed is not None else ln.max_speed
    txt = f"Gen{gen.get(cur or 0, '?')} x{ln.width if ln.width is not None else '?'}"
    if ln.max_speed and (ln.speed != ln.max_speed or ln.width != ln.max_width):
        txt += f" (capable Gen{gen.get(ln.max_speed, '?')} x{ln.max_width})"
    return txt


def acs_text(f: PciFunction, st: Style) -> str | None:
    if f.acs_unknown:
        return st.yellow(f"ACS unknown: {f.acs_unknown}")
    if f.acs is None:
        return None
    bits = []
    for name in decode_acs_bits(f.acs.control):
        bits.append(st.red(name) if name in ("RR", "CR", "EC") else name)
    ctrl = " ".join(bits) if bits else "none"
    tag = st.red(" redirect") if f.acs.control & REDIRECT else ""
    return f"ACS ctrl {f.acs.control:#06x} [{ctrl}]{tag}  cap {f.acs.capability:#06x}"


def _label(f: PciFunction, ids: PciIds, st: Style) -> str:
    name = ids.device(f.vendor, f.device) or ids.vendor(f.vendor) or ""
    parts = [st.bold(f.bdf.short()), st.cyan(f"[{f.port_type.value}]"), f.vendor_device]
    if name:
        parts.append(name)
    if f.physfn is not None:
        parts.append(st.dim(f"VF of {f.physfn.short()}"))
    ln = link_text(f)
    if ln:
        parts.append(st.dim(ln))
    if f.driver:
        parts.append(st.green(f.driver))
    return "  ".join(parts)


def _details(f: PciFunction, st: Style) -> list[str]:
    out = []
    a = acs_text(f, st)
    if a:
        out.append(a)
    for b in f.bars:
        if not b.is_memory or b.size == 0:
            continue
        flags = ["64-bit" if b.is_64bit else "32-bit"] + (["pref"] if b.prefetchable else [])
        bus = f"  bus {b.bus_address:#x}" if b.bus_start is not None else ""
        out.append(f"BAR{b.index} {human_bytes(b.size)} @ {b.start:#x} {' '.join(flags)}{bus}")
    if f.nvme is not None:
        line = f"NVMe {f.nvme.name}"
        if f.nvme.namespaces:
            line += f" ({', '.join(f.nvme.namespaces)})"
        c = f.nvme.cmb
        if c is not None:
            fl = " ".join(k for k, v in c.flags.items() if v) or "no flags"
            line += f"  CMB {human_bytes(c.size)} in BAR{c.bar} +{c.offset:#x} [{fl}]"
        out.append(line)
    if f.p2pmem is not None:
        p = f.p2pmem
        pub = st.green("published") if p.published else st.yellow("not published")
        alloc = "allocate" if p.allocate else "no allocate file (kernel < 6.2)"
        out.append(f"p2pmem {human_bytes(p.size)}, {human_bytes(p.available)} available, "
                   f"{pub}, {alloc}")
    return out


def tree_children(fabric: Fabric) -> dict[Bdf, list[PciFunction]]:
    """What hangs below each function in the tree: the functions behind a bridge,
    then a PF's VFs.  Computed once per rendering (one pass, not one scan per node)."""
    kids: dict[Bdf, list[PciFunction]] = {}
    for g in fabric.functions:
        if g.parent is not None and g.physfn is None:
            kids.setdefault(g.parent, []).append(g)
    for g in fabric.functions:
        if g.physfn is not None:
            kids.setdefault(g.physfn, []).append(g)
    return kids


def build_tree(fabric: Fabric, ids: PciIds, st: Style) -> list[TreeNode]:
    kids = tree_children(fabric)

    def node(f: PciFunction) -> TreeNode:
        n = TreeNode(_label(f, ids, st), _details(f, st))
        n.children = [node(k) for k in kids.get(f.bdf, [])]
        return n

    roots = []
    for hb in fabric.host_bridges:
        devs = fabric.root_bus_devices(hb)
        numa = f", NUMA {hb.numa_node}" if hb.numa_node is not None else ""
        first = (f"first device {devs[0].bdf.short()} {devs[0].vendor_device}" if devs
                 else "no devices")
        label = (f"{st.bold(hb.name)}  host bridge, root bus {hb.domain:04x}:{hb.bus:02x}"
                 f"{numa}  ({first})")
        roots.append(TreeNode(label, [], [node(f) for f in devs]))
    return roots


def _node_json(f: PciFunction, kids: dict[Bdf, list[PciFunction]],
               ids: PciIds) -> dict[str, Any]:
    acs: dict[str, Any] | None = None
    if f.acs is not None:
        acs = {
            "offset": f.acs.offset,
            "cap": f.acs.capability,
            "ctrl": f.acs.control,
            "cap_bits": decode_acs_bits(f.acs.capability),
            "ctrl_bits": decode_acs_bits(f.acs.control),
            "redirect": bool(f.acs.control & REDIRECT),
        }
    return {
        "bdf": str(f.bdf),
        "id": f.vendor_device,
        "vendor_name": ids.vendor(f.vendor),
        "device_name": ids.device(f.vendor, f.device),
        "class": f.class_code,
        "type": f.port_type.value,
        "driver": f.driver,
        "link": link_text(f),
        "acs": acs,
        "acs_unknown": f.acs_unknown,
        "p2pmem": None if f.p2pmem is None else {
            "size": f.p2pmem.size, "available": f.p2pmem.available,
            "published": f.p2pmem.published, "allocate": f.p2pmem.allocate},
        "cmb": None if f.nvme is None or f.nvme.cmb is None else {
            "size": f.nvme.cmb.size, "bar": f.nvme.cmb.bar, "offset": f.nvme.cmb.offset,
            **{k.lower(): v for k, v in f.nvme.cmb.flags.items()}},
        "children": [_node_json(k, kids, ids) for k in kids.get(f.bdf, [])],
    }


def topo_json(fabric: Fabric, ids: PciIds) -> dict[str, Any]:
    kids = tree_children(fabric)
    return {
        "schema": SCHEMA,
        "origin": fabric.origin,
        "unreadable": list(fabric.unreadable),
        "host": host_to_dict(fabric.host),
        "tree": [
            {"host_bridge": hb.name, "domain": hb.domain, "bus": hb.bus,
             "numa_node": hb.numa_node,
             "devices": [_node_json(f, kids, ids) for f in fabric.root_bus_devices(hb)]}
            for hb in fabric.host_bridges
        ],
        "fabric": fabric_to_dict(fabric),
    }


def run(args: argparse.Namespace) -> int:
    fabric = load_fabric(args)
    ids = load_pci_ids(str(root_path(args)))
    if args.json:
        emit_json(topo_json(fabric, ids))
        return 0
    st = style_for(args)
    h = fabric.host
    cpu = " ".join(x for x in (h.cpu_vendor, f"family {h.cpu_family:#x}"
                               if h.cpu_family is not None else None) if x)
    head = [f"{st.bold('source')}  {fabric.origin or '?'}",
            f"{st.bold('kernel')}  {h.kernel_release or 'unknown'}   {st.bold('cpu')}  "
            f"{cpu or 'unknown'}   {st.bold('iommu')}  "
            f"{h.iommu.value if h.iommu else 'unknown'}"]
    print("\n".join(head))
    print()
    print(tree(build_tree(fabric, ids, st)))
    if fabric.unreadable:
        print()
        print(st.yellow("could not read:"))
        for u in fabric.unreadable:
            print(f"  {u}")
    return 0
