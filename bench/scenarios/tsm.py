"""Quality, latency and cost of `speed` (voxtrio.audio._tsm), one row per rate and speed.

    python -m bench tsm [--seconds 10] [--rates 24000 48000]

Input: the synthetic engine's tones (110, 440 and 989 Hz at 0.3) and
codecs_bench's speech-like signal, fed in the engine's 160 ms chunks. Per row:

- len %: output length before the final trim, against samples / speed (the flush
  then makes it exact);
- pitch %: worst error of the three tones' frequency (FFT peak) after stretching;
- seam: largest sample step at a chunk seam over the tone's own largest step;
- first ms: input needed before the first output (fed 10 ms at a time);
- onset ms: where a tone onset at 1 s lands, minus output_seconds(1 s), in model time;
- cpu ms/s: process time per second of input audio (speech-like signal).
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from voxtrio.audio._tsm import TempoStretch, output_seconds

from .audio_codecs import speech_like

SPEEDS = (0.25, 0.5, 0.75, 1.25, 1.5, 2.0, 3.0, 4.0)
CHUNK_SECONDS = 0.16


def tone(freq: float, seconds: float, rate: int) -> np.ndarray:
    t = np.arange(round(seconds * rate)) / rate
    return (0.3 * np.sin(2 * np.pi * freq * t)).astype(np.float32)


def run(x: np.ndarray, speed: float, rate: int) -> tuple[list[np.ndarray], np.ndarray]:
    chunk = round(CHUNK_SECONDS * rate)
    tsm = TempoStretch(speed, rate)
    pieces = [tsm.process(x[i : i + chunk]) for i in range(0, x.size, chunk)]
    return pieces, tsm.flush()


def peak_hz(y: np.ndarray, rate: int) -> float:
    seg = y[y.size // 4 : 3 * y.size // 4].astype(np.float64)
    spectrum = np.abs(np.fft.rfft(seg * np.hanning(seg.size), 4 * seg.size))
    k = int(np.argmax(spectrum))
    a, b, c = np.log(spectrum[k - 1 : k + 2])
    return float((k + 0.5 * (a - c) / (a - 2 * b + c)) * rate / (4 * seg.size))


def row(speed: float, rate: int, seconds: float) -> str:
    pitch_err = seam_ratio = 0.0
    length_err = 0.0
    for freq in (110.0, 440.0, 989.0):
        x = tone(freq, seconds, rate)
        pieces, tail = run(x, speed, rate)
        before = sum(p.size for p in pieces)
        length_err = max(length_err, abs(before - x.size / speed))
        y = np.concatenate([*pieces, tail])
        pitch_err = max(pitch_err, abs(peak_hz(y, rate) / freq - 1))
        seams = np.cumsum([p.size for p in pieces])
        seams = seams[(seams > 0) & (seams < y.size)]
        own = np.abs(np.diff(x)).max()
        seam_ratio = max(seam_ratio, float(np.abs(y[seams] - y[seams - 1]).max() / own))
    tsm = TempoStretch(speed, rate)
    probe, fed = tone(300.0, 1.0, rate), 0
    step = rate // 100
    while not tsm.process(probe[fed : fed + step]).size:
        fed += step
    onset_x = np.concatenate([np.zeros(rate, np.float32), tone(220.0, 1.0, rate)])
    onset_y = np.concatenate(run(onset_x, speed, rate)[0])
    onset = np.flatnonzero(np.abs(onset_y) > 0.15)[0] / rate
    speech = speech_like(rate, seconds)
    started = time.process_time()
    run(speech, speed, rate)
    cpu = (time.process_time() - started) / seconds * 1000
    return (
        f"{rate:>6} {speed:>5} {length_err / (seconds * rate / speed) * 100:>7.2f} "
        f"{pitch_err * 100:>8.3f} {seam_ratio:>6.3f} {(fed + step) / rate * 1000:>9.0f} "
        f"{(onset - output_seconds(1.0, speed)) * speed * 1000:>9.1f} {cpu:>9.2f}"
    )


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--rates", type=int, nargs="+", default=[24000, 48000])
    args = parser.parse_args(argv)
    print("  rate speed   len %  pitch %   seam  first ms  onset ms  cpu ms/s")
    for rate in args.rates:
        for speed in SPEEDS:
            print(row(speed, rate, args.seconds))
