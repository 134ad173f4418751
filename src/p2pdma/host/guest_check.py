"""Exercise the Use face on a real P2P-capable kernel (run inside a QEMU guest).

    python -m p2pdma.host.guest_check [--provider BDF] [--size 2M] [--destructive]

Every check prints one machine-readable line::

    P2PDMA-CHECK {"check": "alloc", "status": "pass", ...}

and the run ends with ``P2PDMA-SUMMARY {...}``; the exit code is 0 when no check
failed.  Checks:

``env``       kernel release, providers (``p2pmem/`` dirs), NVMe namespaces, predictions.
``alloc``     mmap of ``allocate``: ``available`` drops by exactly the mapped length, a CPU
              pattern reads back, munmap returns every page.
``copy``      (``--destructive``) random data written to namespace A, copied A → B through
              the provider's CMB for a pair predicted allowed, verified byte for byte.
``refusal``   O_DIRECT read from a namespace predicted NOT_SUPPORTED into the P2P buffer:
              the kernel must refuse (EREMOTEIO on 6.x, EINVAL on 7.x), as predicted.
``remove``    (``--destructive``) the provider is removed while a buffer is mapped: CPU
              access must become a clean SIGBUS report, I/O must fail, munmap must work,
              nothing may hang; the bus is rescanned afterwards.
``remove-copy`` (``--destructive``) the provider is removed while a copy between two other
              namespaces streams through its memory: the copy must fail with an error
              (never a verified success), nothing may hang; rescanned afterwards.

``--destructive`` overwrites the first ``--size`` bytes of NVMe namespaces and removes a
PCI device: use it only in a scratch guest.
"""

from __future__ import annotations

import argparse
import errno
import json
import os
import re
import signal
import sys
import threading
import time
from collections.abc import Callable
from typing import Any

from p2pdma.errors import P2PDMAError
from p2pdma.fabric.bdf import Bdf
from p2pdma.host.io import HostBuffer, IoFailure, parse_size
from p2pdma.host.p2pmem import (
    cpu_pattern_check,
    locate,
    map_p2pmem,
    read_p2pmem_state,
)
from p2pdma.host.predict import (
    Client,
    Prediction,
    nvme_namespaces,
    predict,
    refusal_errno,
)
from p2pdma.host.runner import CopyRequest, classify_io_error, run_copy
from p2pdma.host.sysroot import kernel_config_option, kernel_release, pci_device_dir, under

Result = dict[str, Any]
PREFIX = "P2PDMA-CHECK"
CHECKS = ("alloc", "copy", "refusal", "remove", "remove-copy")


def emit(check: str, status: str, **data: Any) -> Result:
    result: Result = {"check": check, "status": status, **data}
    print(f"{PREFIX} {json.dumps(result, default=str, sort_keys=False)}", flush=True)
    return result


def providers(root: str) -> list[Bdf]:
    base = under(root, "sys/bus/pci/devices")
    out: list[Bdf] = []
    if base.is_dir():
        for dev in sorted(base.iterdir()):
            if (dev / "p2pmem" / "allocate").exists():
                out.append(Bdf.parse(dev.name))
    return out


def _dev_path(block: str) -> str:
    return f"/dev/{block}"


def _predictions(root: str, provider: Bdf, kernel: str | None) -> dict[str, Prediction]:
    out: dict[str, Prediction] = {}
    for block, bdf in nvme_namespaces(root).items():
        # From sysfs, not from /dev: the answer must not depend on device nodes.
        m = re.match(r"^(nvme\d+)", block)
        controller = m[1] if m else None
        client = Client(_dev_path(block), block, controller, bdf, True,
                        None if bdf else f"no PCI function found for {block}")
        out[block] = predict(root, provider, client, kernel=kernel)
    return out


def check_env(root: str, provs: list[Bdf], preds: dict[Bdf, dict[str, Prediction]]) -> Result:
    release = kernel_release(root)
    config, source = kernel_config_option(root, "CONFIG_PCI_P2PDMA", release)
    data: dict[str, Any] = {
        "kernel": release, "config_pci_p2pdma": config, "config_source": source,
        "providers": {}, "namespaces": {k: str(v) for k, v in nvme_namespaces(root).items()},
    }
    for p in provs:
        try:
            data["providers"][str(p)] = read_p2pmem_state(root, p).to_json()
        except P2PDMAError as err:
            data["providers"][str(p)] = {"error": str(err)}
    data["predictions"] = {
        str(p): {b: {"map_type": pr.map_type, "refuse": pr.refuse, "distance": pr.distance}
                 for b, pr in by_block.items()}
        for p, by_block in preds.items()
    }
    status = "pass" if provs else "fail"
    if not provs:
        data["why"] = ("no device has p2pmem/allocate (kernel < 6.2, no CONFIG_PCI_P2PDMA, "
                       "or no CMB)")
    return emit("env", status, **data)


def check_alloc(root: str, provider: Bdf, size: int) -> Result:
    try:
        with map_p2pmem(root, provider, size) as buf:
            origin = locate(buf)
            cpu = cpu_pattern_check(buf.view)
        before, mapped, after = buf.before, buf.after_map, buf.after_unmap
        dropped = None if mapped is None else before.available - mapped.available
        restored = after is not None and after.available == before.available
        ok = dropped == buf.length and restored and cpu.ok
        return emit(
            "alloc", "pass" if ok else "fail", provider=str(provider), length=buf.length,
            available_before=before.available,
            available_mapped=None if mapped is None else mapped.available,
            available_after=None if after is None else after.available,
            dropped=dropped, restored=restored, cpu=cpu.detail, origin=origin.to_json(),
        )
    except P2PDMAError as err:
        return emit("alloc", "fail", provider=str(provider), error=err.to_json())


def _fill_random(path: str, size: int) -> None:
    """Write ``size`` random bytes at offset 0 of a block device with O_DIRECT."""
    fd = os.open(path, os.O_RDWR | os.O_DIRECT | os.O_EXCL)
    try:
        with HostBuffer(1 << 20) as buf:
            done = 0
            while done < size:
                n = min(1 << 20, size - done)
                buf.view[:n] = os.urandom(n)
                os.pwritev(fd, [buf.view[:n]], done)
                done += n
        os.fsync(fd)
    finally:
        os.close(fd)


def check_copy(root: str, provider: Bdf, preds: dict[str, Prediction], size: int,
               destructive: bool, kernel: str | None) -> Result:
    allowed = [b for b, p in preds.items() if p.refuse is False]
    candidates = allowed if len(allowed) >= 2 else [b for b, p in preds.items() if not p.refuse]
    if not destructive:
        return emit("copy", "skip", why="needs --destructive (overwrites NVMe namespaces)")
    if len(candidates) < 2:
        return emit("copy", "skip", provider=str(provider),
                    why="fewer than two namespaces the provider may reach",
                    predictions={b: p.map_type for b, p in preds.items()})
    src, dst = _dev_path(candidates[0]), _dev_path(candidates[1])
    try:
        _fill_random(src, size)
        req = CopyRequest(src=src, dst=dst, via=provider, size=size, chunk=min(size, 1 << 20),
                          threads=2, verify=True, force=True, root=root, kernel=kernel)
        report = run_copy(req)
        return emit("copy", "pass" if report.ok else "fail", provider=str(provider), src=src,
                    dst=dst, report=report.to_json())
    except P2PDMAError as err:
        return emit("copy", "fail", provider=str(provider), src=src, dst=dst,
                    predicted=[p.to_json() for b, p in preds.items()
                               if b in candidates[:2]], error=err.to_json())


def check_refusal(root: str, provider: Bdf, preds: dict[str, Prediction]) -> Result:
    refused = [b for b, p in preds.items() if p.refuse and p.map_type == "NOT_SUPPORTED"]
    if not refused:
        return emit("refusal", "skip", provider=str(provider),
                    why="no namespace is predicted NOT_SUPPORTED for this provider "
                    "(build a topology with two root ports, no AMD CPU)",
                    predictions={b: p.map_type for b, p in preds.items()})
    block = refused[0]
    path = _dev_path(block)
    want = refusal_errno(root)
    try:
        with map_p2pmem(root, provider, 1 << 16) as buf:
            fd = os.open(path, os.O_RDONLY | os.O_DIRECT)
            view = buf.view
            try:
                os.preadv(fd, [view[:4096]], 0)
                got = None
            except OSError as err:
                got = err
            finally:
                view.release()
                os.close(fd)
            message = None
            if got is not None:
                message = str(classify_io_error(IoFailure("read", path, 0, got), p2p=buf,
                                                predictions=[preds[block]], root=root))
    except P2PDMAError as err:
        return emit("refusal", "fail", provider=str(provider), error=err.to_json())
    got_name = None if got is None else errno.errorcode.get(got.errno or 0, str(got.errno))
    ok = got_name == want
    return emit("refusal", "pass" if ok else "fail", provider=str(provider), client=path,
                expected_errno=want, got_errno=got_name, prediction=preds[block].to_json(),
                message=message)


def _run_with_timeout(fn: Callable[[], None], seconds: float) -> tuple[bool, str | None]:
    box: list[str] = []

    def target() -> None:
        try:
            fn()
        except OSError as err:
            box.append(f"{type(err).__name__}: {err}")

    t = threading.Thread(target=target, daemon=True)
    t.start()
    t.join(seconds)
    return (not t.is_alive()), (box[0] if box else None)


def _write(path: str, text: str) -> None:
    with open(path, "w") as f:
        f.write(text)


def _rescan(root: str, provider: Bdf, timeout: float) -> bool:
    rescan = str(under(root, "sys/bus/pci/rescan"))
    back, _ = _run_with_timeout(lambda: _write(rescan, "1"), timeout)
    deadline = time.monotonic() + timeout
    while back and time.monotonic() < deadline and provider not in providers(root):
        time.sleep(0.2)
    return provider in providers(root)


def check_remove_during_copy(root: str, provider: Bdf, preds: dict[str, Prediction],
                             destructive: bool, timeout: float, kernel: str | None) -> Result:
    """Remove the provider while a copy streams through its memory: the copy must end
    with an error (not a verified success), and nothing may hang."""
    name = "remove-copy"
    if not destructive:
        return emit(name, "skip", why="needs --destructive (removes a PCI device)")
    if provider not in providers(root):
        _rescan(root, provider, timeout)
    cands = [b for b, p in preds.items() if p.refuse is False and p.client.bdf != provider]
    if len(cands) < 2:
        return emit(name, "skip", provider=str(provider),
                    why="needs two namespaces, not on the provider, that it may reach")
    src, dst = _dev_path(cands[0]), _dev_path(cands[1])
    size = 4 << 20
    _fill_random(src, size)
    started = threading.Event()
    box: dict[str, Any] = {}

    def progress(moved: int, total: int) -> None:
        started.set()

    def work() -> None:
        req = CopyRequest(src=src, dst=dst, via=provider, size=size, chunk=256 << 10,
                          duration=timeout, force=True, root=root, kernel=kernel)
        try:
            box["report"] = run_copy(req, progress=progress)
        except P2PDMAError as err:
            box["error"] = err

    worker = threading.Thread(target=work, daemon=True)
    worker.start()
    if not started.wait(timeout):
        worker.join(timeout)
        return emit(name, "fail", provider=str(provider), why="the copy never started",
                    error=box["error"].to_json() if "error" in box else None)
    time.sleep(0.5)  # let several chunks go through first
    remove = str(pci_device_dir(root, provider) / "remove")
    removed, failure = _run_with_timeout(lambda: _write(remove, "1"), timeout)
    worker.join(2 * timeout)
    hung = worker.is_alive()
    rescanned = _rescan(root, provider, timeout)
    err = box.get("error")
    # Must end as an error that names the revocation, never as a (verified) success.
    ok = removed and not hung and getattr(err, "errno_name", None) == "ENODEV"
    return emit(
        name, "pass" if ok else "fail", provider=str(provider), src=src, dst=dst,
        remove_returned=removed, remove_error=failure, copy_hung=hung, rescanned=rescanned,
        error=None if err is None else err.to_json(),
        report=box["report"].to_json() if "report" in box else None,
    )


def check_remove(root: str, provider: Bdf, destructive: bool, timeout: float) -> Result:
    if not destructive:
        return emit("remove", "skip", why="needs --destructive (removes a PCI device)")
    others = [b for b, bdf in nvme_namespaces(root).items() if bdf != provider]
    steps: dict[str, Any] = {}
    try:
        buf = map_p2pmem(root, provider, 1 << 16)
    except P2PDMAError as err:
        return emit("remove", "fail", provider=str(provider), error=err.to_json())
    try:
        steps["cpu_before"] = cpu_pattern_check(buf.view).detail
        remove = str(pci_device_dir(root, provider) / "remove")
        finished, failure = _run_with_timeout(lambda: _write(remove, "1"), timeout)
        steps["remove_returned"] = finished
        steps["remove_error"] = failure
        if not finished:
            return emit("remove", "fail", provider=str(provider), steps=steps,
                        why=f"removing the provider did not finish within {timeout}s")
        cpu = cpu_pattern_check(buf.view)
        steps["cpu_after"] = cpu.detail
        sigbus = cpu.signal == signal.SIGBUS
        io_failed: bool | None = None
        if others:
            path = _dev_path(others[0])
            fd = os.open(path, os.O_RDONLY | os.O_DIRECT)
            view = buf.view
            try:
                os.preadv(fd, [view[:4096]], 0)
                io_failed = False
                steps["io_after"] = "read into the revoked buffer SUCCEEDED"
            except OSError as e:
                io_failed = True
                steps["io_after"] = f"{errno.errorcode.get(e.errno or 0)}: {e.strerror}"
            finally:
                view.release()
                os.close(fd)
        buf.close()
        steps["munmap"] = "ok"
    finally:
        buf.close()
        steps["rescanned"] = _rescan(root, provider, timeout)
    ok = sigbus and io_failed is not False
    return emit("remove", "pass" if ok else "fail", provider=str(provider), steps=steps,
                sigbus_caught=sigbus, io_failed=io_failed)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m p2pdma.host.guest_check",
                                 description=__doc__.split("\n\n")[0] if __doc__ else None)
    ap.add_argument("--root", default="/", help="sysfs/procfs root (default /)")
    ap.add_argument("--provider", help="the P2P memory provider to use (default: the first)")
    ap.add_argument("--size", default="2M", help="bytes for alloc/copy (default 2M)")
    ap.add_argument("--kernel", help="predict with this kernel version's rules")
    ap.add_argument("--destructive", action="store_true",
                    help="allow copy (overwrites namespaces) and remove (removes the provider)")
    ap.add_argument("--timeout", type=float, default=30.0,
                    help="seconds before a sysfs remove/rescan is reported as hung")
    ap.add_argument("--only", action="append", choices=CHECKS,
                    help="run only these checks (repeatable)")
    args = ap.parse_args(argv)
    root = args.root
    size = parse_size(args.size)
    provs = providers(root)
    chosen = Bdf.parse(args.provider) if args.provider else (provs[0] if provs else None)
    preds = {p: _predictions(root, p, args.kernel) for p in provs}
    results = [check_env(root, provs, preds)]
    want = set(args.only or CHECKS)
    if chosen is None:
        for name in sorted(want):
            results.append(emit(name, "skip", why="no P2P memory provider"))
    else:
        p_preds = preds.get(chosen) or _predictions(root, chosen, args.kernel)
        checks: list[tuple[str, Callable[[], Result]]] = [
            ("alloc", lambda: check_alloc(root, chosen, size)),
            ("copy", lambda: check_copy(root, chosen, p_preds, size, args.destructive,
                                        args.kernel)),
            ("refusal", lambda: check_refusal(root, chosen, p_preds)),
            # last: it takes the provider away for a while
            ("remove", lambda: check_remove(root, chosen, args.destructive, args.timeout)),
            ("remove-copy", lambda: check_remove_during_copy(
                root, chosen, p_preds, args.destructive, args.timeout, args.kernel)),
        ]
        for name, check in checks:
            if name not in want:
                continue
            try:
                results.append(check())
            except (OSError, P2PDMAError) as err:  # one broken check must not hide the rest
                results.append(emit(name, "fail", provider=str(chosen),
                                    error=f"{type(err).__name__}: {err}"))
    counts = {s: sum(1 for r in results if r["status"] == s) for s in ("pass", "fail", "skip")}
    print(f"P2PDMA-SUMMARY {json.dumps(counts)}", flush=True)
    return 1 if counts["fail"] else 0


if __name__ == "__main__":
    sys.exit(main())
