"""VoxtrioTTSService: Pipecat's TTS service on one voxtrio WebSocket.

Each LLM turn is one voxtrio text stream: the turn's tokens go out as `text_delta`s
as they arrive (the server cuts sentences, so Pipecat does not have to wait for
one), the turn's end is `text_stream_end`, and an interruption is a `cancel` of
that request, which the server stops at its next chunk and whose slot it frees.
Audio comes back at the pipeline's output rate (the server resamples) and word
timings go to Pipecat's `add_word_timestamps`, which paces the bot's text frames
to the audio.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import AsyncGenerator, Mapping
from typing import Any

from loguru import logger
from pipecat.frames.frames import (
    CancelFrame,
    EndFrame,
    ErrorFrame,
    Frame,
    StartFrame,
    TTSAudioRawFrame,
    TTSStoppedFrame,
)
from pipecat.services.settings import TTSSettings
from pipecat.services.tts_service import TextAggregationMode, TTSService

from voxtrio.aioclient import (
    DEFAULT_URL,
    AudioChunk,
    SynthesisError,
    TextStream,
    VoxtrioClientError,
    WordTimings,
)
from voxtrio.integrations._client import SharedConnection


class VoxtrioTTSService(TTSService):
    """Text to speech on a voxtrio server, streamed token by token over one WebSocket.

    Args:
        url: the server's native endpoint, `ws://HOST:PORT/tts`.
        api_key: sent as `Authorization: Bearer` when the server has keys.
        voice_id: a voice registered on the server (None: the model's default voice).
        sample_rate: output rate; None takes the pipeline's (`audio_out_sample_rate`).
        word_timestamps: ask for word timings and let them drive the bot's text
            frames; False for a server without them (then the text is pushed as sent).
        params: further request options of docs/PROTOCOL.md §3.1 (`cfg_value`,
            `inference_timesteps`, `seed`, `normalize`, ...).
        connect_options: passed to `voxtrio.aioclient.open_client` (deadlines).
    """

    Settings = TTSSettings
    _settings: TTSSettings

    def __init__(
        self,
        *,
        url: str = DEFAULT_URL,
        api_key: str | None = None,
        voice_id: str | None = None,
        sample_rate: int | None = None,
        word_timestamps: bool = True,
        params: Mapping[str, Any] | None = None,
        connect_options: Mapping[str, Any] | None = None,
        text_aggregation_mode: TextAggregationMode = TextAggregationMode.TOKEN,
        **kwargs: Any,
    ) -> None:
        super().__init__(
            text_aggregation_mode=text_aggregation_mode,
            # With word timings Pipecat makes the text frames from them, in step
            # with the audio; without, it pushes the text as it goes out.
            push_text_frames=not word_timestamps,
            push_start_frame=True,
            pause_frame_processing=False,
            sample_rate=sample_rate,
            settings=TTSSettings(model=None, voice=voice_id, language=None),
            **kwargs,
        )
        self._word_timestamps = word_timestamps
        self._params = dict(params or {})
        self._connection = SharedConnection(url, api_key=api_key, **dict(connect_options or {}))
        self._streams: dict[str, TextStream] = {}
        self._readers: dict[str, asyncio.Task[None]] = {}
        # Turns whose request failed: the rest of their text is dropped, not retried
        # token by token against a server that is down.
        self._failed: deque[str] = deque(maxlen=64)

    def can_generate_metrics(self) -> bool:
        return True

    @property
    def supports_processing_metrics(self) -> bool:
        # Audio arrives on a reader task, after run_tts has returned.
        return False

    @property
    def connection(self) -> SharedConnection:
        """The service's connection (for its `client` and `connections_opened`)."""
        return self._connection

    async def start(self, frame: StartFrame) -> None:
        await super().start(frame)
        try:
            await self._connection.get()
        except VoxtrioClientError as exc:  # the first turn tries again
            await self.push_error(error_msg=f"voxtrio: {exc}", exception=exc)

    async def stop(self, frame: EndFrame) -> None:
        await super().stop(frame)
        await self._close()

    async def cancel(self, frame: CancelFrame) -> None:
        await super().cancel(frame)
        await self._close()

    async def _close(self) -> None:
        for context_id in list(self._streams):
            await self._drop(context_id)
        await self._connection.aclose()

    async def run_tts(self, text: str, context_id: str) -> AsyncGenerator[Frame | None, None]:
        """Send one piece of the turn's text; its audio arrives on the reader task."""
        if not text or context_id in self._failed:
            yield None
            return
        try:
            stream = self._streams.get(context_id)
            if stream is None:
                stream = await self._open_stream(context_id)
            await stream.send_text(text)
            await self.start_tts_usage_metrics(text)
        except (VoxtrioClientError, RuntimeError) as exc:
            self._failed.append(context_id)
            await self._drop(context_id)
            yield ErrorFrame(error=f"voxtrio: {exc}")
            yield TTSStoppedFrame(context_id=context_id)
            return
        yield None

    async def _open_stream(self, context_id: str) -> TextStream:
        client = await self._connection.get()
        options: dict[str, Any] = {**self._params, "sample_rate": self.sample_rate}
        voice = self._settings.voice
        if isinstance(voice, str) and voice and voice != "default":
            options["voice_id"] = voice
        if self._word_timestamps:
            options["word_timestamps"] = True
        stream = await client.start_text_stream(**options)
        self._streams[context_id] = stream
        self._readers[context_id] = self.create_task(
            self._read(context_id, stream), name=f"voxtrio {context_id}"
        )
        return stream

    async def flush_audio(self, context_id: str | None = None) -> None:
        """The turn's text has ended: the server speaks the rest and completes."""
        stream = self._streams.get(context_id or self.get_active_audio_context_id() or "")
        if stream is not None and not stream.text_ended and not stream.finished:
            try:
                await stream.end()
            except (VoxtrioClientError, RuntimeError) as exc:
                logger.debug(f"{self}: could not end the text stream: {exc}")

    async def on_audio_context_interrupted(self, context_id: str) -> None:
        """Barge-in: cancel the turn's request now; no more of its audio is pushed."""
        await self._drop(context_id)
        await super().on_audio_context_interrupted(context_id)

    async def _drop(self, context_id: str) -> None:
        stream = self._streams.pop(context_id, None)
        reader = self._readers.pop(context_id, None)
        if stream is not None:
            # The cancel goes out first; the wait for the server's end runs in the background.
            stream.close_nowait()
        if reader is not None and reader is not asyncio.current_task():
            await self.cancel_task(reader)

    async def _keep_context_open(self, context_id: str) -> None:
        """Refresh the turn's audio context while its request runs.

        Pipecat ends an audio context that gets nothing for `stop_frame_timeout_s`
        (3 s); a request waiting for a free slot, or prefilling a long voice prompt on a
        slow machine, can take longer than that to its first audio.
        """
        interval = max(0.1, self._stop_frame_timeout_s / 3)
        while True:
            await asyncio.sleep(interval)
            if self.audio_context_available(context_id):
                self._refresh_audio_context(context_id)

    async def _read(self, context_id: str, stream: TextStream) -> None:
        """Hand the request's audio and word timings to Pipecat's audio context."""
        keepalive = self.create_task(
            self._keep_context_open(context_id), name=f"voxtrio keepalive {context_id}"
        )
        try:
            async for event in stream:
                if isinstance(event, AudioChunk):
                    frame = TTSAudioRawFrame(
                        audio=event.pcm,
                        sample_rate=event.sample_rate,
                        num_channels=1,
                        context_id=context_id,
                    )
                    await self.append_to_audio_context(context_id, frame)
                elif isinstance(event, WordTimings):
                    words = [(word.text, word.start) for word in event.words]
                    await self.add_word_timestamps(words, context_id)
        except SynthesisError as exc:
            self._failed.append(context_id)
            await self.push_error(error_msg=f"voxtrio: {exc}", exception=exc)
        except VoxtrioClientError as exc:
            # The connection is gone: this turn is lost, the next one reconnects.
            self._failed.append(context_id)
            await self.push_error(error_msg=f"voxtrio: {exc}", exception=exc)
        finally:
            await self.cancel_task(keepalive)
            if self._readers.get(context_id) is asyncio.current_task():
                del self._readers[context_id]
                self._streams.pop(context_id, None)
        if self.audio_context_available(context_id):
            await self.append_to_audio_context(context_id, TTSStoppedFrame(context_id=context_id))
            await self.remove_audio_context(context_id)
        await stream.aclose()
