"""The directory tree and the snapshot tree answer every question the same way."""

from __future__ import annotations

import io
import os
import stat
import zipfile
from collections.abc import Callable
from pathlib import Path

import pytest

from p2pdma.errors import InputError
from p2pdma.sources.snapshot import ZipTree
from p2pdma.sources.tree import Missing, RealTree, Tree

FILES = {"a/b/c": b"hello\n", "a/d": b"x" * 100, "top": b"t"}
LINKS = {"l1": "a/b", "a/up": "../a/d", "a/b/back": "../../top", "esc": "../outside",
         "abs": "/etc", "loop1": "loop2", "loop2": "loop1", "dangling": "a/nope",
         "chain": "l1/c"}


def real_tree(tmp: Path) -> RealTree:
    root = tmp / "root"
    for p, data in FILES.items():
        (root / p).parent.mkdir(parents=True, exist_ok=True)
        (root / p).write_bytes(data)
    (root / "empty").mkdir()
    for p, t in LINKS.items():
        os.symlink(t, root / p)
    return RealTree(root)


def zip_tree(tmp: Path) -> ZipTree:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        def add(name: str, data: bytes, mode: int) -> None:
            info = zipfile.ZipInfo("tree/" + name)
            info.create_system = 3
            info.external_attr = mode << 16
            zf.writestr(info, data)

        for p, data in FILES.items():
            add(p, data, stat.S_IFREG | 0o644)
        add("empty/", b"", stat.S_IFDIR | 0o755)
        for p, t in LINKS.items():
            add(p, t.encode(), stat.S_IFLNK | 0o777)
    zf = zipfile.ZipFile(io.BytesIO(buf.getvalue()))
    tree = ZipTree(str(tmp / "t.zip"), zf, {})
    for info in zf.infolist():
        name = info.filename[len("tree/"):].rstrip("/")
        mode = (info.external_attr >> 16) & 0xFFFF
        kind = "dir" if stat.S_ISDIR(mode) else "link" if stat.S_ISLNK(mode) else "file"
        tree.add(info, name, kind)  # type: ignore[arg-type]
    return tree


QUERIES: list[tuple[str, Callable[[Tree], object]]] = [
    ("read a/b/c", lambda t: t.read_bytes("a/b/c")),
    ("read via link", lambda t: t.read_bytes("l1/c")),
    ("read via chain", lambda t: t.read_bytes("chain")),
    ("read a/up", lambda t: t.read_bytes("a/up")),
    ("read back", lambda t: t.read_bytes("l1/back")),
    ("dotdot after link", lambda t: t.read_bytes("l1/../d")),
    ("list a", lambda t: t.list_dir("a")),
    ("list via link", lambda t: t.list_dir("l1")),
    ("list empty", lambda t: t.list_dir("empty")),
    ("list root", lambda t: t.list_dir("")),
    ("kind l1", lambda t: t.kind("l1")),
    ("lkind l1", lambda t: t.lkind("l1")),
    ("kind dangling", lambda t: t.kind("dangling")),
    ("lkind dangling", lambda t: t.lkind("dangling")),
    ("readlink", lambda t: t.read_link("a/up")),
    ("readlink not a link", lambda t: t.read_link("a/d")),
    ("escape", lambda t: t.kind("esc")),
    ("absolute", lambda t: t.kind("abs")),
    ("loop", lambda t: t.kind("loop1")),
    ("climb", lambda t: t.kind("../x")),
    ("file as dir", lambda t: t.kind("top/x")),
    ("read dir", lambda t: t.read_bytes("a")),
    ("read missing", lambda t: t.read_bytes("nope")),
    ("too big", lambda t: t.read_bytes("a/d", limit=10)),
]


def outcome(fn: Callable[[Tree], object], tree: Tree) -> object:
    try:
        return ("ok", fn(tree))
    except Missing:
        return ("missing",)
    except InputError as e:
        for key, words in (("escape", ("climbs",)), ("absolute", ("absolute",)),
                           ("loop", ("symbolic",)), ("size", ("larger than", "more than")),
                           ("not-file", ("directory", "regular"))):
            if any(w in e.what for w in words):
                return ("error", key)
        return ("error", e.what)


@pytest.mark.parametrize("label,fn", QUERIES, ids=[q[0] for q in QUERIES])
def test_real_and_zip_trees_agree(tmp_path: Path, label: str,
                                  fn: Callable[[Tree], object]) -> None:
    a = outcome(fn, real_tree(tmp_path))
    b = outcome(fn, zip_tree(tmp_path))
    assert a == b


def test_expected_answers(tmp_path: Path) -> None:
    t = real_tree(tmp_path)
    assert t.read_bytes("chain") == b"hello\n"
    assert t.read_bytes("l1/../d") == b"x" * 100  # ".." applies to the link's target
    assert t.kind("l1") == "dir" and t.lkind("l1") == "link"
    assert t.kind("dangling") is None and t.lkind("dangling") == "link"
    for bad, word in (("esc", "climbs above"), ("abs", "absolute"), ("loop1", "symbolic")):
        with pytest.raises(InputError, match=word):
            t.kind(bad)
    with pytest.raises(InputError, match="larger than"):
        t.read_bytes("a/d", limit=10)
