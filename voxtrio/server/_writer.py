"""Serialised, untearable writes to one WebSocket connection.

A message goes out as one `writev` of [WebSocket header + frame head, payload]
straight to the TCP socket when the connection allows it (`direct_socket`): the
payload is never copied, and when the lock is free and the socket takes it all (the
usual case) the write costs no lock wait, no cancel scope and no task switch. The
per-chunk event-loop work this removes (wsproto's frame build and payload copy,
trio-websocket's and Trio's stream layers) is measured in docs/BENCHMARKS.md.

`try_send_frame` is the same write without waiting, for a chunk handed over in a
mailbox callback (speech/_mailbox.py): all or nothing is decided before a byte goes,
and a write the socket takes only in part is finished by a task of the connection,
holding the connection's write turns until then.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import structlog
import trio
from trio_websocket import ConnectionClosed, WebSocketConnection

from voxtrio.server._activity import PeerActivity
from voxtrio.server._websocket import (
    OPCODE_BINARY,
    OPCODE_TEXT,
    VoxWebSocketConnection,
    WriteTurn,
    message_header,
)

Buffer = bytes | bytearray | memoryview

log = structlog.get_logger("voxtrio.server")

# How a write timeout is reported (logs, close reason): the client read nothing.
STALLED = "client read nothing"


class ConnectionGone(Exception):
    """The peer closed the connection or stopped reading; nothing more can be sent."""


class FrameWriter:
    """One lock for all writers of a connection, each write shielded with a deadline.

    A cancelled request must not tear a half-sent frame (the next frame would be
    garbage to the client), so a write, once begun, is finished shielded. It still
    has a named deadline, `write_timeout`: a client that stops reading cannot hold a
    request (and its model slot) forever. The deadline counts from the last bytes the
    client accepted (`activity`), so a large message to a client that reads slowly but
    steadily is delivered.
    """

    def __init__(
        self, ws: WebSocketConnection, *, write_timeout: float, activity: PeerActivity
    ) -> None:
        self._ws = ws
        self._activity = activity
        self._direct = ws if isinstance(ws, VoxWebSocketConnection) else None
        self._lock = WriteTurn()
        self.write_timeout = write_timeout
        self.broken: str | None = None
        self.frames_sent = 0
        self.bytes_sent = 0
        # Where the rest of a handed-over write is finished: the connection's nursery,
        # while it runs (None: no handover).
        self.tails: trio.Nursery | None = None

    async def send(self, message: str | bytes) -> None:
        """Send one message; raise ConnectionGone if it cannot be delivered."""
        if isinstance(message, str):
            await self._send(OPCODE_TEXT, (message.encode(),), message)
        else:
            await self._send(OPCODE_BINARY, (message,), message)

    async def send_frame(self, head: bytes, payload: Buffer) -> None:
        """Send one binary message, `head` then `payload`, without joining them."""
        await self._send(OPCODE_BINARY, (head, payload), None)

    def try_send_text(self, message: str) -> bool:
        """`send` of a text message now, or not at all (see `try_send_frame`)."""
        return self._try_send(OPCODE_TEXT, (message.encode(),))

    def try_send_frame(self, head: bytes, payload: Buffer) -> bool:
        """`send_frame` now, from any code on the Trio thread, or not at all.

        True: the message is sent, or its first bytes are and the rest is finished by
        a task in `tails` (shielded, within `write_timeout`; later writes wait for
        it). False, with nothing sent: the connection is busy, broken or not a plain
        socket; the caller sends it with `send_frame` instead.
        """
        return self._try_send(OPCODE_BINARY, (head, payload))

    def _free_socket(
        self,
    ) -> tuple[VoxWebSocketConnection, trio.socket.SocketType] | None:
        """The connection and its TCP socket, while a direct write may start now: a plain
        open connection and both write turns free."""
        ws = self._direct
        sock = ws.direct_socket() if ws is not None else None
        if ws is None or sock is None or self._lock.locked() or ws.stream_lock.locked():
            return None
        return ws, sock

    def _try_send(self, opcode: int, parts: Sequence[Buffer]) -> bool:
        tails = self.tails
        if tails is None or self.broken is not None or (free := self._free_socket()) is None:
            return False
        ws, sock = free
        size = sum(len(part) for part in parts)
        vector = _vector(opcode, size, parts)
        try:
            rest = self._write_some(sock, vector)
        except OSError:
            return False  # nothing went: `send_frame` meets the error and reports it
        if rest is vector:
            return False  # the socket is full: nothing went, the request task waits
        if rest:
            self._lock.acquire_nowait()
            ws.stream_lock.acquire_nowait()
            try:
                tails.start_soon(self._finish_tail, ws, sock, rest)
            except RuntimeError:  # the connection's nursery has closed: so has the peer
                self.broken = "connection closed mid-message"
                ws.stream_lock.release()
                self._lock.release()
        self._count(size)
        return True

    async def _finish_tail(
        self, ws: VoxWebSocketConnection, sock: trio.socket.SocketType, rest: list[memoryview]
    ) -> None:
        try:
            with trio.CancelScope(shield=True):
                await self._finish(ws, sock, rest)
        except ConnectionGone:
            pass  # `broken` says why; the request's next write raises it
        except Exception as exc:  # never the connection's whole nursery for one write
            self.broken = f"write failed: {type(exc).__name__}"
            log.exception("handover_tail_failed")
        finally:
            ws.stream_lock.release()
            self._lock.release()

    async def _send(
        self, opcode: int, parts: Sequence[Buffer], message: str | bytes | None
    ) -> None:
        # A cancelled request sends nothing more (and waiting for the lock is cancellable).
        await trio.lowlevel.checkpoint_if_cancelled()
        if self.broken is not None:
            raise ConnectionGone(self.broken)
        size = sum(len(part) for part in parts)
        # No checkpoint from the checks to the write: nothing can take the locks between.
        if (free := self._free_socket()) is not None:
            ws, sock = free
            rest = _vector(opcode, size, parts)
            with _held(self._lock), _held(ws.stream_lock):
                try:
                    rest = self._write_some(sock, rest)
                except OSError as exc:
                    raise ConnectionGone(await self._broken(ws, exc)) from None
                if rest:
                    await self._finish(ws, sock, rest)
            self._count(size)
            return
        async with self._lock:
            if self.broken is not None:
                raise ConnectionGone(self.broken)
            await self._finish(
                self._direct, None, None, opcode=opcode, parts=parts, message=message
            )
        self._count(size)

    async def _finish(
        self,
        ws: VoxWebSocketConnection | None,
        sock: trio.socket.SocketType | None,
        rest: list[memoryview] | None,
        *,
        opcode: int = OPCODE_BINARY,
        parts: Sequence[Buffer] = (),
        message: str | bytes | None = None,
    ) -> None:
        """Write the rest (or all) of a message, shielded, within `write_timeout`."""
        with self._activity.write_deadline(self.write_timeout) as scope:
            if rest is not None:  # a direct write under way: the locks are held
                assert ws is not None
                assert sock is not None
                await self._drain(ws, sock, rest)
            elif ws is not None and (sock := ws.direct_socket()) is not None:
                async with ws.stream_lock:
                    await self._drain(ws, sock, _vector(opcode, sum(map(len, parts)), parts))
            else:
                if message is None:
                    message = b"".join(parts)
                try:
                    await self._ws.send_message(message)
                except ConnectionClosed as exc:
                    self.broken = f"connection closed ({exc.reason})"
                    raise ConnectionGone(self.broken) from None
        if scope.cancelled_caught:
            # Part of a frame may be on the wire: the connection is unusable now.
            self.broken = f"{STALLED} for {self.write_timeout:g} s"
            raise ConnectionGone(self.broken)

    async def _drain(
        self, ws: VoxWebSocketConnection, sock: trio.socket.SocketType, rest: list[memoryview]
    ) -> None:
        try:
            while rest := self._write_some(sock, rest):
                await trio.lowlevel.wait_writable(sock)
        except (OSError, trio.ClosedResourceError) as exc:
            raise ConnectionGone(await self._broken(ws, exc)) from None

    async def _broken(self, ws: VoxWebSocketConnection, exc: BaseException) -> str:
        reason = await ws.abort_broken()
        self.broken = f"connection closed ({reason}: {type(exc).__name__})"
        return self.broken

    def _write_some(
        self, sock: trio.socket.SocketType, parts: list[memoryview]
    ) -> list[memoryview]:
        """`_write_some`, telling the peer's activity what the kernel took (the deadline)."""
        before = sum(map(len, parts))
        rest = _write_some(sock, parts)
        if (taken := before - sum(map(len, rest))) > 0:
            self._activity.accepted(taken)
        return rest

    def _count(self, size: int) -> None:
        self.frames_sent += 1
        self.bytes_sent += size


class _held:
    """Hold a free Trio lock for a block without a checkpoint (it must be free)."""

    def __init__(self, lock: WriteTurn) -> None:
        self._lock = lock

    def __enter__(self) -> None:
        self._lock.acquire_nowait()

    def __exit__(self, *exc: object) -> None:
        self._lock.release()


# A first part up to this size is copied behind the WebSocket header (one iovec less).
_JOIN_AT_MOST = 1024


def _vector(opcode: int, size: int, parts: Sequence[Buffer]) -> list[memoryview]:
    """The WebSocket header (joined to a small first part), then the parts uncopied."""
    header = message_header(opcode, size)
    if len(parts[0]) <= _JOIN_AT_MOST:
        return [memoryview(header + parts[0]), *(memoryview(part) for part in parts[1:])]
    return [memoryview(header), *(memoryview(part) for part in parts)]


def _write_some(sock: trio.socket.SocketType, parts: list[memoryview]) -> list[memoryview]:
    """One non-blocking writev; what is left of `parts` (empty once all is written)."""
    try:
        written = os.writev(sock.fileno(), parts)
    except BlockingIOError:
        return parts
    while parts and written >= len(parts[0]):
        written -= len(parts[0])
        parts = parts[1:]
    if parts and written:
        parts = [parts[0][written:], *parts[1:]]
    return parts
