"""Latency and cost of voxtrio's streaming encoders, one row per format and output rate.

    python -m bench audio_codecs [--chunks 200] [--chunk 7680] [--input-rate 48000]

Input: a synthetic voiced-speech-like signal (harmonics of a gliding 90-220 Hz pitch
under a syllable envelope, plus a little noise) at the model rate, fed in chunks the
size the engine yields. Per row:

- first B: bytes returned by the first `encode()` (header included);
- first ms: audio a client can decode from those bytes (MP3's 1105 priming samples
  not counted), out of the chunk's own duration;
- held ms: the most audio held back after any of the first 10 chunks (fed so far
  minus decodable so far), i.e. the latency the encoder adds on top of the engine's;
- create/chunk/finish µs: wall time of the constructor, of `encode()` per chunk
  (median and p95) and of `finish()`;
- kbit/s: output size over the audio duration.

Decoding uses libsndfile (soundfile) for wav/mp3/opus and PyAV for flac (libsndfile's
Python wrapper cannot read a FLAC stream whose STREAMINFO length is unknown).
"""

from __future__ import annotations

import argparse
import io
import statistics
import time

import av
import numpy as np
import soundfile as sf

from voxtrio.audio._codecs import AudioEncoder, AudioFormat
from voxtrio.protocol._formats import ANY_RATE_FORMATS, FIXED_RATE_FORMATS

MP3_PRIMING = 1105  # LAME encoder delay (576) + MP3 decoder delay (529), in samples


def speech_like(rate: int, seconds: float, seed: int = 0) -> np.ndarray:
    """A deterministic stand-in for TTS output: voiced syllables with pitch glides."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(rate * seconds)) / rate
    f0 = 155 + 65 * np.sin(2 * np.pi * 0.7 * t)
    phase = 2 * np.pi * np.cumsum(f0) / rate
    voiced = sum(np.sin(k * phase) / k for k in range(1, 30) if k * 220 < rate / 2)
    envelope = np.clip(np.sin(2 * np.pi * 2.5 * t), 0, None) ** 0.5
    x = 0.25 * voiced * envelope + 0.01 * rng.standard_normal(t.size)
    return x.astype(np.float32)


def decoded_samples(fmt: AudioFormat, data: bytes) -> int:
    """Samples of audio content a client decodes from `data`."""
    if not data:
        return 0
    if fmt == "pcm16":
        return len(data) // 2
    if fmt in FIXED_RATE_FORMATS:  # raw G.711: one byte per sample
        return len(data)
    if fmt == "flac":
        with av.open(io.BytesIO(data), "r", format="flac") as container:
            return sum(int(frame.samples) for frame in container.decode(audio=0))
    try:
        with sf.SoundFile(io.BytesIO(data)) as f:
            n = len(f.read(dtype="float32"))
    except sf.LibsndfileError:
        return 0  # e.g. Ogg headers without an audio page yet
    return max(0, n - MP3_PRIMING) if fmt == "mp3" else n


def bench(fmt: AudioFormat, input_rate: int, output_rate: int, chunk: int, chunks: int) -> str:
    audio = speech_like(input_rate, chunk * chunks / input_rate)
    pieces = [audio[i : i + chunk] for i in range(0, audio.size, chunk)]

    t0 = time.perf_counter()
    encoder = AudioEncoder(fmt, input_rate=input_rate, output_rate=output_rate)
    create_us = (time.perf_counter() - t0) * 1e6

    out: list[bytes] = []
    costs: list[float] = []
    held: list[float] = []
    for i, piece in enumerate(pieces):
        t0 = time.perf_counter()
        out.append(encoder.encode(piece))
        costs.append((time.perf_counter() - t0) * 1e6)
        if i < 10:
            fed = (i + 1) * chunk / input_rate
            held.append(fed - decoded_samples(fmt, b"".join(out)) / encoder.sample_rate)
    t0 = time.perf_counter()
    out.append(encoder.finish())
    finish_us = (time.perf_counter() - t0) * 1e6

    first_ms = decoded_samples(fmt, out[0]) / encoder.sample_rate * 1000
    kbps = sum(map(len, out)) * 8 / encoder.duration / 1000
    p95 = statistics.quantiles(costs, n=20)[-1]
    return (
        f"{fmt:6} {output_rate:>6} {encoder.sample_rate:>6} {len(out[0]):>8} "
        f"{first_ms:>6.1f}/{chunk / input_rate * 1000:<5.0f} {max(held) * 1000:>7.1f} "
        f"{create_us:>9.0f} {statistics.median(costs):>9.0f} {p95:>8.0f} "
        f"{finish_us:>9.0f} {kbps:>8.1f}"
    )


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--chunks", type=int, default=200, help="chunks per row")
    parser.add_argument("--chunk", type=int, default=7680, help="samples per chunk")
    parser.add_argument("--input-rate", type=int, default=48000)
    parser.add_argument(
        "--rates", type=int, nargs="+", default=[48000, 24000, 16000], help="output rates"
    )
    args = parser.parse_args(argv)
    print(
        f"input {args.input_rate} Hz, {args.chunk}-sample chunks "
        f"({args.chunk / args.input_rate * 1000:.0f} ms), {args.chunks} chunks per row"
    )
    print(
        "format    out  coded  first B  first ms    held ms  create µs  chunk µs"
        "  p95 µs  finish µs  kbit/s"
    )
    for rate in args.rates:
        for fmt in ANY_RATE_FORMATS:
            print(bench(fmt, args.input_rate, rate, args.chunk, args.chunks))
    for fmt, rate in FIXED_RATE_FORMATS.items():  # telephony: the rate is in the name
        print(bench(fmt, args.input_rate, rate, args.chunk, args.chunks))  # type: ignore[arg-type]
