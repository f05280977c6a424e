"""The Pipecat service in a real Pipecat 1.14 pipeline against `voxtrio serve` (tiny checkpoint)."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

from tests.integrations.conftest import require
from tests.served import ServedProcess, free_port

require("pipecat", "pipecat")

from pipecat.frames.frames import (  # noqa: E402
    ErrorFrame,
    InterruptionFrame,
    TTSAudioRawFrame,
    TTSStartedFrame,
    TTSStoppedFrame,
    TTSTextFrame,
)

import voxtrio.aioclient  # noqa: E402
from tests.integrations.pipecat_harness import pipeline  # noqa: E402
from voxtrio.integrations.pipecat import VoxtrioTTSService  # noqa: E402

TOKENS = ["Hel", "lo", " the", "re.", " How", " are", " you?"]
# Sentences capped at 12 steps (about 2 s of audio): the tiny model never stops itself.
SHORT = {"max_len": 12, "seed": 7}


def service(url: str, **options: object) -> VoxtrioTTSService:
    params = options.pop("params", SHORT)
    return VoxtrioTTSService(url=url, params=params, **options)  # type: ignore[arg-type]


def test_a_turn_streamed_token_by_token_is_spoken_at_the_pipeline_rate(
    tiny_served: ServedProcess,
) -> None:
    """LLM tokens in, audio out at the pipeline's 16 kHz, between TTSStarted and TTSStopped."""

    async def scenario() -> list[TTSAudioRawFrame]:
        async with pipeline(service(tiny_served.url), sample_rate=16000) as run:
            audio = await run.turn(TOKENS)
            assert run.out.of(TTSStartedFrame)
            assert not run.error_texts()
            return audio

    audio = asyncio.run(scenario())
    assert len(audio) >= 2
    assert {frame.sample_rate for frame in audio} == {16000}
    seconds = sum(len(frame.audio) for frame in audio) / 2 / 16000
    assert 2 * 0.16 <= seconds <= 2 * 12 * 0.16 + 0.01  # two sentences, each capped


def test_word_timings_become_text_frames_in_step_with_the_audio(
    tiny_served: ServedProcess,
) -> None:
    """The server's word timings reach add_word_timestamps: one TTSTextFrame per word, in order."""

    async def scenario() -> list[TTSTextFrame]:
        async with pipeline(service(tiny_served.url)) as run:
            await run.turn(TOKENS)
            words = run.out.of(TTSTextFrame)
            return [frame for frame in words if isinstance(frame, TTSTextFrame)]

    words = asyncio.run(scenario())
    assert [frame.text for frame in words] == ["Hello", "there.", "How", "are", "you?"]
    stamps = [frame.pts for frame in words]
    assert all(isinstance(pts, int) for pts in stamps)
    assert stamps == sorted(stamps)
    assert stamps[-1] > stamps[0]


def test_an_interruption_stops_the_audio_within_a_chunk_and_frees_the_slot(
    tiny_served: ServedProcess,
) -> None:
    """Barge-in mid-utterance: at most one more chunk, the request cancelled, nothing busy."""
    cancelled_before = tiny_served.cancelled()

    async def scenario() -> tuple[int, list[TTSAudioRawFrame]]:
        tts = service(tiny_served.url, params={"seed": 7})
        async with pipeline(tts) as run:
            await run.say(["A long answer that goes on. ", "And on, for a good while."])
            await run.out.wait_for(TTSAudioRawFrame, 2)
            await run.worker.queue_frame(InterruptionFrame())
            await run.out.wait_for(InterruptionFrame)
            interrupted_at = len(run.out.frames)
            await asyncio.sleep(1.0)
            late = run.out.frames[interrupted_at:]
            after = [f for _, f in late if isinstance(f, TTSAudioRawFrame)]
            await asyncio.to_thread(tiny_served.wait_idle)
            # The same connection takes the next turn.
            second = await run.turn(TOKENS[:4])
            assert tts.connection.connections_opened == 1
            return len(after), second

    frames_after, second = asyncio.run(scenario())
    assert frames_after <= 1
    samples = tiny_served.wait_idle()
    assert samples["voxcpm_tts_slots_busy"] == 0
    assert tiny_served.cancelled() == cancelled_before + 1
    assert len(second) >= 1


def test_a_second_turn_reuses_the_connection(tiny_served: ServedProcess) -> None:
    """Two turns, one WebSocket: each turn is its own text stream on it."""

    async def scenario() -> tuple[int, int, int]:
        tts = service(tiny_served.url)
        async with pipeline(tts) as run:
            first = await run.turn(TOKENS)
            second = await run.turn(["Good", "bye."])
            return len(first), len(second), tts.connection.connections_opened

    first, second, connections = asyncio.run(scenario())
    assert first >= 2
    assert second >= 1
    assert connections == 1


def test_the_server_restarting_mid_conversation_is_survived(restartable: ServedProcess) -> None:
    """The server dies mid-turn: an error frame, then the next turn reconnects and speaks."""

    async def scenario() -> tuple[list[str], int, int]:
        tts = service(restartable.url, params={"seed": 7})
        async with pipeline(tts) as run:
            await run.say(["A long answer that goes on and on."])
            await run.out.wait_for(TTSAudioRawFrame, 1)
            await asyncio.to_thread(restartable.kill)
            await run.errors.wait_for(ErrorFrame)
            await run.out.wait_for(TTSStoppedFrame, 1)
            await asyncio.to_thread(restartable.start)
            started = time.monotonic()
            audio = await run.turn(TOKENS[:4])
            assert time.monotonic() - started < 30
            return run.error_texts(), len(audio), tts.connection.connections_opened

    errors, frames, connections = asyncio.run(scenario())
    assert any("connection" in error for error in errors)
    assert frames >= 1
    assert connections == 2


def test_a_turn_against_a_server_that_is_down_fails_once_not_per_token() -> None:
    """Nothing listening: the turn ends with one error and a TTSStoppedFrame, promptly."""
    url = f"ws://127.0.0.1:{free_port()}/tts"

    async def scenario() -> tuple[list[str], float]:
        async with pipeline(service(url)) as run:
            started = time.monotonic()
            await run.say(TOKENS)
            await run.out.wait_for(TTSStoppedFrame, timeout=30)
            await asyncio.sleep(0.3)  # any late errors from the other tokens
            return run.error_texts(), time.monotonic() - started

    errors, seconds = asyncio.run(scenario())
    # One from start() (the connection is tried at once), one for the turn.
    assert len(errors) == 2
    assert all("cannot connect" in error for error in errors)
    assert seconds < 10


def test_first_audio_later_than_pipecats_context_timeout_still_plays(tmp_path: Path) -> None:
    """A request slower to start than Pipecat's 3 s audio-context timeout (here: queued
    behind another on the only slot) keeps its context: its audio and TTSStoppedFrame
    still come out."""
    # One slot, real-time synthetic chunks: a 100-character request holds it for 4 s.
    slow = ServedProcess(
        tmp_path, "--engine", "synthetic", "--synthetic-rtf", "1", "--max-batch", "1"
    )
    slow.start()

    async def scenario() -> tuple[list[TTSAudioRawFrame], float]:
        async with (
            voxtrio.aioclient.connect(slow.url) as other,
            other.synthesize("a long text that keeps the only model slot busy " * 2) as held,
        ):
            await anext(aiter(held))  # its first chunk: it holds the slot now
            async with pipeline(service(slow.url, params={})) as run:
                started = time.monotonic()
                audio = await run.turn(["Hi", "."])
                assert not run.error_texts()
                return audio, time.monotonic() - started

    try:
        audio, seconds = asyncio.run(scenario())
    finally:
        slow.stop()
    assert seconds > 3.5
    assert sum(len(frame.audio) for frame in audio) / 2 / 16000 >= 0.16
