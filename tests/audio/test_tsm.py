"""Speed changes that keep the pitch (voxtrio.audio._tsm), chunked like the engine streams.

Pitch is measured two independent ways: the peak of a zero-padded Hann-windowed FFT
(parabolic interpolation between bins) and the rate of upward zero crossings.
"""

from __future__ import annotations

import os

import numpy as np
import pytest

from voxtrio.audio._tsm import SPEED_RANGE, TempoStretch, output_seconds

SR = 48000
CHUNK = 7680  # the synthetic engine's chunk: 160 ms at 48 kHz
SPEEDS = [0.25, 0.5, 0.8, 1.25, 1.5, 2.0, 3.0, 4.0]


def tone(freq: float, seconds: float = 2.0, rate: int = SR) -> np.ndarray:
    """0.3 x sin(2 pi f t), as the synthetic engine speaks."""
    t = np.arange(round(rate * seconds)) / rate
    return (0.3 * np.sin(2 * np.pi * freq * t)).astype(np.float32)


def stretch(x: np.ndarray, speed: float, chunk: int = CHUNK, rate: int = SR) -> list[np.ndarray]:
    """Every piece `process` returns, then `flush`'s."""
    tsm = TempoStretch(speed, rate)
    pieces = [tsm.process(x[i : i + chunk]) for i in range(0, x.size, chunk)]
    return [*pieces, tsm.flush()]


def fft_hz(y: np.ndarray, rate: int = SR) -> float:
    """Dominant frequency of the middle half: windowed FFT peak, parabolically refined."""
    seg = y[y.size // 4 : 3 * y.size // 4].astype(np.float64)
    spectrum = np.abs(np.fft.rfft(seg * np.hanning(seg.size), 4 * seg.size))
    k = int(np.argmax(spectrum))
    a, b, c = np.log(spectrum[k - 1 : k + 2])
    return float((k + 0.5 * (a - c) / (a - 2 * b + c)) * rate / (4 * seg.size))


def zero_crossing_hz(y: np.ndarray, rate: int = SR) -> float:
    """Frequency from the upward zero crossings of the middle half (interpolated)."""
    seg = y[y.size // 4 : 3 * y.size // 4].astype(np.float64)
    up = np.flatnonzero((seg[:-1] < 0) & (seg[1:] >= 0))
    exact = up + seg[up] / (seg[up] - seg[up + 1])
    return float((exact.size - 1) * rate / (exact[-1] - exact[0]))


@pytest.mark.parametrize("speed", SPEEDS)
def test_duration_is_one_over_speed(speed: float) -> None:
    """An utterance comes out round(samples / speed) long, and mostly before the flush."""
    x = tone(440.0)
    pieces = stretch(x, speed)
    total = sum(p.size for p in pieces)
    assert total == round(x.size / speed)
    # Within 2 % before the exact trim: the flush only tops up atempo's look-ahead.
    assert abs(sum(p.size for p in pieces[:-1]) - x.size / speed) <= 0.1 * x.size / speed
    assert abs(total / SR - output_seconds(x.size / SR, speed)) <= 1 / SR


@pytest.mark.parametrize("freq", [110.0, 330.0, 989.0])
@pytest.mark.parametrize("speed", SPEEDS)
def test_pitch_is_unchanged(speed: float, freq: float) -> None:
    """The synthetic engine's lowest, middle and highest tones keep their pitch within 1 %."""
    y = np.concatenate(stretch(tone(freq, 3.0), speed))
    assert fft_hz(y) == pytest.approx(freq, rel=0.01)
    assert zero_crossing_hz(y) == pytest.approx(freq, rel=0.01)


@pytest.mark.parametrize("speed", SPEEDS)
def test_no_jump_at_chunk_seams(speed: float) -> None:
    """Where one returned piece meets the next, the step is no bigger than the signal's own
    largest step away from seams (and within 2 % of the unstretched tone's)."""
    x = tone(440.0)
    pieces = stretch(x, speed)
    y = np.concatenate(pieces)
    seams = np.cumsum([p.size for p in pieces[:-1]])
    seams = seams[(seams > 0) & (seams < y.size)]
    assert seams.size >= 3
    steps = np.abs(np.diff(y))  # steps[i] is y[i + 1] - y[i]
    at_seams = steps[seams - 1]
    elsewhere = np.delete(steps, seams - 1)
    assert at_seams.max() <= elsewhere.max()
    assert at_seams.max() <= np.abs(np.diff(x)).max() * 1.02


@pytest.mark.parametrize("speed", [0.25, 0.7, 1.5, 4.0])
def test_chunking_does_not_change_the_output(speed: float) -> None:
    """State carries across chunks: any chunking gives the whole-buffer output bit for bit."""
    x = tone(220.0) + tone(1730.0) * 0.5
    whole = np.concatenate(stretch(x, speed, chunk=x.size))
    for chunk in (777, CHUNK):
        np.testing.assert_array_equal(np.concatenate(stretch(x, speed, chunk=chunk)), whole)


def test_speech_like_signal_keeps_its_f0() -> None:
    """Harmonics of 140 Hz under a syllable-rate envelope: F0 unchanged at 0.5x and 2x."""
    t = np.arange(2 * SR) / SR
    x = sum(np.sin(2 * np.pi * 140 * k * t) / k for k in range(1, 20))
    x = (0.3 * x * (0.55 - 0.45 * np.cos(2 * np.pi * 3 * t)) / np.abs(x).max()).astype(np.float32)
    for speed in (0.5, 2.0):
        y = np.concatenate(stretch(x, speed))
        seg = y[y.size // 2 - SR // 4 : y.size // 2 + SR // 4].astype(np.float64)
        seg -= seg.mean()
        spectrum = np.fft.rfft(seg, 2 * seg.size)
        ac = np.fft.irfft(spectrum * np.conj(spectrum))[: seg.size]
        lag = SR // 500 + int(np.argmax(ac[SR // 500 : SR // 60]))
        assert SR / lag == pytest.approx(140.0, rel=0.01)


@pytest.mark.parametrize("speed", SPEEDS)
def test_onset_lands_where_output_seconds_says(speed: float) -> None:
    """A tone 1 s into the model's audio starts at output_seconds(1.0), within 40 ms of
    model time (atempo's overlap window: the onset fades in a little early)."""
    x = np.concatenate([np.zeros(SR, np.float32), tone(220.0, 1.0)])
    y = np.concatenate(stretch(x, speed))
    onset = np.flatnonzero(np.abs(y) > 0.15)[0] / SR
    assert onset == pytest.approx(output_seconds(1.0, speed), abs=output_seconds(0.04, speed))


@pytest.mark.parametrize("speed", [0.5, 1.0, 2.0, 4.0])
def test_streams_with_little_held_back(speed: float) -> None:
    """Pushed 10 ms at a time, output starts within 120 ms of input; nothing waits a chunk."""
    tsm = TempoStretch(speed, 24000)
    x = tone(300.0, 1.0, 24000)
    fed = 0
    while not tsm.process(x[fed : fed + 240]).size:
        fed += 240
    assert fed <= 0.12 * 24000
    # A whole model chunk in: most of its output comes straight back.
    tsm2 = TempoStretch(speed, 24000)
    assert tsm2.process(x[:4800]).size >= (4800 - 0.12 * 24000) / speed


def test_flush_readies_the_next_utterance() -> None:
    """After flush, a second utterance comes out exactly like the first did."""
    tsm = TempoStretch(1.5, SR)
    x = tone(330.0, 1.0)
    first = np.concatenate([tsm.process(x), tsm.flush()])
    second = np.concatenate([tsm.process(x), tsm.flush()])
    np.testing.assert_array_equal(first, second)
    assert tsm.flush().size == 0  # nothing pending: an empty utterance


def test_a_stream_starts_no_threads() -> None:
    """Single-threaded filter graphs: libavfilter would start a pool per graph."""
    before = len(os.listdir("/proc/self/task"))
    streams = [TempoStretch(2.0, SR) for _ in range(4)]
    for tsm in streams:
        tsm.process(tone(440.0, 0.1))
    assert len(os.listdir("/proc/self/task")) == before
    for tsm in streams:
        tsm.close()


@pytest.mark.parametrize("speed", [0.2, 4.5, float("nan"), 0.0, -1.0])
def test_speed_out_of_range_is_refused(speed: float) -> None:
    """Outside 0.25-4.0 (OpenAI's range), or NaN, is a ValueError naming the range."""
    with pytest.raises(ValueError, match=r"between 0\.25 and 4\.0"):
        TempoStretch(speed, SR)


def test_range_is_openais() -> None:
    """SPEED_RANGE is what OpenAI's /v1/audio/speech documents."""
    assert SPEED_RANGE == (0.25, 4.0)


def test_output_seconds_divides_by_speed() -> None:
    """The one model-time -> output-time map."""
    assert output_seconds(3.0, 2.0) == 1.5
    assert output_seconds(1.0, 0.25) == 4.0
