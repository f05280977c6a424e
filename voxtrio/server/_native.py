"""The native protocol endpoint: read messages, run requests as child tasks."""

from __future__ import annotations

from collections.abc import Callable
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
from voxtrio.server._endpoint import WebSocketEndpoint
from voxtrio.server._request import RequestControl, run_request
from voxtrio.server._text_input import TextInput
from voxtrio.server._writer import ConnectionGone
from voxtrio.speech._pool import InstancePool
from voxtrio.voices._service import VoiceService

log = structlog.get_logger("voxtrio.connection")


class Connection(WebSocketEndpoint):
    """The native protocol: requests run as child tasks of the connection's nursery."""

    log = log

    def __init__(
        self,
        ws: WebSocketConnection,
        *,
        settings: Settings,
        pool: InstancePool,
        capabilities: Capabilities,
        metrics: Metrics,
        voices: VoiceService | None = None,
        setup_turns: trio.CapacityLimiter | None = None,
    ) -> None:
        super().__init__(ws, settings=settings)
        self.setup_turns = setup_turns  # shared by the server's connections
        self.metrics = metrics
        self.voices = voices
        self.pool = pool
        self.state = ConnectionState(
            max_requests=settings.max_requests_per_connection, capabilities=capabilities
        )
        self.requests: dict[str, RequestControl] = {}
        self.text_inputs: dict[str, TextInput] = {}

    def begin_drain(self) -> None:
        self.state.begin_drain()

    def closing(self) -> None:
        pass  # the nursery's cancel reaches every request

    async def end_for_shutdown(self) -> None:
        """Every running request ends with SHUTTING_DOWN."""
        for control in list(self.requests.values()):
            control.stop("shutdown")
        await self.idle.wait()

    async def next_message(self) -> str | bytes | None:
        """The next message; None once the client closed or the connection idled out.

        Idle means no message and no request running for `idle_timeout` seconds.
        """
        while True:
            with trio.move_on_after(self.settings.idle_timeout):
                try:
                    return await self.ws.get_message()
                except ConnectionClosed as exc:
                    log.debug("client_closed", code=exc.reason.code if exc.reason else None)
                    return None
            if not self.requests:
                await self.close_idle()
                return None

    async def handle(self, message: str | bytes) -> None:
        if isinstance(message, bytes):
            action = self.state.receive_bytes(message)
        else:
            action = self.state.receive_text(message)
        match action:
            case Reply(message=reply):
                if isinstance(reply, Error):
                    self.metrics.error_sent(reply.error.code)
                await self.writer.send(dump_message(reply))
            case StartRequest(request=request):
                self._start(request)
            case StopRequest(request_id=request_id):
                await self._stop(request_id)
            case FeedText(request_id=request_id, text=text):
                self._text_input_call(request_id, lambda text_input: text_input.feed(text))
            case FlushText(request_id=request_id):
                self._text_input_call(request_id, TextInput.flush)
            case EndText(request_id=request_id):
                self._text_input_call(request_id, TextInput.end)
            case VoiceCommand(message=voice_message):
                self.nursery.start_soon(self._voice_command, voice_message)

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

    def _start(self, request: TtsRequest | TextStreamStart) -> None:
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
        self.nursery.start_soon(self._run_request, request, text_input, control)

    def _text_input_call(self, request_id: str, call: Callable[[TextInput], None]) -> None:
        text_input = self.text_inputs[request_id]
        try:
            call(text_input)
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
                    setup_turns=self.setup_turns,
                )
            finally:
                self.requests.pop(request.request_id, None)
                self.text_inputs.pop(request.request_id, None)
                self.state.request_finished(request.request_id)
                if not self.requests:
                    self.idle.set()
                if self.writer.broken is not None:
                    # Stalled or closed peer: stop reading too, end the connection.
                    await self.abort(self.writer.broken)
