"""Voices over the wire with the tiny checkpoint: register, use by id on both endpoints, restart."""

from __future__ import annotations

import base64
import io
import json
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import soundfile
import trio
from trio_websocket import open_websocket_url

from voxtrio.server._listener import ServerHandle
from voxtrio.speech._voxcpm_engine import VoxCPMEngine, VoxCPMOptions

from ..support import session, speak


def prompt_wav(seconds: float = 2.0, rate: int = 16000, seed: int = 0) -> bytes:
    """Speech-like test audio: noise in a syllable-rate envelope."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * rate)) / rate
    envelope = 0.5 + 0.5 * np.sin(2 * np.pi * 4 * t)
    samples = (0.2 * envelope * rng.standard_normal(t.size)).astype(np.float32)
    buffer = io.BytesIO()
    soundfile.write(buffer, samples, rate, format="WAV", subtype="PCM_16")
    return buffer.getvalue()


def register(voice_id: str, **fields: Any) -> dict[str, Any]:
    return {
        "type": "voice_register",
        "request_id": f"reg-{voice_id}",
        "voice_id": voice_id,
        "audio": base64.b64encode(prompt_wav()).decode(),
        "persist": True,
        **fields,
    }


@pytest.fixture
def voxcpm_server(start_server: Callable[..., Any], tiny_model_dir: Path) -> Callable[..., Any]:
    options = VoxCPMOptions(model=str(tiny_model_dir), device="cpu", warm_normalizer=False)

    async def start(**overrides: Any) -> ServerHandle:
        handle: ServerHandle = await start_server(
            partial(VoxCPMEngine.load, options), engine="voxcpm", **overrides
        )
        return handle

    return start


async def reply_to(url: str, message: dict[str, Any]) -> dict[str, Any]:
    """Send one voice_* message and return the reply naming its request id."""
    async with session(url) as s:
        await s.send(message)
        with trio.fail_after(60):
            while True:
                rid, _ = await s.receive_one()
                if rid == message["request_id"]:
                    return s.outcomes[rid].messages[-1]


async def test_register_list_and_speak_with_a_voice(
    voxcpm_server: Callable[..., Any], tmp_path: Path
) -> None:
    """A registered voice is listed and used by id; its audio differs from zero-shot."""
    handle = await voxcpm_server(voices_dir=str(tmp_path), allow_voice_upload=True)
    registered = await reply_to(handle.url, register("alice", mode="reference"))
    assert registered["type"] == "voice_registered"
    assert registered["duration"] == pytest.approx(2.0, abs=0.01)
    listed = await reply_to(handle.url, {"type": "voice_list", "request_id": "l"})
    assert [v["voice_id"] for v in listed["voices"]] == ["alice"]
    cloned = await speak(handle.url, text="Hello.", seed=1, voice_id="alice")
    plain = await speak(handle.url, text="Hello.", seed=1)
    assert cloned.terminal["type"] == "complete"
    assert cloned.audio != plain.audio
    again = await speak(handle.url, text="Hello.", seed=1, voice_id="alice")
    assert again.audio == cloned.audio


async def test_persisted_voice_survives_a_restart(
    voxcpm_server: Callable[..., Any], tmp_path: Path
) -> None:
    """A persisted voice is served again by a new server on the same directory."""
    first = await voxcpm_server(voices_dir=str(tmp_path), allow_voice_upload=True)
    await reply_to(first.url, register("bob", prompt_text="a test prompt", mode="continuation"))
    before = await speak(first.url, text="Hi.", seed=2, voice_id="bob")
    second = await voxcpm_server(voices_dir=str(tmp_path))
    listed = await reply_to(second.url, {"type": "voice_list", "request_id": "l"})
    assert [(v["voice_id"], v["persisted"]) for v in listed["voices"]] == [("bob", True)]
    after = await speak(second.url, text="Hi.", seed=2, voice_id="bob")
    assert after.audio == before.audio


async def test_dashscope_voice_maps_to_the_library(
    voxcpm_server: Callable[..., Any], tmp_path: Path
) -> None:
    """The DashScope `voice` parameter selects a registered voice."""
    handle = await voxcpm_server(voices_dir=str(tmp_path), allow_voice_upload=True)
    await reply_to(handle.url, register("carol", mode="reference"))
    native = await speak(handle.url, text="Hi.", seed=3, voice_id="carol")
    url = handle.url.replace("/tts", "/api-ws/v1/inference")
    head = {"action": "run-task", "task_id": "t", "streaming": "duplex"}
    run = {
        "header": head,
        "payload": {
            "model": "m",
            "task_group": "audio",
            "task": "tts",
            "function": "SpeechSynthesizer",
            "input": {},
            "parameters": {"voice": "carol", "format": "pcm", "sample_rate": 48000, "seed": 3},
        },
    }
    audio = b""
    async with open_websocket_url(url) as ws:
        await ws.send_message(json.dumps(run))
        cont = {**head, "action": "continue-task"}
        await ws.send_message(json.dumps({"header": cont, "payload": {"input": {"text": "Hi."}}}))
        fin = {**head, "action": "finish-task"}
        await ws.send_message(json.dumps({"header": fin, "payload": {"input": {}}}))
        with trio.fail_after(60):
            while True:
                message = await ws.get_message()
                if isinstance(message, bytes):
                    audio += message
                elif json.loads(message)["header"]["event"] in ("task-finished", "task-failed"):
                    assert json.loads(message)["header"]["event"] == "task-finished"
                    break
    assert audio == native.audio


async def test_upload_is_forbidden_unless_enabled(voxcpm_server: Callable[..., Any]) -> None:
    """Without --allow-voice-upload, voice_register is FORBIDDEN; voice_list still works."""
    handle = await voxcpm_server()
    refused = await reply_to(handle.url, register("dave"))
    assert refused["error"]["code"] == "FORBIDDEN"
    listed = await reply_to(handle.url, {"type": "voice_list", "request_id": "l"})
    assert listed["voices"] == []


@pytest.mark.parametrize(
    ("audio", "problem"),
    [
        (base64.b64encode(b"not audio at all" * 10).decode(), "audio"),
        (base64.b64encode(prompt_wav(seconds=0.4)).decode(), "audio"),
        ("%%%not base64%%%", "audio"),
    ],
)
async def test_bad_prompt_audio_is_invalid_params(
    voxcpm_server: Callable[..., Any], audio: str, problem: str
) -> None:
    """Garbage, too-short audio and bad base64 are INVALID_PARAMS naming the field."""
    handle = await voxcpm_server(allow_voice_upload=True)
    refused = await reply_to(handle.url, {**register("erin"), "audio": audio, "persist": False})
    assert refused["error"]["code"] == "INVALID_PARAMS"
    assert problem in refused["error"]["details"]


async def test_unknown_voice_id_is_invalid_params(voxcpm_server: Callable[..., Any]) -> None:
    """A voice_id nobody registered is refused before any generation."""
    handle = await voxcpm_server()
    outcome = await speak(handle.url, text="Hi.", voice_id="nobody")
    assert outcome.terminal["error"]["code"] == "INVALID_PARAMS"
    assert "params.voice_id" in outcome.terminal["error"]["details"]


async def test_prompt_wav_url_is_off_by_default(voxcpm_server: Callable[..., Any]) -> None:
    """prompt_wav_url is refused unless the operator allow-lists hosts."""
    handle = await voxcpm_server()
    outcome = await speak(
        handle.url, text="Hi.", prompt_wav_url="http://127.0.0.1:1/x.wav", prompt_text="x"
    )
    details = outcome.terminal["error"]["details"]
    assert "disabled" in details["params.prompt_wav_url"]


async def test_prompt_wav_url_from_an_allow_listed_host(
    voxcpm_server: Callable[..., Any], nursery: trio.Nursery
) -> None:
    """An allow-listed URL is fetched, decoded and used as the prompt."""
    wav = prompt_wav()

    async def serve_one(stream: trio.SocketStream) -> None:
        async with stream:
            await stream.receive_some(65536)
            head = f"HTTP/1.1 200 OK\r\nContent-Length: {len(wav)}\r\nConnection: close\r\n\r\n"
            await stream.send_all(head.encode() + wav)

    listeners = await nursery.start(partial(trio.serve_tcp, serve_one, 0, host="127.0.0.1"))
    port = listeners[0].socket.getsockname()[1]
    handle = await voxcpm_server(prompt_url_hosts="127.0.0.1", prompt_url_allow_private=True)
    url = f"http://127.0.0.1:{port}/prompt.wav"
    outcome = await speak(handle.url, text="Hi.", seed=5, prompt_wav_url=url, prompt_text="hello")
    assert outcome.terminal["type"] == "complete"
    plain = await speak(handle.url, text="Hi.", seed=5)
    assert outcome.audio != plain.audio


async def test_voice_description_is_applied(voxcpm_server: Callable[..., Any]) -> None:
    """voice_description changes the audio (the model reads "(description)text")."""
    handle = await voxcpm_server()
    designed = await speak(handle.url, text="Hi.", seed=6, voice_description="a calm voice")
    plain = await speak(handle.url, text="Hi.", seed=6)
    assert designed.terminal["type"] == "complete"
    assert designed.audio != plain.audio
