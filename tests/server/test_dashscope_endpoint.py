"""The DashScope endpoint of a real server: the official SDK and raw clients, real voxcpm."""

from __future__ import annotations

import importlib.util
import io
import json
import threading
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

import av
import numpy as np
import pytest
import soundfile
import trio
from trio_websocket import open_websocket_url

from voxtrio.server._listener import ServerHandle
from voxtrio.speech._synthetic import SyntheticEngine
from voxtrio.speech._voxcpm_engine import VoxCPMEngine, VoxCPMOptions
from voxtrio.tools._tiny_model import expected_chunks

dashscope = pytest.importorskip("dashscope")
tts_v2 = pytest.importorskip("dashscope.audio.tts_v2")

FORMATS = {
    "pcm": (tts_v2.AudioFormat.PCM_16000HZ_MONO_16BIT, 16000),
    "wav": (tts_v2.AudioFormat.WAV_24000HZ_MONO_16BIT, 24000),
    "mp3": (tts_v2.AudioFormat.MP3_22050HZ_MONO_256KBPS, 22050),
    "opus": (tts_v2.AudioFormat.OGG_OPUS_48KHZ_MONO_32KBPS, 48000),
}
SENTENCES = ["Hi.", "Bye."]


@pytest.fixture(autouse=True)
def _api_key(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(dashscope, "api_key", "sk-anything")  # the SDK insists on one


@pytest.fixture
async def tiny_server(start_server: Callable[..., Any], tiny_model_dir: Path) -> ServerHandle:
    options = VoxCPMOptions(model=str(tiny_model_dir), device="cpu", warm_normalizer=False)
    handle: ServerHandle = await start_server(partial(VoxCPMEngine.load, options), engine="voxcpm")
    return handle


def dashscope_url(handle: ServerHandle) -> str:
    return handle.url.replace("/tts", "/api-ws/v1/inference")


def decode(fmt: str, data: bytes, rate: int) -> np.ndarray:
    if fmt == "pcm":
        return np.frombuffer(data, "<i2").astype(np.float32) / 32768
    if fmt == "mp3":
        with av.open(io.BytesIO(data)) as container:
            return np.concatenate([f.to_ndarray().reshape(-1) for f in container.decode(audio=0)])
    samples, decoded_rate = soundfile.read(io.BytesIO(data), dtype="float32")
    assert decoded_rate == rate
    return samples


def expected_seconds(model_dir: Path) -> float:
    return sum(expected_chunks(model_dir, s) for s in SENTENCES) * 7680 / 48000


class Collect(tts_v2.ResultCallback):  # type: ignore[misc]
    def __init__(self) -> None:
        self.events: list[dict[str, Any]] = []
        self.chunks: list[bytes] = []
        self.errors: list[str] = []
        self.completed = threading.Event()

    def on_event(self, message: str) -> None:
        self.events.append(json.loads(message))

    def on_data(self, data: bytes) -> None:
        self.chunks.append(bytes(data))

    def on_error(self, message: str) -> None:
        self.errors.append(message)

    def on_complete(self) -> None:
        self.completed.set()


async def in_thread(fn: Callable[[], Any]) -> Any:
    with trio.fail_after(120):
        return await trio.to_thread.run_sync(fn)


@pytest.mark.parametrize("fmt", list(FORMATS))
async def test_sdk_call_gets_voxcpm_audio(
    tiny_server: ServerHandle, tiny_model_dir: Path, fmt: str
) -> None:
    """SpeechSynthesizer.call() against voxtrio returns decodable audio of the right length."""
    audio_format, rate = FORMATS[fmt]
    synth = tts_v2.SpeechSynthesizer(
        model="cosyvoice-v2", voice="default", format=audio_format, url=dashscope_url(tiny_server)
    )
    audio = await in_thread(lambda: synth.call(" ".join(SENTENCES)))
    samples = decode(fmt, audio, rate)
    # mp3 decoders keep LAME's priming samples: allow a frame or two.
    assert len(samples) / rate == pytest.approx(expected_seconds(tiny_model_dir), abs=0.08)


@pytest.mark.parametrize("fmt", list(FORMATS))
async def test_sdk_streaming_call_and_complete(
    tiny_server: ServerHandle, tiny_model_dir: Path, fmt: str
) -> None:
    """streaming_call() pieces + streaming_complete(): sentences in order, all the audio."""
    audio_format, rate = FORMATS[fmt]
    collect = Collect()
    synth = tts_v2.SpeechSynthesizer(
        model="cosyvoice-v2",
        voice="default",
        format=audio_format,
        callback=collect,
        url=dashscope_url(tiny_server),
    )

    def stream() -> None:
        for piece in ["H", "i. B", "ye."]:
            synth.streaming_call(piece)
        synth.streaming_complete()

    await in_thread(stream)
    assert collect.completed.is_set()
    assert collect.errors == []
    ends = [e for e in collect.events if e["payload"]["output"]["type"] == "sentence-end"]
    assert [e["payload"]["output"]["original_text"] for e in ends] == SENTENCES
    samples = decode(fmt, b"".join(collect.chunks), rate)
    assert len(samples) / rate == pytest.approx(expected_seconds(tiny_model_dir), abs=0.08)
    first = ends[0]["payload"]["output"]["sentence"]
    assert first["end_time"] == pytest.approx(
        expected_chunks(tiny_model_dir, SENTENCES[0]) * 160, abs=1
    )


async def test_pitch_without_dsp_is_task_failed(
    start_server: Callable[..., Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Without the optional Rubber Band extra, pitch != 1.0 is a task-failed, never ignored."""
    import voxtrio.server._listener

    monkeypatch.setattr(voxtrio.server._listener, "dsp_available", lambda: False)
    handle = await start_server()
    synth = tts_v2.SpeechSynthesizer(
        model="cosyvoice-v2",
        voice="default",
        format=tts_v2.AudioFormat.WAV_16000HZ_MONO_16BIT,
        pitch_rate=1.5,
        url=dashscope_url(handle),
    )
    with pytest.raises(Exception, match="pitch"):
        await in_thread(lambda: synth.call("Hello."))


# A skipif mark, not importorskip: a skip raised inside a trio test loses its reason.
@pytest.mark.skipif(
    importlib.util.find_spec("pylibrb") is None,
    reason="rate/pitch need the optional GPL extra: pip install voxtrio[dsp]",
)
async def test_rate_with_dsp_changes_the_duration(synthetic_server: ServerHandle) -> None:
    """With the optional Rubber Band DSP installed, rate 2.0 halves the audio."""
    lengths = {}
    for rate in (1.0, 2.0):
        async with open_websocket_url(dashscope_url(synthetic_server)) as ws:
            await ws.send_message(run_task("t", rate=rate))
            await ws.send_message(continue_task("t", "Twelve chars then more."))
            await ws.send_message(finish_task("t"))
            _, audio = await collect_task(ws)
        lengths[rate] = len(audio) // 2
    assert lengths[2.0] == pytest.approx(lengths[1.0] / 2, rel=0.01)


# ---------------------------------------------------------------- raw protocol


def run_task(task_id: str, **parameters: Any) -> str:
    params = {"voice": "default", "format": "pcm", "sample_rate": 48000, **parameters}
    return json.dumps(
        {
            "header": {"action": "run-task", "task_id": task_id, "streaming": "duplex"},
            "payload": {
                "model": "cosyvoice-v2",
                "task_group": "audio",
                "task": "tts",
                "function": "SpeechSynthesizer",
                "input": {},
                "parameters": params,
            },
        }
    )


def continue_task(task_id: str, text: str) -> str:
    return json.dumps(
        {
            "header": {"action": "continue-task", "task_id": task_id, "streaming": "duplex"},
            "payload": {"input": {"text": text}},
        }
    )


def finish_task(task_id: str, directive: str | None = None) -> str:
    data = {"directive": directive} if directive else {}
    return json.dumps(
        {
            "header": {"action": "finish-task", "task_id": task_id, "streaming": "duplex"},
            "payload": {"input": data},
        }
    )


async def collect_task(ws: Any) -> tuple[list[dict[str, Any]], bytes]:
    events: list[dict[str, Any]] = []
    audio = b""
    with trio.fail_after(30):
        while True:
            message = await ws.get_message()
            if isinstance(message, bytes):
                audio += message
                continue
            event = json.loads(message)
            events.append(event)
            if event["header"]["event"] in ("task-finished", "task-failed"):
                return events, audio


async def test_ssml_break_is_real_silence(synthetic_server: ServerHandle) -> None:
    """<break time="500ms"/> puts half a second of zeros between two sentences."""
    ssml = '<speak><s>Four chars</s><break time="500ms"/><s>Four more</s></speak>'
    async with open_websocket_url(dashscope_url(synthetic_server)) as ws:
        await ws.send_message(run_task("t1", enable_ssml=True))
        await ws.send_message(continue_task("t1", ssml))
        await ws.send_message(finish_task("t1"))
        events, audio = await collect_task(ws)
    assert events[-1]["header"]["event"] == "task-finished"
    samples = np.frombuffer(audio, "<i2")
    speech = 3 * 7680  # "Four chars" and "Four more": 10 and 9 chars -> 3 steps each
    assert len(samples) == 2 * speech + 24000
    assert not samples[speech : speech + 24000].any()
    assert samples[:speech].any()
    assert samples[speech + 24000 :].any()


async def test_unknown_ssml_tag_fails_the_task_cleanly(synthetic_server: ServerHandle) -> None:
    """An unsupported tag is task-failed naming it; the connection takes the next task."""
    async with open_websocket_url(dashscope_url(synthetic_server)) as ws:
        await ws.send_message(run_task("t1", enable_ssml=True))
        await ws.send_message(continue_task("t1", "<speak><emphasis>no</emphasis></speak>"))
        events, _ = await collect_task(ws)
        failed = events[-1]["header"]
        assert (failed["event"], failed["error_code"]) == ("task-failed", "InvalidParameter")
        assert "emphasis" in failed["error_message"]
        await ws.send_message(run_task("t2"))
        await ws.send_message(continue_task("t2", "Still works."))
        await ws.send_message(finish_task("t2"))
        events, audio = await collect_task(ws)
    assert events[-1]["header"]["event"] == "task-finished"
    assert len(audio) == 2 * 3 * 7680


async def test_cancel_directive_stops_at_once(start_server: Callable[..., Any]) -> None:
    """finish-task with directive cancel ends the task with task-finished and frees the replica."""
    handle = await start_server(lambda: SyntheticEngine(rtf=0.5))
    async with open_websocket_url(dashscope_url(handle)) as ws:
        await ws.send_message(run_task("t1"))
        await ws.send_message(continue_task("t1", "A long sentence that takes a while. " * 3))
        with trio.fail_after(10):
            while not isinstance(await ws.get_message(), bytes):
                pass
        await ws.send_message(finish_task("t1", "cancel"))
        events, _ = await collect_task(ws)
    assert events[-1]["header"]["event"] == "task-finished"
    assert handle.server.pool.slots_busy == 0


async def test_a_sentence_is_spoken_while_text_still_arrives(
    synthetic_server: ServerHandle,
) -> None:
    """The first sentence's audio comes before finish-task is even sent."""
    async with open_websocket_url(dashscope_url(synthetic_server)) as ws:
        await ws.send_message(run_task("t1"))
        await ws.send_message(continue_task("t1", "First one is complete. Second is"))
        early: list[dict[str, Any]] = []
        with trio.fail_after(10):
            while not isinstance(message := await ws.get_message(), bytes):
                early.append(json.loads(message))
        await ws.send_message(continue_task("t1", " not yet."))
        await ws.send_message(finish_task("t1"))
        events, _ = await collect_task(ws)
    kinds = [e["payload"].get("output", {}).get("type") for e in early + events]
    assert kinds.count("sentence-end") == 2
    assert "sentence-begin" in [e["payload"].get("output", {}).get("type") for e in early]
    assert events[-1]["header"]["event"] == "task-finished"


async def test_volume_scales_the_audio(synthetic_server: ServerHandle) -> None:
    """volume 25 halves the amplitude of volume 50."""
    peaks = {}
    for volume in (25, 50):
        async with open_websocket_url(dashscope_url(synthetic_server)) as ws:
            await ws.send_message(run_task("t", volume=volume, seed=1))
            await ws.send_message(continue_task("t", "Same text."))
            await ws.send_message(finish_task("t"))
            _, audio = await collect_task(ws)
        peaks[volume] = np.abs(np.frombuffer(audio, "<i2")).max()
    assert peaks[25] == pytest.approx(peaks[50] / 2, abs=2)
