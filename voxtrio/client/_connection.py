"""One connection to a voxtrio server: sending, the reader task, and failure.

One reader task per connection reads every message the server sends, checks it
against the protocol and hands it to the request it names through that request's
own *bounded* memory channel. Progress messages are not queued: the reader
stores the latest one on the request. A request whose consumer does not read
fills its buffer and then pauses the reader, and so the whole connection:
backpressure reaches the server instead of audio piling up here.

Connection-level errors (an `error` whose `request_id` is null: the server could
not tell which request a message of ours was about) are logged on the
`voxtrio.client` logger and kept in `connection_errors`; they are not raised,
because no request of ours is waiting for them. Anything the protocol does not
allow (a frame out of sequence, a message about an unknown request, a malformed
message) raises `ProtocolViolation` from every waiting call and closes the
connection with 1002: after that nothing it says can be trusted.
"""

from __future__ import annotations

import logging
from collections import deque
from typing import Any, Final

import attrs
import trio
from trio_websocket import ConnectionClosed, WebSocketConnection

from voxtrio.client._incoming import HANDLED_MESSAGES
from voxtrio.client._request import Item, RequestState
from voxtrio.protocol._client_connection import (
    ClientConnectionState,
    Ended,
    Reply,
    ServerNotice,
    WordsFor,
)
from voxtrio.protocol._client_errors import (
    ConnectionLost,
    ProtocolViolation,
    ResponseTimeout,
    SynthesisError,
    VoxtrioClientError,
)
from voxtrio.protocol._client_outgoing import encode_message
from voxtrio.protocol._messages import Complete, Error, Pong

log = logging.getLogger("voxtrio.client")

CONNECTION_ERRORS_KEPT: Final = 16


@attrs.define(eq=False)
class _PingWaiter:
    sent_at: float
    event: trio.Event = attrs.Factory(trio.Event)
    pong: Pong | None = None


class ClientConnection:
    """The WebSocket and its reader over the protocol `state` (see the module docstring)."""

    def __init__(
        self,
        ws: WebSocketConnection,
        stream: trio.abc.Stream,
        nursery: trio.Nursery,
        *,
        url: str,
        message_queue_size: int,
        response_timeout: float,
        cancel_timeout: float,
        close_timeout: float,
        send_timeout: float,
        ping_timeout: float,
    ) -> None:
        self.url = url
        self.response_timeout = response_timeout
        self.cancel_timeout = cancel_timeout
        self.close_timeout = close_timeout
        self.send_timeout = send_timeout
        self.ping_timeout = ping_timeout
        self.connection_errors: deque[SynthesisError] = deque(maxlen=CONNECTION_ERRORS_KEPT)
        self._ws = ws
        self._stream = stream
        self._ws_closed = trio.Event()
        self._nursery = nursery
        self._queue_size = message_queue_size
        # Sans-IO: the requests, the first failure, the text of what is sent, and
        # what each received message means (protocol._client_connection).
        self.state = ClientConnectionState[RequestState](HANDLED_MESSAGES)
        self._pings: dict[int, _PingWaiter] = {}
        self._closing = False
        self._reader_scope = trio.CancelScope()

    async def open_request(
        self, kind: str, request_id: str | None, params: dict[str, Any]
    ) -> RequestState:
        """Register a request and send its opening message (`kind`: tts_request, ...)."""
        self.state.check_usable()
        rid = self.state.requests.reserve(request_id)
        send, receive = trio.open_memory_channel[Item](self._queue_size)
        request = RequestState(
            request_id=rid,
            mode=params.get("mode", "streaming"),
            format=params.get("format", "pcm16"),
            send=send,
            receive=receive,
            last_activity=trio.current_time(),
        )
        text = self.state.open_request(request, kind, params)
        try:
            await self._send_text(text)
        except BaseException:
            self.state.requests.discard(request)
            receive.close()
            raise
        return request

    async def send_cancel(self, request: RequestState) -> bool:
        text = self.state.cancel(request)
        if text is None:
            return False
        await self._send_text(text)
        return True

    async def send(self, message: dict[str, Any]) -> None:
        await self._send_text(encode_message(message))

    async def _send_text(self, text: str) -> None:
        self.state.check_usable()
        # Shielded with its own deadline: a send cut short by a cancellation would
        # leave half a frame on the wire and the connection unusable.
        deadline = trio.current_time() + self.send_timeout
        with trio.CancelScope(shield=True, deadline=deadline) as scope:
            try:
                await self._ws.send_message(text)
            except ConnectionClosed as exc:
                self._fail(self._lost(exc))
                self.state.raise_failure()
        if scope.cancelled_caught:
            self._fail(
                ConnectionLost(
                    f"a message could not be sent within send_timeout={self.send_timeout:g} s"
                ),
                close_code=1011,
            )
            self.state.raise_failure()

    # -- the reader task --------------------------------------------------------

    async def read_loop(self) -> None:
        """Read and dispatch until the connection ends; never raises (but Cancelled)."""
        with self._reader_scope:
            try:
                while True:
                    try:
                        message = await self._ws.get_message()
                    except ConnectionClosed as exc:
                        self._fail(self._lost(exc))
                        return
                    if isinstance(message, str):
                        await self._on_text(message)
                    else:
                        await self._on_frame(message)
            except ProtocolViolation as exc:
                log.error("closing the connection to %s: %s", self.url, exc)
                self._fail(exc, close_code=1002)

    async def _on_text(self, text: str) -> None:
        match self.state.text_received(text, now=trio.current_time()):
            case Reply(key=int(timestamp), value=Pong() as pong):
                waiter = self._pings.pop(timestamp, None)
                if waiter is None:
                    log.debug("pong %d matches no waiting ping (it came too late)", timestamp)
                else:
                    waiter.pong = pong
                    waiter.event.set()
            case WordsFor(request=request, words=words):
                request.words.append(words)
            case Ended(request=request, message=message):
                await self._finish(request, message)
            case ServerNotice(error=error):
                log.warning("connection-level error from %s: %s %s", self.url, error, error.details)
                self.connection_errors.append(error)

    async def _on_frame(self, data: bytes) -> None:
        if audio := self.state.frame_received(data, now=trio.current_time()):
            await self._deliver(audio.request, audio.chunk)

    async def _finish(self, request: RequestState, terminal: Complete | Error) -> None:
        # The state has freed the id (the server did when it sent the terminal message).
        await self._deliver(request, terminal)
        request.send.close()

    async def _deliver(self, request: RequestState, item: Item) -> None:
        try:
            try:
                request.send.send_nowait(item)
            except trio.WouldBlock:
                # The consumer is behind: wait for it (this pauses the whole connection).
                self.state.reader_blocked_on = request.request_id
                try:
                    await request.send.send(item)
                finally:
                    self.state.reader_blocked_on = None
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass  # the stream was closed (given up on): drop what it would have read

    # -- failure --------------------------------------------------------------

    def _fail(self, exc: VoxtrioClientError, *, close_code: int | None = None) -> None:
        """The connection is unusable: wake every waiter with `exc` (the first failure wins)."""
        for request in self.state.fail(exc):
            request.send.close()
        for waiter in self._pings.values():
            waiter.event.set()
        self._reader_scope.cancel()
        if close_code is not None and not self._closing:
            self._closing = True
            self._nursery.start_soon(self._close_ws, close_code, str(exc))

    async def _close_ws(self, code: int, reason: str | None) -> None:
        deadline = trio.current_time() + self.close_timeout
        try:
            with trio.CancelScope(shield=True, deadline=deadline):
                await self._ws.aclose(code, reason[:120] if reason else None)
        finally:
            self._ws_closed.set()

    def _lost(self, exc: ConnectionClosed) -> ConnectionLost:
        if self._closing and self.state.failure is not None:
            return ConnectionLost(str(self.state.failure))
        reason = exc.reason
        if reason is None:
            return ConnectionLost("the connection closed")
        text = f" ({reason.reason})" if reason.reason else ""
        hint = " (a message was over the server's size limit)" if reason.code == 1009 else ""
        return ConnectionLost(
            f"the server closed the connection: {reason.code} {reason.name}{text}{hint}",
            code=reason.code,
        )

    async def ping(self, ping_timeout: float) -> float:
        """Send a protocol `ping` and return the round trip in seconds."""
        self.state.check_usable()
        timeout = ping_timeout
        timestamp, text = self.state.ping()
        waiter = _PingWaiter(trio.current_time())
        self._pings[timestamp] = waiter
        try:
            await self._send_text(text)
            with trio.move_on_after(timeout):
                await waiter.event.wait()
        finally:
            self._pings.pop(timestamp, None)
        if waiter.pong is not None:
            return trio.current_time() - waiter.sent_at
        if self.state.failure is not None:
            self.state.raise_failure()
        raise ResponseTimeout(f"no pong within ping_timeout={timeout:g} s")

    async def aclose(self) -> None:
        """Close the connection (1000), waiting at most `close_timeout` for the handshake."""
        if not self._closing:
            self._closing = True
            self._fail(ConnectionLost("the client was closed"))
            await self._close_ws(1000, None)
        with trio.CancelScope(shield=True, deadline=trio.current_time() + self.close_timeout):
            await self._ws_closed.wait()  # a 1002 close may be under way in the nursery
        # trio-websocket leaves the socket open when the server closed first.
        await trio.aclose_forcefully(self._stream)
