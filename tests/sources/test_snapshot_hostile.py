"""Snapshots are hostile input: every bad archive is a clean SnapshotError naming the member."""

from __future__ import annotations

import io
import json
import os
import stat
import warnings
import zipfile
from collections.abc import Callable
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sources_strategies import fast_tempdir

from p2pdma.errors import SnapshotError
from p2pdma.fabric.model import Fabric
from p2pdma.samples import load_sample
from p2pdma.sources import snapshot
from p2pdma.sources.snapshot import FORMAT, gather, read_snapshot
from p2pdma.sources.synthetic import write_sysfs

DEV = "tree/sys/devices/pci0000:00/0000:00:00.0"
LINK = "tree/sys/bus/pci/devices/0000:00:00.0"


@pytest.fixture(scope="module")
def valid(tmp_path_factory_fast: Path) -> bytes:
    d = tmp_path_factory_fast
    write_sysfs(load_sample("desktop"), d / "root")
    gather(d / "root", d / "ok.zip")
    return (d / "ok.zip").read_bytes()


Member = tuple[str, bytes, int]  # name, data, unix mode


def members(raw: bytes) -> list[Member]:
    out = []
    with zipfile.ZipFile(_bio(raw)) as zf:
        for info in zf.infolist():
            out.append((info.filename, zf.read(info), (info.external_attr >> 16) & 0xFFFF))
    return out


def _bio(raw: bytes) -> io.BytesIO:
    return io.BytesIO(raw)


def build(ms: list[Member]) -> bytes:
    buf = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # duplicate names are a test case
        with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
            for name, data, mode in ms:
                info = zipfile.ZipInfo(name, date_time=(1980, 1, 1, 0, 0, 0))
                info.create_system = 3
                info.external_attr = mode << 16
                info.compress_type = zipfile.ZIP_DEFLATED
                zf.writestr(info, data)
    return buf.getvalue()


def edited(raw: bytes, edit: Callable[[list[Member]], list[Member]]) -> bytes:
    return build(edit(members(raw)))


def read_bytes_snapshot(raw: bytes, tmp: Path) -> Fabric:
    p = tmp / "s.zip"
    p.write_bytes(raw)
    before = sorted(os.listdir(tmp))
    try:
        return read_snapshot(p)
    finally:
        assert sorted(os.listdir(tmp)) == before  # nothing written next to it


def expect_error(raw: bytes, tmp: Path, *needles: str) -> SnapshotError:
    with pytest.raises(SnapshotError) as ei:
        read_bytes_snapshot(raw, tmp)
    msg = str(ei.value)
    for n in needles:
        assert n in msg, msg
    return ei.value


REG = stat.S_IFREG | 0o644
LNK = stat.S_IFLNK | 0o777


def test_valid_snapshot_reads(valid: bytes, tmp_path: Path) -> None:
    assert read_bytes_snapshot(valid, tmp_path) == load_sample("desktop")


def test_manifest_records_what_and_how(valid: bytes) -> None:
    m = dict((n, d) for n, d, _ in members(valid))
    man = json.loads(m["manifest.json"])
    assert man["format"] == FORMAT
    assert man["tool"].startswith("p2pdma ")
    assert isinstance(man["captured_as_root"], bool)
    assert man["time"].endswith("+00:00")
    assert man["unreadable"] == {}
    assert man["counts"]["functions"] == len(load_sample("desktop").functions)


@pytest.mark.parametrize("name", ["/etc/passwd", "tree/../../etc/passwd", "tree/sys/./x",
                                  "tree//sys/x", "C:/x", "tree/sys\\x"])
def test_bad_member_names(valid: bytes, tmp_path: Path, name: str) -> None:
    raw = edited(valid, lambda ms: [*ms, (name, b"x", REG)])
    expect_error(raw, tmp_path, "member")


def test_member_outside_tree(valid: bytes, tmp_path: Path) -> None:
    raw = edited(valid, lambda ms: [*ms, ("other/file", b"x", REG)])
    expect_error(raw, tmp_path, "other/file", "outside")


@pytest.mark.parametrize("target", ["../../../../../../../../etc", "/etc", "/sys/devices"])
def test_symlink_escaping_the_snapshot(valid: bytes, tmp_path: Path, target: str) -> None:
    raw = edited(valid, lambda ms: [(n, target.encode() if n == LINK else d, m)
                                    for n, d, m in ms])
    expect_error(raw, tmp_path, "0000:00:00.0")


def test_symlink_loop(valid: bytes, tmp_path: Path) -> None:
    def edit(ms: list[Member]) -> list[Member]:
        ms = [(n, b"loop" if n == LINK else d, m) for n, d, m in ms]
        return [*ms, ("tree/sys/bus/pci/devices/loop", b"0000:00:00.0", LNK)]

    expect_error(edited(valid, edit), tmp_path, "symbolic links")


@pytest.mark.parametrize("kind,word", [(stat.S_IFCHR, "character device"),
                                       (stat.S_IFBLK, "block device"),
                                       (stat.S_IFIFO, "FIFO"), (stat.S_IFSOCK, "socket")])
def test_special_files_rejected(valid: bytes, tmp_path: Path, kind: int, word: str) -> None:
    raw = edited(valid, lambda ms: [(n, d, (kind | 0o644) if n == f"{DEV}/config" else m)
                                    for n, d, m in ms])
    expect_error(raw, tmp_path, word, "0000:00:00.0/config")


def test_member_too_large(valid: bytes, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(snapshot, "MAX_MEMBER_SIZE", 1000)
    expect_error(valid, tmp_path, "config", "more than the 1000")


def test_total_size_cap(valid: bytes, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(snapshot, "MAX_TOTAL_SIZE", 20_000)
    expect_error(valid, tmp_path, "20000")


def test_member_count_cap(valid: bytes, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(snapshot, "MAX_MEMBERS", 10)
    expect_error(valid, tmp_path, "members")


def test_decompression_bomb_with_lying_size(valid: bytes, tmp_path: Path) -> None:
    """A member that claims 4 KiB but inflates to 64 MiB stops at the claimed size."""
    raw = bytearray(edited(valid, lambda ms: [(n, bytes(64 << 20) if n == f"{DEV}/config"
                                               else d, m) for n, d, m in ms]))
    # patch the declared uncompressed size of that member in the local and central headers
    with zipfile.ZipFile(_bio(bytes(raw))) as zf:
        info = zf.getinfo(f"{DEV}/config")
        cd_size = info.file_size
    big = cd_size.to_bytes(4, "little")
    small = (4096).to_bytes(4, "little")
    assert raw.count(big) >= 2
    raw = bytearray(bytes(raw).replace(big, small))
    expect_error(bytes(raw), tmp_path, "config")


def test_honest_bomb_refused_before_inflating(valid: bytes, tmp_path: Path) -> None:
    raw = edited(valid, lambda ms: [(n, bytes(40 << 20) if n == f"{DEV}/config" else d, m)
                                    for n, d, m in ms])
    expect_error(raw, tmp_path, "0000:00:00.0/config", "more than")


def test_truncated_archive(valid: bytes, tmp_path: Path) -> None:
    for cut in (10, len(valid) // 2, len(valid) - 10):
        expect_error(valid[:cut], tmp_path)


def test_corrupt_member_data(valid: bytes, tmp_path: Path) -> None:
    raw = bytearray(valid)
    with zipfile.ZipFile(_bio(valid)) as zf:
        info = zf.getinfo(f"{DEV}/vendor")
    # the member's data follows its 30-byte local header, name and extra field
    off = info.header_offset + 30 + len(info.filename.encode()) + len(info.extra)
    raw[off] ^= 0xFF
    raw[off + 1] ^= 0xFF
    expect_error(bytes(raw), tmp_path, "0000:00:00.0/vendor")


def test_malformed_value_names_member(valid: bytes, tmp_path: Path) -> None:
    raw = edited(valid, lambda ms: [(n, b"0xzz\n" if n == f"{DEV}/vendor" else d, m)
                                    for n, d, m in ms])
    err = expect_error(raw, tmp_path, f"member {DEV}/vendor", "malformed")
    assert err.where is not None and "s.zip" in err.where


def test_short_config_names_member(valid: bytes, tmp_path: Path) -> None:
    raw = edited(valid, lambda ms: [(n, b"\x86\x80" if n == f"{DEV}/config" else d, m)
                                    for n, d, m in ms])
    expect_error(raw, tmp_path, f"{DEV}/config", "64-byte header")


@pytest.mark.parametrize("manifest", [b'{"format": "p2pdma-snapshot/9"}', b"not json", b"[]",
                                      b'{"format": "p2pdma-snapshot/1", "unreadable": [1]}'])
def test_bad_manifest(valid: bytes, tmp_path: Path, manifest: bytes) -> None:
    raw = edited(valid, lambda ms: [(n, manifest if n == "manifest.json" else d, m)
                                    for n, d, m in ms])
    expect_error(raw, tmp_path, "manifest.json")


def test_unknown_version_hint(valid: bytes, tmp_path: Path) -> None:
    raw = edited(valid, lambda ms: [(n, b'{"format": "p2pdma-snapshot/2"}'
                                     if n == "manifest.json" else d, m) for n, d, m in ms])
    err = expect_error(raw, tmp_path, "unsupported snapshot format")
    assert err.hint and FORMAT in err.hint


def test_missing_manifest(valid: bytes, tmp_path: Path) -> None:
    raw = edited(valid, lambda ms: [x for x in ms if x[0] != "manifest.json"])
    expect_error(raw, tmp_path, "manifest.json")


def test_duplicate_and_conflicting_members(valid: bytes, tmp_path: Path) -> None:
    raw = edited(valid, lambda ms: [*ms, (f"{DEV}/vendor", b"0x8086\n", REG)])
    expect_error(raw, tmp_path, "twice")
    raw = edited(valid, lambda ms: [*ms, (f"{DEV}/vendor/x", b"1", REG)])
    expect_error(raw, tmp_path, "other members lie below")


def test_not_a_regular_file(tmp_path: Path) -> None:
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    with pytest.raises(SnapshotError, match="not a regular file"):
        read_snapshot(fifo)  # must not block
    with pytest.raises(SnapshotError, match="not a regular file"):
        read_snapshot(tmp_path)
    with pytest.raises(SnapshotError, match="no such file"):
        read_snapshot(tmp_path / "nope.zip")
    (tmp_path / "empty").write_bytes(b"")
    with pytest.raises(SnapshotError, match="not a snapshot"):
        read_snapshot(tmp_path / "empty")


# ---------------------------------------------------------------------------
# fuzzing: only a Fabric or a clean SnapshotError may come out

FUZZ = settings(max_examples=150, deadline=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


def _outcome(raw: bytes) -> None:
    with fast_tempdir() as d:
        p = Path(d) / "f.zip"
        p.write_bytes(raw)
        try:
            res = read_snapshot(p)
        except SnapshotError as e:
            assert str(e)
            return
        finally:
            assert os.listdir(d) == ["f.zip"]
        assert isinstance(res, Fabric)


@given(st.data())
@FUZZ
def test_fuzz_mutated_bytes(valid: bytes, data: st.DataObject) -> None:
    raw = bytearray(valid)
    for _ in range(data.draw(st.integers(1, 8))):
        op = data.draw(st.sampled_from(["flip", "set", "cut", "insert"]))
        pos = data.draw(st.integers(0, max(len(raw) - 1, 0)))
        if op == "flip" and raw:
            raw[pos] ^= data.draw(st.integers(1, 255))
        elif op == "set" and raw:
            raw[pos] = data.draw(st.sampled_from([0, 0xFF, 0x7F, 0x80]))
        elif op == "cut":
            raw = raw[:pos]
        else:
            raw[pos:pos] = data.draw(st.binary(min_size=1, max_size=16))
    _outcome(bytes(raw))


_COMP = st.sampled_from(["sys", "bus", "pci", "devices", "0000:00:00.0", "pci0000:00", "..",
                         ".", "config", "vendor", "class", "nvme", "nvme0", "device", "cmb",
                         "p2pmem", "size", "proc", "cpuinfo", "x"])
_NAMES = st.lists(_COMP, min_size=1, max_size=6).map(lambda cs: "tree/" + "/".join(cs))
_MODES = st.sampled_from([REG, LNK, stat.S_IFDIR | 0o755, stat.S_IFIFO | 0o644, 0])


@given(st.lists(st.tuples(_NAMES, st.binary(max_size=300), _MODES), max_size=25),
       st.booleans())
@FUZZ
def test_fuzz_random_members(valid: bytes, ms: list[Member], keep: bool) -> None:
    base = members(valid) if keep else [
        ("manifest.json", json.dumps({"format": FORMAT}).encode(), REG)]
    _outcome(build(base + ms))


@given(st.data())
@FUZZ
def test_fuzz_member_contents(valid: bytes, data: st.DataObject) -> None:
    """Every value file in turn may hold garbage: the reader answers or names the member."""
    ms = members(valid)
    files = [i for i, (n, _, m) in enumerate(ms) if stat.S_ISREG(m) and n != "manifest.json"]
    for i in data.draw(st.lists(st.sampled_from(files), min_size=1, max_size=4)):
        name, old, mode = ms[i]
        how = data.draw(st.sampled_from(["random", "mutate", "empty", "text"]))
        if how == "random":
            new = data.draw(st.binary(max_size=600))
        elif how == "mutate" and old:
            b = bytearray(old)
            for _ in range(data.draw(st.integers(1, 6))):
                b[data.draw(st.integers(0, len(b) - 1))] = data.draw(st.integers(0, 255))
            new = bytes(b)
        elif how == "text":
            new = data.draw(st.sampled_from([b"-1\n", b"0x\n", b"\n", b"0xffffffffffffffffff\n",
                                             b"99999999999999999999999\n", b"1e5 GT/s PCIe\n",
                                             b"nan GT/s PCIe\n", b"\xff\xfe\n"]))
        else:
            new = b""
        ms[i] = (name, new, mode)
    _outcome(build(ms))


def test_unreadable_in_manifest_is_reported_not_guessed(valid: bytes, tmp_path: Path) -> None:
    def edit(ms: list[Member]) -> list[Member]:
        out = []
        for n, d, m in ms:
            if n == "manifest.json":
                man = json.loads(d)
                man["unreadable"] = {"proc/cmdline": "permission denied"}
                d = json.dumps(man).encode()
            if n != "tree/proc/cmdline":
                out.append((n, d, m))
        return out

    f = read_bytes_snapshot(edited(valid, edit), tmp_path)
    assert f.host.cmdline is None
    assert any("proc/cmdline" in u and "permission denied" in u for u in f.unreadable)
