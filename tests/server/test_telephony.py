"""8 kHz G.711 (ulaw_8000, alaw_8000) over real sockets on every API, decoded two ways:
ITU-T G.711's expansion written out in the tests, and libav's decoders."""

from __future__ import annotations

import base64
import json
import math
from typing import Any

import httpx
import numpy as np
import openai
import pytest
import trio

from voxtrio.server._listener import ServerHandle

from ..audio.g711_reference import libav_decode, reference_decode
from ..support import session, speak
from .test_speed import dashscope_task

G711 = ["ulaw_8000", "alaw_8000"]
TEXT = "Forty characters of text and no break ok"  # 10 synthetic chunks at 48 kHz
SAMPLES_8K = math.ceil(len(TEXT) / 4) * 7680 // 6
SEED, HZ = 330, 440.0


def check_g711(fmt: str, data: bytes, samples: int, hz: float | None = HZ) -> None:
    """Raw bytes: one per 8 kHz sample; both decoders agree; a tone of `hz` at 0.3 amplitude."""
    assert len(data) == pytest.approx(samples, abs=2)
    decoded = reference_decode(fmt, data)
    np.testing.assert_array_equal(decoded, libav_decode(fmt, data))
    y = decoded[200:-200].astype(np.float64)  # past the resampler's edges
    spectrum = np.abs(np.fft.rfft(y * np.hanning(y.size)))
    peak = np.argmax(spectrum) * 8000 / y.size
    if hz is not None:
        assert peak == pytest.approx(hz, abs=8000 / y.size)
    assert np.sqrt(np.mean(y**2)) == pytest.approx(0.3 * 32767 / np.sqrt(2), rel=0.05)


@pytest.mark.parametrize("fmt", G711)
async def test_native_streams_raw_g711(synthetic_server: ServerHandle, fmt: str) -> None:
    """format ulaw_8000/alaw_8000: headerless 8 kHz frames, reported as 8000 Hz."""
    outcome = await speak(synthetic_server.url, text=TEXT, seed=SEED, format=fmt)
    result = outcome.terminal["result"]
    assert (result["format"], result["sample_rate"]) == (fmt, 8000)
    assert result["samples"] == len(outcome.audio)
    assert {f.metadata["format"] for f in outcome.frames} == {fmt}
    assert len([f for f in outcome.frames if f.payload]) > 1  # streamed, not one blob
    check_g711(fmt, outcome.audio, SAMPLES_8K)


async def test_native_g711_takes_speed(synthetic_server: ServerHandle) -> None:
    """Telephony output and speed together: half as long, same pitch."""
    outcome = await speak(synthetic_server.url, text=TEXT, seed=SEED, format="ulaw_8000", speed=2)
    check_g711("ulaw_8000", outcome.audio, SAMPLES_8K / 2)


@pytest.mark.parametrize("rate", [16000, 48000])
async def test_native_g711_at_another_rate_is_refused(
    synthetic_server: ServerHandle, rate: int
) -> None:
    """The rate is in the name: another sample_rate is INVALID_PARAMS naming it."""
    async with session(synthetic_server.url) as s:
        await s.request("x", text="hi", format="alaw_8000", sample_rate=rate)
        await s.until_terminal("x")
    error = s.outcomes["x"].terminal["error"]
    assert error["code"] == "INVALID_PARAMS"
    assert "8000 Hz only" in error["details"]["params.sample_rate"]


@pytest.mark.parametrize(
    ("fmt", "media_type"), [("ulaw_8000", "audio/basic"), ("alaw_8000", "audio/x-alaw-basic")]
)
async def test_openai_response_format(
    synthetic_server: ServerHandle, fmt: str, media_type: str
) -> None:
    """The OpenAI SDK with response_format ulaw_8000/alaw_8000 gets raw G.711 at 8 kHz."""

    def fetch() -> tuple[bytes, str]:
        with (
            openai.OpenAI(
                base_url=f"http://127.0.0.1:{synthetic_server.port}/v1", api_key="unused"
            ) as client,
            client.audio.speech.with_streaming_response.create(
                model="tts-1",
                voice="alloy",
                input=TEXT,
                response_format=fmt,  # type: ignore[arg-type]  # voxtrio's extra formats
            ) as response,
        ):
            return b"".join(response.iter_bytes()), response.headers["content-type"]

    data, content_type = await trio.to_thread.run_sync(fetch)
    assert content_type == media_type
    check_g711(fmt, data, SAMPLES_8K, hz=None)  # the route takes no seed: any tone


async def test_openai_sse_carries_g711(synthetic_server: ServerHandle) -> None:
    """stream_format sse: the base64 deltas join into the same raw mu-law stream."""

    async def post() -> list[dict[str, Any]]:
        async with httpx.AsyncClient() as client:
            response = await client.post(
                f"http://127.0.0.1:{synthetic_server.port}/v1/audio/speech",
                json={"input": TEXT, "response_format": "ulaw_8000", "stream_format": "sse"},
            )
        return [json.loads(line[6:]) for line in response.text.splitlines() if line]

    events = await post()
    deltas = [e for e in events if e["type"] == "speech.audio.delta"]
    data = b"".join(base64.b64decode(e["audio"]) for e in deltas)
    assert events[-1]["type"] == "speech.audio.done"
    check_g711("ulaw_8000", data, SAMPLES_8K, hz=None)


@pytest.mark.parametrize("fmt", G711)
async def test_dashscope_format(synthetic_server: ServerHandle, fmt: str) -> None:
    """run-task format ulaw_8000/alaw_8000 (sample_rate 0 or 8000): raw G.711 binary frames."""
    for sample_rate in (0, 8000):
        events, audio = await dashscope_task(
            synthetic_server.url, TEXT, format=fmt, sample_rate=sample_rate, seed=SEED
        )
        assert events[-1]["header"]["event"] == "task-finished"
        check_g711(fmt, audio, SAMPLES_8K)


async def test_dashscope_g711_at_another_rate_fails_the_task(
    synthetic_server: ServerHandle,
) -> None:
    """ulaw_8000 with sample_rate 16000 is task-failed naming sample_rate."""
    events, audio = await dashscope_task(
        synthetic_server.url, TEXT, format="ulaw_8000", sample_rate=16000
    )
    header: dict[str, Any] = events[-1]["header"]
    assert (header["event"], header["error_code"]) == ("task-failed", "InvalidParameter")
    assert "sample_rate" in header["error_message"]
    assert audio == b""
