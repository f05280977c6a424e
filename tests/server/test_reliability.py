"""Reliability, short: fuzzing, misbehaving clients, engine faults, a 30 s soak, regressions.

The short versions of tests/stress (run there in full by `nox -s stress`), sized for the
default test run, plus one regression test for every server fault those suites found.
Each regression test failed before its fix. A test for a fault not fixed yet is marked
xfail(strict=True): it XPASSes (and so fails) once the fix lands, and the marker goes.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import trio
import trio_websocket

from voxtrio._app import run_server
from voxtrio._config import Settings
from voxtrio.server._listener import ServerHandle
from voxtrio.speech._errors import GenerationFailed
from voxtrio.speech._synthetic import SyntheticEngine

from ..stress import fuzzing, runs
from ..stress.harness import (
    FaultyEngine,
    Ledger,
    RawWebSocket,
    client_frame,
    connect,
    dashscope_url,
    record_figures,
    released,
    watch_logs,
)
from ..stress.runs import scrape, speak_all, until_health, wait_for

LONG = "A sentence long enough to take many chunks to speak. " * 8  # 432 chars, 108 chunks
# Derandomized: the same inputs every run, so CI never flakes on a newly drawn one;
# `nox -s stress` draws fresh inputs, many more of them.
NATIVE_EXAMPLES = runs.fuzz_settings(60, derandomize=True)
DASHSCOPE_EXAMPLES = runs.fuzz_settings(40, derandomize=True)


@pytest.fixture(scope="module")
def fuzz_server() -> Iterator[runs.FuzzServer]:
    """One server (in a thread) for every example of this module's fuzz tests."""
    with runs.fuzz_server() as fuzz:
        yield fuzz


# ---------------------------------------------------------------- protocol fuzzing


def test_fuzzed_native_messages_each_get_their_error(fuzz_server: runs.FuzzServer) -> None:
    """Every generated native message gets its specific error (or its close); nothing leaks."""
    figures = runs.fuzz_native(fuzz_server, NATIVE_EXAMPLES, "fuzz_native_short")
    assert set(figures["bystanders"]) == {"ok"}
    assert figures["leaks"] == {}


def test_fuzzed_dashscope_frames_each_get_task_failed(fuzz_server: runs.FuzzServer) -> None:
    """Every generated DashScope mistake gets task-failed; the connection then takes a task."""
    figures = runs.fuzz_dashscope(fuzz_server, DASHSCOPE_EXAMPLES, "fuzz_dashscope_short")
    assert figures["leaks"] == {}


@pytest.mark.parametrize("endpoint", ["native", "dashscope"])
@pytest.mark.parametrize("utf8", [True, False], ids=["invalid_utf8", "oversized"])
def test_broken_frames_close_only_their_connection(
    fuzz_server: runs.FuzzServer, endpoint: str, utf8: bool
) -> None:
    """Invalid UTF-8 / an oversized frame closes that connection; a bystander completes."""
    assert runs.broken_frames(fuzz_server, endpoint=endpoint, utf8=utf8, times=1) == []


# ---------------------------------------------------------------- misbehaving clients


async def test_misbehaving_clients_leave_no_leaks(start_server: Callable[..., Any]) -> None:
    """Two rounds of 40 misbehaving clients: one terminal each, nothing left behind."""
    figures = await runs.chaos_rounds(
        start_server,
        rounds=2,
        clients=40,
        name="clients_short",
        settings=runs.CHAOS_SETTINGS_SHORT,
    )
    assert runs.chaos_problems(figures) == []


# ---------------------------------------------------------------- engine faults


@pytest.fixture
async def faulty(start_server: Callable[..., Any]) -> tuple[ServerHandle, list[FaultyEngine]]:
    """Two replicas that act up when the text says so ("FAULT:raise@2", "FAULT:hang@1")."""
    engines: list[FaultyEngine] = []

    def engine() -> FaultyEngine:
        made = FaultyEngine(SyntheticEngine(rtf=0.05), max_hang=30.0)
        engines.append(made)
        return made

    handle: ServerHandle = await start_server(
        engine, workers=2, stall_timeout=1.0, stop_timeout=0.5
    )
    return handle, engines


async def test_engine_raising_mid_stream_fails_only_its_request(
    faulty: tuple[ServerHandle, list[FaultyEngine]],
) -> None:
    """raise at step 2: that request is GENERATION_FAILED, its neighbours complete."""
    handle, engines = faulty
    ledger = await speak_all(
        handle.url,
        {
            "bad": {"text": "FAULT:raise@2 " + LONG[:100]},
            "good": {"text": LONG[:100]},
            "also-good": {"text": LONG[:60], "mode": "non_streaming"},
        },
    )
    outcomes = {r.request_id: r.outcome for r in ledger.records}
    assert outcomes == {"bad": "GENERATION_FAILED", "good": "ok", "also-good": "ok"}
    assert sum(e.faults["raise"] for e in engines) == 1
    assert handle.server.pool.slots_busy == 0
    assert sum(e.open_generations for e in engines) == 0


@pytest.mark.parametrize("mode", ["streaming", "non_streaming"])
async def test_nan_audio_fails_the_request_and_is_never_sent(
    faulty: tuple[ServerHandle, list[FaultyEngine]], mode: str
) -> None:
    """NaN at step 3: GENERATION_FAILED, and no frame holds any of that chunk."""
    handle, _ = faulty
    frames: list[int] = []
    async with connect(handle.url) as ws:
        params = {"text": "FAULT:nan@3 " + LONG[:100], "mode": mode}
        body = {"type": "tts_request", "request_id": "n", "params": params}
        await ws.send_message(json.dumps(body))
        with trio.fail_after(30):
            while True:
                message = await ws.get_message()
                if isinstance(message, bytes):
                    frames.append(len(message))
                    continue
                decoded = json.loads(message)
                if decoded["type"] in ("complete", "error"):
                    break
    assert decoded["error"]["code"] == "GENERATION_FAILED"
    assert "non-finite" in decoded["error"]["message"]
    # Streaming: the two chunks before the NaN one; non-streaming: nothing at all.
    assert len(frames) == (2 if mode == "streaming" else 0)


async def test_hung_replica_is_reported_by_health_and_the_other_keeps_serving(
    faulty: tuple[ServerHandle, list[FaultyEngine]],
) -> None:
    """A generation hung past stop_timeout: /health 503 stalled, cancel still answers,
    the hung replica is never double-booked, the other serves; release brings it back."""
    handle, engines = faulty
    pool = handle.server.pool
    health = f"http://127.0.0.1:{handle.metrics_port}/health"
    with released(engines[0]), released(engines[1]):
        async with connect(handle.url) as ws:
            body = {"type": "tts_request", "request_id": "h", "params": {"text": "FAULT:hang@1 hi"}}
            await ws.send_message(json.dumps(body))
            await wait_for(lambda: any(e.hanging.is_set() for e in engines), 10)
            stall_timeout = handle.server.settings.stall_timeout
            verdict = await until_health(health, 503, stall_timeout + 5)
            assert verdict["status"] == "stalled"
            hung = [e.hanging.is_set() for e in engines].index(True)
            assert [s["instance"] for s in verdict["stalled_instances"]] == [hung]
            ledger = await speak_all(handle.url, {"meanwhile": {"text": "Still serving."}})
            assert ledger.records[0].outcome == "ok"
            await ws.send_message(json.dumps({"type": "cancel", "request_id": "h"}))
            with trio.fail_after(handle.server.settings.stop_timeout + 5):
                terminal = json.loads(await _next_text(ws))
            assert terminal["result"] == {"cancelled": True}
            assert (pool.slots_busy, pool.admitted) == (1, 0)  # still held by the hung thread
    await wait_for(lambda: pool.slots_busy == 0, 10)
    await until_health(health, 200, 10)
    assert sum(e.open_generations for e in engines) == 0


async def _next_text(ws: trio_websocket.WebSocketConnection) -> str:
    while True:
        message = await ws.get_message()
        if isinstance(message, str) and json.loads(message)["type"] != "progress":
            return message


async def test_dashscope_engine_failure_fails_the_task_and_the_connection_goes_on(
    faulty: tuple[ServerHandle, list[FaultyEngine]],
) -> None:
    """A task whose sentence raises gets task-failed; the next task on it finishes."""
    handle, _ = faulty
    ledger = fuzzing.DashLedger()
    async with connect(dashscope_url(handle.url)) as ws:
        for task, text in (("t1", "FAULT:raise@1 Hello."), ("t2", "Hello again.")):
            await ws.send_message(fuzzing.dumps(fuzzing.run_task(task)))
            await ws.send_message(fuzzing.dumps(fuzzing.continue_task(task, text)))
            await ws.send_message(fuzzing.dumps(fuzzing.finish_task(task)))
            with trio.fail_after(30):
                while ledger.terminals[task] == 0:
                    ledger.observe(await ws.get_message())
    assert ledger.outcomes == {"t1": "InternalError", "t2": "finished"}


# ---------------------------------------------------------------- soak, 30 s


def test_soak_30_seconds_on_the_tiny_checkpoint(tiny_model_dir: Path, tmp_path: Path) -> None:
    """30 s of mixed load on `voxtrio serve` with the tiny checkpoint: no error, no leak."""
    from ..stress.soak import SoakConfig, failures, run_soak

    config = SoakConfig(duration=30.0, clients=4, engine="tiny", model_dir=tiny_model_dir)
    summary = trio.run(run_soak, config, tmp_path)
    record_figures(
        "soak_short",
        **{k: summary[k] for k in ("requests", "outcomes", "first_audio_ms", "leaks")},
    )
    assert failures(summary) == []


# ---------------------------------------------------------------- regressions
#
# One test per fault the reliability suites found, named after what it caught.


def _settings(**overrides: Any) -> Settings:
    return Settings(**{"port": 0, "metrics_port": 0, "engine": "synthetic", **overrides})


async def test_integer_literal_beyond_4300_digits_is_an_error_not_a_closed_connection(
    start_server: Callable[..., Any],
) -> None:
    """A 5000-digit number gets an error; the connection and its running request go on."""
    handle: ServerHandle = await start_server(partial(SyntheticEngine, rtf=0.05))
    ledger = Ledger()
    conn = ledger.connection()
    async with connect(handle.url) as ws:
        ledger.started(conn, "running")
        body = {"type": "tts_request", "request_id": "running", "params": {"text": LONG[:80]}}
        await ws.send_message(json.dumps(body))
        await ws.send_message('{"type":"ping","timestamp":' + "7" * 5000 + "}")
        with trio.fail_after(10):
            while ledger.pending(conn):
                decoded = ledger.observe(conn, await ws.get_message())
                if decoded is not None and decoded.get("request_id") is None:
                    assert decoded["error"]["code"] in ("INVALID_JSON", "INVALID_PARAMS")
    assert ledger.records[0].outcome == "ok"


async def test_dashscope_integer_literal_beyond_4300_digits_is_task_failed(
    start_server: Callable[..., Any],
) -> None:
    """A 5000-digit volume gets task-failed; the connection then runs a task."""
    handle: ServerHandle = await start_server()
    ledger = fuzzing.DashLedger()
    async with connect(dashscope_url(handle.url)) as ws:
        text = fuzzing.dumps(fuzzing.run_task("big", volume="N")).replace('"N"', "5" * 5000)
        await ws.send_message(text)
        with trio.fail_after(10):
            event = ledger.observe(await ws.get_message())
        assert event is not None
        assert event["header"]["event"] == "task-failed"
        await ws.send_message(fuzzing.dumps(fuzzing.run_task("next", text="Hi.")))
        await ws.send_message(fuzzing.dumps(fuzzing.finish_task("next")))
        with trio.fail_after(10):
            while not ledger.terminals["next"]:
                ledger.observe(await ws.get_message())
    assert ledger.outcomes["next"] == "finished"


async def test_client_ping_while_the_server_closes_does_not_crash_the_server() -> None:
    """A ping arriving after the server's close frame (idle timeout) leaves the server up."""
    settings = _settings(idle_timeout=0.3)
    async with trio.open_nursery() as nursery:
        engine = partial(SyntheticEngine, rtf=0.0)
        handle: ServerHandle = await nursery.start(
            partial(run_server, settings, engine_factory=engine)
        )
        async with RawWebSocket.open(handle.url) as raw:
            with trio.fail_after(5):
                assert await raw.receive() is None  # the idle-timeout close frame
            await raw.send_raw(client_frame(0x9, b"are you there"))
            await trio.sleep(0.3)
        ledger = await speak_all(handle.url, {"after": {"text": "Still serving."}})
        assert ledger.records[0].outcome == "ok"
        nursery.cancel_scope.cancel()


async def test_peer_reset_right_after_the_handshake_leaves_no_connection_behind(
    start_server: Callable[..., Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A client that resets its socket as soon as the handshake is done is forgotten."""
    accept = trio_websocket.WebSocketRequest.accept

    async def accept_then_yield(self: Any, *args: Any, **kwargs: Any) -> Any:
        ws = await accept(self, *args, **kwargs)
        await trio.sleep(0.2)  # the client's reset lands here, as it may under load
        return ws

    monkeypatch.setattr(trio_websocket.WebSocketRequest, "accept", accept_then_yield)
    handle: ServerHandle = await start_server()
    with watch_logs():
        async with RawWebSocket.open(handle.url) as raw:
            await raw.abort()
        await trio.sleep(0.5)
    await wait_for(lambda: not handle.server.connections, 5)


async def test_dashscope_client_that_stops_reading_is_not_a_server_error(
    start_server: Callable[..., Any],
) -> None:
    """A DashScope client that stops reading is dropped without an error-level log."""
    handle: ServerHandle = await start_server(partial(SyntheticEngine, rtf=0.01), write_timeout=1.0)
    with watch_logs() as logs:
        async with RawWebSocket.open(dashscope_url(handle.url)) as raw:
            start = fuzzing.run_task("t", format="wav", sample_rate=48000)  # 12 MB unread
            await raw.send_text(fuzzing.dumps(start))
            text = "Nobody reads this long sentence. " * 100
            await raw.send_text(fuzzing.dumps(fuzzing.continue_task("t", text)))
            await raw.send_text(fuzzing.dumps(fuzzing.finish_task("t")))
            await wait_for(lambda: not handle.server.connections, 15)
    assert [e for e in logs if e.level in ("error", "exception")] == []


async def test_dashscope_task_whose_client_vanished_counts_as_disconnected(
    start_server: Callable[..., Any],
) -> None:
    """A task abandoned mid-synthesis is voxcpm_tts_requests{mode=dashscope,status=disconnected}."""
    handle: ServerHandle = await start_server(partial(SyntheticEngine, rtf=0.05))
    async with RawWebSocket.open(dashscope_url(handle.url)) as raw:
        await raw.send_text(fuzzing.dumps(fuzzing.run_task("t")))
        await raw.send_text(fuzzing.dumps(fuzzing.continue_task("t", LONG)))
        await raw.send_text(fuzzing.dumps(fuzzing.finish_task("t")))
        with trio.fail_after(10):
            while not isinstance(await raw.receive(), bytes):
                pass
        await raw.abort()
    await wait_for(lambda: not handle.server.connections, 10)
    assert handle.metrics_port is not None
    requests = (await scrape(handle.metrics_port))["voxcpm_tts_requests_total"]
    counted = {
        dict(labels)["status"]: value
        for labels, value in requests.items()
        if dict(labels)["mode"] == "dashscope" and value
    }
    assert counted == {"disconnected": 1.0}


async def test_cancel_that_loses_the_race_to_an_error_is_answered_with_unknown_request(
    start_server: Callable[..., Any],
) -> None:
    """A cancel crossing a request's error: complete{cancelled}, or UNKNOWN_REQUEST after it."""
    handle: ServerHandle = await start_server(workers=2)
    ledger = Ledger()
    conn = ledger.connection()
    async with connect(handle.url) as ws:
        ledger.started(conn, "hog")
        big = {"text": "x " * 2400, "sample_rate": 48000}  # 19 MB of audio, not read yet
        await ws.send_message(
            json.dumps({"type": "tts_request", "request_id": "hog", "params": big})
        )
        await trio.sleep(1.0)  # the socket is full: hog's frame holds the write lock
        ledger.started(conn, "b")
        refused = {"text": "Hi.", "format": "mp3", "sample_rate": 8000, "bit_rate": 320000}
        await ws.send_message(
            json.dumps({"type": "tts_request", "request_id": "b", "params": refused})
        )
        ledger.cancel_sent(conn, "b")
        await ws.send_message(json.dumps({"type": "cancel", "request_id": "b"}))
        await trio.sleep(0.2)
        await ws.send_message(json.dumps({"type": "cancel", "request_id": "hog"}))
        ledger.cancel_sent(conn, "hog")
        with trio.fail_after(30):
            while ledger.pending(conn):
                ledger.observe(conn, await ws.get_message())
        with trio.move_on_after(0.5):  # a late UNKNOWN_REQUEST
            while True:
                ledger.observe(conn, await ws.get_message())
    (b,) = [r for r in ledger.records if r.request_id == "b"]
    assert b.outcome == "INVALID_PARAMS"
    assert b.cancel_answered


async def test_client_gone_during_progress_is_not_a_request_crash(
    start_server: Callable[..., Any],
) -> None:
    """A client that stops reading during a non-streaming request is not a server crash."""
    handle: ServerHandle = await start_server(
        partial(SyntheticEngine, rtf=0.02), workers=2, write_timeout=1.0, progress_interval=0.05
    )
    with watch_logs() as logs:
        async with RawWebSocket.open(handle.url) as raw:
            hog = {"text": "x " * 2400, "sample_rate": 48000}
            await raw.send_text(
                json.dumps({"type": "tts_request", "request_id": "hog", "params": hog})
            )
            slow = {"text": "y " * 2400, "mode": "non_streaming"}
            await raw.send_text(
                json.dumps({"type": "tts_request", "request_id": "n", "params": slow})
            )
            await wait_for(lambda: not handle.server.connections, 20)
    crashes = [e for e in logs if e.event == "request_crashed"]
    assert crashes == []


async def test_ssml_silence_does_not_block_the_event_loop(
    start_server: Callable[..., Any],
) -> None:
    """Two minutes of <break/> in an mp3 task never stall the event loop for 200 ms."""
    handle: ServerHandle = await start_server()
    lags: list[float] = []

    async def ticker() -> None:
        while True:
            before = trio.current_time()
            await trio.sleep(0.01)
            lags.append(trio.current_time() - before - 0.01)

    ledger = fuzzing.DashLedger()
    document = "<speak>Hi." + '<break time="10s"/>' * 12 + "</speak>"
    async with trio.open_nursery() as nursery:
        nursery.start_soon(ticker)
        async with connect(dashscope_url(handle.url)) as ws:
            start = fuzzing.run_task("s", enable_ssml=True, format="mp3", sample_rate=48000)
            await ws.send_message(fuzzing.dumps(start))
            await ws.send_message(fuzzing.dumps(fuzzing.continue_task("s", document)))
            await ws.send_message(fuzzing.dumps(fuzzing.finish_task("s")))
            with trio.fail_after(60):
                while not ledger.terminals["s"]:
                    ledger.observe(await ws.get_message())
        nursery.cancel_scope.cancel()
    assert ledger.outcomes["s"] == "finished"
    assert max(lags) < 0.2, f"the event loop stalled for {max(lags):.2f} s"


async def test_dashscope_task_failing_after_its_client_vanished_is_not_a_server_error(
    start_server: Callable[..., Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A task that fails just as its client vanishes is not logged as a server error."""
    import voxtrio.speech._speak

    async def fails_as_the_client_goes(
        pool: Any, spec: Any, stream: Any, sink: Any, *rest: Any
    ) -> None:
        # The client vanishes between sentence-begin and the failure (seen under load).
        sink.writer.broken = "connection closed (the client just vanished)"
        raise GenerationFailed("generation failed: injected")

    monkeypatch.setattr(voxtrio.speech._speak, "generate_utterance", fails_as_the_client_goes)
    handle: ServerHandle = await start_server()
    with watch_logs() as logs:
        async with RawWebSocket.open(dashscope_url(handle.url)) as raw:
            await raw.send_text(fuzzing.dumps(fuzzing.run_task("t", text="Hello.")))
            await raw.send_text(fuzzing.dumps(fuzzing.finish_task("t")))
            await trio.sleep(0.5)
        await wait_for(lambda: not handle.server.connections, 10)
    assert [e for e in logs if e.level in ("error", "exception")] == []


async def test_cancel_that_loses_the_race_to_a_refusal_is_answered_with_unknown_request(
    start_server: Callable[..., Any],
) -> None:
    """A cancel stopped too late to win against RATE_LIMITED still gets UNKNOWN_REQUEST."""
    handle: ServerHandle = await start_server(partial(SyntheticEngine, rtf=0.5), max_concurrent=1)
    pool = handle.server.pool
    admit = pool.run

    @asynccontextmanager
    async def after_a_shielded_write(*args: Any, **kwargs: Any) -> AsyncIterator[Any]:
        # Widens the real window: the "queued" progress write (shielded) just before.
        with trio.CancelScope(shield=True):
            await trio.sleep(0.3)
        async with admit(*args, **kwargs) as admitted:
            yield admitted

    pool.run = after_a_shielded_write  # type: ignore[method-assign]
    ledger = Ledger()
    conn = ledger.connection()
    async with connect(handle.url) as ws:
        for rid, text in (("hog", LONG), ("b", "Hello there.")):
            ledger.started(conn, rid)
            body = {"type": "tts_request", "request_id": rid, "params": {"text": text}}
            await ws.send_message(json.dumps(body))
            await trio.sleep(0.5 if rid == "hog" else 0.1)  # hog admitted; b in its window
        for rid in ("b", "hog"):
            ledger.cancel_sent(conn, rid)
            await ws.send_message(json.dumps({"type": "cancel", "request_id": rid}))
            with trio.fail_after(30):
                while (conn, rid) in ledger.current:
                    ledger.observe(conn, await ws.get_message())
        with trio.move_on_after(0.5):  # a late UNKNOWN_REQUEST
            while True:
                ledger.observe(conn, await ws.get_message())
    (b,) = [r for r in ledger.records if r.request_id == "b"]
    assert b.outcome in ("cancelled", "RATE_LIMITED")
    assert b.cancel_answered


def _os_threads() -> int:
    return len(os.listdir(f"/proc/{os.getpid()}/task"))


@pytest.mark.skipif(not Path("/proc/self/task").exists(), reason="counts threads in /proc")
@pytest.mark.parametrize("fmt", ["mp3", "opus", "flac"])
def test_closed_encoder_keeps_no_codec_threads(fmt: str) -> None:
    """An encoder that is finished or closed holds no libav thread, referenced or not."""
    from voxtrio.audio._codecs import AudioEncoder

    def encoder() -> AudioEncoder:
        made = AudioEncoder(fmt, input_rate=48000)  # type: ignore[arg-type]
        made.encode(np.zeros(7680, np.float32))
        return made

    warm = encoder()
    warm.finish()
    warm.close()
    del warm
    before = _os_threads()
    kept = [encoder() for _ in range(4)]
    for n, made in enumerate(kept):
        if n % 2:
            made.finish()
        made.close()
    # libav joins its codec threads as the codec is freed; give a busy machine a moment,
    # and count against the start (other tests' threads may end meanwhile).
    deadline = time.monotonic() + 2.0
    while _os_threads() > before and time.monotonic() < deadline:
        time.sleep(0.01)
    assert _os_threads() <= before
