"""Text streamed in pieces (an LLM's tokens) is spoken sentence by sentence, in order."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
import trio

from voxtrio.server._listener import ServerHandle
from voxtrio.speech._synthetic import SyntheticEngine

from ..support import RawSession, session, speak

TEXT = "Hello there. How are you today? I am fine, thanks! Bye."
SENTENCES = ["Hello there.", "How are you today?", "I am fine, thanks!", "Bye."]


async def start_stream(s: RawSession, rid: str, **params: Any) -> None:
    await s.send({"type": "text_stream_start", "request_id": rid, "params": params})


async def delta(s: RawSession, rid: str, text: str) -> None:
    await s.send({"type": "text_delta", "request_id": rid, "text": text})


async def end(s: RawSession, rid: str) -> None:
    await s.send({"type": "text_stream_end", "request_id": rid})


async def solo_audio(url: str, sentences: list[str], seed: int) -> bytes:
    parts = [(await speak(url, text=t, seed=seed)).audio for t in sentences]
    return b"".join(parts)


@pytest.mark.parametrize("piece", [1, 3, 7, 1000])
async def test_fragments_of_any_size_give_the_same_speech(
    synthetic_server: ServerHandle, piece: int
) -> None:
    """Fed in fragments of any size, the text is spoken as its sentences, in order."""
    async with session(synthetic_server.url) as s:
        await start_stream(s, "t", seed=5)
        for i in range(0, len(TEXT), piece):
            await delta(s, "t", TEXT[i : i + piece])
        await end(s, "t")
        await s.until_terminal("t")
    outcome = s.outcomes["t"]
    assert outcome.terminal["result"]["sentences"] == len(SENTENCES)
    assert outcome.audio == await solo_audio(synthetic_server.url, SENTENCES, seed=5)
    sequences = [f.metadata["sequence"] for f in outcome.frames]
    assert sequences == list(range(len(sequences)))
    assert outcome.frames[-1].metadata["is_final"] is True


async def test_a_sentence_is_spoken_before_the_text_ends(synthetic_server: ServerHandle) -> None:
    """Audio for a finished sentence arrives while the stream is still open."""
    async with session(synthetic_server.url) as s:
        await start_stream(s, "t", seed=1)
        await delta(s, "t", "First sentence is done. And the second")
        await s.until("t", "frame1", timeout=10)
        await delta(s, "t", " one ends here.")
        await end(s, "t")
        await s.until_terminal("t")
    assert s.outcomes["t"].terminal["result"]["sentences"] == 2


async def test_flush_speaks_an_unfinished_sentence(synthetic_server: ServerHandle) -> None:
    """text_flush speaks what is buffered even without a sentence end."""
    async with session(synthetic_server.url) as s:
        await start_stream(s, "t", seed=2)
        await delta(s, "t", "no full stop yet")
        await s.send({"type": "text_flush", "request_id": "t"})
        await s.until("t", "frame1", timeout=10)
        await end(s, "t")
        await s.until_terminal("t")
    assert s.outcomes["t"].audio == await solo_audio(
        synthetic_server.url, ["no full stop yet"], seed=2
    )


async def test_end_speaks_the_rest(synthetic_server: ServerHandle) -> None:
    """text_stream_end speaks the unterminated tail, then completes."""
    async with session(synthetic_server.url) as s:
        await start_stream(s, "t", seed=3)
        await delta(s, "t", "One. Two without end")
        await end(s, "t")
        await s.until_terminal("t")
    assert s.outcomes["t"].terminal["result"]["sentences"] == 2


async def test_empty_stream_completes_with_no_audio(synthetic_server: ServerHandle) -> None:
    """A stream ended with nothing speakable completes with zero samples."""
    async with session(synthetic_server.url) as s:
        await start_stream(s, "t")
        await delta(s, "t", " ... ")
        await end(s, "t")
        await s.until_terminal("t")
    result = s.outcomes["t"].terminal["result"]
    assert (result["samples"], result["sentences"]) == (0, 0)


async def test_delta_for_an_unknown_stream(synthetic_server: ServerHandle) -> None:
    """text_delta for an id with no open stream is UNKNOWN_REQUEST."""
    async with session(synthetic_server.url) as s:
        await delta(s, "nope", "hi")
        await s.until_terminal("nope")
    assert s.outcomes["nope"].terminal["error"]["code"] == "UNKNOWN_REQUEST"


async def test_delta_after_end_is_refused_and_the_stream_finishes(
    start_server: Callable[..., Any],
) -> None:
    """After text_stream_end more text is refused; the request still completes once."""
    handle = await start_server(lambda: SyntheticEngine(rtf=0.05))
    async with session(handle.url) as s:
        await start_stream(s, "t")
        await delta(s, "t", "Hello there, this takes a little while to speak.")
        await end(s, "t")
        await delta(s, "t", "too late")
        await s.until_terminal("t")
        first = s.outcomes["t"].terminal
        s.outcomes.pop("t")
        await s.until_terminal("t")
        second = s.outcomes["t"].terminal
    terminals = sorted([first["type"], second["type"]])
    assert terminals == ["complete", "error"]
    error = first if first["type"] == "error" else second
    assert error["error"]["code"] == "UNKNOWN_REQUEST"


async def test_cancel_a_text_stream(start_server: Callable[..., Any]) -> None:
    """A text stream is cancelled like any request: complete {cancelled}, replica free."""
    handle = await start_server(lambda: SyntheticEngine(rtf=0.1))
    async with session(handle.url) as s:
        await start_stream(s, "t")
        await delta(s, "t", "A long first sentence that takes a while to speak. " * 3)
        await s.until("t", "frame1")
        await s.cancel("t")
        await s.until_terminal("t")
    assert s.outcomes["t"].terminal["result"] == {"cancelled": True}
    assert handle.server.pool.slots_busy == 0


async def test_text_faster_than_speech_past_the_buffer_is_rate_limited(
    start_server: Callable[..., Any],
) -> None:
    """Past --max-stream-buffer-chars of unspoken text the stream ends with RATE_LIMITED."""
    handle = await start_server(lambda: SyntheticEngine(rtf=0.5), max_stream_buffer_chars=200)
    async with session(handle.url) as s:
        await start_stream(s, "t")
        for _ in range(10):
            await delta(s, "t", "Some sentence here. " * 2)
        await s.until_terminal("t")
    error = s.outcomes["t"].terminal["error"]
    assert (error["code"], error["details"]["scope"]) == ("RATE_LIMITED", "text_stream")
    with trio.fail_after(5):
        while handle.server.pool.slots_busy:
            await trio.sleep(0.01)


async def test_stream_params_are_validated(synthetic_server: ServerHandle) -> None:
    """text_stream_start params are checked like tts_request's (no text, no mode)."""
    async with session(synthetic_server.url) as s:
        await start_stream(s, "t", mode="streaming", cfg_value=50)
        await s.until_terminal("t")
    details = s.outcomes["t"].terminal["error"]["details"]
    assert details == {"params.mode": "unknown key"} or "params.mode" in details


async def test_open_text_streams_waiting_for_text_never_block_new_requests(
    start_server: Callable[..., Any],
) -> None:
    """More idle text streams than setup turns are open, and a new request still runs."""
    from voxtrio.server._request import SETUP_TURNS

    streams = SETUP_TURNS + 2
    handle: ServerHandle = await start_server(
        max_concurrent=streams + 8, max_requests_per_connection=streams
    )
    async with session(handle.url) as s:
        for i in range(streams):
            await start_stream(s, f"idle{i}", seed=i)
        await s.send({"type": "ping", "timestamp": 1})
        await s.until(None, "pong", timeout=10)  # type: ignore[arg-type]  # every start read
        with trio.fail_after(10):
            outcome = await speak(handle.url, text="a" * 8, seed=1)
        assert outcome.terminal["type"] == "complete"
        for i in range(streams):
            await end(s, f"idle{i}")
        await s.until_terminal(*(f"idle{i}" for i in range(streams)))
