"""The asyncio client against a real server (synthetic engine, in this process's Trio loop).

The client runs under `asyncio.run` in a worker thread, the server in the test's
Trio nursery: two event loops, one real socket between them.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from collections.abc import Awaitable, Callable
from typing import TypeVar

import pytest
import trio

from voxtrio import aioclient
from voxtrio.server._listener import ServerHandle

T = TypeVar("T")
TOKENS = ["Hel", "lo ", "there. ", "How are", " you?"]


async def in_asyncio(scenario: Callable[[], Awaitable[T]]) -> T:
    """Run an asyncio scenario to its end in a thread of its own."""
    with trio.fail_after(60):
        return await trio.to_thread.run_sync(lambda: asyncio.run(scenario()))  # type: ignore[arg-type]


async def test_a_text_stream_sent_token_by_token_returns_audio_at_the_asked_rate(
    synthetic_server: ServerHandle,
) -> None:
    """Pieces in, two sentences spoken, pcm16 at 16 kHz, a result that matches the audio."""

    async def scenario() -> tuple[int, aioclient.SynthesisResult | None]:
        async with aioclient.connect(synthetic_server.url) as client:
            async with client.text_stream(sample_rate=16000) as stream:
                for token in TOKENS:
                    await stream.send_text(token)
                await stream.end()
                samples = 0
                async for event in stream:
                    assert isinstance(event, aioclient.AudioChunk)
                    assert event.sample_rate == 16000
                    samples += len(event.pcm) // 2
            return samples, stream.result

    samples, result = await in_asyncio(scenario)
    assert result is not None
    assert result.sentences == 2
    assert result.samples == samples > 0


async def test_word_timings_come_in_order_with_the_audio(synthetic_server: ServerHandle) -> None:
    """`word_timestamps=True`: a Words message per sentence, its times never going back."""

    async def scenario() -> list[aioclient.WordTimings]:
        async with (
            aioclient.connect(synthetic_server.url) as client,
            client.text_stream(word_timestamps=True) as stream,
        ):
            for token in TOKENS:
                await stream.send_text(token)
            await stream.end()
            return [e async for e in stream if isinstance(e, aioclient.WordTimings)]

    timings = await in_asyncio(scenario)
    assert [t.sentence for t in timings] == [0, 1]
    words = [word for t in timings for word in t.words]
    assert [word.text for word in words] == ["Hello", "there.", "How", "are", "you?"]
    starts = [word.start for word in words]
    assert starts == sorted(starts)


async def test_leaving_a_stream_early_cancels_it_and_frees_its_id(
    synthetic_server: ServerHandle,
) -> None:
    """A `break` out of `synthesize`: the server answers cancelled, the id is free again."""

    async def scenario() -> tuple[bool, frozenset[str], float]:
        async with aioclient.connect(synthetic_server.url) as client:
            async with client.synthesize("A long text to speak. " * 20, request_id="r1") as stream:
                async for _chunk in stream:
                    break
            # The same id works again at once.
            audio, result = await client.speak("Short.", request_id="r1")
            assert result is not None
            assert len(audio) == result.samples * 2
            return stream.cancelled, client.active_requests, await client.ping()

    cancelled, active, round_trip = await in_asyncio(scenario)
    assert cancelled
    assert active == frozenset()
    assert round_trip < 5


async def test_close_nowait_returns_at_once_and_still_cancels(
    synthetic_server: ServerHandle,
) -> None:
    """An interruption must not wait for the server: the cancel finishes in the background."""

    async def scenario() -> frozenset[str]:
        async with aioclient.connect(synthetic_server.url) as client:
            stream = await client.start_synthesis("A long text to speak. " * 20)
            await anext(aiter(stream))
            stream.close_nowait()
            async with asyncio.timeout(10):
                while client.active_requests:
                    await asyncio.sleep(0.01)
            return client.active_requests

    assert await in_asyncio(scenario) == frozenset()


async def test_a_server_error_raises_synthesis_error_with_its_details(
    synthetic_server: ServerHandle,
) -> None:
    """A refused request raises SynthesisError naming the code and the field."""

    async def scenario() -> aioclient.SynthesisError:
        async with aioclient.connect(synthetic_server.url) as client:
            with pytest.raises(aioclient.SynthesisError) as caught:
                await client.speak("Hello.", cfg_value=99.0)
            # The connection survives a refused request.
            assert (await client.speak("Hello."))[1] is not None
            return caught.value

    error = await in_asyncio(scenario)
    assert error.code == aioclient.ErrorCode.INVALID_PARAMS
    assert "params.cfg_value" in error.details


async def test_an_unknown_parameter_is_refused_before_sending(
    synthetic_server: ServerHandle,
) -> None:
    """A typo is a TypeError here, not a round trip."""

    async def scenario() -> None:
        async with aioclient.connect(synthetic_server.url) as client:
            await client.start_text_stream(cfg_valeu=2.0)

    with pytest.raises(TypeError, match="cfg_valeu"):
        await in_asyncio(scenario)


async def test_voices_are_listed(synthetic_server: ServerHandle) -> None:
    """`list_voices` is the server's voice_list."""

    async def scenario() -> list[aioclient.VoiceSummary]:
        async with aioclient.connect(synthetic_server.url) as client:
            return await client.list_voices()

    assert await in_asyncio(scenario) == []


async def test_a_refused_connection_is_a_connect_error() -> None:
    """Nothing listening: ConnectError, no hang."""
    with trio.socket.socket() as sock:
        await sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]

    async def scenario() -> None:
        await aioclient.open_client(f"ws://127.0.0.1:{port}/tts", connect_timeout=5)

    with pytest.raises(aioclient.ConnectError):
        await in_asyncio(scenario)


def test_importing_the_asyncio_client_loads_neither_trio_nor_the_server_stack() -> None:
    """voxtrio.aioclient is light: no Trio, torch, numpy or server layers."""
    probe = (
        "import json, sys, voxtrio.aioclient; "
        "print(json.dumps(sorted(m for m in sys.modules if m.split('.')[0] in "
        "('trio', 'trio_websocket', 'torch', 'voxcpm', 'av', 'soxr', 'numpy') "
        "or m.startswith(('voxtrio.server', 'voxtrio.speech', 'voxtrio.audio', "
        "'voxtrio.client')))))"
    )
    out = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, check=True, timeout=60
    )
    assert json.loads(out.stdout) == []
