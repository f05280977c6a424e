"""A long text is spoken sentence by sentence on every API (issue 21 #2), tiny checkpoint.

The tiny checkpoint never stops on its own: each generation runs to voxcpm's cap for
its text (`expected_chunks`), so the audio's length tells one generation per sentence
from one generation for the whole text.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

import dashscope
import httpx
import pytest
import trio
from dashscope.audio import tts_v2

from voxtrio.protocol._dashscope import DashScopeTask, SpeakSentence
from voxtrio.protocol._sentences import split_sentences
from voxtrio.server._listener import ServerHandle
from voxtrio.speech._voxcpm_engine import VoxCPMEngine, VoxCPMOptions
from voxtrio.tools._tiny_model import expected_chunks

from ..protocol.test_dashscope import continue_task, finish_task, run_task
from ..support import session, speak

SENTENCES = ["First one.", "Then a second.", "And the third!"]
TEXT = " ".join(SENTENCES)
CHUNK_BYTES = 7680 * 2  # pcm16 at the model's 48 kHz


@pytest.fixture
async def tiny_server(start_server: Callable[..., Any], tiny_model_dir: Path) -> ServerHandle:
    options = VoxCPMOptions(model=str(tiny_model_dir), device="cpu", warm_normalizer=False)
    handle: ServerHandle = await start_server(partial(VoxCPMEngine.load, options), engine="voxcpm")
    return handle


def per_sentence_chunks(model_dir: Path, sentences: list[str]) -> int:
    return sum(expected_chunks(model_dir, s) for s in sentences)


async def test_native_text_is_spoken_one_sentence_at_a_time(
    tiny_server: ServerHandle, tiny_model_dir: Path
) -> None:
    """Three sentences, three generations: the chunks each sentence gets on its own."""
    outcome = await speak(tiny_server.url, text=TEXT, seed=3)
    result = outcome.terminal["result"]
    assert result["sentences"] == 3
    chunks = per_sentence_chunks(tiny_model_dir, SENTENCES)
    assert chunks != expected_chunks(tiny_model_dir, TEXT)  # the test can tell them apart
    assert result["chunks"] == chunks
    assert len(outcome.audio) == chunks * CHUNK_BYTES


async def test_first_audio_comes_before_the_second_sentence_starts(
    tiny_server: ServerHandle,
) -> None:
    """Audio flows as soon as the first sentence does, not after the whole text."""
    async with session(tiny_server.url) as s:
        await s.request("r", text=TEXT, max_len=2)
        await s.until_terminal("r")
        outcome = s.outcomes["r"]
    second = next(
        i
        for i, m in enumerate(outcome.messages)
        if m["type"] == "progress" and m["message"] == "sentence 1"
    )
    frames = ("frame1", "final")
    json_positions = [i for i, kind in enumerate(outcome.order) if kind not in frames]
    second_at = json_positions[second]
    assert "frame1" in outcome.order[:second_at]


async def test_one_seed_replays_a_long_request(tiny_server: ServerHandle) -> None:
    """The seed reported for a many-sentence request gives the same bytes again."""
    first = await speak(tiny_server.url, text=TEXT, max_len=2)
    seed = first.terminal["result"]["seed"]
    again = await speak(tiny_server.url, text=TEXT, max_len=2, seed=seed)
    assert first.audio == again.audio
    other = await speak(tiny_server.url, text=TEXT, max_len=2, seed=seed + 1)
    assert other.audio != first.audio


async def test_five_thousand_characters_without_a_break_are_spoken(
    tiny_server: ServerHandle,
) -> None:
    """The protocol's limit is reachable: no sentence end anywhere, cut at words."""
    text = ("word " * 1000)[:5000]
    outcome = await speak(tiny_server.url, text=text, max_len=1)
    result = outcome.terminal["result"]
    assert result["sentences"] == len(split_sentences(text)) == 17
    assert len(outcome.audio) == 17 * CHUNK_BYTES


async def test_openai_input_is_spoken_one_sentence_at_a_time(
    tiny_server: ServerHandle, tiny_model_dir: Path
) -> None:
    """POST /v1/audio/speech: the audio of three generations (24 kHz pcm: half the bytes)."""
    body = {"input": TEXT, "voice": "alloy", "response_format": "pcm"}

    def post() -> bytes:
        url = f"http://127.0.0.1:{tiny_server.port}/v1/audio/speech"
        response = httpx.post(url, json=body, timeout=120)
        response.raise_for_status()
        return response.content

    with trio.fail_after(180):
        audio = await trio.to_thread.run_sync(post)
    seconds = len(audio) / 2 / 24000
    expected = per_sentence_chunks(tiny_model_dir, SENTENCES) * 7680 / 48000
    assert seconds == pytest.approx(expected, abs=0.01)


async def test_dashscope_sdk_call_is_spoken_one_sentence_at_a_time(
    tiny_server: ServerHandle, tiny_model_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The DashScope SDK's call(text): one generation per sentence, same total."""
    monkeypatch.setattr(dashscope, "api_key", "sk-anything")
    url = tiny_server.url.replace("/tts", "/api-ws/v1/inference")
    synth = tts_v2.SpeechSynthesizer(
        model="cosyvoice-v2",
        voice="default",
        format=tts_v2.AudioFormat.PCM_48000HZ_MONO_16BIT,
        url=url,
    )
    with trio.fail_after(180):
        audio = await trio.to_thread.run_sync(lambda: bytes(synth.call(TEXT)))
    assert len(audio) == per_sentence_chunks(tiny_model_dir, SENTENCES) * CHUNK_BYTES


def test_dashscope_cuts_a_text_with_no_break_into_sentences() -> None:
    """5000 characters in one continue-task, no sentence end: 17 pieces of <= 300."""
    task = DashScopeTask()
    task.receive_text(run_task())
    actions = task.receive_text(continue_task("word " * 1000))
    actions += task.receive_text(finish_task())
    sentences = [a for a in actions if isinstance(a, SpeakSentence)]
    assert len(sentences) == 17
    assert max(len(s.text) for s in sentences) <= 300
