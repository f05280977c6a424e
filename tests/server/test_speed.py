"""`speed` over real sockets: native protocol, OpenAI route and DashScope `rate`.

The synthetic engine speaks a 0.3-amplitude tone of 110 + seed % 880 Hz, 7680 samples
at 48 kHz per 4 characters, so the expected length and pitch are known exactly.
"""

from __future__ import annotations

import json
import math
import threading
from collections.abc import Callable
from typing import Any

import numpy as np
import openai
import pytest
import trio
from trio_websocket import open_websocket_url

from voxtrio.audio._tsm import TempoStretch
from voxtrio.server._listener import ServerHandle

from ..support import session, speak

TEXT = "Forty characters of text and no break ok"  # one sentence, 10 chunks
MODEL_SAMPLES = math.ceil(len(TEXT) / 4) * 7680
SEED, HZ = 330, 440.0  # 110 + 330


def pcm(data: bytes) -> np.ndarray:
    return np.frombuffer(data, "<i2").astype(np.float64)


def fft_hz(y: np.ndarray, rate: int) -> float:
    """Peak of a zero-padded Hann-windowed FFT of the middle half, parabolically refined."""
    seg = y[y.size // 4 : 3 * y.size // 4]
    spectrum = np.abs(np.fft.rfft(seg * np.hanning(seg.size), 4 * seg.size))
    k = int(np.argmax(spectrum))
    a, b, c = np.log(spectrum[k - 1 : k + 2])
    return float((k + 0.5 * (a - c) / (a - 2 * b + c)) * rate / (4 * seg.size))


def zero_crossing_hz(y: np.ndarray, rate: int) -> float:
    seg = y[y.size // 4 : 3 * y.size // 4]
    up = np.flatnonzero((seg[:-1] < 0) & (seg[1:] >= 0))
    exact = up + seg[up] / (seg[up] - seg[up + 1])
    return float((exact.size - 1) * rate / (exact[-1] - exact[0]))


@pytest.mark.parametrize("speed", [0.25, 0.5, 1.5, 2.0, 4.0])
async def test_native_speed_scales_duration_keeps_pitch(
    synthetic_server: ServerHandle, speed: float
) -> None:
    """pcm16 at `speed`: round(samples / speed) long, the same 440 Hz by FFT and crossings."""
    outcome = await speak(synthetic_server.url, text=TEXT, seed=SEED, speed=speed)
    result = outcome.terminal["result"]
    y = pcm(outcome.audio)
    assert y.size == result["samples"] == round(MODEL_SAMPLES / speed)
    assert result["duration"] == pytest.approx(MODEL_SAMPLES / 48000 / speed, rel=0.02)
    assert fft_hz(y, 48000) == pytest.approx(HZ, rel=0.01)
    assert zero_crossing_hz(y, 48000) == pytest.approx(HZ, rel=0.01)


@pytest.mark.parametrize("speed", [0.5, 2.0])
async def test_native_frames_join_without_clicks(
    synthetic_server: ServerHandle, speed: float
) -> None:
    """At every frame seam the sample-to-sample step is no larger than the tone's own."""
    plain = await speak(synthetic_server.url, text=TEXT, seed=SEED)
    own = np.abs(np.diff(pcm(plain.audio))).max()
    outcome = await speak(synthetic_server.url, text=TEXT, seed=SEED, speed=speed)
    sizes = [len(f.payload) // 2 for f in outcome.frames if f.payload]
    y = pcm(outcome.audio)
    seams = np.cumsum(sizes)[:-1]
    assert seams.size >= 5
    assert np.abs(y[seams] - y[seams - 1]).max() <= own + 1  # +1: int16 rounding


async def test_text_stream_takes_speed(synthetic_server: ServerHandle) -> None:
    """text_stream_start's params.speed applies to the text streamed in."""
    async with session(synthetic_server.url) as s:
        await s.send({"type": "text_stream_start", "request_id": "t", "params": {"speed": 2.0}})
        await s.send({"type": "text_delta", "request_id": "t", "text": TEXT})
        await s.send({"type": "text_stream_end", "request_id": "t"})
        await s.until_terminal("t")
    assert s.outcomes["t"].terminal["result"]["samples"] == MODEL_SAMPLES // 2


@pytest.mark.parametrize("speed", [0.2, 4.01, "fast", None])
async def test_native_speed_out_of_range_is_a_field_error(
    synthetic_server: ServerHandle, speed: object
) -> None:
    """Outside 0.25-4.0, or not a number: INVALID_PARAMS naming params.speed."""
    async with session(synthetic_server.url) as s:
        await s.request("x", text="hi", speed=speed)
        await s.until_terminal("x")
    error = s.outcomes["x"].terminal["error"]
    assert error["code"] == "INVALID_PARAMS"
    assert "params.speed" in error["details"]


async def test_stretching_runs_off_the_event_loop(
    synthetic_server: ServerHandle, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Time-scale work runs on the replica thread with the encoder, never on Trio's."""
    threads: set[threading.Thread] = set()
    process = TempoStretch.process

    def recording(self: TempoStretch, chunk: np.ndarray) -> np.ndarray:
        threads.add(threading.current_thread())
        return process(self, chunk)

    monkeypatch.setattr(TempoStretch, "process", recording)
    await speak(synthetic_server.url, text=TEXT, seed=SEED, speed=1.5, format="mp3")
    assert threads
    assert threading.main_thread() not in threads


# ---------------------------------------------------------------- OpenAI


@pytest.mark.parametrize("speed", [0.5, 2.0])
async def test_openai_sdk_speed(synthetic_server: ServerHandle, speed: float) -> None:
    """The OpenAI SDK's `speed` (LiveKit always sends it) scales the length by 1/speed.

    (The route takes no seed, so the tone's pitch is random here; the native tests
    check pitch through the same output path.)"""

    def fetch() -> bytes:
        with (
            openai.OpenAI(
                base_url=f"http://127.0.0.1:{synthetic_server.port}/v1", api_key="unused"
            ) as client,
            client.audio.speech.with_streaming_response.create(
                model="tts-1", voice="alloy", input=TEXT, response_format="pcm", speed=speed
            ) as response,
        ):
            return b"".join(response.iter_bytes())

    y = pcm(await trio.to_thread.run_sync(fetch))
    assert y.size == pytest.approx(MODEL_SAMPLES / 2 / speed, abs=2)  # 24 kHz


async def test_openai_speed_out_of_range_is_400(synthetic_server: ServerHandle) -> None:
    """speed 5 is a 400 naming the field, before any audio."""

    def post() -> None:
        with openai.OpenAI(
            base_url=f"http://127.0.0.1:{synthetic_server.port}/v1", api_key="unused"
        ) as client:
            client.audio.speech.create(model="tts-1", voice="alloy", input="hi", speed=5.0)

    with pytest.raises(openai.BadRequestError, match="speed"):
        await trio.to_thread.run_sync(post)


# ---------------------------------------------------------------- DashScope


def run_task(task_id: str, **parameters: Any) -> str:
    params = {"voice": "default", "format": "pcm", "sample_rate": 48000, **parameters}
    header = {"action": "run-task", "task_id": task_id, "streaming": "duplex"}
    payload = {
        "model": "cosyvoice-v2",
        "task_group": "audio",
        "task": "tts",
        "function": "SpeechSynthesizer",
        "input": {},
        "parameters": params,
    }
    return json.dumps({"header": header, "payload": payload})


def task_message(action: str, task_id: str, text: str | None = None) -> str:
    payload = {"input": {"text": text} if text else {}}
    header = {"action": action, "task_id": task_id, "streaming": "duplex"}
    return json.dumps({"header": header, "payload": payload})


async def dashscope_task(url: str, text: str, **parameters: Any) -> tuple[list[Any], bytes]:
    """One run-task / continue-task / finish-task; the events and the audio."""
    events: list[Any] = []
    audio = b""
    async with open_websocket_url(url.replace("/tts", "/api-ws/v1/inference")) as ws:
        await ws.send_message(run_task("t", **parameters))
        await ws.send_message(task_message("continue-task", "t", text))
        await ws.send_message(task_message("finish-task", "t"))
        with trio.fail_after(30):
            while not events or events[-1]["header"]["event"] not in (
                "task-finished",
                "task-failed",
            ):
                message = await ws.get_message()
                if isinstance(message, bytes):
                    audio += message
                else:
                    events.append(json.loads(message))
    return events, audio


async def test_dashscope_rate_without_the_gpl_extra(
    start_server: Callable[..., Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    """rate 2.0 halves the audio and keeps its pitch with Rubber Band absent."""
    import voxtrio.server._listener

    monkeypatch.setattr(voxtrio.server._listener, "dsp_available", lambda: False)
    handle: ServerHandle = await start_server()
    events, audio = await dashscope_task(handle.url, TEXT, rate=2.0, seed=SEED)
    assert events[-1]["header"]["event"] == "task-finished"
    y = pcm(audio)
    assert y.size == MODEL_SAMPLES // 2
    assert fft_hz(y, 48000) == pytest.approx(HZ, rel=0.01)
    ends = [
        e["payload"]["output"]["sentence"]
        for e in events
        if e["header"]["event"] == "result-generated"
        and e["payload"]["output"]["type"] == "sentence-end"
    ]
    # Sentence times are output times: the stretched length, in ms.
    assert ends[-1]["end_time"] == pytest.approx(MODEL_SAMPLES / 48 / 2, abs=1)
