"""A lean WebSocket client that notes when each frame reached this machine's kernel.

On a 2-core box the load generator shares the CPU with the server it measures: a
client reading 6,000 frames a second on one event loop wakes its connections in
batches, so the time it *reads* a frame moves with its own backlog (p99 ~30 ms at
1,000 streams, measured with the trio-websocket client). The kernel stamps every
packet as it is received (`SO_TIMESTAMPNS`); over loopback that is the moment the
server's write reached the socket, whatever this process was doing. Both times are
kept: `wire` (the kernel's) shows the server's delivery cadence, `read` (this
process's) what a client on this box saw.

Only what the synthetic streams need: the opening handshake, masked text frames out,
whole unmasked messages in, pings answered. No extensions, no fragmentation.
"""

from __future__ import annotations

import base64
import itertools
import json
import os
import socket
import struct
import time
from collections.abc import Iterator
from urllib.parse import urlsplit

import attrs
import trio

from ._client import RequestTiming, note_audio, note_message
from ._texts import Job

# Linux: <asm-generic/socket.h> SO_TIMESTAMPNS_OLD, also the control message's type.
SO_TIMESTAMPNS = getattr(socket, "SO_TIMESTAMPNS", 35)
_TIMESPEC = struct.Struct("@ll")
_READ_SIZE = 256 * 1024
_OP_CONTINUATION, _OP_TEXT, _OP_BINARY = 0x0, 0x1, 0x2
_OP_CLOSE, _OP_PING, _OP_PONG = 0x8, 0x9, 0xA
_ids = itertools.count(1)


class WireError(Exception):
    """The handshake failed, the peer closed, or it sent what this client cannot read."""


@attrs.frozen
class Message:
    """One whole message: `wire` is the kernel's receive time of its last byte (time.time
    seconds), `read` when this process read it (perf_counter seconds)."""

    data: bytes | str
    wire: float
    read: float


@attrs.define(eq=False)
class WireConnection:
    sock: trio.socket.SocketType
    _buffer: bytearray = attrs.Factory(bytearray)
    _pending: list[Message] = attrs.Factory(list)
    _pongs: list[bytes] = attrs.Factory(list)
    _wire: float = 0.0
    _read: float = 0.0

    @classmethod
    async def open(cls, url: str) -> WireConnection:
        parts = urlsplit(url)
        host, port = parts.hostname or "127.0.0.1", parts.port or 80
        sock = trio.socket.socket(trio.socket.AF_INET, trio.socket.SOCK_STREAM)
        try:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            sock.setsockopt(socket.SOL_SOCKET, SO_TIMESTAMPNS, 1)
            await sock.connect((host, port))
            connection = cls(sock)
            await connection._handshake(host, port, parts.path or "/")
        except BaseException:
            sock.close()
            raise
        return connection

    async def _handshake(self, host: str, port: int, path: str) -> None:
        key = base64.b64encode(os.urandom(16)).decode()
        request = (
            f"GET {path} HTTP/1.1\r\nHost: {host}:{port}\r\nUpgrade: websocket\r\n"
            f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
            "Sec-WebSocket-Version: 13\r\n\r\n"
        )
        await self._send_all(request.encode())
        while (end := self._buffer.find(b"\r\n\r\n")) < 0:
            if len(self._buffer) > 16384:
                raise WireError("handshake response too long")
            await self._fill()
        head = bytes(self._buffer[:end])
        del self._buffer[: end + 4]
        if not head.startswith(b"HTTP/1.1 101"):
            raise WireError(f"handshake refused: {head.splitlines()[0]!r}")

    async def send_text(self, text: str) -> None:
        await self._send_all(_client_frame(_OP_TEXT, text.encode()))

    async def receive(self) -> Message:
        """The next text or binary message (pings are answered on the way)."""
        while not self._pending:
            await self._fill()
            self._pending.extend(self._parse())
            while self._pongs:
                await self._send_all(self._pongs.pop(0))
        return self._pending.pop(0)

    async def aclose(self) -> None:
        try:
            await self._send_all(_client_frame(_OP_CLOSE, struct.pack("!H", 1000)))
        except OSError:
            pass
        finally:
            self.sock.close()

    async def _send_all(self, data: bytes) -> None:
        view = memoryview(data)
        while view:
            sent = await self.sock.send(view)
            view = view[sent:]

    async def _fill(self) -> None:
        data, ancillary, _flags, _addr = await self.sock.recvmsg(_READ_SIZE, 64)
        if not data:
            raise WireError("connection closed by the server")
        self._buffer += data
        self._wire = _kernel_time(ancillary)
        self._read = time.perf_counter()

    def _parse(self) -> Iterator[Message]:
        """Whole messages in the buffer, stamped with the read that completed them."""
        buffer = self._buffer
        while len(buffer) >= 2:
            first, second = buffer[0], buffer[1]
            if second & 0x80:
                raise WireError("masked frame from the server")
            length, offset = second & 0x7F, 2
            if length == 126:
                if len(buffer) < 4:
                    return
                (length,), offset = struct.unpack_from("!H", buffer, 2), 4
            elif length == 127:
                if len(buffer) < 10:
                    return
                (length,), offset = struct.unpack_from("!Q", buffer, 2), 10
            if len(buffer) < offset + length:
                return
            payload = bytes(buffer[offset : offset + length])
            del buffer[: offset + length]
            opcode = first & 0x0F
            if not first & 0x80 or opcode == _OP_CONTINUATION:
                raise WireError("fragmented message")
            if opcode == _OP_PING:
                self._pongs.append(_client_frame(_OP_PONG, payload))
            elif opcode == _OP_CLOSE:
                raise WireError(f"closed by the server: {payload[2:].decode(errors='replace')}")
            elif opcode == _OP_TEXT:
                yield Message(payload.decode(), self._wire, self._read)
            elif opcode == _OP_BINARY:
                yield Message(payload, self._wire, self._read)


def _client_frame(opcode: int, payload: bytes) -> bytes:
    """RFC 6455 5.2: one whole frame, masked (a client must mask)."""
    mask = os.urandom(4)
    length = len(payload)
    if length < 126:
        header = struct.pack("!BB", 0x80 | opcode, 0x80 | length)
    elif length < 1 << 16:
        header = struct.pack("!BBH", 0x80 | opcode, 0x80 | 126, length)
    else:
        header = struct.pack("!BBQ", 0x80 | opcode, 0x80 | 127, length)
    key = int.from_bytes((mask * (length // 4 + 1))[:length], "big")
    masked = (int.from_bytes(payload, "big") ^ key).to_bytes(length, "big")
    return header + mask + masked


def _kernel_time(ancillary: list[tuple[int, int, bytes]]) -> float:
    for level, kind, data in ancillary:
        if level == socket.SOL_SOCKET and kind == SO_TIMESTAMPNS:
            seconds, nanoseconds = _TIMESPEC.unpack_from(data)
            return seconds + nanoseconds * 1e-9
    return time.time()  # no stamp (not Linux): this process's time instead


async def synthesize(connection: WireConnection, job: Job, *, sent: float) -> RequestTiming:
    """One streaming request on `connection`, read to its terminal message; every audio
    chunk's read time goes in `arrivals` and its kernel time in `wire_arrivals`."""
    request_id = f"w{next(_ids)}"
    message = json.dumps(
        {"type": "tts_request", "request_id": request_id, "params": job.params()},
        separators=(",", ":"),
    )
    timing = RequestTiming(sent=sent, arrivals=[], wire_arrivals=[])
    assert timing.arrivals is not None
    assert timing.wire_arrivals is not None
    await connection.send_text(message)
    while True:
        received = await connection.receive()
        if isinstance(received.data, bytes):
            if note_audio(timing, received.data, received.read):
                timing.arrivals.append(received.read)
                timing.wire_arrivals.append(received.wire)
        elif note_message(timing, received.data, received.read):
            return timing
