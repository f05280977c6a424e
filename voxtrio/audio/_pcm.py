"""16-bit PCM: checking float chunks, quantising them, and the streamed WAV header."""

from __future__ import annotations

import math
import struct
from typing import Final

import numpy as np
import numpy.typing as npt

# Written for both the RIFF and the data chunk size of a streamed WAV header.
WAV_UNKNOWN_SIZE: Final = 0xFFFFFFFF


# Codec frame length for Opus (its default and best trade-off) and FLAC. FLAC's libav
# default is ~100 ms blocks, which would hold back up to 100 ms of every chunk; 20 ms
# blocks compress speech within ±3% of that (measured at 16, 24 and 48 kHz).
FRAME_MS: Final = 20


class NonFiniteAudio(ValueError):
    """Audio holding NaN or ±inf (a model that went wrong)."""


def check_finite(chunk: npt.ArrayLike) -> None:
    """Raise NonFiniteAudio("non-finite audio") if `chunk` holds NaN or ±inf."""
    x = np.asarray(chunk)
    if x.dtype in (np.float32, np.float16) and x.ndim == 1:
        # One pass instead of isfinite + all (each numpy call here hands the GIL to
        # other model threads): a float64 sum of float32 values is finite exactly
        # when every value is (|x| < 3.5e38, so no overflow), and NaN/inf propagate.
        finite = math.isfinite(np.add.reduce(x, dtype=np.float64))
    else:
        finite = bool(np.isfinite(x).all())
    if not finite:
        raise NonFiniteAudio("non-finite audio")


def _as_float_mono(chunk: np.ndarray) -> np.ndarray:
    """Validate a chunk: a 1-D array of finite floats (any float dtype)."""
    if not isinstance(chunk, np.ndarray):
        raise TypeError(f"audio must be a numpy array, not {type(chunk).__name__}")
    if chunk.dtype.kind != "f":
        raise TypeError(f"audio must be floating point, not {chunk.dtype}")
    if chunk.ndim != 1:
        raise ValueError(f"audio must be mono (1-D), got shape {chunk.shape}")
    check_finite(chunk)
    return chunk


def quantize16(chunk: np.ndarray) -> npt.NDArray[np.int16]:
    # Scale by 32767, not 32768: symmetric, so +1.0 and -1.0 both fit without clipping.
    # np.rint rounds half to even. Three numpy passes (scale, clip in place, round
    # straight into int16) rather than four: clip(x) * 32767 == clip(x * 32767, ±32767).
    scaled = np.multiply(chunk, 32767.0, dtype=chunk.dtype)
    np.clip(scaled, -32767.0, 32767.0, out=scaled)
    samples = np.empty(chunk.shape, "<i2")
    np.rint(scaled, out=samples, casting="unsafe")
    return samples


def float_to_pcm16(chunk: np.ndarray) -> bytes:
    """Float samples -> little-endian int16 bytes: clip to [-1, 1], scale by 32767, round.

    NaN/inf raise ValueError("non-finite audio") rather than turning into full-scale
    clicks, so the caller can fail the request instead of sending garbage.
    """
    return quantize16(_as_float_mono(chunk)).tobytes()


def wav_header(sample_rate: int) -> bytes:
    """The 44-byte header of a mono 16-bit PCM WAV stream of unknown length."""
    return struct.pack(
        "<4sI4s4sIHHIIHH4sI",
        b"RIFF",
        WAV_UNKNOWN_SIZE,
        b"WAVE",
        b"fmt ",
        16,  # fmt chunk size (plain PCM WAVEFORMAT)
        1,  # WAVE_FORMAT_PCM
        1,  # channels
        sample_rate,
        sample_rate * 2,  # byte rate
        2,  # block align
        16,  # bits per sample
        b"data",
        WAV_UNKNOWN_SIZE,
    )
