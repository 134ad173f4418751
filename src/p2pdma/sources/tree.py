"""A read-only file tree: one reader serves the live machine, a synthetic tree and a snapshot.

Paths are relative POSIX strings (``"sys/bus/pci/devices"``), always below the
tree's root.  Symbolic links are resolved *by us*, component by component, inside
the tree: an absolute target or a ``..`` that climbs above the root is an error
naming the link, and more than :data:`MAX_LINK_HOPS` links is a loop.  So a tree
given with ``--root`` (user input) or a snapshot (hostile input) can never make
the reader look outside it.

Two kinds of failure are *not* errors: a missing entry (:class:`Missing`) and an
entry the OS refused to read (:class:`Unreadable`); the reader decides what they
mean.  Everything else (escapes, loops, device files, oversized files) raises the
tree's error class: :class:`SysfsError` for directories, :class:`SnapshotError`
for snapshots.
"""

from __future__ import annotations

import errno
import os
import stat
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Literal

from p2pdma.errors import InputError, SysfsError

Kind = Literal["file", "dir", "link", "other"]

MAX_LINK_HOPS = 40  # what Linux allows before ELOOP
MAX_DEPTH = 64  # path components; sysfs PCI paths are far shorter
DEFAULT_LIMIT = 1 << 20  # bytes read from one file unless the caller says otherwise


class Missing(Exception):
    """The path does not exist in the tree."""


class Unreadable(Exception):
    """The path exists but could not be read (permission, I/O error)."""

    def __init__(self, path: str, reason: str) -> None:
        super().__init__(f"{path}: {reason}")
        self.path = path
        self.reason = reason


@dataclass
class Recorder:
    """What a reader touched, so that ``gather`` captures exactly that."""

    dirs: set[str] = field(default_factory=set)
    files: dict[str, bytes] = field(default_factory=dict)
    links: dict[str, str] = field(default_factory=dict)
    present: set[str] = field(default_factory=set)  # files seen but not read
    unreadable: dict[str, str] = field(default_factory=dict)


def split(path: str) -> list[str]:
    return [p for p in path.split("/") if p and p != "."]


def join(*parts: str) -> str:
    return "/".join([p for p in parts if p])


class Tree(ABC):
    """Read-only access to a tree of files, directories and relative symlinks."""

    error_cls: type[InputError] = SysfsError

    def __init__(self, name: str) -> None:
        self.name = name
        self.recorder: Recorder | None = None
        self._resolved: dict[str, str] = {}

    # -- storage primitives (no link following) ------------------------------

    @abstractmethod
    def _lkind(self, path: str) -> Kind | None:
        """Kind of the entry itself (a link is ``"link"``); None when absent.
        ``path`` has no symlinks in its directory part."""

    @abstractmethod
    def _readlink(self, path: str) -> str: ...

    @abstractmethod
    def _read(self, path: str, limit: int) -> bytes:
        """Contents of a regular file (no links anywhere in ``path``)."""

    @abstractmethod
    def _list(self, path: str) -> list[str]:
        """Names in a directory (no links anywhere in ``path``)."""

    def where(self, path: str) -> str:
        """How a path is named in messages."""
        return os.path.join(self.name, path) if path else self.name

    def error(self, path: str | None, what: str, hint: str | None = None) -> InputError:
        return self.error_cls(what, where=self.where(path) if path is not None else self.name,
                              hint=hint)

    # -- resolution ------------------------------------------------------------

    def resolve(self, path: str) -> str:
        """The path with every symlink resolved inside the tree.  Raises Missing."""
        try:
            return self._resolve(path, [0], None)
        except RecursionError:
            raise self.error(path, "symbolic links nest too deeply") from None

    def _resolve(self, path: str, hops: list[int], via: str | None) -> str:
        """``via``: the symlink whose target is being resolved, named in errors."""
        cached = self._resolved.get(path)
        if cached is not None:
            return cached
        parts = split(path)
        if not parts:
            return ""
        if len(parts) > MAX_DEPTH:
            raise self.error(via or path, "path is nested too deeply")
        # Resolve the parent first (cached: siblings share it), then the last name.
        parent, name = "/".join(parts[:-1]), parts[-1]
        rp = self._resolve(parent, hops, via) if parent else ""
        if name == "..":
            if not rp:
                raise self.error(via or path, "path climbs above the tree's root"
                                 + (" (symlink escapes the tree)" if via else ""))
            out = rp.rpartition("/")[0]
        else:
            cur = f"{rp}/{name}" if rp else name
            kind = self._lkind(cur)
            if kind is None:
                raise Missing(cur)
            if kind == "link":
                hops[0] += 1
                if hops[0] > MAX_LINK_HOPS:
                    raise self.error(path, f"too many levels of symbolic links (at {cur})")
                target = self._readlink(cur)
                if self.recorder is not None:
                    self.recorder.links[cur] = target
                if target.startswith("/"):
                    raise self.error(cur, f"symlink to an absolute path {target!r}",
                                     hint="links in a sysfs tree or snapshot must be relative")
                if "\0" in target:
                    raise self.error(cur, "symlink target holds a NUL byte")
                out = self._resolve(f"{rp}/{target}" if rp else target, hops, cur)
            else:
                out = cur
                if kind == "dir" and self.recorder is not None:
                    self.recorder.dirs.add(cur)
        self._resolved[path] = out
        return out

    # -- the public API --------------------------------------------------------

    def kind(self, path: str) -> Kind | None:
        """Kind after following links; None when absent (or a dangling link)."""
        try:
            real = self.resolve(path)
        except Missing:
            return None
        k = self._lkind(real) if real else "dir"
        if k == "file" and self.recorder is not None:
            self.recorder.present.add(real)
        return k

    def lkind(self, path: str) -> Kind | None:
        """Kind of the entry itself (a link stays a link); None when absent."""
        parent, _, name = path.rstrip("/").rpartition("/")
        if name in ("", ".", ".."):
            return self.kind(path)  # not a name of an entry: nothing to keep unresolved
        try:
            rp = self.resolve(parent) if parent else ""
        except Missing:
            return None
        k = self._lkind(join(rp, name))
        if self.recorder is not None:
            if k == "dir":
                self.recorder.dirs.add(join(rp, name))
            elif k == "file":
                self.recorder.present.add(join(rp, name))
        return k

    def exists(self, path: str) -> bool:
        return self.kind(path) is not None

    def is_dir(self, path: str) -> bool:
        return self.kind(path) == "dir"

    def is_link(self, path: str) -> bool:
        return self.lkind(path) == "link"

    def read_link(self, path: str) -> str:
        """The raw target of a symlink (not resolved).  Raises Missing."""
        parent, _, name = path.rstrip("/").rpartition("/")
        if name in ("", ".", ".."):
            raise Missing(path)
        rp = self.resolve(parent) if parent else ""
        real = join(rp, name)
        if self._lkind(real) != "link":
            raise Missing(path)
        target = self._readlink(real)
        if self.recorder is not None:
            self.recorder.links[real] = target
        return target

    def list_dir(self, path: str) -> list[str]:
        """Sorted names in a directory.  Raises Missing when it is not a directory."""
        real = self.resolve(path)
        if real and self._lkind(real) != "dir":
            raise Missing(path)
        return sorted(self._list(real))

    def read_bytes(self, path: str, limit: int = DEFAULT_LIMIT) -> bytes:
        """A regular file's contents, at most ``limit`` bytes (more is an error)."""
        real = self.resolve(path)
        kind = self._lkind(real) if real else "dir"
        if kind != "file":
            if kind is None:
                raise Missing(path)
            raise self.error(path, f"is a {'directory' if kind == 'dir' else 'special file'}, "
                                   "not a regular file")
        try:
            data = self._read(real, limit)
        except Unreadable as e:
            if self.recorder is not None:
                self.recorder.unreadable[real] = e.reason
            raise
        if self.recorder is not None:
            self.recorder.files[real] = data
        return data

    def read_text(self, path: str, limit: int = DEFAULT_LIMIT) -> str:
        data = self.read_bytes(path, limit)
        try:
            return data.decode("utf-8")
        except UnicodeDecodeError:
            raise self.error(path, "is not UTF-8 text") from None


class RealTree(Tree):
    """A directory on disk; ``RealTree("/")`` is the live machine."""

    def __init__(self, root: str | os.PathLike[str]) -> None:
        self.root = os.fspath(root)
        super().__init__(self.root)
        self._kinds: dict[str, Kind | None] = {}
        self._prefix = self.root.rstrip("/") + "/"

    def _abs(self, path: str) -> str:
        return self._prefix + path if path else self.root

    def _lkind(self, path: str) -> Kind | None:
        if path in self._kinds:
            return self._kinds[path]
        try:
            st = os.lstat(self._abs(path))
        except FileNotFoundError:
            k: Kind | None = None
        except NotADirectoryError:
            k = None
        except OSError as e:
            if e.errno in (errno.EACCES, errno.EPERM):
                k = None  # an unsearchable directory hides what is in it
            else:
                raise self.error(path, f"cannot stat: {e.strerror}") from None
        else:
            k = _mode_kind(st.st_mode)
        self._kinds[path] = k
        return k

    def _readlink(self, path: str) -> str:
        try:
            return os.readlink(self._abs(path))
        except OSError as e:
            raise self.error(path, f"cannot read link: {e.strerror}") from None

    def _list(self, path: str) -> list[str]:
        names = []
        try:
            with os.scandir(self._abs(path)) as it:
                for ent in it:
                    names.append(ent.name)
                    # d_type is free: remember it, saving an lstat per entry later
                    try:
                        if ent.is_symlink():
                            k: Kind = "link"
                        elif ent.is_dir(follow_symlinks=False):
                            k = "dir"
                        elif ent.is_file(follow_symlinks=False):
                            k = "file"
                        else:
                            k = "other"
                    except OSError:
                        continue
                    self._kinds[join(path, ent.name)] = k
        except PermissionError:
            raise Unreadable(path, "permission denied") from None
        except OSError as e:
            raise self.error(path, f"cannot list directory: {e.strerror}") from None
        return names

    def _read(self, path: str, limit: int) -> bytes:
        flags = _OPEN_FLAGS
        try:
            fd = os.open(self._abs(path), flags)
        except PermissionError:
            raise Unreadable(path, "permission denied") from None
        except OSError as e:
            if e.errno == errno.ENOENT:
                raise Missing(path) from None
            raise self.error(path, f"cannot open: {e.strerror}") from None
        try:
            if not stat.S_ISREG(os.fstat(fd).st_mode):
                raise self.error(path, "is not a regular file")
            chunks: list[bytes] = []
            total = 0
            while True:
                try:
                    # sysfs attributes are at most a page: start small, grow for /proc
                    chunk = os.read(fd, min(8192 if not chunks else 65536, limit + 1 - total))
                except PermissionError:
                    raise Unreadable(path, "permission denied") from None
                except OSError as e:
                    # sysfs attributes fail with EIO/ENODEV/EINVAL when the device
                    # cannot answer: the value is unknown, not malformed.
                    raise Unreadable(path, e.strerror or f"errno {e.errno}") from None
                if not chunk:
                    break
                chunks.append(chunk)
                total += len(chunk)
                if total > limit:
                    raise self.error(path, f"is larger than the {limit} bytes expected")
            return b"".join(chunks)
        finally:
            os.close(fd)


_OPEN_FLAGS = os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0)


def _mode_kind(mode: int) -> Kind:
    if stat.S_ISLNK(mode):
        return "link"
    if stat.S_ISDIR(mode):
        return "dir"
    if stat.S_ISREG(mode):
        return "file"
    return "other"
