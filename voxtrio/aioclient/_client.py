"""The public asyncio client: connecting, requests, voices, pings and closing."""

from __future__ import annotations

import base64
import uuid
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from typing import Any

import websockets
from websockets.asyncio.client import connect as ws_connect
from websockets.exceptions import InvalidHandshake, InvalidStatus

from voxtrio.aioclient._connection import AsyncConnection
from voxtrio.aioclient._streams import SynthesisStream, TextStream
from voxtrio.protocol._client_errors import ConnectError, ProtocolViolation
from voxtrio.protocol._client_incoming import AudioChunk
from voxtrio.protocol._client_outgoing import (
    DEFAULT_CANCEL_TIMEOUT,
    DEFAULT_CLOSE_TIMEOUT,
    DEFAULT_CONNECT_TIMEOUT,
    DEFAULT_MAX_MESSAGE_SIZE,
    DEFAULT_PING_TIMEOUT,
    DEFAULT_RESPONSE_TIMEOUT,
    DEFAULT_SEND_TIMEOUT,
    DEFAULT_URL,
    request_params,
)
from voxtrio.protocol._messages import Mode, SynthesisResult
from voxtrio.protocol._voice_messages import VoiceRegistered, Voices, VoiceSummary


class AsyncVoxtrioClient:
    """One connection to a voxtrio server; open one with `connect()` or `open_client()`."""

    def __init__(self, connection: AsyncConnection) -> None:
        self._connection = connection

    def __repr__(self) -> str:
        state = "closed" if self.closed else "open"
        return f"<AsyncVoxtrioClient {self._connection.url} {state}>"

    @property
    def url(self) -> str:
        return self._connection.url

    @property
    def closed(self) -> bool:
        """True once the connection is unusable (closed, lost, or the server misbehaved)."""
        return self._connection.state.closed

    @property
    def active_requests(self) -> frozenset[str]:
        return self._connection.state.requests.ids

    async def start_text_stream(
        self, *, request_id: str | None = None, **params: Any
    ) -> TextStream:
        """Open a text stream (`text_stream_start`); the caller must `aclose()` it."""
        body = request_params(params)
        request = await self._connection.open_request("text_stream_start", request_id, body)
        return TextStream(self._connection, request)

    async def start_synthesis(
        self, text: str, *, mode: Mode = "streaming", request_id: str | None = None, **params: Any
    ) -> SynthesisStream:
        """Send a `tts_request`; the caller must `aclose()` the stream."""
        body = {"text": text, "mode": mode, **request_params(params)}
        request = await self._connection.open_request("tts_request", request_id, body)
        return SynthesisStream(self._connection, request)

    @asynccontextmanager
    async def text_stream(self, **params: Any) -> AsyncIterator[TextStream]:
        """`start_text_stream` as a context: leaving it before the end cancels the request."""
        stream = await self.start_text_stream(**params)
        try:
            yield stream
        finally:
            await stream.aclose()

    @asynccontextmanager
    async def synthesize(self, text: str, **params: Any) -> AsyncIterator[SynthesisStream]:
        """`start_synthesis` as a context: leaving it before the end cancels the request."""
        stream = await self.start_synthesis(text, **params)
        try:
            yield stream
        finally:
            await stream.aclose()

    async def speak(self, text: str, **params: Any) -> tuple[bytes, SynthesisResult | None]:
        """The whole audio of one text and its result (None if it was cancelled)."""
        audio = bytearray()
        async with self.synthesize(text, **params) as stream:
            async for event in stream:
                if isinstance(event, AudioChunk):
                    audio += event.pcm
        return bytes(audio), stream.result

    async def list_voices(self, *, reply_timeout: float = 10.0) -> list[VoiceSummary]:
        """The voices registered on the server (use one with `voice_id=`)."""
        message = {"type": "voice_list", "request_id": uuid.uuid4().hex}
        reply = await self._connection.request_reply(message, reply_timeout)
        if not isinstance(reply, Voices):
            raise ProtocolViolation(f"voice_list was answered with {reply!r:.100}")
        return list(reply.voices)

    async def register_voice(
        self,
        voice_id: str,
        audio: bytes,
        *,
        prompt_text: str | None = None,
        mode: str | None = None,
        persist: bool = False,
        replace: bool = False,
        reply_timeout: float = 60.0,
    ) -> VoiceRegistered:
        """Register a voice from prompt audio (WAV, FLAC, MP3 or Ogg bytes); docs/PROTOCOL.md §15.

        The server must allow uploads (`--allow-voice-upload`); then speak with it by id
        (`voice_id=`). A refusal raises SynthesisError (FORBIDDEN, INVALID_PARAMS).
        """
        message: dict[str, Any] = {
            "type": "voice_register",
            "request_id": uuid.uuid4().hex,
            "voice_id": voice_id,
            "audio": base64.b64encode(audio).decode("ascii"),
            "persist": persist,
            "replace": replace,
        }
        if prompt_text is not None:
            message["prompt_text"] = prompt_text
        if mode is not None:
            message["mode"] = mode
        reply = await self._connection.request_reply(message, reply_timeout)
        if not isinstance(reply, VoiceRegistered):
            raise ProtocolViolation(f"voice_register was answered with {reply!r:.100}")
        return reply

    async def ping(self, *, ping_timeout: float = DEFAULT_PING_TIMEOUT) -> float:
        """Round trip of a protocol `ping`, in seconds."""
        return await self._connection.ping(ping_timeout)

    async def aclose(self) -> None:
        """Close the connection (1000); every open stream ends with ConnectionLost."""
        await self._connection.aclose()


async def open_client(
    url: str = DEFAULT_URL,
    *,
    api_key: str | None = None,
    headers: Mapping[str, str] | None = None,
    connect_timeout: float = DEFAULT_CONNECT_TIMEOUT,
    response_timeout: float = DEFAULT_RESPONSE_TIMEOUT,
    cancel_timeout: float = DEFAULT_CANCEL_TIMEOUT,
    send_timeout: float = DEFAULT_SEND_TIMEOUT,
    close_timeout: float = DEFAULT_CLOSE_TIMEOUT,
    queue_size: int = 64,
    max_message_size: int = DEFAULT_MAX_MESSAGE_SIZE,
    ping_interval: float | None = 20.0,
) -> AsyncVoxtrioClient:
    """Open a connection; the caller must `aclose()` the client.

    Deadlines in seconds: `connect_timeout` (TCP + handshake), `response_timeout`
    (nothing about a request), `cancel_timeout` (the end of a cancelled request),
    `send_timeout` (one message), `close_timeout`. `ping_interval`: WebSocket
    keepalive pings, which also notice a dead peer (None: off). `queue_size`:
    messages buffered per request before the reader waits.
    """
    extra = dict(headers or {})
    if api_key is not None:
        extra["Authorization"] = f"Bearer {api_key}"
    try:
        ws = await ws_connect(
            url,
            additional_headers=extra,
            open_timeout=connect_timeout,
            max_size=max_message_size,
            compression=None,
            ping_interval=ping_interval,
            ping_timeout=ping_interval,
            close_timeout=close_timeout,
        )
    except InvalidStatus as exc:
        status = exc.response.status_code
        raise ConnectError(
            f"{url}: the server refused the WebSocket handshake with HTTP {status}",
            status_code=status,
        ) from None
    except (OSError, TimeoutError, InvalidHandshake, websockets.InvalidURI) as exc:
        raise ConnectError(f"cannot connect to {url}: {exc!r}") from exc
    connection = AsyncConnection(
        ws,
        url=url,
        queue_size=queue_size,
        response_timeout=response_timeout,
        cancel_timeout=cancel_timeout,
        send_timeout=send_timeout,
        close_timeout=close_timeout,
    )
    return AsyncVoxtrioClient(connection)


@asynccontextmanager
async def connect(url: str = DEFAULT_URL, **options: Any) -> AsyncIterator[AsyncVoxtrioClient]:
    """`open_client` as a context: the connection is closed on exit."""
    client = await open_client(url, **options)
    try:
        yield client
    finally:
        await client.aclose()
