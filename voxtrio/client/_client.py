"""A Trio client for the voxtrio WebSocket protocol (public API: `voxtrio.client`).

One reader task per connection reads every message the server sends, checks it
against the protocol and hands it to the request it names through that request's
own *bounded* memory channel. Progress messages are not queued: the reader
stores the latest one on the request. A request whose consumer does not read
fills its buffer and then pauses the reader, and so the whole connection:
backpressure reaches the server instead of audio piling up here. So read every
stream you open, each from its own task when several run at once.

Connection-level errors (an `error` whose `request_id` is null: the server could
not tell which request a message of ours was about) are logged on the
`voxtrio.client` logger and kept in `VoxtrioClient.connection_errors`; they are
not raised, because no request of ours is waiting for them. Anything the
protocol does not allow (a frame out of sequence, a message about an unknown
request, a malformed message) raises `ProtocolViolation` from every waiting call
and closes the connection with 1002: after that nothing it says can be trusted.
"""

from __future__ import annotations

import array
import contextlib
import io
import json
import logging
import math
import os
import ssl
import sys
import time
import uuid
import wave
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Mapping, Sequence
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, Final, NoReturn, TypeVar, cast
from urllib.parse import urlsplit

import attrs
import trio
from trio_websocket import (
    ConnectionClosed,
    ConnectionRejected,
    HandshakeError,
    WebSocketConnection,
    wrap_client_stream,
)

from voxtrio.protocol._converter import structure_message
from voxtrio.protocol._errors import ErrorCode, ProtocolError
from voxtrio.protocol._formats import AudioFormat
from voxtrio.protocol._frames import FrameError, FrameType, decode_frame
from voxtrio.protocol._messages import (
    CancelledResult,
    Complete,
    Error,
    Mode,
    Pong,
    Progress,
    ServerMessage,
    SynthesisOptions,
    SynthesisResult,
    TtsParams,
)

log = logging.getLogger("voxtrio.client")

DEFAULT_URL: Final = "ws://127.0.0.1:8765/tts"
DEFAULT_CONNECT_TIMEOUT: Final = 10.0
# The server says nothing while a request waits for a free replica; 60 s is its
# default queue_timeout, after which it answers RATE_LIMITED.
DEFAULT_RESPONSE_TIMEOUT: Final = 60.0
# Above the server's default stop_timeout (10 s): a cancelled generation stops at
# its next chunk boundary, and the server answers within stop_timeout at worst.
DEFAULT_CANCEL_TIMEOUT: Final = 15.0
DEFAULT_CLOSE_TIMEOUT: Final = 5.0
DEFAULT_SEND_TIMEOUT: Final = 10.0
DEFAULT_PING_TIMEOUT: Final = 10.0
DEFAULT_MESSAGE_QUEUE_SIZE: Final = 16
# A non-streaming request's audio arrives as one message: 5000 characters of
# speech at 48 kHz is tens of MB. trio-websocket's own default is 1 MiB.
DEFAULT_MAX_MESSAGE_SIZE: Final = 128 * 1024 * 1024
_RECEIVE_BUFFER_BYTES: Final = 64 * 1024
_REJECTION_HINTS: Final = {
    401: " (no valid API key: pass api_key=)",
    404: " (the path is /tts)",
    503: " (the server is full or shutting down)",
}
_CONNECTION_ERRORS_KEPT: Final = 16
_PARAM_NAMES: Final = frozenset(f.name for f in attrs.fields(TtsParams)) - {"text", "mode"}
_STREAM_PARAM_NAMES: Final = frozenset(f.name for f in attrs.fields(SynthesisOptions))
# The server's own limit on one text_delta (and on a tts_request's text).
_MAX_DELTA_CHARS: Final = attrs.fields(TtsParams).text.metadata["length"][1]

T = TypeVar("T")
S = TypeVar("S", bound="SynthesisStream")

# ---------------------------------------------------------------- errors


class VoxtrioClientError(Exception):
    """Base class of everything this client raises about the server or the connection."""


class ConnectError(VoxtrioClientError):
    """The connection could not be opened: refused, unreachable, rejected or too slow."""

    def __init__(self, message: str, *, status_code: int | None = None) -> None:
        super().__init__(message)
        self.status_code = status_code


class ConnectionLost(VoxtrioClientError):
    """The connection closed (or was closed) while something still needed it."""

    def __init__(self, message: str, *, code: int | None = None) -> None:
        super().__init__(message)
        self.code = code


class ProtocolViolation(VoxtrioClientError):
    """The server sent something the protocol does not allow; the connection is closed."""

    def __init__(self, message: str, *, details: Mapping[str, Any] | None = None) -> None:
        super().__init__(message)
        self.details: dict[str, Any] = dict(details or {})


class ResponseTimeout(VoxtrioClientError, TimeoutError):
    """The server sent nothing about a request (or a ping) within the named deadline."""


class SynthesisError(VoxtrioClientError):
    """The server ended a request with an `error` message.

    `code` is an `ErrorCode` when this client knows it, else the server's string.
    """

    def __init__(
        self,
        code: ErrorCode | str,
        message: str,
        details: Mapping[str, Any] | None = None,
        request_id: str | None = None,
    ) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message
        self.details: dict[str, Any] = dict(details or {})
        self.request_id = request_id

    def __repr__(self) -> str:
        return (
            f"SynthesisError({str(self.code)!r}, {self.message!r}, "
            f"details={self.details!r}, request_id={self.request_id!r})"
        )


class SynthesisCancelled(VoxtrioClientError):
    """`speak()` of a request that was cancelled before it finished."""


def _clone_failure(exc: VoxtrioClientError) -> VoxtrioClientError:
    """A fresh copy for each caller: one instance raised in many tasks tangles tracebacks."""
    copy: VoxtrioClientError
    if isinstance(exc, ProtocolViolation):
        copy = ProtocolViolation(str(exc), details=exc.details)
    elif isinstance(exc, ConnectionLost):
        copy = ConnectionLost(str(exc), code=exc.code)
    else:
        copy = ConnectionLost(str(exc))
    copy.__cause__ = exc
    return copy


# ---------------------------------------------------------------- values


@attrs.frozen
class AudioChunk:
    """A piece of audio. A non-streaming request yields one, with sequence 0.

    With the default format, pcm16, `pcm` is mono 16-bit little-endian PCM;
    with another `format` (wav, mp3, opus, flac) it holds the next bytes of
    that encoded stream, and the chunks concatenated make the whole file.
    """

    pcm: bytes = attrs.field(repr=lambda pcm: f"<{len(pcm)} bytes>")
    sample_rate: int
    sequence: int
    format: AudioFormat = "pcm16"

    @property
    def samples(self) -> int | None:
        """Samples in this chunk; None for an encoded format (see the result's `samples`)."""
        return len(self.pcm) // 2 if self.format == "pcm16" else None

    @property
    def duration(self) -> float | None:
        samples = self.samples
        return None if samples is None else samples / self.sample_rate


@attrs.frozen
class Speech:
    """Everything one request produced (`VoxtrioClient.speak`)."""

    pcm: bytes = attrs.field(repr=lambda pcm: f"<{len(pcm)} bytes>")
    sample_rate: int
    result: SynthesisResult
    format: AudioFormat = "pcm16"

    @property
    def duration(self) -> float:
        return self.result.duration

    def save(self, path: str | os.PathLike[str]) -> None:
        """Write it to a file, atomically: pcm16 as a WAV file, other formats as they came."""
        if self.format == "pcm16":
            write_wav(path, self.pcm, self.sample_rate)
        else:
            _write_atomically(Path(path), self.pcm)


@attrs.frozen
class StreamingChunkMetadata:
    """The metadata of a 0x01 frame."""

    request_id: str
    sequence: int
    sample_rate: int
    is_final: bool
    format: AudioFormat = "pcm16"


@attrs.frozen
class WholeAudioMetadata:
    """The metadata of a 0x02 frame."""

    request_id: str
    sample_rate: int
    duration: float
    format: AudioFormat = "pcm16"


_SERVER_MESSAGE_TYPES: Final[dict[str, type[Any]]] = {
    "progress": Progress,
    "complete": Complete,
    "error": Error,
    "pong": Pong,
}


def _structure(cls: type[T], payload: Any, what: str) -> T:
    try:
        value: T = structure_message(cls, payload, request_id=None)
    except ProtocolError as exc:
        raise ProtocolViolation(
            f"the server sent an invalid {what}: {exc.message}", details=exc.details
        ) from None
    return value


def parse_server_message(text: str) -> ServerMessage:
    """Decode one text frame from the server, or raise ProtocolViolation saying what is wrong."""
    try:
        payload = json.loads(text)
    except (json.JSONDecodeError, RecursionError) as exc:
        raise ProtocolViolation(f"the server sent a text frame that is not JSON: {exc}") from None
    if not isinstance(payload, dict):
        raise ProtocolViolation("the server sent a JSON text frame that is not an object")
    kind = payload.get("type")
    cls = _SERVER_MESSAGE_TYPES.get(kind) if isinstance(kind, str) else None
    if cls is None:
        raise ProtocolViolation(f"the server sent a message of unknown type {kind!r:.80}")
    message: ServerMessage = _structure(cls, payload, f"{kind} message")
    match message:
        case Complete(result=CancelledResult()) if payload["result"].get("cancelled") is not True:
            # CancelledResult's field has a default, so `"result": {}` would pass as cancelled.
            raise ProtocolViolation("the server sent a complete message with an empty result")
        case Progress(progress=value) if not 0.0 <= value <= 1.0:
            raise ProtocolViolation(f"the server sent progress {value}, outside 0..1")
    return message


# ---------------------------------------------------------------- per request


_Item = AudioChunk | Complete | Error


@attrs.define(eq=False)
class _Request:
    """One request's state, shared by the reader task (writes) and its stream (reads)."""

    request_id: str
    mode: Mode
    format: AudioFormat
    send: trio.MemorySendChannel[_Item]
    receive: trio.MemoryReceiveChannel[_Item]
    last_activity: float
    progress: Progress | None = None
    cancel_sent: bool = False
    terminal_received: bool = False
    # What the reader has checked so far.
    next_sequence: int = 0
    sample_rate: int | None = None
    samples: int = 0
    audio_done: bool = False

    def violation(self, problem: str) -> ProtocolViolation:
        return ProtocolViolation(f"request {self.request_id!r}: {problem}")

    def accept_frame(
        self, frame_type: FrameType, meta: StreamingChunkMetadata | WholeAudioMetadata, pcm: bytes
    ) -> AudioChunk | None:
        """Check one audio frame against what came before; the chunk to hand on, if any."""
        expected = (
            FrameType.STREAMING_CHUNK if self.mode == "streaming" else FrameType.NON_STREAMING
        )
        if frame_type is not expected:
            raise self.violation(f"a {frame_type.name} frame for a {self.mode} request")
        if self.audio_done:
            raise self.violation("an audio frame after its audio had ended")
        if meta.sample_rate <= 0:
            raise self.violation(f"sample_rate {meta.sample_rate}")
        if self.sample_rate is not None and meta.sample_rate != self.sample_rate:
            raise self.violation(
                f"sample_rate changed from {self.sample_rate} to {meta.sample_rate}"
            )
        if meta.format != self.format:
            raise self.violation(f"{meta.format} audio, {self.format} was asked for")
        pcm16 = self.format == "pcm16"
        if pcm16 and len(pcm) % 2:
            raise self.violation(f"{len(pcm)} bytes of 16-bit audio (an odd count)")
        self.sample_rate = meta.sample_rate
        if isinstance(meta, WholeAudioMetadata):
            samples = len(pcm) // 2
            if pcm16 and not math.isclose(meta.duration, samples / meta.sample_rate, abs_tol=1e-3):
                raise self.violation(
                    f"duration {meta.duration} does not match {samples} samples "
                    f"at {meta.sample_rate} Hz"
                )
            self.audio_done = True
            self.samples = samples
            return AudioChunk(pcm, meta.sample_rate, 0, meta.format)
        if meta.sequence != self.next_sequence:
            raise self.violation(f"frame sequence {meta.sequence}, expected {self.next_sequence}")
        self.next_sequence += 1
        if meta.is_final:
            if pcm:
                raise self.violation(f"a final frame carrying {len(pcm)} bytes (it must be empty)")
            self.audio_done = True
            return None
        self.samples += len(pcm) // 2
        return AudioChunk(pcm, meta.sample_rate, meta.sequence, meta.format)

    def check_result(self, result: SynthesisResult) -> None:
        """A successful `complete` must describe exactly the audio that arrived."""
        if not self.audio_done:
            raise self.violation("complete before the end of its audio")
        problems = []
        if result.sample_rate != self.sample_rate:
            problems.append(f"sample_rate {result.sample_rate} != frames' {self.sample_rate}")
        if result.format != self.format:
            problems.append(f"format {result.format} != {self.format}")
        # Only raw PCM tells the sample count by its length. (`chunks` counts the
        # model's chunks, not frames: an encoder may hold a chunk back or add a tail.)
        if self.format == "pcm16" and result.samples != self.samples:
            problems.append(f"samples {result.samples} != {self.samples} received")
        if result.sample_rate > 0 and not math.isclose(
            result.duration, result.samples / result.sample_rate, abs_tol=1e-3
        ):
            problems.append(f"duration {result.duration} != samples / sample_rate")
        if problems:
            raise self.violation("result does not match the audio: " + "; ".join(problems))


class SynthesisStream:
    """One request's audio as it arrives: `async for chunk in stream`.

    The iteration ends after the audio (then `result` is set) or when the request
    was cancelled (then `cancelled` is True); an `error` from the server raises
    SynthesisError. `progress` is the latest progress message, at any time.
    """

    def __init__(self, client: VoxtrioClient, request: _Request) -> None:
        self._client = client
        self._request = request
        self.result: SynthesisResult | None = None
        self.cancelled = False
        self.error: SynthesisError | None = None
        self.sample_rate: int | None = None
        self.samples_received = 0
        self.chunks_received = 0
        self.finished = False
        self._closed = False

    def __repr__(self) -> str:
        state = "finished" if self.finished else "running"
        return f"<SynthesisStream {self.request_id!r} {self.mode} {state}>"

    @property
    def request_id(self) -> str:
        return self._request.request_id

    @property
    def mode(self) -> Mode:
        return self._request.mode

    @property
    def progress(self) -> Progress | None:
        return self._request.progress

    @property
    def audio_seconds(self) -> float | None:
        """Seconds of audio received so far (None for an encoded format: not known yet)."""
        if self._request.format != "pcm16":
            return None
        return self.samples_received / self.sample_rate if self.sample_rate else 0.0

    def __aiter__(self) -> SynthesisStream:
        return self

    async def __anext__(self) -> AudioChunk:
        if self.finished or self._closed:
            raise StopAsyncIteration
        item = await self._next_item()
        return self._consume(item)

    async def cancel(self) -> None:
        """Ask the server to stop; keep iterating (or leave the context) to see the end."""
        await self._client._send_cancel(self._request)

    async def aclose(self) -> None:
        """Cancel if unfinished and wait (`cancel_timeout`) for the end, so the id is free.

        `VoxtrioClient.synthesize` calls this when its context exits; an error
        the server sends meanwhile is kept in `error`, not raised.
        """
        if self._closed:
            return
        try:
            if not self.finished:
                await self._wind_down()
        finally:
            self._closed = True
            self._request.receive.close()

    async def _wind_down(self) -> None:
        timeout = self._client.cancel_timeout
        # Shielded: this runs while a cancellation or an error is on its way out.
        with trio.CancelScope(shield=True, deadline=trio.current_time() + timeout) as scope:
            try:
                await self._client._send_cancel(self._request)
                while not self.finished:
                    item = await self._request.receive.receive()
                    with contextlib.suppress(StopAsyncIteration, SynthesisError):
                        self._consume(item)
            except (trio.EndOfChannel, VoxtrioClientError):
                return  # the connection is gone: no id is left to free
        if scope.cancelled_caught:
            log.warning(
                "request %r: no terminal message within cancel_timeout=%g s after cancelling; "
                "its id stays reserved until one arrives",
                self.request_id,
                timeout,
            )
            self._client._abandon(self._request)

    async def _next_item(self) -> _Item:
        timeout = self._client.response_timeout
        started = trio.current_time()
        while True:
            with trio.move_on_at(max(self._request.last_activity, started) + timeout):
                try:
                    return await self._request.receive.receive()
                except trio.EndOfChannel:
                    self._client._raise_failure()
            # Progress messages refresh last_activity without waking us: go on waiting.
            if trio.current_time() >= max(self._request.last_activity, started) + timeout:
                raise ResponseTimeout(self._client._timeout_message(self.request_id, timeout))

    def _consume(self, item: _Item) -> AudioChunk:
        match item:
            case AudioChunk(samples=samples):
                self.sample_rate = item.sample_rate
                self.samples_received += samples or 0
                self.chunks_received += 1
                return item
            case Complete(result=SynthesisResult() as result):
                self.finished = True
                self.result = result
                self.sample_rate = result.sample_rate
            case Complete():
                self.finished = True
                self.cancelled = True
            case Error(error=body):
                self.finished = True
                self.error = SynthesisError(
                    _known_code(body.code), body.message, body.details, self.request_id
                )
                raise self.error
        raise StopAsyncIteration


class TextStream(SynthesisStream):
    """A request whose text is sent in pieces (an LLM's output); its audio always streams.

    Send text with `send_text`, force out a partial sentence with `flush`, and
    call `end` after the last piece. The server speaks whole sentences as they
    complete, so audio arrives while text is still being sent: read it from
    another task than the one sending, or the connection stalls.
    """

    def __init__(self, client: VoxtrioClient, request: _Request) -> None:
        super().__init__(client, request)
        self.text_ended = False

    async def send_text(self, text: str) -> None:
        """Send the next piece of text (1 to 5000 characters; sentences may span pieces)."""
        if not 1 <= len(text) <= _MAX_DELTA_CHARS:
            raise ValueError(
                f"a text piece has 1 to {_MAX_DELTA_CHARS} characters, not {len(text)}"
            )
        await self._send_text_message({"type": "text_delta", "text": text})

    async def flush(self) -> None:
        """Have the server speak what it holds now, even if no sentence has ended."""
        await self._send_text_message({"type": "text_flush"})

    async def end(self) -> None:
        """No more text: the server speaks the rest, then the request completes."""
        await self._send_text_message({"type": "text_stream_end"})
        self.text_ended = True

    async def _send_text_message(self, message: dict[str, Any]) -> None:
        if self.text_ended:
            raise RuntimeError(f"text stream {self.request_id!r} was already ended")
        if self._request.terminal_received or self._closed:
            raise RuntimeError(f"request {self.request_id!r} has already finished")
        # Our own text counts as activity: a server waiting for text is not silent.
        self._request.last_activity = trio.current_time()
        await self._client._send({**message, "request_id": self.request_id})


def _check_names(params: Mapping[str, Any], known: frozenset[str]) -> None:
    unknown = sorted(set(params) - known)
    if unknown:
        raise TypeError(f"unknown synthesis parameter(s): {', '.join(unknown)}")


def _given(params: Mapping[str, Any]) -> dict[str, Any]:
    # None means "the server's default": leave the key out.
    return {name: value for name, value in params.items() if value is not None}


def _known_code(code: str) -> ErrorCode | str:
    # A newer server may send codes this client does not know: keep them as text.
    try:
        return ErrorCode(code)
    except ValueError:
        return code


# ---------------------------------------------------------------- the client


@attrs.define(eq=False)
class _PingWaiter:
    sent_at: float
    event: trio.Event = attrs.Factory(trio.Event)
    pong: Pong | None = None


class VoxtrioClient:
    """One connection to a voxtrio server; make one with `connect()`."""

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
        self.connection_errors: deque[SynthesisError] = deque(maxlen=_CONNECTION_ERRORS_KEPT)
        self._ws = ws
        self._stream = stream
        self._ws_closed = trio.Event()
        self._nursery = nursery
        self._queue_size = message_queue_size
        self._requests: dict[str, _Request] = {}
        # Ids given up on after cancel_timeout: the server may still answer for them.
        self._abandoned: set[str] = set()
        self._pings: dict[int, _PingWaiter] = {}
        self._last_ping_timestamp = 0
        self._failure: VoxtrioClientError | None = None
        self._closing = False
        self._reader_scope = trio.CancelScope()
        self._reader_blocked_on: str | None = None

    def __repr__(self) -> str:
        state = "closed" if self._failure else "open"
        return f"<VoxtrioClient {self.url} {state}, {len(self._requests)} active>"

    @property
    def closed(self) -> bool:
        """True once the connection is unusable (closed, lost, or the server misbehaved)."""
        return self._failure is not None

    @property
    def active_requests(self) -> frozenset[str]:
        return frozenset(self._requests)

    # -- requests -------------------------------------------------------------

    @asynccontextmanager
    async def synthesize(
        self,
        text: str,
        *,
        mode: Mode = "streaming",
        request_id: str | None = None,
        **params: Any,
    ) -> AsyncIterator[SynthesisStream]:
        """Send a tts_request and yield its stream.

        `params` are the protocol's (cfg_value, inference_timesteps, normalize,
        denoise, retry_badcase, retry_badcase_max_times,
        retry_badcase_ratio_threshold, seed, max_len, format, sample_rate,
        bit_rate: docs/PROTOCOL.md §3.1); None means the server's default; an
        unknown name is a TypeError here. Leaving the context before the end
        cancels the request and waits for its terminal message (`cancel_timeout`).
        """
        _check_names(params, _PARAM_NAMES)
        body = {"text": text, "mode": mode, **_given(params)}
        stream = await self._start("tts_request", request_id, body, SynthesisStream)
        try:
            yield stream
        finally:
            await stream.aclose()

    @asynccontextmanager
    async def text_stream(
        self, *, request_id: str | None = None, **params: Any
    ) -> AsyncIterator[TextStream]:
        """Send a text_stream_start and yield its TextStream (text in pieces, audio out).

        `params` as for `synthesize`, but there is no text and no mode. Leaving
        the context before the request completed cancels it.
        """
        _check_names(params, _STREAM_PARAM_NAMES)
        stream = await self._start("text_stream_start", request_id, _given(params), TextStream)
        try:
            yield stream
        finally:
            await stream.aclose()

    async def speak(
        self,
        text: str,
        *,
        mode: Mode = "streaming",
        request_id: str | None = None,
        **params: Any,
    ) -> Speech:
        """Synthesize and collect the whole audio (either mode)."""
        pcm = bytearray()
        async with self.synthesize(text, mode=mode, request_id=request_id, **params) as stream:
            async for chunk in stream:
                pcm += chunk.pcm
        result = stream.result
        if result is None:
            raise SynthesisCancelled(f"request {stream.request_id!r} was cancelled")
        return Speech(bytes(pcm), result.sample_rate, result, result.format)

    async def cancel(self, request_id: str) -> bool:
        """Cancel an active request of this client; False if there is none or it is cancelling."""
        request = self._requests.get(request_id)
        if request is None:
            return False
        return await self._send_cancel(request)

    async def ping(self, *, ping_timeout: float | None = None) -> float:
        """Send a protocol `ping` and return the round trip in seconds."""
        self._check_usable()
        timeout = self.ping_timeout if ping_timeout is None else ping_timeout
        # Unique timestamps: the pong is matched to its ping by the echoed value.
        timestamp = max(int(time.time() * 1000), self._last_ping_timestamp + 1)
        self._last_ping_timestamp = timestamp
        waiter = _PingWaiter(trio.current_time())
        self._pings[timestamp] = waiter
        try:
            await self._send({"type": "ping", "timestamp": timestamp})
            with trio.move_on_after(timeout):
                await waiter.event.wait()
        finally:
            self._pings.pop(timestamp, None)
        if waiter.pong is not None:
            return trio.current_time() - waiter.sent_at
        if self._failure is not None:
            self._raise_failure()
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

    # -- sending --------------------------------------------------------------

    async def _start(
        self,
        kind: str,
        request_id: str | None,
        params: dict[str, Any],
        stream_class: type[S],
    ) -> S:
        self._check_usable()
        rid = uuid.uuid4().hex if request_id is None else request_id
        if rid in self._requests or rid in self._abandoned:
            raise ValueError(f"request id {rid!r} is still active on this connection")
        send, receive = trio.open_memory_channel[_Item](self._queue_size)
        request = _Request(
            rid,
            params.get("mode", "streaming"),
            params.get("format", "pcm16"),
            send,
            receive,
            last_activity=trio.current_time(),
        )
        self._requests[rid] = request
        try:
            await self._send({"type": kind, "request_id": rid, "params": params})
        except BaseException:
            if self._requests.get(rid) is request:
                del self._requests[rid]
            receive.close()
            raise
        return stream_class(self, request)

    async def _send_cancel(self, request: _Request) -> bool:
        if request.cancel_sent or request.terminal_received or self._failure is not None:
            return False
        request.cancel_sent = True
        await self._send({"type": "cancel", "request_id": request.request_id})
        return True

    async def _send(self, message: dict[str, Any]) -> None:
        self._check_usable()
        text = json.dumps(message, separators=(",", ":"), ensure_ascii=False)
        # Shielded with its own deadline: a send cut short by a cancellation would
        # leave half a frame on the wire and the connection unusable.
        deadline = trio.current_time() + self.send_timeout
        with trio.CancelScope(shield=True, deadline=deadline) as scope:
            try:
                await self._ws.send_message(text)
            except ConnectionClosed as exc:
                self._fail(self._lost(exc))
                self._raise_failure()
        if scope.cancelled_caught:
            self._fail(
                ConnectionLost(
                    f"a message could not be sent within send_timeout={self.send_timeout:g} s"
                ),
                close_code=1011,
            )
            self._raise_failure()

    # -- the reader task --------------------------------------------------------

    async def _read_loop(self) -> None:
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
        message = parse_server_message(text)
        match message:
            case Pong(timestamp=timestamp):
                waiter = self._pings.pop(timestamp, None)
                if waiter is None:
                    log.debug("pong %d matches no waiting ping (it came too late)", timestamp)
                else:
                    waiter.pong = message
                    waiter.event.set()
            case Progress(request_id=rid):
                if request := self._lookup(rid, "progress"):
                    request.progress = message
            case Complete(request_id=rid, result=result):
                if request := self._lookup(rid, "complete", terminal=True):
                    if isinstance(result, SynthesisResult):
                        request.check_result(result)
                    await self._finish(request, message)
            case Error(request_id=None, error=body):
                error = SynthesisError(_known_code(body.code), body.message, body.details)
                log.warning("connection-level error from %s: %s %s", self.url, error, body.details)
                self.connection_errors.append(error)
            case Error(request_id=str(rid), error=body) if body.code == ErrorCode.UNKNOWN_REQUEST:
                # Never a request's terminal: the answer to a cancel that crossed the
                # request's own terminal message on the wire. Nothing to do.
                log.debug("cancel of %r arrived after it had finished", rid)
            case Error(request_id=str(rid)):
                if request := self._lookup(rid, "error", terminal=True):
                    await self._finish(request, message)

    async def _on_frame(self, data: bytes) -> None:
        try:
            frame = decode_frame(data)
        except FrameError as exc:
            raise ProtocolViolation(f"the server sent a malformed audio frame: {exc}") from None
        meta: StreamingChunkMetadata | WholeAudioMetadata
        if frame.type is FrameType.STREAMING_CHUNK:
            meta = _structure(StreamingChunkMetadata, frame.metadata, "streaming frame's metadata")
        else:
            meta = _structure(WholeAudioMetadata, frame.metadata, "audio frame's metadata")
        if request := self._lookup(meta.request_id, "audio frame"):
            chunk = request.accept_frame(frame.type, meta, frame.payload)
            if chunk is not None:
                await self._deliver(request, chunk)

    def _lookup(self, request_id: str, what: str, *, terminal: bool = False) -> _Request | None:
        """The active request a message names; None for an abandoned one (dropped)."""
        request = self._requests.get(request_id)
        if request is not None:
            request.last_activity = trio.current_time()
            return request
        if request_id in self._abandoned:
            if terminal:
                self._abandoned.discard(request_id)
            return None
        raise ProtocolViolation(f"the server sent {what} for unknown request {request_id!r:.140}")

    async def _finish(self, request: _Request, terminal: Complete | Error) -> None:
        request.terminal_received = True
        # The server frees the id when it sends the terminal message: so do we.
        del self._requests[request.request_id]
        await self._deliver(request, terminal)
        request.send.close()

    async def _deliver(self, request: _Request, item: _Item) -> None:
        try:
            try:
                request.send.send_nowait(item)
            except trio.WouldBlock:
                # The consumer is behind: wait for it (this pauses the whole connection).
                self._reader_blocked_on = request.request_id
                try:
                    await request.send.send(item)
                finally:
                    self._reader_blocked_on = None
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass  # the stream was closed (given up on): drop what it would have read

    # -- failure --------------------------------------------------------------

    def _fail(self, exc: VoxtrioClientError, *, close_code: int | None = None) -> None:
        """The connection is unusable: wake every waiter with `exc` (the first failure wins)."""
        if self._failure is None:
            self._failure = exc
        for request in self._requests.values():
            request.send.close()
        self._requests.clear()
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
        if self._closing and self._failure is not None:
            return ConnectionLost(str(self._failure))
        reason = exc.reason
        if reason is None:
            return ConnectionLost("the connection closed")
        text = f" ({reason.reason})" if reason.reason else ""
        hint = " (a message was over the server's size limit)" if reason.code == 1009 else ""
        return ConnectionLost(
            f"the server closed the connection: {reason.code} {reason.name}{text}{hint}",
            code=reason.code,
        )

    def _check_usable(self) -> None:
        if self._failure is not None:
            self._raise_failure()

    def _raise_failure(self) -> NoReturn:
        failure = self._failure or ConnectionLost("the request ended without a terminal message")
        raise _clone_failure(failure)

    def _abandon(self, request: _Request) -> None:
        if self._requests.get(request.request_id) is request:
            del self._requests[request.request_id]
            self._abandoned.add(request.request_id)

    def _timeout_message(self, request_id: str, timeout: float) -> str:
        message = f"no message about request {request_id!r} for response_timeout={timeout:g} s"
        blocked = self._reader_blocked_on
        if blocked is not None and blocked != request_id:
            message += (
                f"; the connection is paused because nobody reads request {blocked!r}: "
                "read every open stream, each from its own task"
            )
        return message


# ---------------------------------------------------------------- connecting


@asynccontextmanager
async def connect(
    url: str = DEFAULT_URL,
    *,
    connect_timeout: float = DEFAULT_CONNECT_TIMEOUT,
    headers: Mapping[str, str] | Sequence[tuple[str, str]] | None = None,
    api_key: str | None = None,
    message_queue_size: int = DEFAULT_MESSAGE_QUEUE_SIZE,
    response_timeout: float = DEFAULT_RESPONSE_TIMEOUT,
    cancel_timeout: float = DEFAULT_CANCEL_TIMEOUT,
    close_timeout: float = DEFAULT_CLOSE_TIMEOUT,
    send_timeout: float = DEFAULT_SEND_TIMEOUT,
    ping_timeout: float = DEFAULT_PING_TIMEOUT,
    max_message_size: int = DEFAULT_MAX_MESSAGE_SIZE,
) -> AsyncIterator[VoxtrioClient]:
    """Open a connection, yield a VoxtrioClient, close it on exit.

    Deadlines, in seconds: `connect_timeout` (TCP + WebSocket handshake),
    `response_timeout` (nothing at all from the server about a request),
    `cancel_timeout` (the terminal message after a cancel on leaving a
    `synthesize` context), `close_timeout` (closing handshake), `send_timeout`
    (one outgoing message), `ping_timeout` (the pong). `message_queue_size` is
    the number of messages buffered per request before the reader waits.
    `api_key` is sent as `Authorization: Bearer KEY`.
    """
    if message_queue_size < 1:
        raise ValueError("message_queue_size must be at least 1")
    extra_headers = [
        (name.encode(), value.encode())
        for name, value in (headers.items() if isinstance(headers, Mapping) else headers or ())
    ]
    if api_key is not None:
        extra_headers.append((b"authorization", f"Bearer {api_key}".encode()))
    async with _open_nursery_unwrapped() as nursery:
        ws, stream = await _open_websocket(
            nursery,
            url,
            connect_timeout=connect_timeout,
            extra_headers=extra_headers,
            max_message_size=max_message_size,
        )
        client = VoxtrioClient(
            ws,
            stream,
            nursery,
            url=url,
            message_queue_size=message_queue_size,
            response_timeout=response_timeout,
            cancel_timeout=cancel_timeout,
            close_timeout=close_timeout,
            send_timeout=send_timeout,
            ping_timeout=ping_timeout,
        )
        nursery.start_soon(client._read_loop)
        try:
            yield client
        finally:
            await client.aclose()


def _split_url(url: str) -> tuple[str, int, str, bool]:
    """(host, port, resource, tls) of a ws:// or wss:// URL, or ValueError."""
    parts = urlsplit(url)
    if parts.scheme not in ("ws", "wss"):
        raise ValueError(f"not a WebSocket URL (ws:// or wss://): {url!r}")
    if not parts.hostname:
        raise ValueError(f"no host in {url!r}")
    tls = parts.scheme == "wss"
    port = parts.port or (443 if tls else 80)
    resource = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    return parts.hostname, port, resource, tls


class _ReaderNursery:
    """The nursery trio-websocket gets for its own reader task, guarded.

    trio-websocket raises a handshake rejection (HTTP 404, 503...) from that
    task, not from the call that waits for the handshake, and leaves the socket
    open. Run through here, a failure of the task is recorded and cancels the
    handshake wait instead of crashing the client's nursery.
    """

    def __init__(self, nursery: trio.Nursery) -> None:
        self._nursery = nursery
        self.failure: Exception | None = None
        self.handshake_scope = trio.CancelScope()

    def start_soon(
        self, fn: Callable[..., Awaitable[object]], *args: object, name: object = None
    ) -> None:
        self._nursery.start_soon(self._guard, fn, *args, name=name)

    async def _guard(self, fn: Callable[..., Awaitable[object]], *args: object) -> None:
        try:
            await fn(*args)
        except Exception as exc:
            if self.failure is None:
                self.failure = exc
            self.handshake_scope.cancel()
            if not isinstance(exc, HandshakeError):
                log.error("the WebSocket reader task failed", exc_info=exc)


async def _open_websocket(
    nursery: trio.Nursery,
    url: str,
    *,
    connect_timeout: float,
    extra_headers: list[tuple[bytes, bytes]],
    max_message_size: int,
) -> tuple[WebSocketConnection, trio.abc.Stream]:
    """The connection and the stream under it (which the caller must close)."""
    host, port, resource, tls = _split_url(url)
    host_header = host if port in (80, 443) else f"{host}:{port}"
    guard = _ReaderNursery(nursery)
    stream: trio.SocketStream | trio.SSLStream[trio.SocketStream] | None = None
    with trio.move_on_after(connect_timeout):
        try:
            if tls:
                context = ssl.create_default_context()
                stream = await trio.open_ssl_over_tcp_stream(
                    host, port, ssl_context=context, https_compatible=True
                )
            else:
                stream = await trio.open_tcp_stream(host, port)
        except OSError as exc:
            raise ConnectError(f"cannot connect to {url}: {exc}") from exc
        with guard.handshake_scope:
            ws = await wrap_client_stream(
                cast(trio.Nursery, guard),
                stream,
                host_header,
                resource,
                extra_headers=extra_headers,
                max_message_size=max_message_size,
                receive_buffer_size=_RECEIVE_BUFFER_BYTES,
            )
            return ws, stream
    if stream is not None:
        await trio.aclose_forcefully(stream)
    failure = guard.failure
    if isinstance(failure, ConnectionRejected):
        body = (failure.body or b"").decode("utf-8", "replace").strip()
        detail = f": {body[:200]}" if body else _REJECTION_HINTS.get(failure.status_code, "")
        raise ConnectError(
            f"{url}: the server rejected the WebSocket handshake with HTTP "
            f"{failure.status_code}{detail}",
            status_code=failure.status_code,
        ) from None
    if failure is not None:
        raise ConnectError(f"cannot connect to {url}: {failure!r}") from failure
    raise ConnectError(
        f"cannot connect to {url}: no answer within connect_timeout={connect_timeout:g} s"
    )


@asynccontextmanager
async def _open_nursery_unwrapped() -> AsyncIterator[trio.Nursery]:
    """A nursery whose body's exception escapes bare, not inside an ExceptionGroup.

    Its background tasks must never raise (but Cancelled): then a group holds
    the body's exception and Cancelled at most, and callers get a plain
    SynthesisError or KeyboardInterrupt instead of having to use `except*`.
    The nursery is cancelled when the body ends.
    """
    try:
        async with trio.open_nursery() as nursery:
            try:
                yield nursery
            finally:
                nursery.cancel_scope.cancel()
    except BaseExceptionGroup as group:
        _raise_lone_exception(group)
        raise


def _raise_lone_exception(group: BaseExceptionGroup[BaseException]) -> None:
    """Re-raise the group's one non-Cancelled exception, if it has exactly one."""
    leaves = list(_leaves(group))
    others = [exc for exc in leaves if not isinstance(exc, trio.Cancelled)]
    lone = others[0] if len(others) == 1 else leaves[0] if len(leaves) == 1 else None
    if lone is None:
        return
    context = lone.__context__
    try:
        raise lone
    finally:
        # Keep the exception's own context, not the group it was unwrapped from.
        lone.__context__ = context
        del lone, context


def _leaves(group: BaseExceptionGroup[BaseException]) -> Iterator[BaseException]:
    for exc in group.exceptions:
        if isinstance(exc, BaseExceptionGroup):
            yield from _leaves(exc)
        else:
            yield exc


# ---------------------------------------------------------------- WAV files


def write_wav(path: str | os.PathLike[str], pcm: bytes, sample_rate: int) -> None:
    """Write mono 16-bit PCM (s16le) as a WAV file, atomically: temp file, then rename."""
    if len(pcm) % 2:
        raise ValueError(f"16-bit audio needs an even number of bytes, got {len(pcm)}")
    if sample_rate <= 0:
        raise ValueError(f"sample_rate must be positive, got {sample_rate}")
    if sys.byteorder == "big":
        # `wave` takes native-order samples and swaps them on big-endian hosts.
        samples = array.array("h", pcm)
        samples.byteswap()
        pcm = samples.tobytes()
    buffer = io.BytesIO()
    with wave.open(buffer, "wb") as wav:
        wav.setnchannels(1)
        wav.setsampwidth(2)
        wav.setframerate(sample_rate)
        wav.writeframes(pcm)
    _write_atomically(Path(path), buffer.getvalue())


def _write_atomically(target: Path, data: bytes) -> None:
    """Write a temporary file beside `target`, then rename it: never a half-written file."""
    temporary = target.with_name(f".{target.name}.{uuid.uuid4().hex[:12]}.tmp")
    try:
        with open(temporary, "xb") as raw:  # "x": honours the umask, unlike mkstemp's 0600
            raw.write(data)
            raw.flush()
            os.fsync(raw.fileno())
        os.replace(temporary, target)
    except BaseException:
        with contextlib.suppress(OSError):
            temporary.unlink()
        raise
