"""One client connection: read messages, run requests as child tasks, keep alive."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from contextlib import suppress

import structlog
import trio
from trio_websocket import ConnectionClosed, WebSocketConnection

from voxtrio._config import Settings
from voxtrio.ops._metrics import Metrics
from voxtrio.protocol._connection_state import (
    Capabilities,
    ConnectionState,
    EndText,
    FeedText,
    FlushText,
    Reply,
    StartRequest,
    StopRequest,
    VoiceCommand,
)
from voxtrio.protocol._errors import ErrorCode, ProtocolError
from voxtrio.protocol._messages import (
    Error,
    ServerMessage,
    TextStreamStart,
    TtsRequest,
    dump_message,
    error_message,
)
from voxtrio.protocol._voice_messages import VoiceClientMessage
from voxtrio.server._request import RequestControl, TextInput, run_request
from voxtrio.server._writer import ConnectionGone, FrameWriter
from voxtrio.speech._replicas import ReplicaPool
from voxtrio.voices._service import VoiceService

log = structlog.get_logger("voxtrio.connection")

GOING_AWAY = 1001


class Connection:
    """The nursery that owns this connection's requests; the caller owns the socket."""

    def __init__(
        self,
        ws: WebSocketConnection,
        *,
        settings: Settings,
        pool: ReplicaPool,
        capabilities: Capabilities,
        metrics: Metrics,
        voices: VoiceService | None = None,
    ) -> None:
        self.ws = ws
        self.metrics = metrics
        self.voices = voices
        self.settings = settings
        self.pool = pool
        self.state = ConnectionState(
            max_requests=settings.max_requests_per_connection, capabilities=capabilities
        )
        self.writer = FrameWriter(ws, write_timeout=settings.write_timeout)
        self.requests: dict[str, RequestControl] = {}
        self.text_inputs: dict[str, TextInput] = {}
        self.idle = trio.Event()
        self.idle.set()

    async def run(self) -> None:
        """Serve until the client leaves; every request still running is cancelled then."""
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._keepalive, nursery.cancel_scope)
            try:
                await self._read_loop(nursery)
            finally:
                nursery.cancel_scope.cancel()

    def begin_drain(self) -> None:
        """Refuse new requests; the running ones go on."""
        self.state.begin_drain()

    async def shut_down(self) -> None:
        """Past the drain deadline: end every request with SHUTTING_DOWN, close with 1001."""
        for control in list(self.requests.values()):
            control.stop("shutdown")
        with trio.move_on_after(self.settings.stop_timeout + 1):
            await self.idle.wait()
        with trio.move_on_after(self.settings.handshake_timeout):
            await self.ws.aclose(code=GOING_AWAY, reason="server shutting down")

    async def _read_loop(self, nursery: trio.Nursery) -> None:
        while True:
            try:
                message = await self._next_message()
            except ConnectionClosed as exc:
                log.debug("client_closed", code=exc.reason.code if exc.reason else None)
                return
            if message is None:
                log.info("idle_timeout", idle_timeout=self.settings.idle_timeout)
                with trio.move_on_after(self.settings.handshake_timeout):
                    await self.ws.aclose(code=1000, reason="idle timeout")
                return
            if isinstance(message, bytes):
                action = self.state.receive_bytes(message)
            else:
                action = self.state.receive_text(message)
            try:
                match action:
                    case Reply(message=reply):
                        if isinstance(reply, Error):
                            self.metrics.error_sent(reply.error.code)
                        await self.writer.send(dump_message(reply))
                    case StartRequest(request=request):
                        self._start(nursery, request)
                    case StopRequest(request_id=request_id):
                        await self._stop(request_id)
                    case FeedText(request_id=request_id, text=text):
                        self._text_input_call(request_id, TextInput.feed, text)
                    case FlushText(request_id=request_id):
                        self._text_input_call(request_id, TextInput.flush)
                    case EndText(request_id=request_id):
                        self._text_input_call(request_id, TextInput.end)
                    case VoiceCommand(message=voice_message):
                        nursery.start_soon(self._voice_command, voice_message)
            except ConnectionGone as exc:
                log.info("connection_lost", reason=str(exc))
                return

    async def _stop(self, request_id: str) -> None:
        control = self.requests[request_id]
        if control.settled:
            # Its terminal message is already on its way: the cancel crossed it.
            late = ProtocolError(
                ErrorCode.UNKNOWN_REQUEST,
                f"request {request_id!r} already finished; its terminal message is sent separately",
                request_id=request_id,
            )
            await self.writer.send(dump_message(error_message(late)))
            return
        control.stop("cancel")

    def _start(self, nursery: trio.Nursery, request: TtsRequest | TextStreamStart) -> None:
        rid = request.request_id
        if isinstance(request, TtsRequest):
            text_input = TextInput.single(request.params.text)
        else:
            text_input = TextInput.streamed(
                max_buffered_chars=self.settings.max_stream_buffer_chars
            )
        control = RequestControl()
        self.requests[rid] = control
        self.text_inputs[rid] = text_input
        self.idle = trio.Event()
        nursery.start_soon(self._run_request, request, text_input, control)

    def _text_input_call(self, request_id: str, method: object, *args: str) -> None:
        text_input = self.text_inputs[request_id]
        try:
            method(text_input, *args)  # type: ignore[operator]
        except OverflowError as exc:
            log.warning("text_stream_overflow", request_id=request_id, reason=str(exc))
            self.requests[request_id].stop("overflow")

    async def _voice_command(self, message: VoiceClientMessage) -> None:
        reply: ServerMessage
        if self.voices is None:
            reply = error_message(
                ProtocolError(
                    ErrorCode.MODEL_NOT_LOADED,
                    "the voice library is not ready",
                    request_id=message.request_id,
                ),
                terminal=True,
            )
        else:
            try:
                reply = await self.voices.handle(message)
            except ProtocolError as exc:
                self.metrics.error_sent(exc.code)
                reply = error_message(exc, terminal=True)
        with suppress(ConnectionGone):  # the read loop notices the lost peer
            await self.writer.send(dump_message(reply))

    async def _next_message(self) -> str | bytes | None:
        """The next message, or None once the connection has been idle too long.

        Idle means no message and no request running for `idle_timeout` seconds.
        """
        while True:
            with trio.move_on_after(self.settings.idle_timeout):
                return await self.ws.get_message()
            if not self.requests:
                return None

    async def _run_request(
        self,
        request: TtsRequest | TextStreamStart,
        text_input: TextInput,
        control: RequestControl,
    ) -> None:
        with structlog.contextvars.bound_contextvars(request_id=request.request_id):
            try:
                await run_request(
                    request,
                    text_input,
                    writer=self.writer,
                    pool=self.pool,
                    control=control,
                    progress=self.settings.progress_intervals,
                    metrics=self.metrics,
                    voices=self.voices,
                )
            finally:
                self.requests.pop(request.request_id, None)
                self.text_inputs.pop(request.request_id, None)
                self.state.request_finished(request.request_id)
                if not self.requests:
                    self.idle.set()
                if self.writer.broken is not None:
                    # Stalled or closed peer: stop reading too, end the connection.
                    await self._abort(self.writer.broken)

    async def _abort(self, reason: str) -> None:
        with trio.CancelScope(shield=True), trio.move_on_after(1.0):
            await self.ws.aclose(code=1011, reason=reason[:120])

    async def _keepalive(self, connection_scope: trio.CancelScope) -> None:
        await keepalive(self.ws, self.settings, self._abort, connection_scope)


async def keepalive(
    ws: WebSocketConnection,
    settings: Settings,
    abort: Callable[[str], Awaitable[None]],
    connection_scope: trio.CancelScope,
) -> None:
    """Ping on a named interval; a peer that does not pong in time is dropped."""
    while True:
        await trio.sleep(settings.ping_interval)
        with trio.move_on_after(settings.ping_timeout) as pong_wait:
            try:
                await ws.ping()
            except ConnectionClosed:
                return
        if pong_wait.cancelled_caught:
            log.info("ping_timeout", ping_timeout=settings.ping_timeout)
            await abort("ping timeout")
            connection_scope.cancel()
            return
