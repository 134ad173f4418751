"""An emulated RDMA NIC and the remote peer at the other end of its wire.

The NIC is a DMA client: it receives bytes from the wire straight into
registered memory (posted writes) and sends from registered memory (reads).
The "network" is a connected socket pair: AF_UNIX in process, or TCP on
127.0.0.1 only.  The remote peer runs in a thread and speaks a trivial
length-prefixed protocol; it hashes what it sends and receives, so both ends
can verify the data end to end.
"""

from __future__ import annotations

import hashlib
import socket
import struct
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from p2pdma.errors import InputError, kerr
from p2pdma.fabric.bdf import Bdf

if TYPE_CHECKING:
    from p2pdma.emu.dma_engine import DmaEngine

HEADER = struct.Struct("<QI")  # a command: offset in the namespace, length
RESPONSE = struct.Struct("<iI")  # a read's answer: status (0 or an errno), data length


@dataclass(frozen=True)
class MemoryRegion:
    """``ibv_reg_mr``: a DMA range the NIC may touch (address as the NIC sees it)."""

    dma_addr: int
    length: int
    lkey: int

    def covers(self, addr: int, length: int) -> bool:
        return self.dma_addr <= addr and addr + length <= self.dma_addr + self.length


def wire_pair(kind: str = "unix") -> tuple[socket.socket, socket.socket]:
    """Two connected sockets: (the NIC's end, the remote peer's end)."""
    if kind == "unix":
        a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        for x in (a, b):  # room for a few requests in flight, as a NIC's queues have
            x.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4 << 20)
            x.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
        return a, b
    if kind == "tcp":
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as lst:
            lst.bind(("127.0.0.1", 0))  # loopback only: the emulator never leaves the host
            lst.listen(1)
            c = socket.create_connection(lst.getsockname())
            s, _ = lst.accept()
        for x in (c, s):
            x.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return s, c
    raise InputError(f"wire {kind!r} is not 'unix' or 'tcp'")


class RdmaNic:
    """One NIC function.  ``client`` is what P2PDMA decisions are asked about."""

    def __init__(self, bdf: Bdf, engine: DmaEngine, wire: socket.socket) -> None:
        self.bdf = bdf
        self.engine = engine
        self.wire = wire
        self._mrs: dict[int, MemoryRegion] = {}
        self._next_key = 0x100

    def reg_mr(self, dma_addr: int, length: int) -> MemoryRegion:
        self._next_key += 1
        mr = MemoryRegion(dma_addr, length, self._next_key)
        self._mrs[mr.lkey] = mr
        return mr

    def dereg_mr(self, mr: MemoryRegion) -> None:
        self._mrs.pop(mr.lkey, None)

    def _check(self, mr: MemoryRegion, addr: int, length: int) -> None:
        if self._mrs.get(mr.lkey) is not mr or not mr.covers(addr, length):
            raise kerr("EFAULT", f"access {addr:#x}+{length:#x} outside memory region "
                       f"lkey {mr.lkey:#x}", where=str(self.bdf),
                       hint="register the buffer with reg_mr first")

    def recv_header(self) -> tuple[int, int] | None:
        """The next command capsule header (offset, length), or None at end of stream."""
        buf = bytearray(HEADER.size)
        view = memoryview(buf)
        got = 0
        while got < HEADER.size:
            n = self.wire.recv_into(view[got:])
            if n == 0:
                if got == 0:
                    return None
                raise kerr("ECONNRESET", "peer closed inside a header", where=str(self.bdf))
            got += n
        off, length = HEADER.unpack(buf)
        return off, length

    def receive(self, mr: MemoryRegion, addr: int, length: int) -> None:
        """RDMA data in: the wire's next ``length`` bytes into registered memory."""
        self._check(mr, addr, length)
        self.engine.from_socket(self.bdf, self.wire, addr, length)

    def send(self, mr: MemoryRegion, addr: int, length: int) -> None:
        self._check(mr, addr, length)
        self.engine.to_socket(self.bdf, self.wire, addr, length)

    def send_control(self, data: bytes) -> None:
        self.wire.sendall(data)


# ---------------------------------------------------------------------------
# The remote peer (an NVMe-oF host on the other side of the network)


def pattern_chunks(seed: int, total: int, chunk: int) -> Iterator[memoryview]:
    """Deterministic test data: ``total`` bytes in ``chunk``-sized pieces.  Every piece
    differs (its index is stamped in), so a misplaced chunk cannot verify."""
    import random

    pool = memoryview(random.Random(seed).randbytes(chunk + 8192))  # slices: no copies
    idx = 0
    done = 0
    buf = bytearray(chunk)
    while done < total:
        n = min(chunk, total - done)
        start = (idx * 4104) % 8192
        buf[:n] = pool[start:start + n]
        stamp = struct.pack("<QQ", seed, idx)
        buf[:min(16, n)] = stamp[:min(16, n)]
        yield memoryview(buf)[:n]
        idx += 1
        done += n


@dataclass
class PeerResult:
    sent: int = 0
    received: int = 0
    digest: str = ""
    error: str | None = None
    failed: list[tuple[int, int]] = field(default_factory=list)  # (offset, status)


class RemotePeer:
    """Runs one side of the wire in a thread."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.result = PeerResult()
        self._thread: threading.Thread | None = None

    def start(self, fn: Callable[[], None]) -> None:
        def run() -> None:
            try:
                fn()
            except OSError as e:
                self.result.error = f"{type(e).__name__}: {e}"
        self._thread = threading.Thread(target=run, name="remote-peer", daemon=True)
        self._thread.start()

    def join(self, timeout: float | None = None) -> PeerResult:
        if self._thread is not None:
            self._thread.join(timeout)
        return self.result

    def write_stream(self, seed: int, total: int, chunk: int) -> None:
        """Send ``total`` bytes as write commands (header + data), then close the send side."""
        def go() -> None:
            h = hashlib.blake2b(digest_size=16)
            off = 0
            for piece in pattern_chunks(seed, total, chunk):
                self.sock.sendall(HEADER.pack(off, len(piece)))
                self.sock.sendall(piece)
                h.update(piece)
                off += len(piece)
                self.result.sent = off
            self.result.digest = h.hexdigest()
            self.sock.shutdown(socket.SHUT_WR)
        self.start(go)

    def read_stream(self, total: int, chunk: int) -> None:
        """Ask for ``total`` bytes in ``chunk`` reads and hash what comes back.  Each
        answer is a status header, then the data when the status is 0."""
        def go() -> None:
            h = hashlib.blake2b(digest_size=16)
            buf = bytearray(max(chunk, RESPONSE.size))
            view = memoryview(buf)
            off = 0
            while off < total:
                n = min(chunk, total - off)
                self.sock.sendall(HEADER.pack(off, n))
                if not _recv_exact(self.sock, view[:RESPONSE.size]):
                    self.result.error = f"target closed after {off} bytes"
                    break
                status, length = RESPONSE.unpack(view[:RESPONSE.size])
                if status:
                    self.result.failed.append((off, status))
                elif not _recv_exact(self.sock, view[:length]):
                    self.result.error = f"target closed inside the data at {off}"
                    break
                else:
                    h.update(view[:length])
                    self.result.received += length
                off += n
            self.result.digest = h.hexdigest()
            self.sock.shutdown(socket.SHUT_WR)
        self.start(go)


def _recv_exact(sock: socket.socket, view: memoryview) -> bool:
    got = 0
    while got < len(view):
        n = sock.recv_into(view[got:])
        if n == 0:
            return False
        got += n
    return True
