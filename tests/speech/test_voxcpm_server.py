"""The whole path: a real server on 127.0.0.1 serving the tiny checkpoint through real voxcpm."""

from __future__ import annotations

from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import trio

from voxtrio.protocol._connection_state import DENOISE_UNAVAILABLE
from voxtrio.protocol._frames import FrameType
from voxtrio.server._listener import ServerHandle
from voxtrio.speech._voxcpm_engine import VoxCPMEngine, VoxCPMOptions
from voxtrio.tools._tiny_model import expected_chunks

from ..support import session, speak

TEXT = "Speech from the real generator."


@pytest.fixture
async def voxcpm_server(
    start_server: Callable[..., Any], tiny_model_dir: Path
) -> Callable[..., Any]:
    """Start a server on the tiny checkpoint: `handle = await voxcpm_server(workers=2)`."""
    options = VoxCPMOptions(model=str(tiny_model_dir), device="cpu", warm_normalizer=False)

    async def start(**overrides: Any) -> ServerHandle:
        handle: ServerHandle = await start_server(
            partial(VoxCPMEngine.load, options), engine="voxcpm", **overrides
        )
        return handle

    return start


async def test_streaming_over_the_wire(
    voxcpm_server: Callable[..., Any], tiny_model_dir: Path
) -> None:
    """Streaming: voxcpm's cap of 7680-sample chunks at 48 kHz, numbered, then final + complete."""
    handle = await voxcpm_server()
    outcome = await speak(handle.url, text=TEXT, seed=1)
    expected = expected_chunks(tiny_model_dir, TEXT)
    chunks = [f for f in outcome.frames if f.payload]
    assert [f.metadata["sequence"] for f in chunks] == list(range(expected))
    assert {len(f.payload) for f in chunks} == {2 * 7680}
    result = outcome.terminal["result"]
    assert (result["chunks"], result["samples"], result["sample_rate"]) == (
        expected,
        expected * 7680,
        48000,
    )
    assert result["timings"]["first_audio_ms"] > 0
    assert result["timings"]["rtf"] > 0


async def test_non_streaming_over_the_wire(voxcpm_server: Callable[..., Any]) -> None:
    """Non-streaming: one 0x02 frame holding the same audio a streaming request gets."""
    handle = await voxcpm_server()
    streamed = await speak(handle.url, text=TEXT, seed=4, max_len=8)
    whole = await speak(
        handle.url, text=TEXT, seed=4, max_len=8, mode="non_streaming", retry_badcase=False
    )
    (frame,) = whole.frames
    assert frame.type is FrameType.NON_STREAMING
    a = np.frombuffer(frame.payload, "<i2").astype(int)
    b = np.frombuffer(streamed.audio, "<i2").astype(int)
    assert a.shape == b.shape == (8 * 7680,)
    assert np.abs(a - b).max() <= 1  # float rounding at the int16 step


async def test_seed_reproduces_audio_across_requests(voxcpm_server: Callable[..., Any]) -> None:
    """Same text + seed: the same bytes; the result reports the seed it used."""
    handle = await voxcpm_server()
    first = await speak(handle.url, text=TEXT, seed=99, max_len=6)
    second = await speak(handle.url, text=TEXT, seed=99, max_len=6)
    assert first.audio == second.audio
    assert first.terminal["result"]["seed"] == 99
    unseeded = await speak(handle.url, text=TEXT, max_len=6)
    assert isinstance(unseeded.terminal["result"]["seed"], int)


async def test_concurrent_seeded_requests_match_their_solo_runs(
    voxcpm_server: Callable[..., Any],
) -> None:
    """Requests generating at once, on one and on two connections: no mixing, no drift."""
    handle = await voxcpm_server(workers=2)
    seeds = {"a": 1, "b": 2, "c": 3}
    alone = {
        rid: (await speak(handle.url, text=TEXT, seed=seed, max_len=10)).audio
        for rid, seed in seeds.items()
    }
    async with session(handle.url) as one, session(handle.url) as two:
        for rid, seed in seeds.items():
            await one.request(rid, text=TEXT, seed=seed, max_len=10)
        await two.request("a2", text=TEXT, seed=seeds["a"], max_len=10)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(partial(one.until_terminal, *seeds, timeout=120))
            nursery.start_soon(partial(two.until_terminal, "a2", timeout=120))
    # Batched rows run other matmul shapes than a lone one: float noise may move a
    # sample by one int16 step, never more (the model itself checks 1e-5 per row).
    for rid in seeds:
        assert _pcm_close(one.outcomes[rid].audio, alone[rid]), rid
    assert _pcm_close(two.outcomes["a2"].audio, alone["a"])


def _pcm_close(a: bytes, b: bytes) -> bool:
    left = np.frombuffer(a, "<i2").astype(int)
    right = np.frombuffer(b, "<i2").astype(int)
    return left.shape == right.shape and int(np.abs(left - right).max(initial=0)) <= 1


async def test_cancel_mid_stream_then_serve_again(voxcpm_server: Callable[..., Any]) -> None:
    """cancel stops voxcpm at a chunk boundary; the replica then gives bit-exact audio."""
    handle = await voxcpm_server()
    reference = await speak(handle.url, text=TEXT, seed=5, max_len=6)
    async with session(handle.url) as s:
        await s.request("long", text=TEXT * 5, seed=6)
        await s.until("long", "frame1")
        await s.cancel("long")
        await s.until_terminal("long")
    assert s.outcomes["long"].terminal["result"] == {"cancelled": True}
    assert handle.server.pool.slots_busy == 0
    assert (await speak(handle.url, text=TEXT, seed=5, max_len=6)).audio == reference.audio


async def test_disconnect_mid_stream_frees_the_replica(voxcpm_server: Callable[..., Any]) -> None:
    """A client gone mid-stream: voxcpm's generator is closed and the replica is free again."""
    handle = await voxcpm_server()
    reference = await speak(handle.url, text=TEXT, seed=5, max_len=6)
    async with session(handle.url) as s:
        await s.request("gone", text=TEXT * 5, seed=6)
        await s.until("gone", "frame1")
    with trio.fail_after(30):
        while handle.server.pool.slots_busy:
            await trio.sleep(0.01)
    assert (await speak(handle.url, text=TEXT, seed=5, max_len=6)).audio == reference.audio


async def test_denoise_true_is_refused_and_the_connection_goes_on(
    voxcpm_server: Callable[..., Any],
) -> None:
    """denoise: true is INVALID_PARAMS naming params.denoise, with no audio; denoise: false
    on the same connection is spoken."""
    handle = await voxcpm_server()
    async with session(handle.url) as s:
        await s.request("noisy", text=TEXT, denoise=True)
        await s.until_terminal("noisy")
        await s.request("plain", text=TEXT, denoise=False, max_len=4)
        await s.until_terminal("plain")
    refused = s.outcomes["noisy"]
    assert refused.frames == []
    error = refused.terminal["error"]
    assert error["code"] == "INVALID_PARAMS"
    assert error["details"] == {"params.denoise": DENOISE_UNAVAILABLE}
    assert s.outcomes["plain"].terminal["type"] == "complete"
    assert s.outcomes["plain"].terminal["result"]["chunks"] == 4
