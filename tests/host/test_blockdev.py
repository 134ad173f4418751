"""Real block devices (loop devices over files on /work): O_DIRECT copies to and from them,
and the destination safety rules.  Skipped where loop devices cannot be set up."""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from host_fakes import write_random

from p2pdma.errors import InputError
from p2pdma.fabric.bdf import Bdf
from p2pdma.host.io import logical_block_size
from p2pdma.host.predict import client_of, predict
from p2pdma.host.runner import CopyRequest, run_copy

K = 1024
M = 1 << 20

LoopFactory = Callable[[Path], str]


@pytest.fixture
def loop(odirect_dir: Path) -> Iterator[LoopFactory]:
    if os.geteuid() != 0 or shutil.which("losetup") is None:
        pytest.skip("needs root and losetup to create a loop block device")
    made: list[str] = []

    def attach(image: Path) -> str:
        r = subprocess.run(["losetup", "-f", "--show", str(image)], capture_output=True,
                           text=True, check=False)
        if r.returncode != 0:
            pytest.skip(f"no loop device available: {r.stderr.strip()}")
        made.append(r.stdout.strip())
        return made[-1]

    try:
        yield attach
    finally:
        for dev in made:
            subprocess.run(["losetup", "-d", dev], check=False)


def image(dirpath: Path, name: str, size: int) -> Path:
    p = dirpath / name
    with open(p, "wb") as f:
        f.truncate(size)
    return p


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_copy_file_to_blank_block_device(odirect_dir: Path, loop: LoopFactory) -> None:
    src = odirect_dir / "src"
    data = write_random(src, 1 * M)
    img = image(odirect_dir, "disk.img", 4 * M)
    dev = loop(img)
    assert logical_block_size("/", os.stat(dev).st_rdev) in (512, 4096)
    report = run_copy(CopyRequest(src=str(src), dst=dev, host_memory=True, chunk=64 * K,
                                  threads=2))
    assert report.ok and report.verify is not None and report.verify.compared == M
    assert img.read_bytes()[:M] == data


def test_block_device_as_source(odirect_dir: Path, loop: LoopFactory) -> None:
    img = image(odirect_dir, "disk.img", 2 * M)
    data = write_random(img, 2 * M, seed=5)
    dev = loop(img)
    dst = odirect_dir / "out"
    report = run_copy(CopyRequest(src=dev, dst=str(dst), host_memory=True))
    assert report.plan.size == 2 * M and dst.read_bytes() == data


def test_filesystem_on_dst_needs_force(odirect_dir: Path, loop: LoopFactory) -> None:
    if shutil.which("mkfs.ext4") is None:
        pytest.skip("needs mkfs.ext4 to put a file system on the loop device")
    src = odirect_dir / "src"
    write_random(src, 256 * K)
    img = image(odirect_dir, "disk.img", 8 * M)
    subprocess.run(["mkfs.ext4", "-q", "-F", str(img)], check=True)
    before = sha(img)
    dev = loop(img)
    with pytest.raises(InputError, match="refusing to overwrite an ext2/3/4 file system"):
        run_copy(CopyRequest(src=str(src), dst=dev, host_memory=True))
    assert sha(img) == before
    report = run_copy(CopyRequest(src=str(src), dst=dev, host_memory=True, force=True))
    assert report.ok and any("--force: overwriting an ext2/3/4" in n for n in report.notes)


def test_dst_device_too_small(odirect_dir: Path, loop: LoopFactory) -> None:
    src = odirect_dir / "src"
    write_random(src, 2 * M)
    img = image(odirect_dir, "disk.img", 1 * M)
    before = sha(img)
    dev = loop(img)
    with pytest.raises(InputError, match="the device holds 1 MiB"):
        run_copy(CopyRequest(src=str(src), dst=dev, host_memory=True, force=True))
    assert sha(img) == before


def test_mounted_dst_is_refused_even_with_force(odirect_dir: Path, loop: LoopFactory) -> None:
    if shutil.which("mkfs.ext4") is None or shutil.which("mount") is None:
        pytest.skip("needs mkfs.ext4 and mount")
    src = odirect_dir / "src"
    write_random(src, 64 * K)
    img = image(odirect_dir, "disk.img", 8 * M)
    subprocess.run(["mkfs.ext4", "-q", "-F", str(img)], check=True)
    dev = loop(img)
    mnt = Path(tempfile.mkdtemp(prefix="p2pdma-mnt-"))
    r = subprocess.run(["mount", "-t", "ext4", dev, str(mnt)], capture_output=True, text=True,
                       check=False)
    if r.returncode != 0:
        mnt.rmdir()
        pytest.skip(f"cannot mount here: {r.stderr.strip()}")
    try:
        with pytest.raises(InputError, match="is mounted") as e:
            run_copy(CopyRequest(src=str(src), dst=dev, host_memory=True, force=True))
        assert "even with --force" in (e.value.hint or "")
    finally:
        subprocess.run(["umount", str(mnt)], check=False)
        mnt.rmdir()


def test_a_loop_device_is_predicted_refused_by_the_block_layer(
    odirect_dir: Path, loop: LoopFactory
) -> None:
    dev = loop(image(odirect_dir, "disk.img", M))
    client = client_of(dev, "/")
    assert client.block == os.path.basename(dev) and not client.is_nvme
    p = predict("/", Bdf.parse("0000:03:00.0"), client)
    assert p.refuse is True and "not an NVMe namespace" in p.explanation[0]


def test_unrecognised_data_on_dst_also_needs_force(odirect_dir: Path, loop: LoopFactory) -> None:
    src = odirect_dir / "src"
    write_random(src, 64 * K)
    img = image(odirect_dir, "disk.img", 2 * M)
    with open(img, "r+b") as f:
        f.seek(40_000)
        f.write(b"someone's raw data")
    before = sha(img)
    dev = loop(img)
    with pytest.raises(InputError, match="not a recognised file system, but not blank"):
        run_copy(CopyRequest(src=str(src), dst=dev, host_memory=True))
    assert sha(img) == before
