"""Streaming rate/pitch (voxtrio.audio._dsp) on a voice-like signal, chunked like the engine."""

from __future__ import annotations

import numpy as np
import pytest

from voxtrio.audio._dsp import StreamingStretch, dsp_available

pytest.importorskip(
    "pylibrb", reason="rate/pitch need the optional GPL extra: pip install voxtrio[dsp]"
)

SR = 48000
CHUNK = 7680  # the synthetic engine's chunk: 160 ms at 48 kHz


def voice(seconds: float = 2.0, f0: float = 140.0, vibrato: float = 0.0) -> np.ndarray:
    """Harmonics of f0 under three formant bumps, at a syllable rate of 3 Hz."""
    t = np.arange(int(SR * seconds)) / SR
    phase = 2 * np.pi * np.cumsum(f0 * (1 + vibrato * np.sin(2 * np.pi * 0.7 * t))) / SR
    x = np.zeros_like(t)
    for k in range(1, 60):
        fk = k * f0
        amp = sum(
            a * np.exp(-(((fk - f) / w) ** 2))
            for a, f, w in ((1.0, 700, 400), (0.6, 1200, 500), (0.3, 2600, 700))
        )
        x += (amp + 0.02) / k**0.3 * np.sin(k * phase)
    x *= 0.55 - 0.45 * np.cos(2 * np.pi * 3.0 * t)
    return (0.3 * x / np.abs(x).max()).astype(np.float32)


def f0_of(y: np.ndarray) -> float:
    """Autocorrelation pitch of the middle half second."""
    mid = y.size // 2
    seg = y[mid - SR // 4 : mid + SR // 4].astype(np.float64)
    seg -= seg.mean()
    spectrum = np.fft.rfft(seg, 2 * seg.size)
    ac = np.fft.irfft(spectrum * np.conj(spectrum))[: seg.size]
    lo, hi = SR // 500, SR // 60
    return SR / (lo + int(np.argmax(ac[lo:hi])))


def stretch(x: np.ndarray, rate: float, pitch: float, chunk: int) -> tuple[np.ndarray, list[int]]:
    dsp = StreamingStretch(rate, pitch, SR)
    parts = [dsp.process(x[i : i + chunk]) for i in range(0, x.size, chunk)]
    parts.append(dsp.flush())
    return np.concatenate(parts), [p.size for p in parts]


def test_available() -> None:
    assert dsp_available()


@pytest.mark.parametrize("rate", [0.5, 0.7, 1.0, 1.5, 2.0])
def test_duration_scales_by_one_over_rate(rate: float) -> None:
    x = voice()
    y, _ = stretch(x, rate, 1.0, CHUNK)
    assert y.size == round(x.size / rate)
    # And the content fills it: energy in the last tenth, no padded silence tail.
    assert np.sqrt(np.mean(y[-y.size // 10 :] ** 2)) > 0.02


@pytest.mark.parametrize(("rate", "pitch"), [(1.0, 1.5), (1.0, 0.8), (1.5, 1.0), (0.7, 1.25)])
def test_pitch_moves_f0_by_the_factor(rate: float, pitch: float) -> None:
    x = voice()
    y, _ = stretch(x, rate, pitch, CHUNK)
    assert f0_of(y) / f0_of(x) == pytest.approx(pitch, rel=0.02)


@pytest.mark.parametrize(("rate", "pitch"), [(1.5, 1.0), (0.8, 1.2)])
def test_chunked_equals_whole(rate: float, pitch: float) -> None:
    x = voice(vibrato=0.05)
    chunked, _ = stretch(x, rate, pitch, CHUNK)
    whole, _ = stretch(x, rate, pitch, x.size)
    odd, _ = stretch(x, rate, pitch, 1000)
    for other in (whole, odd):
        err = chunked - other
        snr = 10 * np.log10(np.sum(other**2) / max(float(np.sum(err**2)), 1e-30))
        assert snr > 60


def test_no_clicks_at_chunk_joins() -> None:
    x = voice(vibrato=0.05)
    y, sizes = stretch(x, 1.25, 1.0, CHUNK)
    joins = np.cumsum(sizes)[:-1]
    d2 = np.abs(np.diff(y, 2))
    typical = np.percentile(d2, 99.9)
    worst_at_join = max(d2[max(0, j - 8) : j + 8].max() for j in joins if 0 < j < d2.size)
    assert worst_at_join <= 1.5 * typical


def test_output_starts_after_little_input() -> None:
    """Latency: output begins within ~100 ms of input, not after a second like pedalboard."""
    x = voice()
    dsp = StreamingStretch(1.5, 1.0, SR)
    fed = 0
    while True:
        out = dsp.process(x[fed : fed + 256])
        fed += 256
        if out.size:
            break
    assert fed <= SR // 10


def test_sentences_are_independent() -> None:
    x = voice(0.5)
    dsp = StreamingStretch(2.0, 1.0, SR)
    first = np.concatenate([dsp.process(x), dsp.flush()])
    second = np.concatenate([dsp.process(x), dsp.flush()])
    assert first.size == second.size == round(x.size / 2.0)
    np.testing.assert_array_equal(first, second)
    assert dsp.flush().size == 0


@pytest.mark.parametrize(("rate", "pitch"), [(0.4, 1.0), (1.0, 2.5), (float("nan"), 1.0)])
def test_factors_outside_dashscope_range_are_refused(rate: float, pitch: float) -> None:
    with pytest.raises(ValueError, match=r"between 0\.5 and 2\.0"):
        StreamingStretch(rate, pitch, SR)
