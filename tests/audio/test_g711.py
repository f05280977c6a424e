"""8 kHz G.711 output (ulaw_8000, alaw_8000) checked against two independent decoders:
ITU-T G.711's expansion written out in tests/audio/g711_reference.py, and libav's."""

from __future__ import annotations

import numpy as np
import pytest

from voxtrio.audio._codecs import AudioEncoder, InvalidEncoderSetting

from .g711_reference import libav_decode, reference_decode

G711 = ["ulaw_8000", "alaw_8000"]


def levels(fmt: str) -> np.ndarray:
    """Every reconstruction level of the law, ascending (mu-law's two zeros are one)."""
    return np.unique(reference_decode(fmt, bytes(range(256))))


def bracketing_levels(fmt: str, linear: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The level at or below, and the level at or above, each linear value."""
    table = levels(fmt)
    above = np.clip(np.searchsorted(table, linear), 0, table.size - 1)
    below = np.where(table[above] == linear, above, np.clip(above - 1, 0, table.size - 1))
    return table[below], table[above]


def encode_all(fmt: str, x: np.ndarray, input_rate: int, chunk: int) -> tuple[bytes, AudioEncoder]:
    encoder = AudioEncoder(fmt, input_rate=input_rate)  # type: ignore[arg-type]
    data = b"".join(encoder.encode(x[i : i + chunk]) for i in range(0, x.size, chunk))
    return data + encoder.finish(), encoder


@pytest.mark.parametrize("fmt", G711)
def test_raw_bytes_match_the_reference_expansion(fmt: str) -> None:
    """Headerless: one byte per 8 kHz sample; both decoders agree; each code is one of
    the two G.711 levels around the input (libav decides on 13/14-bit values)."""
    t = np.arange(8000) / 8000
    x = (0.9 * np.sin(2 * np.pi * 3 * t) * np.sin(2 * np.pi * 440 * t)).astype(np.float32)
    data, encoder = encode_all(fmt, x, 8000, 800)
    assert len(data) == encoder.samples_out == x.size  # no header, no padding
    assert encoder.sample_rate == 8000
    decoded = reference_decode(fmt, data)
    np.testing.assert_array_equal(decoded, libav_decode(fmt, data))
    below, above = bracketing_levels(fmt, np.rint(x.astype(np.float64) * 32767))
    assert np.all((decoded == below) | (decoded == above))
    assert np.unique(decoded).size > 100  # the whole range was exercised


@pytest.mark.parametrize("fmt", G711)
@pytest.mark.parametrize("input_rate", [16000, 24000, 48000])
def test_model_rate_is_resampled_to_8000(fmt: str, input_rate: int) -> None:
    """Model audio at any rate comes out 8 kHz, with its pitch and length."""
    x = (0.3 * np.sin(2 * np.pi * 330 * np.arange(input_rate) / input_rate)).astype(np.float32)
    data, _ = encode_all(fmt, x, input_rate, input_rate // 6)
    decoded = reference_decode(fmt, data).astype(np.float64)
    assert decoded.size == 8000
    spectrum = np.abs(np.fft.rfft(decoded * np.hanning(decoded.size)))
    assert np.argmax(spectrum) == pytest.approx(330, abs=1)  # 1 Hz bins
    snr = 10 * np.log10(
        np.sum(decoded**2)
        / np.sum((decoded - 0.3 * 32767 * np.sin(2 * np.pi * 330 * np.arange(8000) / 8000)) ** 2)
    )
    assert snr > 30  # G.711 gives ~38 dB on a tone; soxr's transition band costs a little


@pytest.mark.parametrize("fmt", G711)
def test_silence_and_full_scale(fmt: str) -> None:
    """Zeros decode to the smallest level, +/-1 (and beyond, clipped) to the largest."""
    x = np.array([0.0, 1.0, -1.0, 3.0, -3.0], np.float32)
    data, _ = encode_all(fmt, x, 8000, 5)
    decoded = reference_decode(fmt, data)
    assert abs(decoded[0]) <= 8
    top = 32124 if fmt == "ulaw_8000" else 32256
    assert list(decoded[1:]) == [top, -top, top, -top]


@pytest.mark.parametrize("fmt", G711)
@pytest.mark.parametrize("rate", [16000, 24000])
def test_other_rates_are_refused(fmt: str, rate: int) -> None:
    """The rate is in the name: asking for another is an error naming sample_rate."""
    with pytest.raises(InvalidEncoderSetting, match="8000 Hz only") as caught:
        AudioEncoder(fmt, input_rate=24000, output_rate=rate)  # type: ignore[arg-type]
    assert caught.value.setting == "sample_rate"
