"""Text the model cannot take is refused before any audio (issue 15 #9), or cut (issue 21 #2).

The tiny checkpoint has VoxCPM2's 8192-token context; a copy with a 96-token context
shows the cap on steps and the DashScope endpoint, whose sentences are short.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from trio_websocket import open_websocket_url

from voxtrio.server._listener import ServerHandle
from voxtrio.speech._engine import SynthesisSpec, TextTooLong
from voxtrio.speech._voxcpm_engine import VoxCPMEngine, VoxCPMOptions
from voxtrio.tools._tiny_model import expected_chunks

from ..server.test_dashscope_endpoint import collect_task, continue_task, finish_task, run_task
from ..support import speak

# 5000 characters ("é" decomposed), 7500 tokens: in range, too long for the model.
MARKS = "e\u0301" * 2500
SMALL_CONTEXT = 96


def load(model_dir: Path) -> VoxCPMEngine:
    return VoxCPMEngine.load(
        VoxCPMOptions(model=str(model_dir), device="cpu", warm_normalizer=False)
    )


@pytest.fixture(scope="module")
def engine(tiny_model_dir: Path) -> VoxCPMEngine:
    return load(tiny_model_dir)


@pytest.fixture(scope="module")
def small_context_dir(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny checkpoint with a 96-token context (voxcpm sizes its KV cache by it)."""
    target = tmp_path_factory.mktemp("models") / "small-context"
    shutil.copytree(tiny_model_dir, target)
    config = json.loads((target / "config.json").read_text())
    config["max_length"] = SMALL_CONTEXT
    (target / "config.json").write_text(json.dumps(config))
    return target


def generate(engine: VoxCPMEngine, spec: SynthesisSpec) -> tuple[list[np.ndarray], list[int]]:
    steps: list[int] = []
    return list(engine.generate(spec, steps.append)), steps


def test_text_past_half_the_context_is_refused_before_any_step(engine: VoxCPMEngine) -> None:
    """7501 tokens and the audio-start token: TextTooLong naming the limit, no audio."""
    with pytest.raises(TextTooLong, match=r"7502 tokens .*at most 4096: half of .*8192"):
        generate(engine, SynthesisSpec(text=MARKS, max_len=2))


def test_the_limit_counts_tokens_after_normalisation(engine: VoxCPMEngine) -> None:
    """1000 digits fit as digits, not as the words the normaliser makes of them."""
    digits = "7" * 1000
    chunks, _ = generate(engine, SynthesisSpec(text=digits, max_len=1))
    assert len(chunks) == 1
    with pytest.raises(TextTooLong, match="after normalisation"):
        generate(engine, SynthesisSpec(text=digits, normalize=True, max_len=1))


def test_the_engine_is_usable_after_a_refusal(engine: VoxCPMEngine) -> None:
    """A refused text leaves nothing behind: the next generation runs."""
    with pytest.raises(TextTooLong):
        generate(engine, SynthesisSpec(text=MARKS, max_len=2))
    chunks, steps = generate(engine, SynthesisSpec(text="Hello.", max_len=3))
    assert (len(chunks), steps) == (3, [1, 2, 3])


def test_steps_stop_where_the_context_ends(small_context_dir: Path) -> None:
    """A never-stopping model ends at the context's end instead of 'KV cache is full'."""
    engine = load(small_context_dir)
    text = "Hello there, this is a longer sentence."
    tokens = len(engine.tts_model.text_tokenizer(text))
    spec = SynthesisSpec(text=text, max_len=500)
    chunks, _ = generate(engine, spec)
    room = SMALL_CONTEXT - tokens - 1  # less than voxcpm's own cap, tokens * 6 + 10
    assert len(chunks) == engine.max_steps(spec) == room < expected_chunks(small_context_dir, text)


async def test_native_text_too_long_for_the_model_in_one_piece_is_spoken_in_pieces(
    start_server: Callable[..., Any], tiny_model_dir: Path
) -> None:
    """5000 characters with no break (7500 tokens in one piece) are cut and all spoken."""
    options = VoxCPMOptions(model=str(tiny_model_dir), device="cpu", warm_normalizer=False)
    handle: ServerHandle = await start_server(partial(VoxCPMEngine.load, options), engine="voxcpm")
    outcome = await speak(handle.url, text=MARKS, max_len=2)
    result = outcome.terminal["result"]
    assert result["sentences"] == 17  # 300 characters at a time, never mid-character
    assert result["chunks"] == 17 * 2
    assert len(outcome.audio) == 17 * 2 * 7680 * 2


async def test_dashscope_sentence_too_long_for_the_model_is_invalid_parameter(
    start_server: Callable[..., Any], small_context_dir: Path
) -> None:
    """On the DashScope endpoint: task-failed InvalidParameter, then the next task runs."""
    options = VoxCPMOptions(model=str(small_context_dir), device="cpu", warm_normalizer=False)
    handle: ServerHandle = await start_server(partial(VoxCPMEngine.load, options), engine="voxcpm")
    url = handle.url.replace("/tts", "/api-ws/v1/inference")
    async with open_websocket_url(url) as ws:
        await ws.send_message(run_task("t1"))
        await ws.send_message(continue_task("t1", "A sentence " + "far " * 20 + "too long."))
        await ws.send_message(finish_task("t1"))
        events, audio = await collect_task(ws)
        failed = events[-1]["header"]
        assert (failed["event"], failed["error_code"]) == ("task-failed", "InvalidParameter")
        assert f"at most {SMALL_CONTEXT // 2}" in failed["error_message"]
        assert audio == b""
        await ws.send_message(run_task("t2"))
        await ws.send_message(continue_task("t2", "Short."))
        await ws.send_message(finish_task("t2"))
        events, audio = await collect_task(ws)
    assert events[-1]["header"]["event"] == "task-finished"
    assert audio
