"""The Go relay of seed 002 (CosyVoiceWSManager) against a real server, byte for byte (issue 14).

The relay marshals its structs with Go's encoding/json: compact, in declaration order,
empty strings omitted but an empty `parameters` struct always present (zero values),
`input.text` always present. It sends run-task, continue-task and finish-task back to
back without waiting for task-started, with `Authorization: Bearer` and
`X-DashScope-DataInspection: enable`, and reads binary audio until task-finished.
"""

from __future__ import annotations

import io
import json
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

import attrs
import av
import numpy as np
import pytest
import trio
from trio_websocket import open_websocket_url

from voxtrio._app import run_server
from voxtrio._config import Settings
from voxtrio.ops._auth import KeyStore
from voxtrio.protocol._voice_rules import apply_voice_description
from voxtrio.server._listener import ServerHandle
from voxtrio.speech._voxcpm_engine import VoxCPMEngine, VoxCPMOptions
from voxtrio.tools._tiny_model import build_checkpoint, expected_chunks
from voxtrio.voices._aliases import ALIAS_FILE, builtin_catalog

from ..voices.test_voices_server import register, reply_to

KEY = "sk-relay-0123456789abcdef0123456789abcdef"
TASK_ID = "tts_1764853200123456789_a1b2c3d4"
TEXT = "Hi. Bye."
SENTENCES = ["Hi.", "Bye."]
GO_ZERO_PARAMETERS = (
    '{"text_type":"","voice":"","format":"","sample_rate":0,"volume":0,"rate":0,"pitch":0}'
)
# One LM step of the tiny checkpoints, in seconds of audio: VoxCPM2 7680 samples at
# 48 kHz (patch 4 x hop 1920), VoxCPM 1.x 1280 samples at 16 kHz (patch 2 x hop 640).
STEP_SECONDS = {"voxcpm2": 7680 / 48000, "voxcpm": 1280 / 16000}
RELAY_TIMEOUT = 30.0  # the relay gives up after 30 s


def relay_frames(voice: str, text: str, task_id: str = TASK_ID) -> list[str]:
    """The three text frames exactly as the relay's Go structs marshal."""
    run = (
        (
            '{"header":{"action":"run-task","task_id":"TASK","streaming":"duplex"},'
            '"payload":{"task_group":"audio","task":"tts","function":"SpeechSynthesizer",'
            '"model":"cosyvoice-v2","parameters":{"text_type":"PlainText","voice":"VOICE",'
            '"format":"mp3","sample_rate":22050,"volume":50,"rate":1,"pitch":1},'
            '"input":{"text":""}}}'
        )
        .replace("TASK", task_id)
        .replace("VOICE", voice)
    )
    head = '{"header":{"action":"%s","task_id":"' + task_id + '","streaming":"duplex"},'
    body = '"payload":{"parameters":' + GO_ZERO_PARAMETERS + ',"input":{"text":%s}}}'
    cont = (head % "continue-task") + (body % json.dumps(text))
    finish = (head % "finish-task") + (body % '""')
    return [run, cont, finish]


@attrs.define
class RelayResult:
    events: list[str] = attrs.Factory(list)
    audio: bytes = b""
    failure: str | None = None
    code: str | None = None


async def replay(url: str, voice: str, text: str = TEXT) -> RelayResult:
    """One relay task: the frames back to back, then audio until the task ends."""
    result = RelayResult()
    headers = [("Authorization", f"Bearer {KEY}"), ("X-DashScope-DataInspection", "enable")]
    async with open_websocket_url(url, extra_headers=headers) as ws:
        for frame in relay_frames(voice, text):
            await ws.send_message(frame)
        # The relay's own limit is 30 s; a loaded CI machine gets more.
        with trio.fail_after(RELAY_TIMEOUT * 4):
            while result.events[-1:] not in (["task-finished"], ["task-failed"]):
                message = await ws.get_message()
                if isinstance(message, bytes):
                    result.audio += message
                    continue
                header = json.loads(message)["header"]
                result.events.append(header["event"])
                result.failure = header.get("error_message")
                result.code = header.get("error_code")
    return result


def mp3_seconds(data: bytes) -> float:
    with av.open(io.BytesIO(data)) as container:
        assert container.streams.audio[0].sample_rate == 22050
        frames = [f.to_ndarray().reshape(-1) for f in container.decode(audio=0)]
    return len(np.concatenate(frames)) / 22050


def expected_seconds(model_dir: Path, arch: str, description: str | None = None) -> float:
    """Audio length for TEXT: the tiny model runs to voxcpm's per-sentence step cap."""
    steps = sum(
        expected_chunks(model_dir, apply_voice_description(s, description)) for s in SENTENCES
    )
    return steps * STEP_SECONDS[arch]


@pytest.fixture(scope="session")
def tiny_v1_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny random-weight VoxCPM 1.x checkpoint."""
    return build_checkpoint(tmp_path_factory.mktemp("models") / "tiny-voxcpm1", arch="voxcpm")


@pytest.fixture
def relay_server(nursery: trio.Nursery) -> Callable[..., Any]:
    """A keyed server on a tiny checkpoint: `await relay_server(model_dir, **settings)`."""

    async def start(model_dir: Path, **overrides: Any) -> str:
        options = VoxCPMOptions(model=str(model_dir), device="cpu", warm_normalizer=False)
        settings = Settings(**{"port": 0, "metrics_port": 0, "engine": "voxcpm", **overrides})
        handle: ServerHandle = await nursery.start(
            partial(
                run_server,
                settings,
                engine_factory=partial(VoxCPMEngine.load, options),
                keys=KeyStore([KEY]),
            )
        )
        return handle.url

    return start


def dashscope(url: str) -> str:
    return url.replace("/tts", "/api-ws/v1/inference")


@pytest.mark.parametrize("voice", ["longxiaochun_v2", "longsanshu", "loongstella_v2"])
async def test_catalog_voice_is_voice_design_on_voxcpm2(
    relay_server: Callable[..., Any], tiny_model_dir: Path, voice: str
) -> None:
    """A catalog voice speaks through its description: "(description)text" sets the length."""
    url = await relay_server(tiny_model_dir)
    result = await replay(dashscope(url), voice)
    assert result.events[0] == "task-started", result.failure
    assert result.events[-1] == "task-finished"
    description = builtin_catalog()[voice].description
    expected = expected_seconds(tiny_model_dir, "voxcpm2", description)
    # mp3 decoders keep LAME's priming samples: allow a frame or two.
    assert mp3_seconds(result.audio) == pytest.approx(expected, abs=0.08)


async def test_catalog_voice_is_the_default_voice_on_voxcpm1(
    relay_server: Callable[..., Any], tiny_v1_model_dir: Path
) -> None:
    """VoxCPM 1.x has no voice design: the catalog voice speaks the text alone."""
    url = await relay_server(tiny_v1_model_dir)
    result = await replay(dashscope(url), "longxiaochun_v2")
    assert result.events[-1] == "task-finished", result.failure
    expected = expected_seconds(tiny_v1_model_dir, "voxcpm")
    assert mp3_seconds(result.audio) == pytest.approx(expected, abs=0.08)


async def test_mapped_catalog_voice_speaks_with_the_cloned_voice(
    relay_server: Callable[..., Any], tiny_model_dir: Path, tmp_path: Path
) -> None:
    """An operator's alias maps a catalog id to a library voice: no description is added."""
    (tmp_path / ALIAS_FILE).write_text('[voices]\nlongnan_v2 = { voice = "alice" }\n')
    url = await relay_server(tiny_model_dir, voices_dir=str(tmp_path), allow_voice_upload=True)
    await reply_to(f"{url}?api_key={KEY}", register("alice", mode="reference"))
    result = await replay(dashscope(url), "longnan_v2")
    assert result.events[-1] == "task-finished", result.failure
    expected = expected_seconds(tiny_model_dir, "voxcpm2")
    assert mp3_seconds(result.audio) == pytest.approx(expected, abs=0.08)


async def test_ssml_through_the_relay_path(
    relay_server: Callable[..., Any], tiny_model_dir: Path
) -> None:
    """The relay sends <speak> as PlainText: parsed, the break becomes silence."""
    url = await relay_server(tiny_model_dir)
    ssml = '<speak>Hi.<break time="500ms"/>Bye.</speak>'
    result = await replay(dashscope(url), "longxiaochun_v2", ssml)
    assert result.events[-1] == "task-finished", result.failure
    description = builtin_catalog()["longxiaochun_v2"].description
    expected = expected_seconds(tiny_model_dir, "voxcpm2", description) + 0.5
    assert mp3_seconds(result.audio) == pytest.approx(expected, abs=0.08)


async def test_unknown_voice_fails_naming_where_voices_come_from(
    relay_server: Callable[..., Any], tiny_model_dir: Path
) -> None:
    """A name in neither library nor alias table: one task-failed InvalidParameter."""
    url = await relay_server(tiny_model_dir)
    result = await replay(dashscope(url), "longnobody_v9")
    assert result.events == ["task-failed"]
    assert result.code == "InvalidParameter"
    assert result.failure is not None
    assert "unknown voice 'longnobody_v9'" in result.failure
    assert "alias table" in result.failure
    assert "voice library" in result.failure
