"""One native-protocol request, from admission to its one terminal message."""

from __future__ import annotations

import secrets
import time
from collections.abc import Callable
from typing import Any, Literal

import attrs
import structlog
import trio

from voxtrio._config import ProgressIntervals
from voxtrio.ops._metrics import Metrics
from voxtrio.protocol._errors import ErrorCode, ProtocolError
from voxtrio.protocol._messages import (
    CancelledResult,
    Complete,
    Error,
    ErrorBody,
    ServerMessage,
    SynthesisOptions,
    SynthesisResult,
    TextStreamStart,
    Timings,
    TtsRequest,
    dump_message,
    error_message,
)
from voxtrio.server._native_errors import native_error
from voxtrio.server._native_sink import NativeSink
from voxtrio.server._text_input import TextInput
from voxtrio.server._writer import ConnectionGone, FrameWriter
from voxtrio.speech._engine import SynthesisSpec
from voxtrio.speech._errors import SpeechError
from voxtrio.speech._output import OutputSpec
from voxtrio.speech._pool import InstancePool
from voxtrio.speech._speak import speak
from voxtrio.voices._service import VoiceService

log = structlog.get_logger("voxtrio.request")

StopReason = Literal["cancel", "shutdown", "overflow"]


def spec_for(options: SynthesisOptions, text: str, *, streaming: bool) -> SynthesisSpec:
    return SynthesisSpec(
        text=text,
        streaming=streaming,
        cfg_value=options.cfg_value,
        inference_timesteps=options.inference_timesteps,
        normalize=options.normalize,
        denoise=options.denoise,
        retry_badcase=options.retry_badcase,
        retry_badcase_max_times=options.retry_badcase_max_times,
        retry_badcase_ratio_threshold=options.retry_badcase_ratio_threshold,
        # Without a seed each request gets a fresh one, reported back so it can be replayed.
        seed=options.seed if options.seed is not None else secrets.randbits(63),
        max_len=options.max_len if options.max_len is not None else 4096,
    )


# Native requests that set themselves up on the event loop at once (see `SetupTurn`).
SETUP_TURNS = 16


@attrs.define(eq=False)
class SetupTurn:
    """A request's turn to set itself up, given back once its first utterance has a
    generation slot (or waits for one), or when it ends.

    Setting a request up (its voice and encoder, admission, the first progress
    messages) is event-loop work; a storm of new requests set up all at once made one
    long scheduler batch that held back the chunks of every running stream (measured:
    1,000 streams started within 160 ms; docs/BENCHMARKS.md, issue 20). With at most
    `SETUP_TURNS` at once the loop's batches stay short, the hand-over of running
    streams' chunks goes between them, and new requests wait instead.
    """

    turns: trio.CapacityLimiter | None
    held: bool = False

    async def take(self) -> None:
        if self.turns is not None:
            await self.turns.acquire_on_behalf_of(self)
            self.held = True

    def give_back(self) -> None:
        if self.held:
            self.held = False
            assert self.turns is not None
            self.turns.release_on_behalf_of(self)


@attrs.define(eq=False)
class RequestControl:
    """How the connection stops a running request, and why."""

    scope: trio.CancelScope = attrs.Factory(trio.CancelScope)
    reason: StopReason | None = None
    # The outcome is decided (the terminal message is on its way): a stop is too late.
    settled: bool = False

    def stopping(self) -> bool:
        return self.reason is not None

    def stop(self, reason: StopReason) -> None:
        if self.reason is None:
            self.reason = reason
        self.scope.cancel()


async def synthesize(
    request: TtsRequest | TextStreamStart,
    text_input: TextInput,
    *,
    writer: FrameWriter,
    pool: InstancePool,
    progress: ProgressIntervals,
    accepted_at: float,
    voices: VoiceService | None = None,
    control: RequestControl | None = None,
    on_started: Callable[[], None] | None = None,
) -> SynthesisResult:
    """Speak the request's text and send its audio; return the result for `complete`."""
    options: SynthesisOptions = request.params
    streaming = not (isinstance(request, TtsRequest) and request.params.mode == "non_streaming")
    base_spec = spec_for(options, "", streaming=streaming)
    if voices is not None:
        voice = await voices.resolve(options, request.request_id)
        base_spec = attrs.evolve(
            base_spec,
            voice_id=voice.voice_id,
            voice_description=voice.voice_description,
            prompt_audio=voice.prompt_audio,
            prompt_text=voice.prompt_text,
            prompt_mode=voice.prompt_mode,
        )
    elif any(
        getattr(options, name) is not None
        for name in ("voice_id", "prompt_wav_url", "prompt_text", "voice_description")
    ):
        raise ProtocolError(
            ErrorCode.INVALID_PARAMS,
            "voices are not available on this server",
            request_id=request.request_id,
        )
    output = OutputSpec(
        format=options.format,
        sample_rate=options.sample_rate,
        bit_rate=options.bit_rate,
        rate=options.speed,
    )
    sink = NativeSink(request.request_id, writer, streaming, text_input)
    if control is not None:
        sink.stopped = control.stopping
    if on_started is not None:
        sink.on_started = on_started
    try:
        stats = await speak(
            text_input.receive,
            pool=pool,
            base_spec=base_spec,
            output=output,
            sink=sink,
            request_id=request.request_id,
            progress=progress,
            word_timestamps=options.word_timestamps,
        )
    except SpeechError as exc:
        raise native_error(exc, request.request_id) from exc
    await sink.finish(stats.duration)
    now = trio.current_time()

    def ms_since_accepted(when: float | None) -> float | None:
        return None if when is None else round((when - accepted_at) * 1000, 3)

    duration = stats.duration
    return SynthesisResult(
        duration=round(duration, 6),
        sample_rate=stats.sample_rate,
        samples=stats.samples_out,
        chunks=stats.chunks,
        seed=base_spec.seed,
        format=options.format,
        sentences=stats.utterances,
        timings=Timings(
            queue_ms=ms_since_accepted(stats.first_job_at) or 0.0,
            first_audio_ms=ms_since_accepted(sink.first_audio_at),
            total_ms=ms_since_accepted(now) or 0.0,
            rtf=round(stats.compute_seconds / duration, 4) if duration > 0 else None,
        ),
    )


async def run_request(
    request: TtsRequest | TextStreamStart,
    text_input: TextInput,
    *,
    writer: FrameWriter,
    pool: InstancePool,
    control: RequestControl,
    progress: ProgressIntervals,
    metrics: Metrics | None = None,
    voices: VoiceService | None = None,
    setup_turns: trio.CapacityLimiter | None = None,
) -> None:
    """Run one request and send exactly one terminal message (unless the peer is gone).

    Never raises (but Cancelled, when the whole connection goes): errors become
    the request's `error` message.
    """
    request_id = request.request_id
    started = time.perf_counter()
    accepted_at = trio.current_time()
    text_chars = len(request.params.text) if isinstance(request, TtsRequest) else None
    mode = request.params.mode if isinstance(request, TtsRequest) else "text_stream"
    fields: dict[str, Any] = {"mode": mode, "text_chars": text_chars}
    outcome = "disconnected"
    result: SynthesisResult | None = None
    turn = SetupTurn(setup_turns)
    try:
        terminal: ServerMessage
        try:
            with control.scope:
                await turn.take()
                result = await synthesize(
                    request,
                    text_input,
                    writer=writer,
                    pool=pool,
                    progress=progress,
                    accepted_at=accepted_at,
                    voices=voices,
                    control=control,
                    on_started=turn.give_back,
                )
            turn.give_back()
            control.settled = True
            if result is None:  # the scope caught a stop before synthesis finished
                _raise_for_stop(control.reason, request_id)
                terminal, outcome = Complete(request_id, CancelledResult()), "cancelled"
            else:
                terminal, outcome = Complete(request_id, result), "ok"
                fields.update(
                    audio_seconds=result.duration,
                    first_audio_ms=result.timings.first_audio_ms,
                    queue_ms=result.timings.queue_ms,
                    rtf=result.timings.rtf,
                    sentences=result.sentences,
                )
        except ProtocolError as exc:
            control.settled = True
            exc.request_id = request_id
            terminal, outcome = error_message(exc, terminal=True), str(exc.code)
        except ConnectionGone:
            raise
        except Exception as exc:
            control.settled = True
            log.exception("request_crashed")
            terminal = Error(
                request_id,
                ErrorBody(ErrorCode.INTERNAL_ERROR, f"internal error: {type(exc).__name__}"),
                terminal=True,
            )
            outcome = str(ErrorCode.INTERNAL_ERROR)
        await writer.send(dump_message(terminal))
        if control.reason == "cancel" and not control.scope.cancelled_caught:
            # The cancel arrived during a shielded write and the request ended another way
            # before it took effect: answer it as a cancel that crossed the terminal.
            late = ProtocolError(
                ErrorCode.UNKNOWN_REQUEST,
                f"request {request_id!r} already finished; see its terminal message",
                request_id=request_id,
            )
            await writer.send(dump_message(error_message(late)))
    except ConnectionGone as exc:
        outcome = "disconnected"
        fields["reason"] = str(exc)
    finally:
        turn.give_back()
        duration_s = time.perf_counter() - started
        log.info(
            "request_finished", outcome=outcome, total_ms=round(duration_s * 1000, 3), **fields
        )
        if metrics is not None:
            _record(metrics, mode, outcome, duration_s, result)


def _record(
    metrics: Metrics, mode: str, outcome: str, duration_s: float, result: SynthesisResult | None
) -> None:
    is_error = outcome not in ("ok", "cancelled", "disconnected")
    timings = result.timings if result is not None else None
    metrics.request_finished(
        mode=mode,
        status="error" if is_error else outcome,
        duration_s=duration_s,
        first_audio_s=(
            timings.first_audio_ms / 1000 if timings and timings.first_audio_ms else None
        ),
        queue_wait_s=timings.queue_ms / 1000 if timings else None,
        audio_s=result.duration if result is not None else 0.0,
        rtf=timings.rtf if timings else None,
        error_code=outcome if is_error else None,
    )


def _raise_for_stop(reason: StopReason | None, request_id: str) -> None:
    if reason == "shutdown":
        raise ProtocolError(
            ErrorCode.SHUTTING_DOWN,
            "the server is shutting down and the drain deadline passed",
            details={"retry_after_ms": 1000},
            request_id=request_id,
        )
    if reason == "overflow":
        raise ProtocolError(
            ErrorCode.RATE_LIMITED,
            "text arrived faster than it can be spoken; the buffer limit was exceeded",
            details={"scope": "text_stream"},
            request_id=request_id,
        )
