"""The LiveKit plugin through LiveKit Agents 1.8.9's own stream classes against `voxtrio serve`."""

from __future__ import annotations

import asyncio

import pytest

from tests.integrations.conftest import require
from tests.served import ServedProcess, prompt_wav
from voxtrio import aioclient

require("livekit.agents", "livekit")

from livekit.agents import APIConnectionError, APIStatusError  # noqa: E402
from livekit.agents.tts import SynthesizedAudio  # noqa: E402
from livekit.agents.types import USERDATA_TIMED_TRANSCRIPT, TimedString  # noqa: E402

from voxtrio.integrations import livekit as voxtrio_livekit  # noqa: E402

TOKENS = ["Hel", "lo", " the", "re.", " How", " are", " you?"]
SHORT = {"max_len": 12, "seed": 7}
STEP_S = 0.16  # one step of the tiny VoxCPM2: 7680 samples at 48 kHz
# LiveKit re-frames the audio (200 ms frames) and may pad the last one a little.
FRAMING_S = 0.05


def plugin(url: str, **options: object) -> voxtrio_livekit.TTS:
    options.setdefault("params", SHORT)
    return voxtrio_livekit.TTS(url=url, **options)  # type: ignore[arg-type]


async def stream_turn(tts: voxtrio_livekit.TTS, tokens: list[str]) -> list[SynthesizedAudio]:
    stream = tts.stream()
    for token in tokens:
        stream.push_text(token)
    stream.end_input()
    async with stream:
        return [event async for event in stream]


def test_tokens_pushed_one_by_one_come_back_as_one_streamed_segment(
    tiny_served: ServedProcess,
) -> None:
    """stream(): text token by token, 24 kHz audio frames, one segment that ends final."""

    async def scenario() -> tuple[list[SynthesizedAudio], int]:
        tts = plugin(tiny_served.url)
        tts.prewarm()  # opens the connection the turns then share
        try:
            events = await stream_turn(tts, TOKENS)
            second = await stream_turn(tts, ["Good", "bye."])
            assert second
            assert second[-1].is_final
            return events, tts.connection.connections_opened
        finally:
            await tts.aclose()

    events, connections = asyncio.run(scenario())
    assert tts_capabilities_streaming()
    assert len(events) >= 2
    assert {event.frame.sample_rate for event in events} == {24000}
    assert len({event.segment_id for event in events}) == 1
    assert events[-1].is_final
    assert not any(event.is_final for event in events[:-1])
    seconds = sum(event.frame.duration for event in events)
    assert 2 * STEP_S <= seconds <= 2 * 12 * STEP_S + FRAMING_S
    assert connections == 1  # the second turn went over the same WebSocket


def tts_capabilities_streaming() -> bool:
    caps = voxtrio_livekit.TTS(word_timestamps=True).capabilities
    return caps.streaming and caps.aligned_transcript


def test_aligned_transcripts_carry_monotonic_word_times(tiny_served: ServedProcess) -> None:
    """Word timings arrive as TimedStrings on the frames, in order, times never going back."""

    async def scenario() -> list[TimedString]:
        tts = plugin(tiny_served.url)
        try:
            events = await stream_turn(tts, TOKENS)
        finally:
            await tts.aclose()
        return [
            word
            for event in events
            for word in event.frame.userdata.get(USERDATA_TIMED_TRANSCRIPT, [])
        ]

    words = asyncio.run(scenario())
    assert [str(word).strip() for word in words] == ["Hello", "there.", "How", "are", "you?"]
    starts = [word.start_time for word in words]
    ends = [word.end_time for word in words]
    assert starts == sorted(starts)
    assert all(start <= end for start, end in zip(starts, ends, strict=True))
    assert all(ends[i] <= starts[i + 1] + 1e-6 for i in range(len(words) - 1))


def test_synthesize_speaks_one_text(tiny_served: ServedProcess) -> None:
    """synthesize(): one tts_request, its audio at the TTS's rate."""

    async def scenario() -> list[SynthesizedAudio]:
        tts = plugin(tiny_served.url, sample_rate=16000)
        try:
            async with tts.synthesize("Hello there.") as chunked:
                return [event async for event in chunked]
        finally:
            await tts.aclose()

    events = asyncio.run(scenario())
    assert events
    assert {event.frame.sample_rate for event in events} == {16000}
    assert STEP_S <= sum(event.frame.duration for event in events) <= 12 * STEP_S + FRAMING_S


def test_closing_a_stream_mid_utterance_cancels_it_and_frees_the_slot(
    tiny_served: ServedProcess,
) -> None:
    """An interruption (aclose) stops the audio and the server cancels the request."""
    cancelled_before = tiny_served.cancelled()

    async def scenario() -> int:
        tts = plugin(tiny_served.url, params={"seed": 7})
        try:
            stream = tts.stream()
            stream.push_text("A long answer that goes on. And on, for a good while.")
            stream.end_input()
            received = 0
            async for _event in stream:
                received += 1
                if received == 2:
                    break
            await stream.aclose()
            await asyncio.to_thread(tiny_served.wait_idle)
            # The connection is still good for the next turn.
            assert await stream_turn(tts, ["Hi."])
            return tts.connection.connections_opened
        finally:
            await tts.aclose()

    assert asyncio.run(scenario()) == 1
    assert tiny_served.wait_idle()["voxcpm_tts_slots_busy"] == 0
    assert tiny_served.cancelled() == cancelled_before + 1


def test_a_registered_voice_is_spoken_by_id(tiny_served: ServedProcess) -> None:
    """Voices by id: register one on the server, list it, speak with it."""

    async def scenario() -> tuple[list[str], list[SynthesizedAudio]]:
        async with aioclient.connect(tiny_served.url) as client:
            await client.register_voice("lk-alice", prompt_wav(), mode="reference", replace=True)
        tts = plugin(tiny_served.url, voice="lk-alice")
        try:
            listed = [voice.voice_id for voice in await tts.list_voices()]
            return listed, await stream_turn(tts, ["Hel", "lo."])
        finally:
            await tts.aclose()

    listed, events = asyncio.run(scenario())
    assert "lk-alice" in listed
    assert sum(event.frame.duration for event in events) >= STEP_S


def test_an_unknown_voice_is_a_clear_client_error(tiny_served: ServedProcess) -> None:
    """Voices are by id: one the server does not have is a 400 naming it, not retried."""

    async def scenario() -> None:
        tts = plugin(tiny_served.url, voice="nobody-here")
        try:
            assert "nobody-here" not in [v.voice_id for v in await tts.list_voices()]
            await stream_turn(tts, ["Hello."])
        finally:
            await tts.aclose()

    with pytest.raises(APIStatusError) as caught:
        asyncio.run(scenario())
    assert caught.value.status_code == 400
    assert "nobody-here" in str(caught.value)


def test_the_server_restarting_mid_conversation_is_survived(restartable: ServedProcess) -> None:
    """A turn cut by the server dying fails; the next turn reconnects and speaks."""

    async def scenario() -> tuple[BaseException | None, int, int]:
        tts = plugin(restartable.url, params={"seed": 7})
        failure = None
        try:
            stream = tts.stream()
            stream.push_text("A long answer that goes on and on.")
            stream.end_input()
            try:
                async with stream:
                    async for _event in stream:
                        if restartable.process and restartable.process.poll() is None:
                            await asyncio.to_thread(restartable.kill)
            except APIConnectionError as exc:
                failure = exc
            await asyncio.to_thread(restartable.start)
            events = await stream_turn(tts, ["Hel", "lo."])
            return failure, len(events), tts.connection.connections_opened
        finally:
            await tts.aclose()

    failure, frames, connections = asyncio.run(scenario())
    assert isinstance(failure, APIConnectionError)
    assert frames >= 1
    assert connections == 2
