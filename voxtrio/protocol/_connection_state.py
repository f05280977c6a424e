"""What one connection's incoming messages mean, sans-IO.

`ConnectionState` turns each frame a client sends into one action for the I/O
layer (start a request, stop one, reply) and keeps the set of active request
ids, so duplicate ids, cancels of unknown ids and the per-connection limit are
decided here and unit-tested without sockets.
"""

from __future__ import annotations

import enum
import time

import attrs

from voxtrio.protocol._errors import ErrorCode, ProtocolError
from voxtrio.protocol._messages import (
    Cancel,
    Ping,
    Pong,
    ServerMessage,
    SynthesisOptions,
    TextDelta,
    TextFlush,
    TextStreamEnd,
    TextStreamStart,
    TtsRequest,
    error_message,
    parse_client_message,
)
from voxtrio.protocol._voice_messages import (
    VoiceClientMessage,
    VoiceDelete,
    VoiceList,
    VoiceRegister,
)

#: Why `denoise: true` is refused (the `params.denoise` entry of INVALID_PARAMS).
DENOISE_UNAVAILABLE = (
    "prompt denoising is not available: no denoiser is configured on this server "
    "(voxtrio does not run voxcpm's ZipEnhancer); omit denoise or send false"
)


@attrs.frozen
class Capabilities:
    """What this server can do, for the checks that depend on it."""

    max_text_chars: int = 5000


@attrs.frozen
class Reply:
    """Send this message; no request starts or stops."""

    message: ServerMessage


@attrs.frozen
class StartRequest:
    """Admit this request: run it and send its frames and terminal message."""

    request: TtsRequest | TextStreamStart


@attrs.frozen
class VoiceCommand:
    """Register, list or delete voices; answered by its own reply (no active request)."""

    message: VoiceClientMessage


@attrs.frozen
class FeedText:
    """More text for an open text stream."""

    request_id: str
    text: str


@attrs.frozen
class FlushText:
    """Speak what the text stream has buffered, sentence end or not."""

    request_id: str


@attrs.frozen
class EndText:
    """The text stream is complete: speak the rest, then finish."""

    request_id: str


@attrs.frozen
class StopRequest:
    """Cancel this active request; it answers with complete {cancelled: true}."""

    request_id: str


START_TYPES = frozenset({"tts_request", "text_stream_start"})

Action = Reply | StartRequest | StopRequest | FeedText | FlushText | EndText | VoiceCommand | None


class RequestStatus(enum.Enum):
    RUNNING = "running"
    CANCELLING = "cancelling"


@attrs.define
class ConnectionState:
    max_requests: int = 4
    capabilities: Capabilities = attrs.Factory(Capabilities)
    active: dict[str, RequestStatus] = attrs.Factory(dict)
    open_streams: set[str] = attrs.Factory(set)
    draining: bool = False

    def receive_bytes(self, data: bytes) -> Action:
        exc = ProtocolError(
            ErrorCode.UNSUPPORTED_FORMAT,
            "binary messages from clients are not supported; send JSON text",
            details={"bytes": len(data)},
        )
        return Reply(error_message(exc))

    def receive_text(self, text: str) -> Action:
        try:
            return self._receive(text)
        except ProtocolError as exc:
            # A refused tts_request / text_stream_start ends that request before it began:
            # the error is its terminal message, unless the id names a running request.
            terminal = (
                exc.message_type in START_TYPES
                and exc.request_id is not None
                and exc.request_id not in self.active
            )
            return Reply(error_message(exc, terminal=terminal))

    def _receive(self, text: str) -> Action:
        message = parse_client_message(text)
        match message:
            case TtsRequest() | TextStreamStart():
                return self._start(message)
            case TextDelta(request_id=request_id, text=text):
                self._check_open_stream(request_id)
                return FeedText(request_id, text)
            case TextFlush(request_id=request_id):
                self._check_open_stream(request_id)
                return FlushText(request_id)
            case TextStreamEnd(request_id=request_id):
                self._check_open_stream(request_id)
                self.open_streams.discard(request_id)
                return EndText(request_id)
            case Cancel(request_id=request_id):
                return self._cancel(request_id)
            case VoiceRegister() | VoiceList() | VoiceDelete():
                return VoiceCommand(message)
            case Ping(timestamp=timestamp):
                return Reply(Pong(timestamp, int(time.time() * 1000)))
        raise AssertionError(f"unhandled message {message!r}")  # pragma: no cover

    def request_finished(self, request_id: str) -> None:
        """The request sent its terminal message: its id is free again."""
        self.active.pop(request_id, None)
        self.open_streams.discard(request_id)

    def begin_drain(self) -> None:
        """The server is shutting down: running requests may finish, new ones are refused."""
        self.draining = True

    def _check_open_stream(self, request_id: str) -> None:
        if request_id not in self.open_streams:
            why = "was ended" if request_id in self.active else "is not active"
            raise ProtocolError(
                ErrorCode.UNKNOWN_REQUEST,
                f"no open text stream {request_id!r} on this connection (it {why})",
                request_id=request_id,
            )

    def _start(self, request: TtsRequest | TextStreamStart) -> Action:
        try:
            return self._admit(request)
        except ProtocolError as exc:
            exc.message_type = (
                "tts_request" if isinstance(request, TtsRequest) else ("text_stream_start")
            )
            raise

    def _admit(self, request: TtsRequest | TextStreamStart) -> Action:
        rid = request.request_id
        if self.draining:
            raise ProtocolError(
                ErrorCode.SHUTTING_DOWN,
                "the server is shutting down; retry on another instance",
                details={"retry_after_ms": 1000},
                request_id=rid,
            )
        if rid in self.active:
            raise ProtocolError(
                ErrorCode.DUPLICATE_REQUEST_ID,
                f"request {rid!r} is already active on this connection",
                request_id=rid,
            )
        self._check_capabilities(request)
        if len(self.active) >= self.max_requests:
            raise ProtocolError(
                ErrorCode.RATE_LIMITED,
                f"at most {self.max_requests} requests may be active on one connection",
                details={"scope": "connection", "limit": self.max_requests},
                request_id=rid,
            )
        self.active[rid] = RequestStatus.RUNNING
        if isinstance(request, TextStreamStart):
            self.open_streams.add(rid)
        return StartRequest(request)

    def _cancel(self, request_id: str) -> Action:
        status = self.active.get(request_id)
        if status is None:
            raise ProtocolError(
                ErrorCode.UNKNOWN_REQUEST,
                f"no active request {request_id!r} on this connection",
                request_id=request_id,
            )
        if status is RequestStatus.CANCELLING:
            return None  # a repeated cancel changes nothing; one terminal message follows
        self.active[request_id] = RequestStatus.CANCELLING
        return StopRequest(request_id)

    def _check_capabilities(self, request: TtsRequest | TextStreamStart) -> None:
        params: SynthesisOptions = request.params
        errors: dict[str, str] = {}
        if isinstance(request, TtsRequest):
            text = request.params.text
            if len(text) > self.capabilities.max_text_chars:
                errors["params.text"] = (
                    f"too long: {len(text)} characters, "
                    f"this server takes at most {self.capabilities.max_text_chars}"
                )
            elif not text.strip():
                errors["params.text"] = "must contain something to speak, not only whitespace"
        if params.denoise:
            # Refused, never accepted and ignored: voxcpm's prompt denoiser (ZipEnhancer)
            # needs modelscope and a hub model that this server does not load.
            errors["params.denoise"] = DENOISE_UNAVAILABLE
        if params.bit_rate is not None and params.format not in ("mp3", "opus"):
            errors["params.bit_rate"] = f"only applies to mp3 and opus, not {params.format}"
        if errors:
            summary = "; ".join(f"{k}: {v}" for k, v in sorted(errors.items()))
            raise ProtocolError(
                ErrorCode.INVALID_PARAMS,
                f"invalid {type(request).__name__} message: {summary}",
                details=errors,
                request_id=request.request_id,
            )
