"""Snapshots: one file holding everything :func:`read_sysfs` needs from a machine.

Format (``p2pdma-snapshot/1``): a ZIP archive with

- ``manifest.json``: ``format``, ``tool`` (p2pdma version), ``captured_as_root``,
  ``root`` (what was read), ``time`` (UTC, ISO 8601), ``unreadable`` (paths the
  OS refused, with why), ``counts``;
- ``tree/<path>``: the files, directories and *relative* symlinks the reader
  touched, with their Unix modes (a symlink's data is its target).

:func:`gather` records exactly what the reader touches while it reads the live
tree, so reading the snapshot gives the same Fabric.  :func:`read_snapshot`
reads the archive *in place* through the same reader (never extracted, nothing
written) and treats it as hostile: member names must be plain relative paths,
only files, directories and in-tree relative symlinks are allowed, sizes and
counts are capped before and while decompressing, and every failure is a
:class:`SnapshotError` naming the member.
"""

from __future__ import annotations

import datetime as _dt
import io
import json
import lzma
import mmap
import os
import stat
import struct
import zipfile
import zlib
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from p2pdma import __version__
from p2pdma.errors import InputError, SnapshotError, SysfsError
from p2pdma.fabric.model import Fabric
from p2pdma.sources.sysfs import read_tree
from p2pdma.sources.tree import Kind, Missing, RealTree, Recorder, Tree, Unreadable, split

FORMAT = "p2pdma-snapshot/1"
MANIFEST = "manifest.json"
PREFIX = "tree/"

MAX_MEMBERS = 400_000
MAX_MEMBER_SIZE = 32 << 20  # uncompressed, one member (proc/cpuinfo of a huge box fits)
MAX_TOTAL_SIZE = 512 << 20  # uncompressed, all members read
MAX_MANIFEST = 4 << 20
MAX_LINK_TARGET = 4096
MAX_NAME = 4096

# What zipfile and its decompressors raise on corrupt or hostile input.
_ZIP_ERRORS = (zipfile.BadZipFile, zipfile.LargeZipFile, zlib.error, lzma.LZMAError,
               EOFError, OSError, RuntimeError, NotImplementedError, ValueError,
               struct.error, OverflowError, UnicodeDecodeError, KeyError, IndexError)


# ---------------------------------------------------------------------------
# gather


def gather(root: str | Path, out_path: str | Path) -> Fabric:
    """Read the tree under ``root`` and write a snapshot of what was read to ``out_path``.

    Returns the Fabric read (equal to ``read_snapshot(out_path)``)."""
    tree = RealTree(root)
    if tree.kind("sys") != "dir":
        raise SysfsError("no sys/ directory here", where=str(root),
                         hint="--root must be the directory that holds sys/ and proc/")
    rec = Recorder()
    tree.recorder = rec
    fabric = read_tree(tree, origin=f"sysfs:{root}")
    unreadable = {p: r for p, r in rec.unreadable.items()}
    manifest = {
        "format": FORMAT,
        "tool": f"p2pdma {__version__}",
        "root": str(root),
        "captured_as_root": hasattr(os, "geteuid") and os.geteuid() == 0,
        "time": _dt.datetime.now(_dt.UTC).replace(microsecond=0).isoformat(),
        "unreadable": unreadable,
        "counts": {"functions": len(fabric.functions),
                   "host_bridges": len(fabric.host_bridges)},
    }
    out = Path(out_path)
    tmp = out.with_name(out.name + ".part")
    try:
        with zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_DEFLATED) as zf:
            zf.writestr(MANIFEST, json.dumps(manifest, indent=1, sort_keys=True))
            dirs = set(rec.dirs)
            for p in list(rec.files) + list(rec.links) + list(rec.present):
                parts = split(p)
                for i in range(1, len(parts)):
                    dirs.add("/".join(parts[:i]))
            for d in sorted(dirs):
                _add(zf, PREFIX + d + "/", b"", stat.S_IFDIR | 0o755)
            for p, target in sorted(rec.links.items()):
                _add(zf, PREFIX + p, target.encode("utf-8", "surrogateescape"),
                     stat.S_IFLNK | 0o777)
            for p, data in sorted(rec.files.items()):
                _add(zf, PREFIX + p, data, stat.S_IFREG | 0o644)
            for p in sorted(rec.present - set(rec.files) - set(rec.links)):
                _add(zf, PREFIX + p, b"", stat.S_IFREG | 0o644)
        os.replace(tmp, out)
    except OSError as e:
        raise InputError(f"cannot write the snapshot: {e.strerror}", where=str(out)) from None
    finally:
        if tmp.exists():
            tmp.unlink()
    return fabric


def _add(zf: zipfile.ZipFile, name: str, data: bytes, mode: int) -> None:
    info = zipfile.ZipInfo(name, date_time=(1980, 1, 1, 0, 0, 0))
    info.create_system = 3  # Unix: external_attr carries the mode
    info.external_attr = (mode & 0xFFFF) << 16
    if stat.S_ISDIR(mode):
        info.external_attr |= 0x10
    info.compress_type = zipfile.ZIP_DEFLATED
    zf.writestr(info, data)


# ---------------------------------------------------------------------------
# reading


class _Node:
    __slots__ = ("children", "info", "kind", "target")

    def __init__(self, kind: Kind, info: zipfile.ZipInfo | None = None) -> None:
        self.kind: Kind = kind
        self.info = info
        self.target: str | None = None
        self.children: dict[str, _Node] | None = {} if kind == "dir" else None


class ZipTree(Tree):
    """A snapshot's ``tree/`` read in place from the archive."""

    error_cls = SnapshotError

    def __init__(self, path: str, zf: zipfile.ZipFile, unreadable: dict[str, str],
                 image: mmap.mmap | None = None) -> None:
        super().__init__(path)
        self.zf = zf
        self.image = image  # the archive mapped read-only: members are sliced out of it
        self.root_node = _Node("dir")
        self.nodes: dict[str, _Node] = {"": self.root_node}  # normalised path -> node
        self.total = 0
        self.unreadable_paths = unreadable

    def where(self, path: str) -> str:
        return f"{self.name}: member {PREFIX}{path}" if path else f"{self.name}: {PREFIX}"

    def _node(self, path: str) -> _Node | None:
        return self.nodes.get(path)  # the Tree base class passes normalised paths

    def _lkind(self, path: str) -> Kind | None:
        n = self._node(path)
        return None if n is None else n.kind

    def _readlink(self, path: str) -> str:
        n = self._node(path)
        if n is None or n.kind != "link" or n.info is None:
            raise Missing(path)
        if n.target is None:
            raw = self.member_bytes(n.info, MAX_LINK_TARGET, path)
            try:
                n.target = raw.decode("utf-8")
            except UnicodeDecodeError:
                raise self.error(path, "symlink target is not UTF-8") from None
            if not n.target:
                raise self.error(path, "symlink with an empty target")
        return n.target

    def _list(self, path: str) -> list[str]:
        n = self._node(path)
        if n is None or n.children is None:
            raise Missing(path)
        return list(n.children)

    def _read(self, path: str, limit: int) -> bytes:
        if path in self.unreadable_paths:
            raise Unreadable(path, self.unreadable_paths[path])
        n = self._node(path)
        if n is None or n.info is None:
            raise Missing(path)
        return self.member_bytes(n.info, limit, path)

    def member_bytes(self, info: zipfile.ZipInfo, limit: int, path: str) -> bytes:
        cap = min(limit, MAX_MEMBER_SIZE)
        if info.file_size > cap:
            raise self.error(path, f"member is {info.file_size} bytes, more than the {cap} "
                                   "allowed")
        if self.image is not None and info.compress_type in (zipfile.ZIP_STORED,
                                                             zipfile.ZIP_DEFLATED):
            data = self._fast_member(info, cap, path)
        else:
            try:
                with self.zf.open(info) as fh:
                    data = fh.read(cap + 1)
            except _ZIP_ERRORS as e:
                raise self.error(path, f"cannot decompress: {type(e).__name__}: {e}") from None
        if len(data) > cap:
            raise self.error(path, f"member decompresses to more than {cap} bytes")
        self.total += len(data)
        if self.total > MAX_TOTAL_SIZE:
            raise self.error(path, f"snapshot decompresses to more than {MAX_TOTAL_SIZE} bytes")
        return data

    def _fast_member(self, info: zipfile.ZipInfo, cap: int, path: str) -> bytes:
        """A stored or deflated member sliced from the mapped archive (the common case:
        zipfile's per-member open costs more than the data).  Checks what zipfile
        checks: local header, name, sizes, CRC."""
        img = self.image
        assert img is not None
        if info.flag_bits & 0x1:
            raise self.error(path, "member is encrypted")
        off = info.header_offset
        hdr = img[off:off + 30]
        if len(hdr) < 30 or hdr[:4] != b"PK\x03\x04":
            raise self.error(path, "bad local header (truncated or corrupt archive)")
        nlen, xlen = struct.unpack_from("<HH", hdr, 26)
        enc = "utf-8" if info.flag_bits & 0x800 else "cp437"
        try:
            want = info.orig_filename.encode(enc)
        except UnicodeEncodeError:
            want = b""
        if img[off + 30:off + 30 + nlen] != want:
            raise self.error(path, "local header names a different member")
        start = off + 30 + nlen + xlen
        # deflate never grows data by more than a few bytes per 16 KiB block
        if info.compress_size > info.file_size + (info.file_size >> 8) + 1024:
            raise self.error(path, "compressed size is implausible for its uncompressed size")
        raw = img[start:start + info.compress_size]
        if len(raw) < info.compress_size:
            raise self.error(path, "member data is cut off (truncated archive)")
        if info.compress_type == zipfile.ZIP_STORED:
            data = bytes(raw)
        else:
            d = zlib.decompressobj(-15)
            try:
                data = d.decompress(raw, cap + 1)
            except zlib.error as e:
                raise self.error(path, f"cannot decompress: {e}") from None
        if len(data) != info.file_size:
            raise self.error(path, f"member holds {len(data)} bytes, not the {info.file_size} "
                                   "its header says")
        if zlib.crc32(data) != info.CRC:
            raise self.error(path, "CRC mismatch (corrupt member)")
        return data

    def add(self, info: zipfile.ZipInfo, rel: str, kind: Kind) -> None:
        parts = split(rel)
        node = self.root_node
        for i, comp in enumerate(parts[:-1]):
            assert node.children is not None
            nxt = node.children.get(comp)
            if nxt is None:
                nxt = node.children[comp] = _Node("dir")
                self.nodes["/".join(parts[:i + 1])] = nxt
            elif nxt.kind != "dir":
                raise self.error("/".join(parts[:i + 1]),
                                 "is a file or link but other members lie below it")
            node = nxt
        assert node.children is not None
        last = parts[-1]
        old = node.children.get(last)
        if old is not None:
            if kind == "dir" and old.kind == "dir" and old.info is None:
                old.info = info
                return
            raise self.error(rel, "appears twice in the snapshot")
        node.children[last] = self.nodes["/".join(parts)] = _Node(kind, info)


def _member_kind(info: zipfile.ZipInfo, tree: ZipTree, rel: str) -> Kind:
    mode = (info.external_attr >> 16) & 0xFFFF if info.create_system == 3 else 0
    if stat.S_IFMT(mode) == 0:  # no file type recorded (not a Unix zip): go by the name
        return "dir" if info.filename.endswith("/") else "file"
    if stat.S_ISDIR(mode):
        return "dir"
    if stat.S_ISREG(mode):
        if info.filename.endswith("/"):
            raise tree.error(rel, "regular file named like a directory")
        return "file"
    if stat.S_ISLNK(mode):
        return "link"
    what = ("character device" if stat.S_ISCHR(mode) else "block device" if stat.S_ISBLK(mode)
            else "FIFO" if stat.S_ISFIFO(mode) else "socket" if stat.S_ISSOCK(mode)
            else f"file of type {stat.S_IFMT(mode):#o}")
    raise tree.error(rel, f"is a {what}; snapshots hold only files, directories and links")


def _check_name(name: str, where: str) -> None:
    def bad(why: str) -> SnapshotError:
        return SnapshotError(f"member {name[:200]!r}: {why}", where=where,
                             hint="the snapshot was not made by `p2pdma gather` or was altered")

    if len(name) > MAX_NAME:
        raise bad("name is too long")
    if "\x00" in name or "\\" in name:
        raise bad("name holds a NUL or backslash")
    if name.startswith("/") or (len(name) > 1 and name[1] == ":"):
        raise bad("absolute path")
    parts = name.rstrip("/").split("/")
    if any(p in ("", ".", "..") for p in parts):
        raise bad("path has an empty, '.' or '..' component")


@contextmanager
def _open_zip(path: Path) -> Iterator[tuple[zipfile.ZipFile, mmap.mmap | None]]:
    where = str(path)
    try:
        st = os.stat(path)
    except FileNotFoundError:
        raise SnapshotError("no such file", where=where,
                            hint="make one with `p2pdma gather -o FILE`") from None
    except OSError as e:
        raise SnapshotError(f"cannot open: {e.strerror}", where=where) from None
    if not stat.S_ISREG(st.st_mode):
        raise SnapshotError("is not a regular file", where=where,
                            hint="give the file written by `p2pdma gather`")
    try:
        fh = open(path, "rb")  # noqa: SIM115 - closed below
    except OSError as e:
        raise SnapshotError(f"cannot open: {e.strerror}", where=where) from None
    try:
        try:
            zf = zipfile.ZipFile(fh)
        except _ZIP_ERRORS as e:
            raise SnapshotError(f"not a snapshot (not a readable ZIP archive: {e})",
                                where=where, hint="snapshots are made by `p2pdma gather`") from None
        try:
            image: mmap.mmap | None = mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ)
        except (OSError, ValueError):
            image = None  # not mappable: zipfile reads every member itself
        try:
            with zf:
                yield zf, image
        finally:
            if image is not None:
                image.close()
    finally:
        fh.close()


def read_snapshot(path: str | Path) -> Fabric:
    """The Fabric recorded in a snapshot file, read in place (never extracted)."""
    p = Path(path)
    where = str(p)
    with _open_zip(p) as (zf, image):
        infos = zf.infolist()
        if len(infos) > MAX_MEMBERS:
            raise SnapshotError(f"{len(infos)} members, more than the {MAX_MEMBERS} allowed",
                                where=where)
        manifest = _manifest(zf, where)
        unreadable = manifest["unreadable"]
        tree = ZipTree(where, zf, unreadable, image)
        declared = 0
        for info in infos:
            name = info.filename
            if name == MANIFEST:
                continue
            _check_name(name, where)
            if not name.startswith(PREFIX) or name == PREFIX:
                raise SnapshotError(f"member {name!r} is outside {PREFIX}", where=where,
                                    hint="the snapshot was not made by `p2pdma gather`")
            rel = name[len(PREFIX):].rstrip("/")
            kind = _member_kind(info, tree, rel)
            if kind != "dir":
                declared += info.file_size
                if info.file_size > MAX_MEMBER_SIZE:
                    raise tree.error(rel, f"member is {info.file_size} bytes, more than the "
                                          f"{MAX_MEMBER_SIZE} allowed")
            tree.add(info, rel, kind)
        if declared > MAX_TOTAL_SIZE:
            raise SnapshotError(f"members total {declared} bytes uncompressed, more than the "
                                f"{MAX_TOTAL_SIZE} allowed", where=where)
        for u in unreadable:
            # an unreadable file is listed in its directory, as it was on the machine
            parts = split(u)
            node = tree._node("/".join(parts[:-1]))
            if node is not None and node.children is not None and parts[-1] not in node.children:
                node.children[parts[-1]] = tree.nodes["/".join(parts)] = _Node("file")
        if tree.kind("sys") != "dir":
            raise SnapshotError(f"holds no {PREFIX}sys/ directory", where=where)
        note = tuple(f"{k}: {v}" for k, v in sorted(unreadable.items()))
        try:
            return read_tree(tree, origin=f"snapshot:{p}", unreadable=note)
        except SnapshotError:
            raise
        except InputError as e:  # a reader error not yet attributed to the snapshot
            raise SnapshotError(e.what, where=e.where or where, hint=e.hint) from None


def _manifest(zf: zipfile.ZipFile, where: str) -> dict[str, Any]:
    try:
        info = zf.getinfo(MANIFEST)
    except KeyError:
        raise SnapshotError(f"no {MANIFEST}: not a p2pdma snapshot", where=where,
                            hint="snapshots are made by `p2pdma gather`") from None
    if info.file_size > MAX_MANIFEST:
        raise SnapshotError(f"{MANIFEST} is {info.file_size} bytes, too large", where=where)
    try:
        with zf.open(info) as fh:
            raw = fh.read(MAX_MANIFEST + 1)
    except _ZIP_ERRORS as e:
        raise SnapshotError(f"{MANIFEST}: cannot decompress: {e}", where=where) from None
    if len(raw) > MAX_MANIFEST:
        raise SnapshotError(f"{MANIFEST} decompresses to too many bytes", where=where)
    try:
        data = json.load(io.BytesIO(raw))
    except (ValueError, RecursionError) as e:
        raise SnapshotError(f"{MANIFEST} is not valid JSON: {e}", where=where) from None
    if not isinstance(data, dict):
        raise SnapshotError(f"{MANIFEST} is not a JSON object", where=where)
    fmt = data.get("format")
    if fmt != FORMAT:
        raise SnapshotError(f"{MANIFEST}: unsupported snapshot format {str(fmt)[:80]!r}",
                            where=where,
                            hint=f"this p2pdma reads {FORMAT!r}; a newer p2pdma may read it")
    unreadable = data.get("unreadable", {})
    if not isinstance(unreadable, dict) or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in unreadable.items()):
        raise SnapshotError(f"{MANIFEST}: 'unreadable' must map paths to reasons", where=where)
    for k in unreadable:
        _check_name(k, where)
    data["unreadable"] = unreadable
    return data
