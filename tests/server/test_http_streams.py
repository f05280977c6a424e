"""A speech response over plain HTTP goes out whole to a client that half-closes, is
refused for blank input like /tts, and is counted among the open connections."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import httpx
import trio

from tests.server.http_raw import post, request
from voxtrio.server._listener import ServerHandle
from voxtrio.speech._synthetic import SyntheticEngine

TEXT = "Hello from the OpenAI route."  # synthetic engine: 7680 samples at 48 kHz per 4 chars
PCM_BYTES = (len(TEXT) + 3) // 4 * 7680 // 2 * 2  # 24 kHz s16le: half the samples, 2 bytes each


async def test_a_client_that_half_closes_gets_the_whole_response(
    start_server: Callable[..., Any],
) -> None:
    """Shutting down the write side after the request is not hanging up: all audio arrives."""
    server: ServerHandle = await start_server(lambda: SyntheticEngine(rtf=0.2))
    body = json.dumps({"input": TEXT, "response_format": "pcm"}).encode()
    reply = await request(server.port, post("/v1/audio/speech", body), half_close=True, limit_s=10)
    assert reply.status == 200
    assert len(reply.body) == PCM_BYTES


async def test_whitespace_only_input_is_400_like_tts(synthetic_server: ServerHandle) -> None:
    """input of blanks and newlines: 400 naming `input`, as /tts refuses such a text."""
    body = json.dumps({"input": " \n\t "}).encode()
    reply = await request(synthetic_server.port, post("/v1/audio/speech", body))
    assert reply.status == 400
    assert reply.json()["error"]["param"] == "input"


async def test_http_requests_are_counted_in_active_connections(
    start_server: Callable[..., Any],
) -> None:
    """While a speech request streams, /metrics shows it in active_connections."""
    server: ServerHandle = await start_server(lambda: SyntheticEngine(rtf=1.0))
    url = f"http://127.0.0.1:{server.port}/v1/audio/speech"
    metrics = f"http://127.0.0.1:{server.metrics_port}/metrics"
    async with (
        httpx.AsyncClient(timeout=10) as client,
        client.stream("POST", url, json={"input": "A long text. " * 10}) as speech,
    ):
        assert speech.status_code == 200
        during = (await client.get(metrics)).text
    with trio.fail_after(5):
        while server.server.open_connections:
            await trio.sleep(0.02)
    assert "voxcpm_tts_active_connections 1.0" in during
