"""Speak a sequence of utterances through the instance pool into one encoded stream.

The one speech path of both endpoints: the native protocol (one text, or sentences
streamed in) and DashScope (sentences, SSML breaks). Each utterance is one
generation on whichever model instance has a free slot; all of them feed one `OutputStream`, so
the client gets one continuous stream in its format (one WAV header, one Ogg
stream). `speak` owns that stream's whole life: it opens it, lends its `transform`
to the instance's thread (encoding next to the model), and finishes or closes it.
What happened goes to a `SpeechSink`; failures are `SpeechError`s.
"""

from __future__ import annotations

import time
import zlib
from collections.abc import Callable
from functools import partial
from typing import Protocol

import attrs
import numpy as np
import structlog
import trio

from voxtrio._config import ProgressIntervals
from voxtrio.audio._codecs import EncoderFormat, NonFiniteAudio
from voxtrio.speech._engine import SynthesisSpec, TextTooLong
from voxtrio.speech._errors import GenerationFailed, InvalidText, NonFiniteOutput, StoppedEarly
from voxtrio.speech._jobs import Job
from voxtrio.speech._output import EncodedAudio, OutputSpec, OutputStream
from voxtrio.speech._pool import InstancePool
from voxtrio.speech._progress import ProgressReporter, ReportProgressNow
from voxtrio.speech._words import SentenceWords, WordTimer, playback_scale, shared_word_timer

log = structlog.get_logger("voxtrio.speech")


@attrs.frozen
class Utterance:
    """One piece of the output: silence, a text to speak, silence (SSML breaks)."""

    index: int
    text: str = ""
    silence_before_ms: int = 0
    silence_after_ms: int = 0


@attrs.frozen
class AudioInfo:
    """The stream a client is about to get."""

    format: EncoderFormat
    sample_rate: int


class SpeechSink(Protocol):
    """Where a speech stream's events go (native frames, DashScope events)."""

    def opened(self, audio: AudioInfo) -> None:
        """The output stream exists (called once, before any other event)."""

    async def utterance_begins(self, utterance: Utterance) -> None:
        """The utterance is next: before its silence and before it waits for a slot."""

    async def waiting(self, utterance: Utterance) -> None:
        """No slot is free: the utterance waits for one."""

    async def utterance_started(self, utterance: Utterance) -> None:
        """The utterance started (for a text: its job is already on a slot)."""

    async def audio(self, data: bytes) -> None: ...

    def audio_nowait(self, data: bytes) -> bool:
        """Send `data` now if that needs no waiting (Trio thread, never blocks, never
        raises); False: nothing sent, `audio` gets it next."""

    async def utterance_finished(self, utterance: Utterance, samples_in: int) -> None:
        """All its audio is sent: `samples_in` model-rate samples, silences included."""

    async def progress(self, utterance: Utterance, steps: int, expected: int) -> None: ...

    def progress_nowait(self, utterance: Utterance, steps: int, expected: int) -> bool:
        """`progress` now if that needs no waiting (as `audio_nowait`); False: not sent."""

    async def words(self, utterance: Utterance, words: SentenceWords) -> None:
        """The sentence's word times (only when asked for): before its last audio piece."""


@attrs.define
class SpeechStats:
    """What a speech stream took and gave; kept current, so a failed one is measurable."""

    started_at: float = attrs.field(factory=trio.current_time)
    first_job_at: float | None = None
    utterances: int = 0
    chunks: int = 0
    compute_seconds: float = 0.0
    format: EncoderFormat = "pcm16"
    sample_rate: int = 0
    samples_out: int = 0  # output-rate samples encoded so far

    @property
    def duration(self) -> float:
        return self.samples_out / self.sample_rate if self.sample_rate else 0.0


async def speak(
    utterances: trio.MemoryReceiveChannel[Utterance],
    *,
    pool: InstancePool,
    base_spec: SynthesisSpec,
    output: OutputSpec,
    sink: SpeechSink,
    request_id: str,
    progress: ProgressIntervals,
    stats: SpeechStats | None = None,
    word_timestamps: bool = False,
) -> SpeechStats:
    """Speak every utterance in order, then finish the stream; return what it took.

    Every utterance uses `base_spec`'s seed, so one seed replays the whole request
    (and the default voice stays as alike across sentences as the model allows).
    With `word_timestamps`, `sink.words` gets each sentence's word times before that
    sentence's last audio piece (which waits for them: one chunk per sentence).

    Raises `InvalidOutput` (before any event) when `output` cannot be produced, and
    the pool's and the generation's `SpeechError`s.
    """
    stats = stats if stats is not None else SpeechStats()
    stream = OutputStream(output, input_rate=pool.sample_rate)
    timer = _WordTiming(shared_word_timer(), playback_scale(output)) if word_timestamps else None
    try:
        stats.format, stats.sample_rate = stream.format, stream.sample_rate
        sink.opened(AudioInfo(stream.format, stream.sample_rate))
        async for utterance in utterances:
            await _speak_one(
                utterance, stream, pool, base_spec, sink, request_id, progress, stats, timer
            )
        await _send(sink, await stream.finish(), stream, stats)
        return stats
    finally:
        stream.close()


async def _speak_one(
    utterance: Utterance,
    stream: OutputStream,
    pool: InstancePool,
    base_spec: SynthesisSpec,
    sink: SpeechSink,
    request_id: str,
    progress: ProgressIntervals,
    stats: SpeechStats,
    timer: _WordTiming | None = None,
) -> None:
    await sink.utterance_begins(utterance)
    # Timed in input samples: the resampler holds a few ms back across utterances.
    before = stream.samples_in
    if not utterance.text:
        await sink.utterance_started(utterance)
    await _send(sink, await stream.silence(utterance.silence_before_ms), stream, stats)
    if utterance.text:
        spec = attrs.evolve(base_spec, text=utterance.text)
        starts_at = stream.samples_in / stream.input_rate  # the client's time axis
        capture: list[np.ndarray] | None = None if timer is None else []
        held = await generate_utterance(
            pool, spec, stream, sink, utterance, stats, request_id, progress, capture
        )
        tail = await stream.end_utterance()
        if timer is not None and capture is not None:
            audio = np.concatenate(capture) if capture else np.zeros(0, np.float32)
            words = await timer.timer.time_sentence(
                utterance.index,
                utterance.text,
                audio,
                pool.sample_rate,
                offset=starts_at,
                scale=timer.scale,
                not_before=timer.last_end,
            )
            if words.words:
                timer.last_end = words.words[-1].end
            await sink.words(utterance, words)
        await _send(sink, held + tail, stream, stats)
    await _send(sink, await stream.silence(utterance.silence_after_ms), stream, stats)
    stats.utterances += 1
    await sink.utterance_finished(utterance, stream.samples_in - before)


@attrs.define
class _WordTiming:
    timer: WordTimer
    scale: float  # playback_scale(output)
    last_end: float = 0.0  # the request's last word end so far


def _capturing(
    transform: Callable[[np.ndarray], EncodedAudio], into: list[np.ndarray]
) -> Callable[[np.ndarray], EncodedAudio]:
    """`transform`, keeping a copy of each model chunk (for the word aligner)."""

    def run(chunk: np.ndarray) -> EncodedAudio:
        into.append(np.array(chunk, np.float32, copy=True).reshape(-1))
        return transform(chunk)

    return run


async def _send(sink: SpeechSink, data: bytes, stream: OutputStream, stats: SpeechStats) -> None:
    stats.samples_out = stream.samples_out
    if data:
        await sink.audio(data)


async def generate_utterance(
    pool: InstancePool,
    spec: SynthesisSpec,
    stream: OutputStream,
    sink: SpeechSink,
    utterance: Utterance,
    stats: SpeechStats,
    request_id: str,
    progress: ProgressIntervals,
    capture: list[np.ndarray] | None = None,
) -> bytes:
    """One generation on a free slot; its encoded audio goes to `sink.audio`.

    Progress (see `ProgressIntervals`): a streaming generation reports it after an
    audio piece, so it needs no timer task; a non-streaming one from a timer.

    With `capture` (word timestamps), the model's audio is copied into it and the
    last encoded piece is held back and returned, for the caller to send after the
    sentence's word times; otherwise everything is sent and b"" returned.
    """
    transform = stream.transform if capture is None else _capturing(stream.transform, capture)
    held = b""
    async with pool.run(
        spec,
        request_id=request_id,
        transform=transform,
        on_wait=partial(sink.waiting, utterance),
        output=stream if capture is None else None,
    ) as (job, pieces):
        if stats.first_job_at is None:
            stats.first_job_at = trio.current_time()
        # Told once the job is on its slot: the model starts while this is sent.
        await sink.utterance_started(utterance)
        interval = progress.streaming if spec.streaming else progress.timer
        reporter = ProgressReporter(job, partial(sink.progress, utterance), interval)
        if spec.streaming:
            # Each request's reports at its own phase of the interval: streams started
            # together would otherwise all report in the same step, once a second.
            reporter.last_at -= interval * (zlib.crc32(request_id.encode()) % 1000) / 1000
        failure: BaseException | None = None
        async with trio.open_nursery() as nursery:
            if not spec.streaming:
                nursery.start_soon(reporter.run_timer)
            if spec.streaming and capture is None:
                progress_now = partial(sink.progress_nowait, utterance)
                job.handover = partial(_hand_over, sink, reporter, progress_now, stats)
            try:
                async for piece in pieces:
                    stats.chunks += 1
                    stats.samples_out += piece.samples
                    if piece.data and capture is not None:
                        held, data = piece.data, held
                        if data:
                            await sink.audio(data)
                            await reporter.report_if_due()
                    elif piece.data:
                        await sink.audio(piece.data)
                        await reporter.report_if_due()
            except Exception as exc:
                # Re-raised outside the nursery so callers see it bare, not in a group.
                failure = exc
            finally:
                job.handover = None
            nursery.cancel_scope.cancel()
        if failure is not None:
            raise failure
        # The channel closes only once the thread is done, so the outcome is known.
        await job.done.wait()
    stats.compute_seconds += (job.finished_at or time.perf_counter()) - (job.started_at or 0.0)
    _raise_if_failed(job)
    return held


def _hand_over(
    sink: SpeechSink,
    reporter: ProgressReporter,
    progress_now: ReportProgressNow,
    stats: SpeechStats,
    piece: EncodedAudio,
) -> bool:
    """A streaming chunk, sent as the step hands it over (see speech/_jobs.py): what the
    loop above does with it, without waking its task. False (the sink cannot send at
    once) leaves it to the loop."""
    if piece.data and not sink.audio_nowait(piece.data):
        return False
    stats.chunks += 1
    stats.samples_out += piece.samples
    if piece.data:
        reporter.report_nowait_if_due(progress_now)
    return True


def _raise_if_failed(job: Job) -> None:
    assert job.result is not None
    try:
        job.result.unwrap()
    except TextTooLong as exc:
        raise InvalidText(str(exc)) from None
    except NonFiniteAudio:
        raise NonFiniteOutput() from None
    except Exception as exc:
        log.warning("generation_failed", error=repr(exc))
        raise GenerationFailed(f"generation failed: {type(exc).__name__}: {exc}"[:500]) from exc
    if job.stopped:
        raise StoppedEarly()
