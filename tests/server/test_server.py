"""The server over real sockets on 127.0.0.1, with the synthetic engine (the server alone)."""

from __future__ import annotations

import threading
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import trio

from voxtrio.protocol._frames import FrameType
from voxtrio.server._listener import ServerHandle
from voxtrio.speech._synthetic import SyntheticEngine

from ..support import handshake_status, session, speak

# One sentence (a single text is spoken sentence by sentence): 270 chars -> 68 chunks.
LONG_TEXT = "A sentence long enough to take many chunks, " * 6


async def wait_until(predicate: Callable[[], bool], timeout: float = 5.0) -> None:
    with trio.fail_after(timeout):
        while not predicate():
            await trio.sleep(0.01)


@pytest.fixture
async def paced(start_server: Callable[..., Any]) -> tuple[ServerHandle, SyntheticEngine]:
    """A server with one slot that paces chunks (10 ms each), so requests can be caught mid-way."""
    engine = SyntheticEngine(rtf=10 / 160)
    handle = await start_server(lambda: engine, max_batch=1)
    return handle, engine


async def test_streaming_request_sends_chunks_then_final_then_complete(
    synthetic_server: ServerHandle,
) -> None:
    """Progress, numbered 0x01 chunks, one empty is_final chunk, then complete."""
    outcome = await speak(synthetic_server.url, text="Hello, world!", seed=3)
    assert outcome.order[0] == "progress"
    assert outcome.order[-2:] == ["final", "complete"]
    chunks = [f for f in outcome.frames if not f.metadata["is_final"]]
    assert [f.metadata["sequence"] for f in chunks] == list(range(4))  # 13 chars / 4 per step
    assert all(f.type is FrameType.STREAMING_CHUNK for f in outcome.frames)
    assert outcome.frames[-1].payload == b""
    assert outcome.frames[-1].metadata["sequence"] == 4
    result = outcome.terminal["result"]
    assert result["samples"] == len(outcome.audio) // 2 == 4 * 7680
    assert (result["chunks"], result["sample_rate"], result["seed"]) == (4, 48000, 3)
    assert result["duration"] == pytest.approx(4 * 7680 / 48000)


async def test_streaming_audio_is_the_engine_audio_as_pcm16(synthetic_server: ServerHandle) -> None:
    """The payload is the engine's float audio as little-endian int16."""
    outcome = await speak(synthetic_server.url, text="abcdefgh", seed=7)
    received = np.frombuffer(outcome.audio, "<i2")
    engine = SyntheticEngine()
    from voxtrio.speech._engine import SynthesisSpec

    expected = np.concatenate(list(engine.generate(SynthesisSpec(text="abcdefgh", seed=7), print)))
    assert np.array_equal(received, np.rint(expected * 32767).astype("<i2"))


async def test_non_streaming_request_sends_one_whole_frame(synthetic_server: ServerHandle) -> None:
    """non_streaming: one 0x02 frame with the duration, then complete."""
    outcome = await speak(synthetic_server.url, text="Hello, world!", mode="non_streaming")
    (frame,) = outcome.frames
    assert frame.type is FrameType.NON_STREAMING
    assert frame.metadata["duration"] == pytest.approx(4 * 7680 / 48000)
    assert len(frame.payload) == 2 * 4 * 7680
    assert outcome.order[-1] == "complete"
    assert "encoding" in [m["state"] for m in outcome.progress]


async def test_progress_is_monotonic_and_bounded(start_server: Callable[..., Any]) -> None:
    """progress values stay in 0..1 and never go back within a state."""
    handle = await start_server(
        lambda: SyntheticEngine(rtf=10 / 160), stream_progress_interval=0.05
    )
    outcome = await speak(handle.url, text=LONG_TEXT)
    generating = [m["progress"] for m in outcome.progress if m["state"] == "generating"]
    assert generating, "a 0.7 s request reports generation progress"
    assert generating == sorted(generating)
    assert all(0 <= p <= 1 for p in generating)
    assert len(outcome.progress) < 68  # rate-limited, not one per chunk


async def test_streaming_progress_follows_audio_at_its_own_interval(
    start_server: Callable[..., Any],
) -> None:
    """Streaming: `generating` comes right after a chunk, at most once per stream interval."""
    handle = await start_server(
        lambda: SyntheticEngine(rtf=10 / 160), stream_progress_interval=0.2, progress_interval=0.01
    )
    outcome = await speak(handle.url, text=LONG_TEXT)  # 68 chunks, 10 ms each
    order = outcome.order
    positions = [i for i, m in enumerate(order) if m == "progress"]
    generating = [
        i for i, m in zip(positions, outcome.progress, strict=True) if m["state"] == "generating"
    ]
    assert 1 <= len(generating) <= 5  # about 0.7 s / 0.2 s, not one per 10 ms
    assert all(order[i - 1] == "frame1" for i in generating)


async def test_non_streaming_progress_comes_from_a_timer(start_server: Callable[..., Any]) -> None:
    """non_streaming: `generating` arrives every progress interval before the one frame."""
    handle = await start_server(
        lambda: SyntheticEngine(rtf=10 / 160), progress_interval=0.05, stream_progress_interval=60
    )
    outcome = await speak(handle.url, text=LONG_TEXT, mode="non_streaming")
    generating = [m for m in outcome.progress if m["state"] == "generating"]
    assert len(generating) >= 4  # ~0.7 s of generation at 0.05 s
    assert outcome.order.index("frame2") > outcome.order.index("progress")


async def test_a_request_starts_with_queued_then_processing(
    synthetic_server: ServerHandle,
) -> None:
    """With a replica free the job starts first, yet `queued` and `processing` lead."""
    outcome = await speak(synthetic_server.url, text="Hello, world!")
    states = [m["state"] for m in outcome.progress]
    assert states[:2] == ["queued", "processing"]
    assert outcome.order[:2] == ["progress", "progress"]


async def test_a_request_waiting_for_a_replica_is_told_at_once(
    paced: tuple[ServerHandle, SyntheticEngine],
) -> None:
    """`queued` reaches a request that waits for a busy replica before the replica frees."""
    handle, engine = paced
    async with session(handle.url) as s:
        await s.request("hog", text=LONG_TEXT)
        await s.until("hog", "frame1")
        await s.request("waiter", text="Hello.")
        await s.until("waiter", "progress")
        waiter = s.outcomes["waiter"]
        assert waiter.progress[0]["state"] == "queued"
        assert "complete" not in s.outcomes["hog"].order  # told while the hog still ran
        assert engine.generations == 1
        await s.until_terminal("hog", "waiter")
    assert s.outcomes["waiter"].terminal["type"] == "complete"


async def test_root_path_is_an_alias(synthetic_server: ServerHandle) -> None:
    """ws://host:port/ serves the same protocol as /tts."""
    url = synthetic_server.url.removesuffix("tts")
    outcome = await speak(url, text="hi")
    assert outcome.terminal["type"] == "complete"


async def test_other_paths_are_refused_with_404(synthetic_server: ServerHandle) -> None:
    """Any other path is refused at the handshake."""
    h = synthetic_server
    assert await handshake_status(h.host, h.port, "/nope") == 404
    assert await handshake_status(h.host, h.port, "/tts/extra") == 404
    assert await handshake_status(h.host, h.port, "/tts?x=1") == 101


async def test_ping_gets_pong(synthetic_server: ServerHandle) -> None:
    """ping echoes the timestamp and adds the server time."""
    async with session(synthetic_server.url) as s:
        await s.send({"type": "ping", "timestamp": 1234})
        pong = await s.next_unrouted()
    assert pong["type"] == "pong"
    assert pong["timestamp"] == 1234


@pytest.mark.parametrize(
    ("message", "code"),
    [
        ("{not json", "INVALID_JSON"),
        ({"type": "dance"}, "UNKNOWN_MESSAGE_TYPE"),
        (b"\x00\x01", "UNSUPPORTED_FORMAT"),
    ],
)
async def test_connection_level_errors(
    synthetic_server: ServerHandle, message: Any, code: str
) -> None:
    """Bad messages get a specific error and the connection keeps working."""
    async with session(synthetic_server.url) as s:
        await s.send(message)
        error = await s.next_unrouted()
        assert error["error"]["code"] == code
        await s.request("after", text="still here")
        await s.until_terminal("after")
        assert s.outcomes["after"].terminal["type"] == "complete"


async def test_invalid_params_names_fields(synthetic_server: ServerHandle) -> None:
    """INVALID_PARAMS carries the request id and one entry per bad field."""
    async with session(synthetic_server.url) as s:
        await s.request("bad", text="hi", cfg_value=99, inference_timesteps="7")
        await s.until_terminal("bad")
    error = s.outcomes["bad"].terminal["error"]
    assert error["code"] == "INVALID_PARAMS"
    assert set(error["details"]) == {"params.inference_timesteps"} or set(error["details"]) >= {
        "params.inference_timesteps"
    }


async def test_duplicate_request_id(paced: tuple[ServerHandle, SyntheticEngine]) -> None:
    """A second request with an active id is refused; the first one is untouched."""
    handle, _ = paced
    async with session(handle.url) as s:
        await s.request("dup", text=LONG_TEXT)
        await s.request("dup", text="again")
        await s.until_terminal("dup")
        first_terminal = s.outcomes["dup"].terminal
        assert first_terminal["error"]["code"] == "DUPLICATE_REQUEST_ID"
        s.outcomes.pop("dup")
        await s.until_terminal("dup")
        assert s.outcomes["dup"].terminal["type"] == "complete"


async def test_cancel_of_unknown_request(synthetic_server: ServerHandle) -> None:
    """cancel of an id that is not active is UNKNOWN_REQUEST."""
    async with session(synthetic_server.url) as s:
        await s.cancel("ghost")
        await s.until_terminal("ghost")
    assert s.outcomes["ghost"].terminal["error"]["code"] == "UNKNOWN_REQUEST"


async def test_cancel_mid_stream_frees_the_replica(
    paced: tuple[ServerHandle, SyntheticEngine],
) -> None:
    """cancel: complete {cancelled}, nothing after it, the replica is free and serves again."""
    handle, engine = paced
    pool = handle.server.pool
    async with session(handle.url) as s:
        await s.request("c", text=LONG_TEXT)
        await s.until("c", "frame1")
        await s.cancel("c")
        await s.until_terminal("c")
        outcome = s.outcomes["c"]
        assert outcome.terminal["result"] == {"cancelled": True}
        assert outcome.order[-1] == "complete"
        assert "final" not in outcome.order
        assert pool.slots_busy == 0
        assert engine.open_generations == 0
        await s.request("next", text="hello")
        await s.until_terminal("next")
        assert s.outcomes["next"].terminal["type"] == "complete"
        with trio.move_on_after(0.2):
            await s.receive_one()
        assert s.outcomes["c"] is outcome
        assert outcome.order[-1] == "complete"


async def test_cancel_of_non_streaming_request(paced: tuple[ServerHandle, SyntheticEngine]) -> None:
    """A non-streaming request can be cancelled before its audio exists."""
    handle, engine = paced
    async with session(handle.url) as s:
        await s.request("n", text=LONG_TEXT, mode="non_streaming")
        await wait_until(lambda: engine.open_generations == 1)
        await s.cancel("n")
        await s.until_terminal("n")
    assert s.outcomes["n"].terminal["result"] == {"cancelled": True}
    assert s.outcomes["n"].frames == []
    assert handle.server.pool.slots_busy == 0


async def test_disconnect_mid_stream_closes_the_generator(
    paced: tuple[ServerHandle, SyntheticEngine],
) -> None:
    """A client that vanishes mid-stream: generator closed, replica free, server still serves."""
    handle, engine = paced
    async with session(handle.url) as s:
        await s.request("gone", text=LONG_TEXT)
        await s.until("gone", "frame1")
    await wait_until(lambda: engine.open_generations == 0 and handle.server.pool.slots_busy == 0)
    outcome = await speak(handle.url, text="I am still here")
    assert outcome.terminal["type"] == "complete"


async def test_engine_failure_is_generation_failed(start_server: Callable[..., Any]) -> None:
    """An engine that raises mid-stream: GENERATION_FAILED, the replica serves the next request."""
    engine = SyntheticEngine(fail_at_step=3)
    handle = await start_server(lambda: engine)
    outcome = await speak(handle.url, text=LONG_TEXT)
    assert outcome.terminal["error"]["code"] == "GENERATION_FAILED"
    assert "synthetic failure" in outcome.terminal["error"]["message"]
    assert len([f for f in outcome.frames if f.payload]) == 2
    engine.fail_at_step = None
    assert (await speak(handle.url, text="ok now")).terminal["type"] == "complete"


async def test_nan_audio_is_never_sent(start_server: Callable[..., Any]) -> None:
    """Non-finite audio fails the request and that chunk is not sent."""
    handle = await start_server(lambda: SyntheticEngine(nan_at_step=2))
    outcome = await speak(handle.url, text=LONG_TEXT)
    assert outcome.terminal["error"]["code"] == "GENERATION_FAILED"
    assert len([f for f in outcome.frames if f.payload]) == 1
    assert handle.server.pool.slots_busy == 0


async def test_malformed_engine_output_is_generation_failed(
    start_server: Callable[..., Any],
) -> None:
    """An engine yielding integer samples fails that request, and only that one."""

    class IntegerEngine(SyntheticEngine):
        def generate(self, spec: Any, on_step: Any) -> Any:
            yield np.zeros(10, dtype=np.int32)

    handle = await start_server(IntegerEngine)
    outcome = await speak(handle.url, text="hi")
    assert outcome.terminal["error"]["code"] == "GENERATION_FAILED"
    assert "floating point" in outcome.terminal["error"]["message"]


async def test_server_bug_is_internal_error_for_that_request_only(
    synthetic_server: ServerHandle, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An exception in the server's own code is INTERNAL_ERROR; the connection goes on."""
    import voxtrio.server._native_sink

    def broken(*args: Any) -> bytes:
        raise RuntimeError("a bug")

    monkeypatch.setattr(voxtrio.server._native_sink.StreamFrameHeads, "head", broken)
    async with session(synthetic_server.url) as s:
        await s.request("a", text="hi")
        await s.until_terminal("a")
        assert s.outcomes["a"].terminal["error"]["code"] == "INTERNAL_ERROR"
        monkeypatch.undo()
        await s.request("b", text="hi")
        await s.until_terminal("b")
        assert s.outcomes["b"].terminal["type"] == "complete"


async def test_per_connection_limit_over_the_wire(start_server: Callable[..., Any]) -> None:
    """Past the per-connection limit: RATE_LIMITED; the running requests finish."""
    handle = await start_server(
        lambda: SyntheticEngine(rtf=10 / 160), max_requests_per_connection=2
    )
    async with session(handle.url) as s:
        for rid in ("a", "b", "c"):
            await s.request(rid, text=LONG_TEXT)
        await s.until_terminal("a", "b", "c")
    assert s.outcomes["c"].terminal["error"]["code"] == "RATE_LIMITED"
    assert s.outcomes["a"].terminal["type"] == s.outcomes["b"].terminal["type"] == "complete"


async def test_server_limit_is_rate_limited_with_retry_after(
    start_server: Callable[..., Any],
) -> None:
    """Past max_concurrent admitted requests server-wide: RATE_LIMITED with retry_after_ms."""
    handle = await start_server(lambda: SyntheticEngine(rtf=10 / 160), max_concurrent=1)
    async with session(handle.url) as one, session(handle.url) as two:
        await one.request("a", text=LONG_TEXT)
        await one.until("a", "frame1")
        await two.request("b", text="hi")
        await two.until_terminal("b")
        await one.until_terminal("a")
    error = two.outcomes["b"].terminal["error"]
    assert (error["code"], error["details"]["scope"]) == ("RATE_LIMITED", "server")
    assert error["details"]["retry_after_ms"] > 0


async def test_concurrent_requests_on_one_connection_do_not_mix(
    start_server: Callable[..., Any],
) -> None:
    """Requests interleaved on one connection get exactly the audio they get alone."""
    handle = await start_server(lambda: SyntheticEngine(rtf=0.01), workers=2)
    seeds = {"x": 11, "y": 222, "z": 333}
    alone = {
        rid: (await speak(handle.url, text=LONG_TEXT, seed=seed)).audio
        for rid, seed in seeds.items()
    }
    async with session(handle.url) as s:
        for rid, seed in seeds.items():
            await s.request(rid, text=LONG_TEXT, seed=seed)
        await s.until_terminal(*seeds)
    for rid in seeds:
        assert s.outcomes[rid].audio == alone[rid]
    assert len(set(alone.values())) == 3


async def test_concurrent_connections_do_not_mix(start_server: Callable[..., Any]) -> None:
    """Many connections at once each get their own audio, byte for byte."""
    handle = await start_server(lambda: SyntheticEngine(rtf=0.005), workers=2)
    results: dict[int, bytes] = {}

    async def one(seed: int) -> None:
        results[seed] = (await speak(handle.url, text=LONG_TEXT[:80], seed=seed)).audio

    async with trio.open_nursery() as nursery:
        for seed in range(8):
            nursery.start_soon(one, seed)
    for seed, audio in results.items():
        assert audio == (await speak(handle.url, text=LONG_TEXT[:80], seed=seed)).audio
    assert handle.server.pool.slots_busy == 0


async def test_a_bad_message_does_not_disturb_a_running_request(
    paced: tuple[ServerHandle, SyntheticEngine],
) -> None:
    """Garbage mid-stream gets its error; the stream goes on to complete."""
    handle, _ = paced
    async with session(handle.url) as s:
        await s.request("r", text=LONG_TEXT, seed=1)
        await s.until("r", "frame1")
        await s.send("][")
        await s.send(b"\xff")
        await s.until_terminal("r")
    assert s.outcomes["r"].terminal["type"] == "complete"
    assert [e["error"]["code"] for e in s.unrouted] == ["INVALID_JSON", "UNSUPPORTED_FORMAT"]


async def test_max_connections_refuses_with_503(start_server: Callable[..., Any]) -> None:
    """Past max_connections the handshake is refused with 503."""
    handle = await start_server(max_connections=1)
    async with session(handle.url):
        assert await handshake_status(handle.host, handle.port, "/tts") == 503
    assert await handshake_status(handle.host, handle.port, "/tts") == 101


async def test_ready_file_holds_the_url(start_server: Callable[..., Any], tmp_path: Path) -> None:
    """--ready-file gets the URL once the server accepts connections."""
    ready = tmp_path / "ready"
    handle = await start_server(ready_file=str(ready))
    lines = ready.read_text().split()
    assert lines[0] == handle.url
    assert lines[1] == f"http://127.0.0.1:{handle.metrics_port}"


async def test_instance_threads_end_with_the_server(nursery: trio.Nursery) -> None:
    """Stopping the server joins every model instance thread: no thread leaks."""
    from voxtrio._app import run_server
    from voxtrio._config import Settings

    before = {t.name for t in threading.enumerate()}
    with trio.CancelScope() as scope:
        async with trio.open_nursery() as inner:
            await inner.start(
                partial(
                    run_server,
                    Settings(port=0, metrics_port=0, workers=3),
                    engine_factory=SyntheticEngine,
                )
            )
            assert sum(t.name.startswith("voxtrio-instance") for t in threading.enumerate()) == 3
            scope.cancel()
    await wait_until(lambda: {t.name for t in threading.enumerate()} <= before)


async def test_client_that_stops_reading_is_dropped_and_its_replica_freed(
    start_server: Callable[..., Any],
) -> None:
    """A client that never reads: backpressure pauses its stream, then --write-timeout ends it."""
    engine = SyntheticEngine(rtf=0.0)
    handle = await start_server(lambda: engine, write_timeout=0.5)
    async with session(handle.url) as s:
        # 5000 chars -> 1250 chunks of 15 KB: far more than the socket buffers hold.
        await s.request("flood", text="x" * 5000)
        with trio.fail_after(30):
            while handle.server.pool.slots_busy or handle.server.connections:
                await trio.sleep(0.05)
    assert engine.open_generations == 0
    assert engine.generations == 1
    # The generator was paused by backpressure, not run to the end.
    outcome = await speak(handle.url, text="the next client is served")
    assert outcome.terminal["type"] == "complete"
