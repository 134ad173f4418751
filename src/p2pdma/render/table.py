"""Plain-text tables and trees that stay aligned with ANSI colour in cells."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from p2pdma.render.term import visible_len


def _pad(text: str, width: int, align: str) -> str:
    gap = width - visible_len(text)
    if gap <= 0:
        return text
    if align == "r":
        return " " * gap + text
    if align == "c":
        left = gap // 2
        return " " * left + text + " " * (gap - left)
    return text + " " * gap


def table(
    headers: Sequence[str],
    rows: Sequence[Sequence[str]],
    *,
    align: str | None = None,
    sep: str = "  ",
    header_style: Callable[[str], str] | None = None,
) -> str:
    """Render rows under headers.  ``align`` is one letter per column: l, r or c."""
    ncol = len(headers)
    aligns = (align or "l" * ncol).ljust(ncol, "l")
    widths = [visible_len(h) for h in headers]
    for r in rows:
        if len(r) != ncol:
            raise ValueError(f"row has {len(r)} cells, expected {ncol}")
        for i, cell in enumerate(r):
            widths[i] = max(widths[i], visible_len(cell))
    hs = [_pad(h, widths[i], aligns[i]) for i, h in enumerate(headers)]
    head = sep.join(hs).rstrip()
    lines = [header_style(head) if header_style else head]
    lines.append(sep.join("─" * w for w in widths))
    for r in rows:
        lines.append(sep.join(_pad(c, widths[i], aligns[i]) for i, c in enumerate(r)).rstrip())
    return "\n".join(lines)


@dataclass
class TreeNode:
    label: str
    details: list[str] = field(default_factory=list)  # extra lines under the label
    children: list[TreeNode] = field(default_factory=list)


def tree(roots: Sequence[TreeNode]) -> str:
    """Draw nodes with box-drawing guides; detail lines hang under their node."""
    out: list[str] = []

    def walk(node: TreeNode, prefix: str, last: bool, top: bool) -> None:
        branch = "" if top else ("└─ " if last else "├─ ")
        out.append(prefix + branch + node.label)
        child_prefix = prefix + ("" if top else ("   " if last else "│  "))
        detail_guide = "│  " if node.children else "   "
        for d in node.details:
            out.append(child_prefix + detail_guide + d)
        for i, c in enumerate(node.children):
            walk(c, child_prefix, i == len(node.children) - 1, False)

    for i, r in enumerate(roots):
        if i:
            out.append("")
        walk(r, "", True, True)
    return "\n".join(out)
