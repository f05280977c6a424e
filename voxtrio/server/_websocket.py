"""The WebSocket connection under both endpoints: four repairs to trio-websocket 0.12.2.

- Bytes sent right behind the handshake, in the same TCP write, were lost: wsproto's
  server handshake drops h11's trailing data when it accepts, so that first frame was
  never answered. `HeadFirstStream` hands over the request head alone and holds what
  follows until the server has answered the handshake.
- A framing violation (RSV bits, reserved opcode, unmasked frame, oversized control
  frame, bad close code, bad UTF-8) reaches trio-websocket as a CloseConnection event
  that it only answers when the peer sent a close, so the peer saw a TCP drop. Here it
  gets the close frame wsproto chose (1002, or 1007 for bad UTF-8).
- Writes: `direct_socket` lets `FrameWriter` write a whole message straight to the
  TCP socket as one vector (header, frame head, payload uncopied) under the
  connection's stream lock, where trio-websocket builds every frame through wsproto
  (one copy of the payload) and a chain of stream wrappers.
- Message size: every message has the small cap; only a voice upload on the native
  endpoint may be large, and the partial messages of all connections share one byte
  budget, so parked uploads cannot take the server's memory.
- Liveness: every frame read and every slice of bytes the transport takes is noted in
  a `PeerActivity`, so the write timeout and the keepalive judge the peer's progress
  (`_activity.py`), not how long a whole message or the server's own backlog takes.
"""

from __future__ import annotations

import contextlib
import re
import struct
from typing import Literal

import attrs
import trio
from trio_websocket import ConnectionClosed, WebSocketConnection
from trio_websocket._impl import CloseReason, _get_stream_endpoint
from wsproto import WSConnection
from wsproto.connection import ConnectionState
from wsproto.events import BytesMessage, CloseConnection, Ping, Pong, TextMessage

from voxtrio.server._activity import PeerActivity
from voxtrio.server._sniff import ReplayStream

_HEAD_END = b"\r\n\r\n"
_SWITCHING = b"HTTP/1.1 101"
# A close reason must fit a control frame (125 bytes, 2 of them the code).
_MAX_REASON_BYTES = 120
# Where an upload must say what it is: a large message is allowed only if this appears
# within its first `small` characters.
_VOICE_REGISTER = re.compile(r'"type"\s*:\s*"voice_register"')
# Large messages go out in slices, each one a sign that the peer is still reading.
_SEND_SLICE = 64 * 1024


def _socket_fd(stream: trio.abc.Stream) -> int | None:
    """The file descriptor under a socket stream, or one that wraps one as `.stream`."""
    inner = getattr(stream, "stream", stream)
    return inner.socket.fileno() if isinstance(inner, trio.SocketStream) else None


OPCODE_TEXT = 0x1
OPCODE_BINARY = 0x2


def message_header(opcode: int, length: int) -> bytes:
    """RFC 6455 5.2: the header of one whole (FIN), unmasked (server) message."""
    first = 0x80 | opcode
    if length < 126:
        return struct.pack("!BB", first, length)
    if length < 1 << 16:
        return struct.pack("!BBH", first, 126, length)
    return struct.pack("!BBQ", first, 127, length)


class HeadFirstStream(trio.abc.Stream):
    """A server stream that gives the request head alone, then waits for the answer.

    Whatever the client sent after the head is replayed once the server has sent its
    handshake response (only after a 101: a refused client gets end of stream).
    """

    def __init__(self, transport_stream: trio.abc.Stream) -> None:
        self.transport_stream = transport_stream
        self._tail = b""  # the last bytes of the head so far: CRLFCRLF may span reads
        self._head_done = False
        self._held = b""
        self._answered = trio.Event()
        self._switched = False
        self.activity = PeerActivity(_socket_fd(transport_stream))

    async def receive_some(self, max_bytes: int | None = None) -> bytes:
        if not self._head_done:
            data = bytes(await self.transport_stream.receive_some(max_bytes))
            seen = self._tail + data
            end = seen.find(_HEAD_END)
            if end < 0:
                self._tail = seen[-(len(_HEAD_END) - 1) :]
                return data
            cut = end + len(_HEAD_END) - len(self._tail)
            self._head_done = True
            self._held = data[cut:]
            return data[:cut]
        await self._answered.wait()
        if not self._switched:
            return b""
        if self._held:
            size = len(self._held) if max_bytes is None else max_bytes
            data, self._held = self._held[:size], self._held[size:]
            return data
        return bytes(await self.transport_stream.receive_some(max_bytes))

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        if not self._answered.is_set():
            self._switched = bytes(data[: len(_SWITCHING)]) == _SWITCHING
        try:
            view = memoryview(data)
            for start in range(0, len(view), _SEND_SLICE):
                piece = view[start : start + _SEND_SLICE]
                await self.transport_stream.send_all(piece)
                self.activity.accepted(len(piece))
        finally:
            self._answered.set()

    async def wait_send_all_might_not_block(self) -> None:
        await self.transport_stream.wait_send_all_might_not_block()

    async def aclose(self) -> None:
        self._answered.set()
        await self.transport_stream.aclose()


@attrs.define
class PartialMessageBudget:
    """Bytes (characters, for text) held in unfinished messages, across all connections."""

    limit: int
    used: int = 0

    def take(self, size: int) -> bool:
        if self.used + size > self.limit:
            return False
        self.used += size
        return True

    def give_back(self, size: int) -> None:
        self.used -= size


@attrs.frozen
class MessageLimits:
    """How large a message may grow, and the budget its unfinished parts draw on."""

    small: int
    upload: int  # 0: no upload may exceed `small`
    upload_paths: frozenset[str]
    budget: PartialMessageBudget


class WriteTurn:
    """A connection's write lock that any task may release.

    A write begun in a mailbox callback (a chunk handed straight to the socket) that
    the socket could not take whole is finished by another task; trio's own locks
    must be released by the task that took them. FIFO: a release hands the turn to
    the longest waiter.
    """

    def __init__(self) -> None:
        self._held = False
        self._waiters = trio.lowlevel.ParkingLot()

    def locked(self) -> bool:
        return self._held

    def acquire_nowait(self) -> None:
        if self._held:
            raise trio.WouldBlock
        self._held = True

    def release(self) -> None:
        if not self._held:
            raise RuntimeError("release of a write turn nobody holds")
        if self._waiters:
            self._waiters.unpark()  # the turn passes to it: still held
        else:
            self._held = False

    async def __aenter__(self) -> None:
        await trio.lowlevel.checkpoint_if_cancelled()
        if self._held:
            await self._waiters.park()
        else:
            self._held = True
            await trio.lowlevel.cancel_shielded_checkpoint()

    async def __aexit__(self, *exc: object) -> None:
        self.release()


class VoxWebSocketConnection(WebSocketConnection):
    """trio-websocket's connection with the size policy and the close frame on bad framing."""

    def __init__(
        self,
        stream: HeadFirstStream,
        ws_connection: WSConnection,
        *,
        limits: MessageLimits,
        message_queue_size: int,
        receive_buffer_size: int | None,
    ) -> None:
        # trio-websocket's own check gets the upload cap; the small cap is checked here.
        largest = max(limits.small, limits.upload)
        super().__init__(
            stream,
            ws_connection,
            message_queue_size=message_queue_size,
            max_message_size=largest,
            receive_buffer_size=receive_buffer_size,
        )
        self._limits = limits
        self.activity = stream.activity
        self._budgeted = 0  # this connection's share of the budget
        self._upload_allowed: bool | None = None  # decided once per message
        # The socket for direct writes; False: none (TLS, extensions); None: not looked yet.
        self._direct: trio.socket.SocketType | Literal[False] | None = None
        # trio-websocket takes this around its own writes (pongs, closes).
        self._stream_lock: WriteTurn = WriteTurn()  # type: ignore[assignment]

    @property
    def local(self):  # type: ignore[no-untyped-def]
        return _get_stream_endpoint(self._stream.transport_stream, local=True)  # type: ignore[attr-defined]

    @property
    def remote(self):  # type: ignore[no-untyped-def]
        return _get_stream_endpoint(self._stream.transport_stream, local=False)  # type: ignore[attr-defined]

    @property
    def stream_lock(self) -> WriteTurn:
        """The lock trio-websocket holds around every write of its own (pongs, closes)."""
        return self._stream_lock

    def direct_socket(self) -> trio.socket.SocketType | None:
        """The TCP socket, while a whole message may be written to it directly; else None.

        Only an open connection without extensions (trio-websocket negotiates none, so
        no permessage-deflate) over plain TCP: a closing one goes through wsproto,
        which knows what may still be sent.
        """
        if self._close_reason is not None or self._wsproto.state != ConnectionState.OPEN:
            return None
        if self._direct is None:
            connection = self._wsproto.connection
            plain = connection is not None and not connection._proto.extensions
            self._direct = (_plain_socket(self._stream) if plain else None) or False
        return self._direct or None

    async def abort_broken(self) -> str:
        """The socket failed under a direct write: end the connection as trio-websocket would."""
        with trio.CancelScope(shield=True):
            await self._abort_web_socket()
        return str(self._close_reason.reason if self._close_reason else "connection lost")

    def release_budget(self) -> None:
        self._limits.budget.give_back(self._budgeted)
        self._budgeted = 0

    async def _handle_close_connection_event(self, event: CloseConnection) -> None:
        if self._wsproto.state == ConnectionState.OPEN:
            # wsproto reports a framing violation as a close while still OPEN (a close
            # the peer sent makes it REMOTE_CLOSING): send the peer that close frame.
            reason = (event.reason or "").encode()[:_MAX_REASON_BYTES].decode("utf-8", "ignore")
            self._close_reason = CloseReason(event.code, reason or None)
            with contextlib.suppress(ConnectionClosed):  # the peer is gone: nothing to tell
                await self._send(CloseConnection(code=event.code, reason=reason))
        await super()._handle_close_connection_event(event)

    async def _handle_ping_event(self, event: Ping) -> None:
        self.activity.heard()
        await super()._handle_ping_event(event)

    async def _handle_pong_event(self, event: Pong) -> None:
        self.activity.heard()
        await super()._handle_pong_event(event)

    async def _handle_message_event(self, event: BytesMessage | TextMessage) -> None:
        self.activity.heard()
        size = len(event.data)
        if self._message_size + size > self._limits.small and not self._may_be_large(event):
            await self._refuse_message(f"message too large: over {self._limits.small} bytes")
            return
        if not event.message_finished:
            if not self._limits.budget.take(size):
                await self._refuse_message("server busy: too much unfinished message data")
                return
            self._budgeted += size
        else:
            self.release_budget()
            self._upload_allowed = None
        await super()._handle_message_event(event)

    def _may_be_large(self, event: BytesMessage | TextMessage) -> bool:
        """A text voice_register on an upload path; judged once, on the message's start."""
        if self._upload_allowed is None:
            self._upload_allowed = (
                self._limits.upload > 0
                and isinstance(event, TextMessage)
                and (self._path or "").partition("?")[0] in self._limits.upload_paths
                and _VOICE_REGISTER.search(self._message_start(event), 0, self._limits.small)
                is not None
            )
        return self._upload_allowed

    def _message_start(self, event: TextMessage) -> str:
        parts = [part for part in self._message_parts if isinstance(part, str)]
        return "".join([*parts, event.data])

    async def _refuse_message(self, reason: str) -> None:
        """Close with 1009 and drop what was gathered of the message."""
        self._message_size = 0
        self._message_parts = []
        self.release_budget()
        self._close_reason = CloseReason(1009, reason)
        try:
            await self._send(CloseConnection(code=1009, reason=reason))
        finally:
            await self._recv_channel.aclose()
            self._reader_running = False


def _plain_socket(stream: trio.abc.Stream) -> trio.socket.SocketType | None:
    """The TCP socket under voxtrio's own plain wrappers; None for anything else (TLS)."""
    if isinstance(stream, HeadFirstStream):
        stream = stream.transport_stream
    if isinstance(stream, ReplayStream):
        stream = stream.stream
    return stream.socket if isinstance(stream, trio.SocketStream) else None
