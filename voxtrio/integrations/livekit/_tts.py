"""voxtrio as a LiveKit Agents `tts.TTS`: streaming, aligned transcripts, one WebSocket.

`stream()` is one voxtrio text stream per LiveKit stream (a segment): the LLM's tokens
go out as they are pushed, the server cuts sentences, and word timings come back as
`TimedString`s. `synthesize()` is one `tts_request`. Closing a stream early (an
interruption) cancels the request; the server stops at its next chunk. The plugin
keeps one connection and reopens it after it dropped; a request that failed before
any audio is retried by LiveKit itself (`APIConnectionError` is retryable).
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import AsyncIterator, Mapping
from typing import Any

from livekit.agents import (
    DEFAULT_API_CONNECT_OPTIONS,
    APIConnectionError,
    APIConnectOptions,
    APIStatusError,
    APITimeoutError,
    tts,
)
from livekit.agents.types import TimedString

from voxtrio.aioclient import (
    DEFAULT_URL,
    AudioChunk,
    ConnectError,
    ErrorCode,
    ResponseTimeout,
    SynthesisError,
    SynthesisStream,
    VoiceSummary,
    VoxtrioClientError,
    WordTimings,
)
from voxtrio.integrations._client import SharedConnection

# Server error codes as HTTP statuses (LiveKit retries 429 and 5xx, not other 4xx).
_STATUS = {
    ErrorCode.INVALID_PARAMS: 400,
    ErrorCode.UNSUPPORTED_FORMAT: 400,
    ErrorCode.RATE_LIMITED: 429,
    ErrorCode.SHUTTING_DOWN: 503,
}


class TTS(tts.TTS):
    """voxtrio text to speech for LiveKit Agents.

    Args:
        url: the server's native endpoint, `ws://HOST:PORT/tts`.
        api_key: sent as `Authorization: Bearer` when the server has keys.
        voice: a voice registered on the server, by id (None: the model's default).
        sample_rate: the rate LiveKit gets; the server resamples to it.
        word_timestamps: aligned transcripts (word timings from the server).
        params: further request options of docs/PROTOCOL.md §3.1.
        connect_options: passed to `voxtrio.aioclient.open_client` (deadlines).
    """

    def __init__(
        self,
        *,
        url: str = DEFAULT_URL,
        api_key: str | None = None,
        voice: str | None = None,
        sample_rate: int = 24000,
        word_timestamps: bool = True,
        params: Mapping[str, Any] | None = None,
        connect_options: Mapping[str, Any] | None = None,
    ) -> None:
        super().__init__(
            capabilities=tts.TTSCapabilities(streaming=True, aligned_transcript=word_timestamps),
            sample_rate=sample_rate,
            num_channels=1,
        )
        self._voice = voice
        self._word_timestamps = word_timestamps
        self._params = dict(params or {})
        self._connection = SharedConnection(url, api_key=api_key, **dict(connect_options or {}))
        self._tasks: set[asyncio.Task[Any]] = set()

    @property
    def model(self) -> str:
        return "voxcpm"

    @property
    def provider(self) -> str:
        return "voxtrio"

    @property
    def connection(self) -> SharedConnection:
        return self._connection

    def update_options(self, *, voice: str | None = None) -> None:
        """Speak the next requests with another registered voice (by id)."""
        self._voice = voice

    async def list_voices(self) -> list[VoiceSummary]:
        """The voices registered on the server."""
        async with _translated_errors():
            client = await self._connection.get()
            return await client.list_voices()

    def request_options(self) -> dict[str, Any]:
        options: dict[str, Any] = {**self._params, "sample_rate": self.sample_rate}
        if self._voice and self._voice != "default":
            options["voice_id"] = self._voice
        return options

    def synthesize(
        self, text: str, *, conn_options: APIConnectOptions = DEFAULT_API_CONNECT_OPTIONS
    ) -> ChunkedStream:
        return ChunkedStream(tts=self, input_text=text, conn_options=conn_options)

    def stream(
        self, *, conn_options: APIConnectOptions = DEFAULT_API_CONNECT_OPTIONS
    ) -> SynthesizeStream:
        return SynthesizeStream(tts=self, conn_options=conn_options)

    def prewarm(self) -> None:
        """Open the connection now, so the first turn does not wait for the handshake."""
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            return  # no event loop yet: the first turn connects
        task = loop.create_task(self._prewarm())
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _prewarm(self) -> None:
        with contextlib.suppress(VoxtrioClientError):
            await self._connection.get()

    async def aclose(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        await self._connection.aclose()


class ChunkedStream(tts.ChunkedStream):
    """One text, one `tts_request`, its audio streamed as it is generated."""

    def __init__(self, *, tts: TTS, input_text: str, conn_options: APIConnectOptions) -> None:
        super().__init__(tts=tts, input_text=input_text, conn_options=conn_options)
        self._voxtrio = tts

    async def _run(self, output_emitter: tts.AudioEmitter) -> None:
        output_emitter.initialize(
            request_id=uuid.uuid4().hex,
            sample_rate=self._voxtrio.sample_rate,
            num_channels=1,
            mime_type="audio/pcm",
        )
        async with _translated_errors():
            client = await self._voxtrio.connection.get()
            stream = await client.start_synthesis(
                self.input_text, **self._voxtrio.request_options()
            )
            try:
                async for event in stream:
                    if isinstance(event, AudioChunk):
                        output_emitter.push(event.pcm)
            finally:
                stream.close_nowait()  # cancels it when we were interrupted
        output_emitter.flush()


class SynthesizeStream(tts.SynthesizeStream):
    """Tokens pushed by LiveKit go out as they come; audio and word timings come back."""

    def __init__(self, *, tts: TTS, conn_options: APIConnectOptions) -> None:
        super().__init__(tts=tts, conn_options=conn_options)
        self._voxtrio = tts

    async def _run(self, output_emitter: tts.AudioEmitter) -> None:
        output_emitter.initialize(
            request_id=uuid.uuid4().hex,
            sample_rate=self._voxtrio.sample_rate,
            num_channels=1,
            mime_type="audio/pcm",
            stream=True,
        )
        options = self._voxtrio.request_options()
        if self._voxtrio.capabilities.aligned_transcript:
            options["word_timestamps"] = True
        async with _translated_errors():
            client = await self._voxtrio.connection.get()
            stream = await client.start_text_stream(**options)
            output_emitter.start_segment(segment_id=stream.request_id)
            sender = asyncio.get_running_loop().create_task(self._send(stream))
            try:
                await self._receive(stream, output_emitter)
                await sender  # its errors, if any
            finally:
                sender.cancel()
                stream.close_nowait()  # cancels it when we were interrupted
                # Its failure, if any, is the receiver's too (or the cancellation).
                await asyncio.gather(sender, return_exceptions=True)
        output_emitter.end_segment()

    async def _send(self, stream: Any) -> None:
        async for data in self._input_ch:
            if isinstance(data, self._FlushSentinel):
                await stream.flush()
            elif data:
                self._mark_started()
                await stream.send_text(data)
        await stream.end()

    async def _receive(self, stream: SynthesisStream, output_emitter: tts.AudioEmitter) -> None:
        async for event in stream:
            if isinstance(event, AudioChunk):
                output_emitter.push(event.pcm)
            elif isinstance(event, WordTimings):
                output_emitter.push_timed_transcript(
                    [
                        TimedString(f"{word.text} ", start_time=word.start, end_time=word.end)
                        for word in event.words
                    ]
                )


@contextlib.asynccontextmanager
async def _translated_errors() -> AsyncIterator[None]:
    """The client's errors as LiveKit's, so its retry rules apply."""
    try:
        yield
    except SynthesisError as exc:
        status = _STATUS.get(exc.code, 500) if isinstance(exc.code, ErrorCode) else 500
        raise APIStatusError(
            f"voxtrio: {exc}", status_code=status, request_id=exc.request_id, body=exc.details
        ) from exc
    except ResponseTimeout as exc:
        raise APITimeoutError(f"voxtrio: {exc}") from exc
    except (ConnectError, VoxtrioClientError) as exc:
        raise APIConnectionError(f"voxtrio: {exc}") from exc
