"""`speak`: utterances through a real instance pool into one encoded stream, no socket."""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from functools import partial
from typing import Any

import attrs
import numpy as np
import pytest
import trio

from voxtrio._config import ProgressIntervals
from voxtrio.audio._codecs import AudioEncoder
from voxtrio.speech._engine import SynthesisSpec
from voxtrio.speech._errors import (
    EngineUnavailable,
    GenerationFailed,
    InvalidOutput,
    NonFiniteOutput,
    Overloaded,
)
from voxtrio.speech._output import OutputSpec
from voxtrio.speech._pool import InstancePool
from voxtrio.speech._speak import AudioInfo, SpeechStats, Utterance, speak
from voxtrio.speech._synthetic import SyntheticEngine
from voxtrio.speech.batched._factory import model_instances

PROGRESS = ProgressIntervals(streaming=0.0, timer=0.05)


@attrs.define
class RecordingSink:
    """Every event `speak` reports, in order."""

    events: list[tuple[Any, ...]] = attrs.Factory(list)
    data: list[bytes] = attrs.Factory(list)
    # Take chunks as the step hands them over (`audio_nowait`), or leave all to `audio`.
    nowait: bool = True
    handed_over: int = 0
    awaited: int = 0

    def opened(self, audio: AudioInfo) -> None:
        self.events.append(("opened", audio))

    async def utterance_begins(self, utterance: Utterance) -> None:
        self.events.append(("begins", utterance.index))

    async def waiting(self, utterance: Utterance) -> None:
        self.events.append(("waiting", utterance.index))

    async def utterance_started(self, utterance: Utterance) -> None:
        self.events.append(("started", utterance.index))

    async def audio(self, data: bytes) -> None:
        self.data.append(data)
        self.awaited += 1

    def audio_nowait(self, data: bytes) -> bool:
        if not self.nowait:
            return False
        self.data.append(data)
        self.handed_over += 1
        return True

    def progress_nowait(self, utterance: Utterance, steps: int, expected: int) -> bool:
        if self.nowait:
            self.events.append(("progress", utterance.index))
        return self.nowait

    async def utterance_finished(self, utterance: Utterance, samples_in: int) -> None:
        self.events.append(("finished", utterance.index, samples_in))

    async def progress(self, utterance: Utterance, steps: int, expected: int) -> None:
        self.events.append(("progress", utterance.index))


@asynccontextmanager
async def started_pool(engine: Any = None, **kwargs: Any) -> AsyncIterator[InstancePool]:
    factory = engine or partial(SyntheticEngine, rtf=0.0)
    pool = InstancePool(model_instances(factory, workers=1), **kwargs)
    try:
        with trio.fail_after(10):
            await pool.start()
        yield pool
    finally:
        with trio.CancelScope(shield=True):
            await pool.aclose()


def utterances(items: Sequence[Utterance]) -> trio.MemoryReceiveChannel[Utterance]:
    send, receive = trio.open_memory_channel[Utterance](len(items) or 1)
    for item in items:
        send.send_nowait(item)
    send.close()
    return receive


async def run_speak(
    pool: InstancePool,
    items: Sequence[Utterance],
    output: OutputSpec | None = None,
    *,
    sink: RecordingSink | None = None,
) -> tuple[RecordingSink, SpeechStats]:
    sink = sink if sink is not None else RecordingSink()
    with trio.fail_after(20):
        stats = await speak(
            utterances(items),
            pool=pool,
            base_spec=SynthesisSpec(text="", seed=1),
            output=output or OutputSpec(format="pcm16"),
            sink=sink,
            request_id="r",
            progress=PROGRESS,
        )
    return sink, stats


def expected_pcm(texts: Sequence[str], silences_ms: Sequence[int] = ()) -> bytes:
    """What one encoder makes of the synthetic engine's audio for `texts`, then silences."""
    engine = SyntheticEngine()
    encoder = AudioEncoder("pcm16", input_rate=engine.sample_rate)
    out = b""
    for text in texts:
        for chunk in engine.generate(SynthesisSpec(text=text, seed=1), lambda step: None):
            out += encoder.encode(chunk)
    for ms in silences_ms:
        out += encoder.encode(np.zeros(engine.sample_rate * ms // 1000, np.float32))
    return out + encoder.finish()


async def test_utterances_become_one_continuous_stream() -> None:
    """Two texts come out as the one stream a single encoder makes of both."""
    async with started_pool() as pool:
        sink, stats = await run_speak(pool, [Utterance(0, "a" * 8), Utterance(1, "b" * 8)])
    assert b"".join(sink.data) == expected_pcm(["a" * 8, "b" * 8])
    assert stats.utterances == 2
    assert stats.samples_out == 4 * 7680


async def test_streamed_chunks_are_handed_straight_to_a_sink_that_can_send_at_once() -> None:
    """Chunks after the first few reach the sink as the step hands them over, with no
    task woken; the stream is the same."""
    async with started_pool() as pool:
        sink, stats = await run_speak(pool, [Utterance(0, "a" * 40)])
    assert b"".join(sink.data) == expected_pcm(["a" * 40])
    assert sink.handed_over >= 5  # 10 chunks: the first may still meet the task's set-up
    assert sink.handed_over + sink.awaited == stats.chunks


async def test_a_sink_that_cannot_send_at_once_gets_every_chunk_through_audio() -> None:
    """When `audio_nowait` declines, each chunk goes through the request task, in order."""
    async with started_pool() as pool:
        sink, stats = await run_speak(
            pool, [Utterance(0, "a" * 40)], sink=RecordingSink(nowait=False)
        )
    assert b"".join(sink.data) == expected_pcm(["a" * 40])
    assert sink.handed_over == 0
    assert sink.awaited == stats.chunks


async def test_events_come_in_the_documented_order() -> None:
    """opened, then per utterance: begins, started (job on an instance), audio, finished."""
    async with started_pool() as pool:
        sink, _ = await run_speak(pool, [Utterance(0, "a" * 4)])
    names = [event[0] for event in sink.events if event[0] != "progress"]
    assert names == ["opened", "begins", "started", "finished"]
    assert sink.events[0] == ("opened", AudioInfo("pcm16", 48000))
    assert sink.events[-1] == ("finished", 0, 7680)


async def test_silence_around_a_text_is_counted_in_its_samples() -> None:
    """An utterance's silences are encoded in order and counted in its input samples."""
    async with started_pool() as pool:
        sink, _ = await run_speak(pool, [Utterance(0, "", silence_after_ms=100)])
    assert sink.events[-1] == ("finished", 0, 4800)
    assert b"".join(sink.data) == expected_pcm([], [100])


async def test_an_impossible_output_is_refused_before_any_event() -> None:
    """A bad output rate raises InvalidOutput naming the setting; the sink hears nothing."""
    async with started_pool() as pool:
        with pytest.raises(InvalidOutput) as caught:
            await run_speak(pool, [Utterance(0, "a")], OutputSpec(sample_rate=12345))
    assert caught.value.setting == "sample_rate"


async def test_a_bit_rate_the_format_cannot_take_names_the_bit_rate() -> None:
    """The failing setting is typed, not guessed from the message."""
    async with started_pool() as pool:
        with pytest.raises(InvalidOutput) as caught:
            await run_speak(pool, [Utterance(0, "a")], OutputSpec(format="wav", bit_rate=64000))
    assert caught.value.setting == "bit_rate"


async def test_a_failing_engine_raises_generation_failed() -> None:
    """An exception in the engine becomes GenerationFailed with its type in the message."""
    async with started_pool(partial(SyntheticEngine, fail_at_step=2)) as pool:
        with pytest.raises(GenerationFailed, match="generation failed: "):
            await run_speak(pool, [Utterance(0, "a" * 40)])


async def test_non_finite_audio_raises_non_finite_output() -> None:
    """NaN from the model is NonFiniteOutput, and none of that chunk is sent."""
    async with started_pool(partial(SyntheticEngine, nan_at_step=1)) as pool:
        with pytest.raises(NonFiniteOutput):
            await run_speak(pool, [Utterance(0, "a" * 40)])


async def test_a_pool_that_is_not_started_is_engine_unavailable() -> None:
    """Before the model is loaded: EngineUnavailable."""
    pool = InstancePool(model_instances(partial(SyntheticEngine, rtf=0.0), workers=1))
    pool.sample_rate = 48000
    with pytest.raises(EngineUnavailable):
        await run_speak(pool, [Utterance(0, "a")])


async def test_past_the_admission_limit_is_overloaded() -> None:
    """Admission refused when the pool holds its limit: Overloaded with the limit."""
    async with started_pool(max_admitted=1) as pool:
        pool.admitted = 1  # one admitted elsewhere
        with pytest.raises(Overloaded) as caught:
            await run_speak(pool, [Utterance(0, "a")])
        pool.admitted = 0
    assert caught.value.limit == 1
