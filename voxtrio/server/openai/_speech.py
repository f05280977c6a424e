"""`POST /v1/audio/speech`: one OpenAI speech request through the same speech path as /tts.

The text goes through `speak` and the instance pool like a native request: same
admission (429 past the limit), same encoder, same metrics. The response head
leaves once the job is on a slot (so admission errors still get their status);
every encoded piece then leaves as one HTTP chunk, or one SSE `speech.audio.delta`
event. A client that goes away cancels the request, which frees its slot.

The wait for a free slot is bounded by `http_queue_timeout` (shorter than the
native protocol's `queue_timeout`): an HTTP client cannot be told it is queued,
so it must get its 429 + Retry-After before its own read timeout fires.
"""

from __future__ import annotations

import base64
import json
import math
import time
from collections.abc import Callable

import attrs
import structlog
import trio

from voxtrio._config import ProgressIntervals, Settings
from voxtrio.ops._metrics import Metrics
from voxtrio.protocol._errors import ErrorCode, ProtocolError
from voxtrio.protocol._messages import SynthesisOptions
from voxtrio.protocol._voice_rules import VoiceId
from voxtrio.server._native_errors import native_error
from voxtrio.server._request import spec_for
from voxtrio.server._text_input import TextInput
from voxtrio.server.openai._errors import http_error
from voxtrio.server.openai._exchange import HttpExchange
from voxtrio.server.openai._request import (
    OUTPUT_FORMATS,
    OutputFormat,
    SpeechRequest,
    parse_speech_request,
)
from voxtrio.server.openai._voices import resolve_voice
from voxtrio.speech._errors import QueueTimeout, SpeechError
from voxtrio.speech._output import OutputSpec
from voxtrio.speech._pool import InstancePool
from voxtrio.speech._speak import AudioInfo, Utterance, speak
from voxtrio.speech._words import SentenceWords
from voxtrio.voices._service import VoiceService

log = structlog.get_logger("voxtrio.openai")

# Word times on the SSE stream: voxtrio's addition, named outside OpenAI's `speech.*`.
WORDS_EVENT = "voxtrio.speech.words"


@attrs.define
class HttpSpeechSink:
    """A speech stream as a chunked HTTP body (raw audio, or SSE events)."""

    exchange: HttpExchange
    output: OutputFormat
    sse: bool
    first_audio_at: float | None = None
    queue_wait_s: float = math.inf  # the HTTP route's bound on a wait for a slot
    # Armed while the request waits for a slot before its response began.
    queue_scope: trio.CancelScope = attrs.Factory(trio.CancelScope)

    def opened(self, audio: AudioInfo) -> None:
        pass

    async def utterance_begins(self, utterance: Utterance) -> None:
        pass

    async def waiting(self, utterance: Utterance) -> None:
        if not self.exchange.started:  # later utterances cannot change the status any more
            self.queue_scope.deadline = trio.current_time() + self.queue_wait_s

    async def utterance_started(self, utterance: Utterance) -> None:
        self.queue_scope.deadline = math.inf
        await self._start()

    async def progress(self, utterance: Utterance, steps: int, expected: int) -> None:
        pass

    async def utterance_finished(self, utterance: Utterance, samples_in: int) -> None:
        pass

    async def words(self, utterance: Utterance, words: SentenceWords) -> None:
        """voxtrio's own SSE event (plain OpenAI clients skip types they do not know)."""
        await self._start()
        timed = [{"text": w.text, "start": w.start, "end": w.end} for w in words.words]
        await self._event(
            {
                "type": WORDS_EVENT,
                "sentence": words.index,
                "words": timed,
                "estimated": words.estimated,
            }
        )

    def audio_nowait(self, data: bytes) -> bool:
        return False  # every piece goes through `audio`

    def progress_nowait(self, utterance: Utterance, steps: int, expected: int) -> bool:
        return False

    async def audio(self, data: bytes) -> None:
        await self._start()
        if self.sse:
            await self._event(
                {"type": "speech.audio.delta", "audio": base64.b64encode(data).decode()}
            )
        else:
            await self.exchange.send(data)
        if self.first_audio_at is None:
            self.first_audio_at = trio.current_time()

    async def finish(self, input_chars: int) -> None:
        await self._start()
        if self.sse:
            usage = {"input_tokens": input_chars, "output_tokens": 0, "total_tokens": input_chars}
            await self._event({"type": "speech.audio.done", "usage": usage})
        await self.exchange.end()

    async def fail(self, exc: ProtocolError) -> None:
        """An error after the head went out: an SSE `error` event, or a cut body."""
        if self.sse:
            await self._event(
                {"type": "error", "error": {"message": exc.message, "code": str(exc.code).lower()}}
            )
            await self.exchange.end()

    async def _start(self) -> None:
        if not self.exchange.started:
            media = "text/event-stream" if self.sse else self.output.media_type
            await self.exchange.start(200, [("content-type", media), ("cache-control", "no-store")])

    async def _event(self, payload: dict[str, object]) -> None:
        await self.exchange.send(f"data: {json.dumps(payload, separators=(',', ':'))}\n\n".encode())


@attrs.frozen(kw_only=True)
class SpeechContext:
    settings: Settings
    pool: InstancePool
    metrics: Metrics
    voices: VoiceService | None


async def synthesize_speech(
    request: SpeechRequest, sink: HttpSpeechSink, context: SpeechContext, request_id: str
) -> float:
    """Speak `request` into `sink`; return the seconds of audio sent."""
    settings = context.settings
    if len(request.input) > settings.max_text_chars:
        raise ProtocolError(
            ErrorCode.INVALID_PARAMS,
            f"input: {len(request.input)} characters, more than {settings.max_text_chars}",
            details={"input": "too long"},
        )
    voice_id = resolve_voice(request.voice, context.voices)
    options = SynthesisOptions(
        voice_id=None if voice_id is None else VoiceId(voice_id),
        voice_description=request.instructions or None,
    )
    base_spec = spec_for(options, "", streaming=True)
    if context.voices is not None:
        voice = await context.voices.resolve(options, request_id)
        base_spec = attrs.evolve(
            base_spec, voice_id=voice.voice_id, voice_description=voice.voice_description
        )
    elif options.voice_description is not None:
        raise ProtocolError(
            ErrorCode.INVALID_PARAMS,
            "instructions: voice design is not available on this server",
            details={"instructions": "not available"},
        )
    output = OutputSpec(
        format=sink.output.codec, sample_rate=sink.output.sample_rate, rate=request.speed
    )
    sink.queue_wait_s = min(settings.http_queue_timeout, settings.queue_timeout)
    try:
        with sink.queue_scope:
            stats = await speak(
                TextInput.single(request.input).receive,
                pool=context.pool,
                base_spec=base_spec,
                output=output,
                sink=sink,
                request_id=request_id,
                progress=ProgressIntervals(timer=3600.0, streaming=3600.0),
                word_timestamps=sink.sse,
            )
        if sink.queue_scope.cancelled_caught:
            raise QueueTimeout(sink.queue_wait_s)
    except SpeechError as exc:
        raise native_error(exc, request_id) from exc
    await sink.finish(len(request.input))
    return stats.duration


def record(
    metrics: Metrics,
    outcome: str,
    started: float,
    sink: HttpSpeechSink,
    accepted_at: float,
    audio_s: float,
) -> None:
    is_error = outcome not in ("ok", "cancelled", "disconnected")
    metrics.request_finished(
        mode="openai",
        status="error" if is_error else outcome,
        duration_s=time.perf_counter() - started,
        first_audio_s=None if sink.first_audio_at is None else sink.first_audio_at - accepted_at,
        queue_wait_s=None,
        audio_s=audio_s,
        rtf=None,
        error_code=outcome if is_error else None,
    )


def output_for(request: SpeechRequest) -> OutputFormat:
    return OUTPUT_FORMATS[request.response_format]


async def run_speech(
    exchange: HttpExchange, body: bytes, context: SpeechContext, is_draining: Callable[[], bool]
) -> None:
    """Answer one `/v1/audio/speech` request whose body has been read."""
    request_id = exchange.request_id
    started, accepted_at = time.perf_counter(), trio.current_time()
    sink: HttpSpeechSink | None = None
    outcome, audio_s = "disconnected", 0.0
    with structlog.contextvars.bound_contextvars(request_id=request_id):
        try:
            if is_draining():
                raise ProtocolError(ErrorCode.SHUTTING_DOWN, "the server is shutting down")
            request = parse_speech_request(body)
            sink = HttpSpeechSink(exchange, output_for(request), request.stream_format == "sse")
            failure: ProtocolError | None = None
            async with trio.open_nursery() as nursery:
                nursery.start_soon(_cancel_on_disconnect, exchange, nursery.cancel_scope)
                try:
                    audio_s = await synthesize_speech(request, sink, context, request_id)
                    outcome = "ok"
                except ProtocolError as exc:
                    failure = exc  # raised outside the nursery, bare rather than grouped
                nursery.cancel_scope.cancel()
            if failure is not None:
                raise failure
        except ProtocolError as exc:
            outcome = str(exc.code)
            if sink is not None and exchange.started:
                await sink.fail(exc)
            else:
                status, payload, headers = http_error(exc)
                await exchange.respond_json(status, payload, *headers)
        finally:
            log.info("openai_speech_finished", outcome=outcome, audio_seconds=round(audio_s, 3))
            if sink is not None:
                record(context.metrics, outcome, started, sink, accepted_at, audio_s)


async def _cancel_on_disconnect(exchange: HttpExchange, scope: trio.CancelScope) -> None:
    """The client reset the connection: stop generating for it now.

    A clean EOF is not a disconnect: a client may shut down its sending side once
    its request is out (half-close) and still read the whole response. A client
    that closed entirely is found by the next write (ConnectionGone). Bytes of a
    next (pipelined) request are kept for the next cycle, up to a cap; past it,
    this stops reading and the client waits (TCP backpressure).
    """
    try:
        while data := await exchange.stream.receive_some(4096):
            if not exchange.buffer_pipelined(bytes(data)):
                return
    except (trio.BrokenResourceError, trio.ClosedResourceError):
        log.info("http_client_disconnected")
        scope.cancel()
        return
    exchange.buffer_pipelined(b"")  # EOF: h11 then closes after this response
    log.debug("http_client_half_closed")
