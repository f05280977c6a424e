"""Saving audio: a WAV file from 16-bit PCM, or any bytes, written atomically."""

from __future__ import annotations

import array
import contextlib
import io
import os
import sys
import uuid
import wave
from pathlib import Path


def write_wav(path: str | os.PathLike[str], pcm: bytes, sample_rate: int) -> None:
    """Write mono 16-bit PCM (s16le) as a WAV file, atomically: temp file, then rename."""
    if len(pcm) % 2:
        raise ValueError(f"16-bit audio needs an even number of bytes, got {len(pcm)}")
    if sample_rate <= 0:
        raise ValueError(f"sample_rate must be positive, got {sample_rate}")
    if sys.byteorder == "big":
        # `wave` takes native-order samples and swaps them on big-endian hosts.
        samples = array.array("h", pcm)
        samples.byteswap()
        pcm = samples.tobytes()
    buffer = io.BytesIO()
    with wave.open(buffer, "wb") as wav:
        wav.setnchannels(1)
        wav.setsampwidth(2)
        wav.setframerate(sample_rate)
        wav.writeframes(pcm)
    write_atomically(Path(path), buffer.getvalue())


def write_atomically(target: Path, data: bytes) -> None:
    """Write a temporary file beside `target`, then rename it: never a half-written file."""
    temporary = target.with_name(f".{target.name}.{uuid.uuid4().hex[:12]}.tmp")
    try:
        with open(temporary, "xb") as raw:  # "x": honours the umask, unlike mkstemp's 0600
            raw.write(data)
            raw.flush()
            os.fsync(raw.fileno())
        os.replace(temporary, target)
    except BaseException:
        with contextlib.suppress(OSError):
            temporary.unlink()
        raise
