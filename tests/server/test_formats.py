"""Output formats and rates over the wire, checked with an independent decoder."""

from __future__ import annotations

import io
from pathlib import Path

import av
import numpy as np
import pytest
import soundfile

from voxtrio.protocol._frames import FrameType
from voxtrio.server._listener import ServerHandle

from ..support import Outcome, session, speak

TEXT = "Twenty characters!!!" * 2  # 40 chars -> 10 synthetic chunks = 1.6 s at 48 kHz
SECONDS = 10 * 7680 / 48000


def decode(data: bytes, fmt: str) -> tuple[np.ndarray, int]:
    """Decode with libsndfile, or PyAV for FLAC (libsndfile cannot seek in a stream)."""
    if fmt == "pcm16":
        return np.frombuffer(data, "<i2").astype(np.float32) / 32768, 0
    if fmt == "flac":
        with av.open(io.BytesIO(data)) as container:
            frames = [f.to_ndarray().reshape(-1) for f in container.decode(audio=0)]
            rate = container.streams.audio[0].rate
        return np.concatenate(frames), rate
    samples, rate = soundfile.read(io.BytesIO(data), dtype="float32")
    return samples, rate


def dominant_hz(samples: np.ndarray, rate: int) -> float:
    spectrum = np.abs(np.fft.rfft(samples[: rate // 2]))
    return float(np.argmax(spectrum) * rate / (2 * (len(samples[: rate // 2]) // 2)))


@pytest.mark.parametrize(
    ("fmt", "rate", "magic"),
    [
        ("wav", 16000, b"RIFF"),
        ("mp3", 24000, b""),
        ("opus", 48000, b"OggS"),
        ("flac", 22050, b"fLaC"),
        ("wav", 44100, b"RIFF"),
    ],
)
async def test_streamed_format_decodes_to_the_generated_audio(
    synthetic_server: ServerHandle, fmt: str, rate: int, magic: bytes
) -> None:
    """Each format streams, and decodes to the right rate, length and pitch."""
    outcome = await speak(synthetic_server.url, text=TEXT, seed=330, format=fmt, sample_rate=rate)
    result = outcome.terminal["result"]
    assert result["format"] == fmt
    assert outcome.audio.startswith(magic)
    samples, decoded_rate = decode(outcome.audio, fmt)
    assert decoded_rate == result["sample_rate"] == rate
    frame_tolerance = 2048 / rate  # one codec frame + encoder delay
    assert len(samples) / rate == pytest.approx(SECONDS, abs=frame_tolerance)
    assert result["duration"] == pytest.approx(SECONDS, abs=0.01)
    assert dominant_hz(samples, rate) == pytest.approx(110 + 330, abs=5)
    assert {f.metadata["format"] for f in outcome.frames} == {fmt}


async def test_every_streamed_prefix_is_decodable(synthetic_server: ServerHandle) -> None:
    """A live client can decode what it has after every frame (WAV header comes first)."""
    outcome = await speak(synthetic_server.url, text=TEXT, format="wav", sample_rate=16000)
    received = b""
    for frame in outcome.frames[:-1]:
        received += frame.payload
        samples, rate = soundfile.read(io.BytesIO(received), dtype="float32")
        assert rate == 16000
        assert len(samples) == (len(received) - 44) // 2


async def test_non_streaming_mp3_is_one_whole_file(synthetic_server: ServerHandle) -> None:
    """non_streaming with a format sends the whole encoded file in one 0x02 frame."""
    outcome = await speak(
        synthetic_server.url, text=TEXT, format="mp3", sample_rate=48000, mode="non_streaming"
    )
    (frame,) = outcome.frames
    assert frame.type is FrameType.NON_STREAMING
    samples, rate = decode(frame.payload, "mp3")
    assert rate == 48000
    assert len(samples) / rate == pytest.approx(SECONDS, abs=0.1)


async def test_pcm16_at_another_rate_is_resampled(synthetic_server: ServerHandle) -> None:
    """pcm16 at 16 kHz is the same audio resampled."""
    outcome = await speak(synthetic_server.url, text=TEXT, seed=110, sample_rate=16000)
    samples, _ = decode(outcome.audio, "pcm16")
    assert outcome.terminal["result"]["sample_rate"] == 16000
    assert len(samples) == pytest.approx(SECONDS * 16000, abs=64)
    assert dominant_hz(samples, 16000) == pytest.approx(220, abs=5)


@pytest.mark.parametrize(
    ("params", "field"),
    [
        ({"format": "aac"}, "params.format"),
        ({"sample_rate": 11025}, "params.sample_rate"),
        ({"format": "wav", "bit_rate": 64000}, "params.bit_rate"),
        ({"format": "mp3", "sample_rate": 48000, "bit_rate": 7000}, "params.bit_rate"),
    ],
)
async def test_bad_output_parameters_are_invalid(
    synthetic_server: ServerHandle, params: dict[str, object], field: str
) -> None:
    """Unknown formats, rates and impossible bit rates are INVALID_PARAMS naming the field."""
    async with session(synthetic_server.url) as s:
        await s.request("x", text="hi", **params)
        await s.until_terminal("x")
    error = s.outcomes["x"].terminal["error"]
    assert error["code"] == "INVALID_PARAMS"
    assert field in error["details"]


async def test_opus_through_real_voxcpm(start_server: object, tiny_model_dir: Path) -> None:
    """The tiny checkpoint through voxcpm, encoded as Ogg Opus, decodes to its length."""
    from functools import partial

    from voxtrio.speech._voxcpm_engine import VoxCPMEngine, VoxCPMOptions
    from voxtrio.tools._tiny_model import expected_chunks

    options = VoxCPMOptions(model=str(tiny_model_dir), device="cpu", warm_normalizer=False)
    handle = await start_server(partial(VoxCPMEngine.load, options), engine="voxcpm")  # type: ignore[operator]
    outcome: Outcome = await speak(handle.url, text="Opus please.", seed=1, format="opus")
    samples, rate = decode(outcome.audio, "opus")
    chunks = expected_chunks(tiny_model_dir, "Opus please.")
    assert rate == 48000
    assert len(samples) / rate == pytest.approx(chunks * 7680 / 48000, abs=0.05)
