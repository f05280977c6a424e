"""The official dashscope SDK against a fake server built on voxtrio.protocol._dashscope.

The SDK is synchronous websocket-client code, so it runs in a thread while a small
trio-websocket server on 127.0.0.1:0 answers it through DashScopeTask: real event
JSON, real encoded audio (a short tone per sentence through make_encoder). This pins
down that the SDK accepts every event as we build them, for call() and for
streaming_call() + streaming_complete(), in every format.
"""

from __future__ import annotations

import json
import threading
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

import attrs
import numpy as np
import pytest
import trio
from trio_websocket import ConnectionClosed, WebSocketRequest, serve_websocket

from voxtrio.protocol._dashscope import (
    PATH,
    CancelTask,
    DashScopeCapabilities,
    DashScopeErrorCode,
    DashScopeTask,
    FinishTask,
    SendEvent,
    SpeakSentence,
    StartTask,
)
from voxtrio.server._dashscope_audio import make_encoder

dashscope = pytest.importorskip("dashscope")
tts_v2 = pytest.importorskip("dashscope.audio.tts_v2")

MODEL_RATE = 16000
TONE_S = 0.1  # audio per sentence: enough for every codec to emit frames


@attrs.define
class Recorder:
    """What the fake server saw, per connection."""

    paths: list[str] = attrs.Factory(list)
    headers: list[dict[str, str]] = attrs.Factory(list)
    received: list[dict[str, Any]] = attrs.Factory(list)
    sent_events: list[str] = attrs.Factory(list)
    log: list[str] = attrs.Factory(list)  # "in:<action>" and "out:<event>", interleaved
    audio_bytes: int = 0
    fail_sentences: bool = False  # answer each first sentence with fail()
    auth_error: str | None = None


def _tone(seconds: float) -> np.ndarray:
    t = np.arange(int(MODEL_RATE * seconds)) / MODEL_RATE
    return (0.3 * np.sin(2 * np.pi * 220.0 * t)).astype(np.float32)


async def _handle(request: WebSocketRequest, rec: Recorder) -> None:
    """One connection: DashScopeTask decides, this carries out its actions inline."""
    rec.paths.append(request.path)
    rec.headers.append({k.decode().lower(): v.decode() for k, v in request.headers})
    ws = await request.accept()
    task = DashScopeTask(
        DashScopeCapabilities(voices=frozenset({"default", "longxiaochun"})),
        auth_error=rec.auth_error,
    )
    encoder = None

    async def send(reply: SendEvent) -> None:
        rec.sent_events.append(reply.event)
        rec.log.append(f"out:{reply.event}")
        await ws.send_message(reply.text)

    async def run(actions: list[Any]) -> None:
        nonlocal encoder
        for action in actions:
            match action:
                case SendEvent():
                    await send(action)
                case StartTask(params=params):
                    encoder = make_encoder(params, input_rate=MODEL_RATE)
                case SpeakSentence(task_id=task_id, index=index):
                    assert encoder is not None
                    if rec.fail_sentences:
                        await run(task.fail(DashScopeErrorCode.INTERNAL_ERROR, "engine broke"))
                        return
                    await send(task.begin_sentence(action))
                    silence = np.zeros(
                        MODEL_RATE * (action.silence_before_ms + action.silence_after_ms) // 1000,
                        np.float32,
                    )
                    data = encoder.encode(np.concatenate([_tone(TONE_S), silence]))
                    if data:
                        await send(task.synthesis_event(task_id, index))
                        rec.audio_bytes += len(data)
                        await ws.send_message(data)
                    samples = len(silence) + int(MODEL_RATE * TONE_S)
                    await run(task.sentence_audio_done(index, samples, MODEL_RATE))
                case FinishTask(task_id=task_id, last_index=last):
                    assert encoder is not None
                    tail = encoder.finish()
                    if tail:
                        await send(task.synthesis_event(task_id, last))
                        rec.audio_bytes += len(tail)
                        await ws.send_message(tail)
                    await run(task.finished())
                case CancelTask():
                    if encoder is not None:
                        encoder.close()

    while True:
        try:
            message = await ws.get_message()
        except ConnectionClosed:
            return
        if isinstance(message, str):
            rec.received.append(json.loads(message))
            rec.log.append(f"in:{rec.received[-1]['header']['action']}")
            await run(task.receive_text(message))
        else:
            await run(task.receive_bytes(message))


@asynccontextmanager
async def fake_server(rec: Recorder) -> AsyncIterator[str]:
    async with trio.open_nursery() as nursery:
        server = await nursery.start(
            serve_websocket, lambda r: _handle(r, rec), "127.0.0.1", 0, None
        )
        yield f"ws://127.0.0.1:{server.port}{PATH}"
        nursery.cancel_scope.cancel()


@pytest.fixture(autouse=True)
def _api_key(monkeypatch: pytest.MonkeyPatch) -> None:
    # The SDK refuses to start without a key (speech_synthesizer.py:496-498).
    monkeypatch.setattr(dashscope, "api_key", "sk-test-key")


ResultCallback: Any = tts_v2.ResultCallback


class Collect(ResultCallback):
    """streaming_call() requires a callback (speech_synthesizer.py:556-557), and then
    audio arrives only through on_data (line 853), never in a return value."""

    def __init__(self) -> None:
        self.events: list[dict[str, Any]] = []
        self.chunks: list[bytes] = []
        self.errors: list[dict[str, Any]] = []
        self.completed = threading.Event()

    def on_event(self, message: str) -> None:
        self.events.append(json.loads(message))

    def on_data(self, data: bytes) -> None:
        self.chunks.append(bytes(data))

    def on_error(self, message: str) -> None:
        self.errors.append(json.loads(message))

    def on_complete(self) -> None:
        self.completed.set()

    @property
    def audio(self) -> bytes:
        return b"".join(self.chunks)


async def in_thread(fn: Callable[[], Any]) -> Any:
    with trio.fail_after(20):
        return await trio.to_thread.run_sync(fn)


FORMATS = {
    "pcm": tts_v2.AudioFormat.PCM_22050HZ_MONO_16BIT,
    "wav": tts_v2.AudioFormat.WAV_16000HZ_MONO_16BIT,
    "mp3": tts_v2.AudioFormat.MP3_24000HZ_MONO_256KBPS,
    "opus": tts_v2.AudioFormat.OGG_OPUS_24KHZ_MONO_32KBPS,
    "default": tts_v2.AudioFormat.DEFAULT,
}


def _check_audio(fmt: str, audio: bytes | None, expected_bytes: int) -> None:
    assert audio is not None
    assert len(audio) == expected_bytes  # the SDK concatenates every binary frame
    if fmt == "wav":
        assert audio[:4] == b"RIFF"
        assert audio[8:12] == b"WAVE"
    elif fmt in ("mp3", "default"):
        assert audio[0] == 0xFF  # MPEG frame sync: 11 bits set
        assert audio[1] & 0xE0 == 0xE0
    elif fmt == "opus":
        assert audio[:4] == b"OggS"
    else:
        assert len(audio) % 2 == 0


@pytest.mark.parametrize("fmt", list(FORMATS))
async def test_call_returns_audio(fmt: str) -> None:
    rec = Recorder()
    async with fake_server(rec) as url:
        synth = tts_v2.SpeechSynthesizer(
            model="cosyvoice-v2", voice="longxiaochun", format=FORMATS[fmt], url=url
        )
        audio = await in_thread(lambda: synth.call("Hello there. This is a test."))
    _check_audio(fmt, audio, rec.audio_bytes)
    run_task = rec.received[0]
    assert run_task["header"]["action"] == "run-task"
    # call() turns SSML on (speech_synthesizer.py:884-887); plain text still works.
    assert run_task["payload"]["parameters"]["enable_ssml"] is True
    assert [m["header"]["action"] for m in rec.received] == [
        "run-task",
        "continue-task",
        "finish-task",
    ]
    assert rec.sent_events[0] == "task-started"
    assert rec.sent_events[-1] == "task-finished"
    assert rec.sent_events.count("sentence-end") == 2


@pytest.mark.parametrize("fmt", list(FORMATS))
async def test_streaming_call_and_complete(fmt: str) -> None:
    rec = Recorder()
    pieces = ["Streaming text ", "arrives in pieces. ", "Then it ", "ends."]
    collect = Collect()
    async with fake_server(rec) as url:
        synth = tts_v2.SpeechSynthesizer(
            model="cosyvoice-v2", voice="default", format=FORMATS[fmt], callback=collect, url=url
        )

        def stream() -> None:
            for piece in pieces:
                synth.streaming_call(piece)
            synth.streaming_complete()

        await in_thread(stream)
    assert collect.completed.is_set()
    _check_audio(fmt, collect.audio, rec.audio_bytes)
    kinds = [e["payload"]["output"]["type"] for e in collect.events]
    assert kinds.count("sentence-begin") == kinds.count("sentence-end") == 2
    ends = [
        e["payload"] for e in collect.events if e["payload"]["output"]["type"] == "sentence-end"
    ]
    assert [p["output"]["sentence"]["index"] for p in ends] == [0, 1]
    assert ends[0]["output"]["original_text"] == "Streaming text arrives in pieces."
    assert ends[1]["output"]["sentence"]["begin_time"] == round(TONE_S * 1000)
    assert ends[1]["usage"]["characters"] == len("".join(pieces))
    actions = [m["header"]["action"] for m in rec.received]
    assert actions == ["run-task"] + ["continue-task"] * len(pieces) + ["finish-task"]
    assert "enable_ssml" not in rec.received[0]["payload"]["parameters"]
    assert rec.sent_events.count("sentence-end") == 2
    # The first sentence is spoken as soon as it is complete, while text still arrives.
    first_end = rec.log.index("out:sentence-end")
    assert rec.log[:first_end].count("in:continue-task") == 2


async def test_streaming_flush_speaks_what_is_buffered() -> None:
    rec = Recorder()
    collect = Collect()
    async with fake_server(rec) as url:
        synth = tts_v2.SpeechSynthesizer(
            model="cosyvoice-v2",
            voice="default",
            format=tts_v2.AudioFormat.WAV_24000HZ_MONO_16BIT,
            callback=collect,
            url=url,
        )

        def stream() -> None:
            synth.streaming_call("No sentence end yet")
            synth.streaming_flush()
            synth.streaming_call("and more")
            synth.streaming_complete()

        await in_thread(stream)
    assert rec.received[2]["payload"]["input"] == {"flush": True}
    texts = [
        e["payload"]["output"]["original_text"]
        for e in collect.events
        if e["payload"]["output"]["type"] == "sentence-end"
    ]
    assert texts == ["No sentence end yet", "and more"]
    first_end = rec.log.index("out:sentence-end")
    # Spoken right after the flush (the second continue-task), before more text came.
    assert [e for e in rec.log[:first_end] if e.startswith("in:")] == [
        "in:run-task",
        "in:continue-task",
        "in:continue-task",
    ]
    assert collect.audio[:4] == b"RIFF"


async def test_sdk_handshake_and_messages_as_recorded() -> None:
    rec = Recorder()
    async with fake_server(rec) as url:
        synth = tts_v2.SpeechSynthesizer(
            model="cosyvoice-v2",
            voice="default",
            format=tts_v2.AudioFormat.OGG_OPUS_16KHZ_MONO_32KBPS,
            url=url,
        )
        await in_thread(lambda: synth.call("One sentence."))
    (headers,) = rec.headers
    assert rec.paths == [PATH]
    assert headers["authorization"] == "Bearer sk-test-key"
    assert headers["user-agent"].startswith("dashscope/")
    run_task = rec.received[0]
    assert run_task["header"]["streaming"] == "duplex"
    params = run_task["payload"]["parameters"]
    assert params["format"] == "opus"
    assert params["sample_rate"] == 16000
    assert params["bit_rate"] == 32  # kbit/s, from the AudioFormat enum
    assert params["text_type"] == "PlainText"
    finish = rec.received[-1]
    assert finish["payload"] == {"input": {}}


async def test_callback_mode_with_async_streaming_complete() -> None:
    rec = Recorder()
    collect = Collect()
    async with fake_server(rec) as url:
        synth = tts_v2.SpeechSynthesizer(
            model="cosyvoice-v2",
            voice="default",
            format=tts_v2.AudioFormat.PCM_16000HZ_MONO_16BIT,
            callback=collect,
            url=url,
        )

        def stream() -> None:
            synth.streaming_call("Callbacks get every event.")
            synth.async_streaming_complete()  # returns at once; a thread waits
            assert collect.completed.wait(10)

        await in_thread(stream)
    kinds = [e["payload"]["output"]["type"] for e in collect.events]
    assert kinds == ["sentence-begin", "sentence-synthesis", "sentence-end"]
    assert len(collect.audio) == rec.audio_bytes == int(16000 * TONE_S) * 2


async def test_task_failed_raises_with_our_code_and_message() -> None:
    rec = Recorder()
    async with fake_server(rec) as url:
        synth = tts_v2.SpeechSynthesizer(
            model="cosyvoice-v2", voice="nobody", format=tts_v2.AudioFormat.DEFAULT, url=url
        )
        with pytest.raises(Exception, match="unknown voice 'nobody'") as info:
            await in_thread(lambda: synth.call("Hi."))
    assert getattr(info.value, "name", None) == "InvalidParameter"
    assert rec.sent_events == ["task-failed"]


async def test_refused_key_is_a_clear_sdk_error() -> None:
    rec = Recorder(auth_error="API key not accepted")
    async with fake_server(rec) as url:
        synth = tts_v2.SpeechSynthesizer(
            model="cosyvoice-v2", voice="default", format=tts_v2.AudioFormat.DEFAULT, url=url
        )
        with pytest.raises(Exception, match="API key not accepted") as info:
            await in_thread(lambda: synth.call("Hi."))
    assert getattr(info.value, "name", None) == "InvalidApiKey"


async def test_failure_during_synthesis_reaches_the_sdk() -> None:
    rec = Recorder(fail_sentences=True)
    collect = Collect()
    async with fake_server(rec) as url:
        synth = tts_v2.SpeechSynthesizer(
            model="cosyvoice-v2",
            voice="default",
            format=tts_v2.AudioFormat.DEFAULT,
            callback=collect,
            url=url,
        )

        def stream() -> None:
            synth.streaming_call("This sentence fails. ")
            synth.streaming_complete()  # callback mode: the error goes to on_error

        await in_thread(stream)
    (error,) = collect.errors
    assert error["header"]["error_code"] == "InternalError"
    assert error["header"]["error_message"] == "engine broke"
    assert not collect.completed.is_set()


async def test_streaming_cancel_gets_task_finished() -> None:
    rec = Recorder()
    collect = Collect()
    async with fake_server(rec) as url:
        synth = tts_v2.SpeechSynthesizer(
            model="cosyvoice-v2",
            voice="default",
            format=tts_v2.AudioFormat.DEFAULT,
            callback=collect,
            url=url,
        )

        def stream() -> None:
            synth.streaming_call("Never finished, because")
            synth.streaming_cancel()

        await in_thread(stream)
    assert collect.completed.is_set()
    assert rec.received[-1]["payload"]["input"] == {"directive": "cancel"}
    assert rec.sent_events[-1] == "task-finished"
