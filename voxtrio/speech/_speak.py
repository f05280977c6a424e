"""Speak a sequence of utterances through the replica pool into one encoded stream.

Shared by the native protocol (one text, or sentences streamed in) and the DashScope
endpoint (sentences, SSML breaks). Each utterance is one generation on whichever
replica is free; all of them feed one `AudioEncoder`, so the client gets one
continuous stream in its format (one WAV header, one Ogg stream). Encoding runs on
the replica thread, next to the model, to keep codec work off the event loop.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from functools import partial
from typing import Protocol

import attrs
import numpy as np
import structlog
import trio

from voxtrio._config import ProgressIntervals
from voxtrio.audio._codecs import AudioEncoder, NonFiniteAudio
from voxtrio.protocol._errors import ErrorCode, ProtocolError
from voxtrio.server._writer import ConnectionGone
from voxtrio.speech._engine import SynthesisSpec, TextTooLong
from voxtrio.speech._replicas import Job, ReplicaPool

log = structlog.get_logger("voxtrio.speech")


@attrs.frozen
class Utterance:
    """One piece of the output: a text to speak, or silence (an SSML break)."""

    index: int
    text: str = ""
    silence_ms: int = 0


@attrs.frozen
class EncodedAudio:
    data: bytes
    samples: int  # output-rate samples this piece added


class SpeechSink(Protocol):
    """Where a speech stream's events go (native frames, DashScope events)."""

    async def waiting(self, utterance: Utterance) -> None:
        """No replica is free: the utterance waits for one."""

    async def utterance_started(self, utterance: Utterance) -> None:
        """The utterance started (for a text: its job is already on a replica)."""

    async def audio(self, data: bytes) -> None: ...

    async def utterance_finished(self, utterance: Utterance, samples: int) -> None: ...

    async def progress(self, utterance: Utterance, steps: int, expected: int) -> None: ...


@attrs.define
class SpeechStats:
    started_at: float = attrs.field(factory=trio.current_time)
    first_job_at: float | None = None
    utterances: int = 0
    chunks: int = 0
    compute_seconds: float = 0.0


def encoding_transform(encoder: AudioEncoder) -> Callable[[np.ndarray], EncodedAudio]:
    """The per-chunk work done on the replica thread: check and encode."""

    def encode(chunk: np.ndarray) -> EncodedAudio:
        # encode() refuses NaN/inf with NonFiniteAudio before it encodes anything.
        before = encoder.samples_out
        data = encoder.encode(chunk)
        return EncodedAudio(data, encoder.samples_out - before)

    return encode


async def speak(
    utterances: trio.MemoryReceiveChannel[Utterance],
    *,
    pool: ReplicaPool,
    base_spec: SynthesisSpec,
    encoder: AudioEncoder,
    sink: SpeechSink,
    request_id: str,
    progress: ProgressIntervals,
) -> SpeechStats:
    """Speak every utterance in order, then flush the encoder; return what it took."""
    stats = SpeechStats()
    transform = encoding_transform(encoder)
    async for utterance in utterances:
        before = encoder.samples_out
        if utterance.silence_ms:
            await sink.utterance_started(utterance)
            silence = np.zeros(pool.sample_rate * utterance.silence_ms // 1000, np.float32)
            data = await trio.to_thread.run_sync(encoder.encode, silence)
            if data:
                await sink.audio(data)
        else:
            spec = attrs.evolve(base_spec, text=utterance.text)
            await generate_utterance(
                pool, spec, transform, sink, utterance, stats, request_id, progress
            )
        stats.utterances += 1
        await sink.utterance_finished(utterance, encoder.samples_out - before)
    tail = encoder.finish()
    if tail:
        await sink.audio(tail)
    return stats


async def generate_utterance(
    pool: ReplicaPool,
    spec: SynthesisSpec,
    transform: Callable[[np.ndarray], EncodedAudio],
    sink: SpeechSink,
    utterance: Utterance,
    stats: SpeechStats,
    request_id: str,
    progress: ProgressIntervals,
) -> None:
    """One generation on a free replica; its encoded audio goes to `sink.audio`.

    Progress (see `ProgressIntervals`): a streaming generation reports it after an
    audio piece, so it needs no timer task; a non-streaming one from a timer.
    """
    async with pool.run(
        spec,
        request_id=request_id,
        transform=transform,
        on_wait=partial(sink.waiting, utterance),
    ) as (job, pieces):
        if stats.first_job_at is None:
            stats.first_job_at = trio.current_time()
        # Told once the job is on its replica: the model starts while this is sent.
        await sink.utterance_started(utterance)
        interval = progress.streaming if spec.streaming else progress.timer
        reporter = _ProgressReporter(job, sink, utterance, interval)
        failure: BaseException | None = None
        async with trio.open_nursery() as nursery:
            if not spec.streaming:
                nursery.start_soon(reporter.run_timer)
            try:
                async for piece in pieces:
                    stats.chunks += 1
                    if piece.data:
                        await sink.audio(piece.data)
                        await reporter.report_if_due()
            except Exception as exc:
                # Re-raised outside the nursery so callers see it bare, not in a group.
                failure = exc
            nursery.cancel_scope.cancel()
        if failure is not None:
            raise failure
        # The channel closes only once the thread is done, so the outcome is known.
        await job.done.wait()
    stats.compute_seconds += (job.finished_at or time.perf_counter()) - (job.started_at or 0.0)
    _raise_if_failed(job, request_id)


@attrs.define
class _ProgressReporter:
    """`generating` progress for one generation, at most once per interval."""

    job: Job
    sink: SpeechSink
    utterance: Utterance
    interval: float
    last_at: float = attrs.field(factory=trio.current_time)

    async def report_if_due(self) -> None:
        now = trio.current_time()
        if now - self.last_at >= self.interval:
            self.last_at = now
            await self._report()

    async def run_timer(self) -> None:
        while True:
            await trio.sleep(self.interval)
            try:
                await self._report()
            except ConnectionGone:
                return  # the audio loop meets the same broken writer and ends the request

    async def _report(self) -> None:
        if self.job.expected_steps and self.job.steps:
            await self.sink.progress(self.utterance, self.job.steps, self.job.expected_steps)


def _raise_if_failed(job: Job, request_id: str) -> None:
    assert job.result is not None
    try:
        job.result.unwrap()
    except TextTooLong as exc:
        raise ProtocolError(
            ErrorCode.INVALID_PARAMS,
            f"text {exc}",
            details={"params.text": str(exc)},
            request_id=request_id,
        ) from None
    except NonFiniteAudio:
        raise ProtocolError(
            ErrorCode.GENERATION_FAILED,
            "the model produced invalid (non-finite) audio; nothing of it was sent",
            request_id=request_id,
        ) from None
    except Exception as exc:
        log.warning("generation_failed", error=repr(exc))
        raise ProtocolError(
            ErrorCode.GENERATION_FAILED,
            f"generation failed: {type(exc).__name__}: {exc}"[:500],
            request_id=request_id,
        ) from exc
    if job.stopped:
        raise ProtocolError(
            ErrorCode.GENERATION_FAILED,
            "generation stopped before it finished",
            request_id=request_id,
        )
