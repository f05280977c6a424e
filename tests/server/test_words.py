"""Word timestamps over real sockets on the tiny checkpoint: native, DashScope, OpenAI SSE.

Random weights say nothing about accuracy (docs/WORDS.md measures that on real
speech); these tests hold the plumbing to its contract: one message per sentence,
before that sentence's last audio, times on the request's audio timeline.
"""

from __future__ import annotations

import base64
import itertools
import json
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

import dashscope
import httpx
import pytest
import trio
from dashscope.audio import tts_v2
from trio_websocket import open_websocket_url

from voxtrio.server._listener import ServerHandle
from voxtrio.speech._voxcpm_engine import VoxCPMEngine, VoxCPMOptions
from voxtrio.tools._tiny_model import expected_chunks

from ..support import session, speak
from .test_dashscope_endpoint import (
    Collect,
    collect_task,
    continue_task,
    finish_task,
    run_task,
)

CHUNK_SECONDS = 7680 / 48000
TEXT = "Hello there. How are you today?"


@pytest.fixture
async def tiny_server(start_server: Callable[..., Any], tiny_model_dir: Path) -> ServerHandle:
    options = VoxCPMOptions(model=str(tiny_model_dir), device="cpu", warm_normalizer=False)
    handle: ServerHandle = await start_server(partial(VoxCPMEngine.load, options), engine="voxcpm")
    return handle


def assert_non_decreasing(times: list[float]) -> None:
    assert all(a <= b for a, b in itertools.pairwise(times)), times


async def test_native_words_come_per_sentence_before_its_last_frame(
    tiny_server: ServerHandle,
) -> None:
    """One `words` per sentence, right before the sentence's last chunk, on the request's clock."""
    outcome = await speak(tiny_server.url, text=TEXT, max_len=3, seed=5, word_timestamps=True)
    words = [m for m in outcome.messages if m["type"] == "words"]
    assert [m["sentence"] for m in words] == [0, 1]
    assert [[w["text"] for w in m["words"]] for m in words] == [
        ["Hello", "there."],
        ["How", "are", "you", "today?"],
    ]
    # Audio frames before each words message: all of the earlier sentences, and all
    # but the last of its own (3 chunks per sentence).
    positions = [i for i, kind in enumerate(outcome.order) if kind == "words"]
    frames_before = [outcome.order[:p].count("frame1") for p in positions]
    assert frames_before == [2, 5]
    times = [t for m in words for w in m["words"] for t in (w["start"], w["end"])]
    assert_non_decreasing(times)
    assert words[1]["words"][0]["start"] >= 3 * CHUNK_SECONDS  # after sentence 0's audio
    assert times[-1] <= outcome.terminal["result"]["duration"]
    assert all(isinstance(m["estimated"], bool) for m in words)


async def test_native_words_outside_english_are_estimated(tiny_server: ServerHandle) -> None:
    """No aligner covers Chinese: the times are an estimate, and say so."""
    outcome = await speak(tiny_server.url, text="你好世界。", max_len=2, word_timestamps=True)
    (words,) = [m for m in outcome.messages if m["type"] == "words"]
    assert words["estimated"] is True
    assert [w["text"] for w in words["words"]] == ["你", "好", "世", "界。"]
    assert_non_decreasing([t for w in words["words"] for t in (w["start"], w["end"])])


async def test_native_words_are_off_unless_asked(tiny_server: ServerHandle) -> None:
    """Without word_timestamps, no `words` message and nothing held back."""
    outcome = await speak(tiny_server.url, text=TEXT, max_len=2)
    assert "words" not in outcome.order


async def test_non_streaming_words_come_before_the_whole_audio(tiny_server: ServerHandle) -> None:
    """non_streaming: every sentence's words arrive before the one audio frame."""
    outcome = await speak(
        tiny_server.url, text=TEXT, max_len=2, mode="non_streaming", word_timestamps=True
    )
    assert outcome.order.count("words") == 2
    assert max(i for i, k in enumerate(outcome.order) if k == "words") < outcome.order.index(
        "frame2"
    )


async def test_dashscope_sentence_end_has_the_words(
    tiny_server: ServerHandle, tiny_model_dir: Path
) -> None:
    """word_timestamp_enabled: sentence-end's words index the sentence and sit inside it (ms)."""
    url = tiny_server.url.replace("/tts", "/api-ws/v1/inference")
    async with open_websocket_url(url) as ws:
        await ws.send_message(run_task("t", word_timestamp_enabled=True))
        await ws.send_message(continue_task("t", TEXT))
        await ws.send_message(finish_task("t"))
        events, _ = await collect_task(ws)
    ends = [
        e["payload"]["output"]["sentence"]
        for e in events
        if e["payload"].get("output", {}).get("type") == "sentence-end"
    ]
    assert [s["index"] for s in ends] == [0, 1]
    for sentence in ends:
        text = sentence["text"]
        assert [text[w["begin_index"] : w["end_index"]] for w in sentence["words"]] == [
            w["text"] for w in sentence["words"]
        ]
        for word in sentence["words"]:
            assert isinstance(word["begin_time"], int)
            assert sentence["begin_time"] <= word["begin_time"] <= word["end_time"]
            assert word["end_time"] <= sentence["end_time"]
    first = expected_chunks(tiny_model_dir, "Hello there.") * CHUNK_SECONDS * 1000
    assert ends[1]["words"][0]["begin_time"] >= round(first)


async def test_dashscope_words_stay_empty_unless_asked(tiny_server: ServerHandle) -> None:
    """The default task: `words: []` as before."""
    url = tiny_server.url.replace("/tts", "/api-ws/v1/inference")
    async with open_websocket_url(url) as ws:
        await ws.send_message(run_task("t"))
        await ws.send_message(continue_task("t", "Hi."))
        await ws.send_message(finish_task("t"))
        events, _ = await collect_task(ws)
    assert all(
        e["payload"]["output"]["sentence"]["words"] == []
        for e in events
        if "output" in e["payload"] and "sentence" in e["payload"]["output"]
    )


async def test_openai_sse_carries_word_events_before_each_sentence_ends(
    tiny_server: ServerHandle,
) -> None:
    """stream_format sse: a `voxtrio.speech.words` event per sentence, audio after each."""
    body = {"input": TEXT, "voice": "alloy", "response_format": "pcm", "stream_format": "sse"}

    def post() -> list[dict[str, Any]]:
        url = f"http://127.0.0.1:{tiny_server.port}/v1/audio/speech"
        response = httpx.post(url, json=body, timeout=120)
        response.raise_for_status()
        return [
            json.loads(line[len("data: ") :])
            for line in response.text.splitlines()
            if line.startswith("data: ")
        ]

    with trio.fail_after(180):
        events = await trio.to_thread.run_sync(post)
    kinds = [e["type"] for e in events]
    positions = [i for i, k in enumerate(kinds) if k == "voxtrio.speech.words"]
    assert [events[i]["sentence"] for i in positions] == [0, 1]
    # Each sentence's last audio piece follows its words.
    assert kinds[positions[0] + 1] == kinds[positions[1] + 1] == "speech.audio.delta"
    assert kinds[-1] == "speech.audio.done"
    seconds = sum(
        len(base64.b64decode(e["audio"])) for e in events if e["type"] == "speech.audio.delta"
    ) / (2 * 24000)
    times = [t for i in positions for w in events[i]["words"] for t in (w["start"], w["end"])]
    assert_non_decreasing(times)
    assert times[-1] <= seconds + 0.01


async def test_text_stream_words_follow_the_sentences_as_they_are_cut(
    tiny_server: ServerHandle,
) -> None:
    """text_stream_start's word_timestamps: a `words` per sentence cut from the deltas."""
    async with session(tiny_server.url) as s:
        await s.send(
            {
                "type": "text_stream_start",
                "request_id": "ts",
                "params": {"word_timestamps": True, "max_len": 2},
            }
        )
        for delta in ("Hello the", "re. How are", " you?"):
            await s.send({"type": "text_delta", "request_id": "ts", "text": delta})
        await s.send({"type": "text_stream_end", "request_id": "ts"})
        await s.until_terminal("ts")
        outcome = s.outcomes["ts"]
    words = [m for m in outcome.messages if m["type"] == "words"]
    assert [[w["text"] for w in m["words"]] for m in words] == [
        ["Hello", "there."],
        ["How", "are", "you?"],
    ]


async def test_dashscope_sdk_hands_the_words_to_its_callback(
    tiny_server: ServerHandle, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The official SDK, word_timestamp_enabled via additional_params: words in on_event."""
    monkeypatch.setattr(dashscope, "api_key", "sk-anything")
    callback = Collect()
    synth = tts_v2.SpeechSynthesizer(
        model="cosyvoice-v2",
        voice="default",
        format=tts_v2.AudioFormat.PCM_48000HZ_MONO_16BIT,
        url=tiny_server.url.replace("/tts", "/api-ws/v1/inference"),
        callback=callback,
        additional_params={"word_timestamp_enabled": True},
    )

    def run() -> None:
        synth.streaming_call("Hello there.")
        synth.streaming_complete()

    with trio.fail_after(120):
        await trio.to_thread.run_sync(run)
    assert callback.errors == []
    ends = [
        e["payload"]["output"]["sentence"]
        for e in callback.events
        if e["payload"]["output"].get("type") == "sentence-end"
    ]
    assert [[w["text"] for w in s["words"]] for s in ends] == [["Hello", "there."]]
