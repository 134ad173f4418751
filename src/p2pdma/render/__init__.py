"""Human output: colour, tables, trees, progress.  JSON output goes through cli.common."""

from p2pdma.render.progress import Progress, human_bytes
from p2pdma.render.table import TreeNode, table, tree
from p2pdma.render.term import PLAIN, Style, strip_ansi, visible_len

__all__ = ["PLAIN", "Progress", "Style", "TreeNode", "human_bytes", "strip_ansi", "table",
           "tree", "visible_len"]
