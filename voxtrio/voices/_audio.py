"""Prompt audio for voice cloning: decode untrusted bytes, check them, resample, write WAV.

Uploaded and fetched prompts are untrusted. :func:`decode_prompt_audio` accepts
WAV, FLAC, MP3 and Ogg (Vorbis/Opus) only, recognised by their magic bytes, so
arbitrary files never reach a demuxer. libsndfile (soundfile) decodes them; PyAV
(FFmpeg) is the fallback for the odd file of those formats libsndfile refuses.
Memory stays bounded whatever a header claims: the size is checked before
decoding, frames are read in blocks and downmixed as they come, and reading stops
one block after the duration cap.

Everything comes out float32 mono at the model's prompt rate (soxr, high quality),
which is what voxcpm's prompt encoder resamples to anyway, so its own load is a
plain read.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import os
import uuid
from pathlib import Path
from typing import Any, Final, Literal

import attrs
import numpy as np
import soundfile
import soxr

from voxtrio.protocol._limits import MAX_PROMPT_BYTES

PromptFormat = Literal["wav", "flac", "mp3", "ogg"]

MIN_SOURCE_RATE: Final = 8000
MAX_SOURCE_RATE: Final = 192_000
MAX_CHANNELS: Final = 32

SILENCE_DBFS: Final = -50.0
"""A 30 ms window is "sound" when its RMS (DC removed) reaches this level."""
MIN_SOUND_SECONDS: Final = 0.5
"""A prompt needs at least this much sound; less is refused as silent."""
CLIP_LEVEL: Final = 0.999
MAX_CLIPPED_FRACTION: Final = 0.05
"""More than this share of samples at full scale is refused as clipped."""

_WINDOW_SECONDS: Final = 0.03
_BLOCK_SAMPLES: Final = 1 << 20  # samples (frames x channels) per read: 4 MB of float32


class VoiceAudioError(ValueError):
    """Prompt audio the server refuses; `field` names the request field at fault."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field
        self.message = message


@attrs.frozen(eq=False)
class PromptAudio:
    """Decoded prompt audio: float32 mono samples at `sample_rate`."""

    samples: np.ndarray = attrs.field(repr=False)
    sample_rate: int
    duration: float
    source_rate: int
    format: PromptFormat
    sha256: str
    """SHA-256 of the encoded input bytes (the key for fetched prompts)."""


def sniff_format(data: bytes) -> PromptFormat | None:
    """The container named by the first bytes, or None for anything not accepted.

    ID3v2 tags are skipped first and what follows is judged on its own: decoders skip
    them too, so a tag in front of, say, AIFF would otherwise smuggle it past the list.
    """
    data = _skip_id3_tags(data)
    if len(data) >= 12 and data[:4] in (b"RIFF", b"RIFX", b"RF64") and data[8:12] == b"WAVE":
        return "wav"
    if data[:4] == b"fLaC":
        return "flac"
    if data[:4] == b"OggS":
        return "ogg"
    # A bare MPEG audio frame (11-bit sync, layer bits not "reserved").
    if len(data) >= 2 and data[0] == 0xFF and data[1] & 0xE6 in (0xE2, 0xE4, 0xE6):
        return "mp3"
    return None


_ID3_HEADER = 10
_MAX_ID3_TAGS = 4


def _skip_id3_tags(data: bytes) -> bytes:
    """`data` after any leading ID3v2 tags; b"" when a tag is malformed or runs past the end."""
    for _ in range(_MAX_ID3_TAGS):
        if data[:3] != b"ID3":
            return data
        header = data[:_ID3_HEADER]
        if len(header) < _ID3_HEADER or any(b & 0x80 for b in header[6:10]):
            return b""
        size = _syncsafe(header[6:10])
        footer = _ID3_HEADER if header[5] & 0x10 else 0
        end = _ID3_HEADER + size + footer
        if end > len(data):
            return b""
        data = data[end:]
    return b""


def _syncsafe(four: bytes) -> int:
    """ID3v2 sizes are 4 bytes of 7 bits each."""
    return (four[0] << 21) | (four[1] << 14) | (four[2] << 7) | four[3]


def decode_prompt_audio(
    data: bytes,
    *,
    target_rate: int,
    min_seconds: float = 1.0,
    max_seconds: float = 30.0,
    max_bytes: int = MAX_PROMPT_BYTES,
    field: str = "audio",
) -> PromptAudio:
    """Decode, check and resample prompt audio, or raise VoiceAudioError naming `field`."""
    if not data:
        raise VoiceAudioError(field, "is empty")
    if len(data) > max_bytes:
        raise VoiceAudioError(field, f"too large: {len(data)} bytes, at most {max_bytes}")
    fmt = sniff_format(data)
    if fmt is None:
        raise VoiceAudioError(field, "not a supported audio file (expected WAV, FLAC, MP3 or Ogg)")
    try:
        mono, rate = _decode_soundfile(data, field=field, max_seconds=max_seconds)
    except VoiceAudioError:
        raise
    except Exception as sf_exc:
        # Not only LibsndfileError: a malformed file can surface as other errors.
        if isinstance(sf_exc, MemoryError):
            raise
        mono, rate = _decode_pyav(data, fmt, field=field, max_seconds=max_seconds)
    if mono.size == 0:
        raise VoiceAudioError(field, "contains no audio samples")
    duration = mono.size / rate
    if duration < min_seconds:
        raise VoiceAudioError(field, f"too short: {duration:.2f} s, at least {min_seconds:g} s")
    if not np.isfinite(mono).all():
        raise VoiceAudioError(field, "contains NaN or infinite samples")
    _check_levels(mono, rate, field)
    if rate != target_rate:
        mono = soxr.resample(mono, rate, target_rate, quality="HQ").astype(np.float32, copy=False)
    np.clip(mono, -1.0, 1.0, out=mono)
    return PromptAudio(
        samples=mono,
        sample_rate=target_rate,
        duration=round(duration, 4),
        source_rate=rate,
        format=fmt,
        sha256=hashlib.sha256(data).hexdigest(),
    )


def _check_rate_and_channels(rate: int, channels: int, field: str) -> None:
    if not MIN_SOURCE_RATE <= rate <= MAX_SOURCE_RATE:
        raise VoiceAudioError(
            field,
            f"unsupported sample rate {rate} Hz (need {MIN_SOURCE_RATE}-{MAX_SOURCE_RATE})",
        )
    if not 1 <= channels <= MAX_CHANNELS:
        raise VoiceAudioError(field, f"unsupported channel count {channels}")


def _too_long(field: str, max_seconds: float) -> VoiceAudioError:
    return VoiceAudioError(field, f"too long: more than {max_seconds:g} s")


def _decode_soundfile(data: bytes, *, field: str, max_seconds: float) -> tuple[np.ndarray, int]:
    with soundfile.SoundFile(io.BytesIO(data)) as sf:
        rate, channels = int(sf.samplerate), int(sf.channels)
        _check_rate_and_channels(rate, channels, field)
        # The header's frame count can lie (a 10-hour claim on 2 s of data): never
        # trust it for allocation, read in blocks and stop past the cap.
        max_frames = int(max_seconds * rate)
        block = max(1, _BLOCK_SAMPLES // channels)
        parts: list[np.ndarray] = []
        total = 0
        while total <= max_frames:
            chunk = sf.read(block, dtype="float32", always_2d=True)
            if chunk.shape[0] == 0:
                break
            parts.append(chunk.mean(axis=1, dtype=np.float32) if channels > 1 else chunk[:, 0])
            total += chunk.shape[0]
    if total > max_frames:
        raise _too_long(field, max_seconds)
    mono = np.concatenate(parts) if parts else np.zeros(0, np.float32)
    return np.ascontiguousarray(mono, dtype=np.float32), rate


def _metadata_options(av_version: str) -> dict[str, Any]:
    """`av.open` options that keep undecodable tag bytes from failing the open.

    (Typed loosely: the accepted keywords differ between PyAV versions.)

    PyAV 18 and older decode tags strictly unless told `metadata_errors="ignore"`;
    PyAV 19 removed that argument (tags are decoded with surrogateescape, never raising).
    """
    major = int(av_version.split(".", 1)[0])
    return {"metadata_errors": "ignore"} if major < 19 else {}


def _decode_pyav(
    data: bytes, fmt: PromptFormat, *, field: str, max_seconds: float
) -> tuple[np.ndarray, int]:
    import av

    options = _metadata_options(av.__version__)

    parts: list[np.ndarray] = []
    total = 0
    rate = 0
    try:
        # The demuxer is forced to the sniffed format: FFmpeg never probes
        # (and never opens some other container hidden in the bytes).
        with av.open(io.BytesIO(data), mode="r", format=fmt, **options) as container:
            if not container.streams.audio:
                raise VoiceAudioError(field, "has no audio stream")
            stream = container.streams.audio[0]
            rate = int(stream.codec_context.sample_rate or 0)
            channels = int(stream.codec_context.channels or 0)
            _check_rate_and_channels(rate, channels, field)
            # Float planar at the stream's first rate and layout, whatever later frames say.
            resampler = av.AudioResampler(format="fltp", layout=stream.layout, rate=rate)
            max_frames = int(max_seconds * rate)
            for frame in container.decode(stream):
                for converted in resampler.resample(frame):
                    planes = converted.to_ndarray()
                    parts.append(planes.mean(axis=0, dtype=np.float32))
                    total += planes.shape[1]
                if total > max_frames:
                    raise _too_long(field, max_seconds)
    except VoiceAudioError:
        raise
    except MemoryError:
        raise
    except Exception:
        raise VoiceAudioError(field, f"could not be decoded as {fmt.upper()} audio") from None
    mono = np.concatenate(parts) if parts else np.zeros(0, np.float32)
    return np.ascontiguousarray(mono, dtype=np.float32), rate


def sound_seconds(mono: np.ndarray, rate: int) -> float:
    """Seconds of 30 ms windows whose RMS, DC removed, reaches SILENCE_DBFS."""
    window = max(1, int(rate * _WINDOW_SECONDS))
    usable = mono.size - mono.size % window
    if usable == 0:
        return 0.0
    # float64: the DC-removed energy of quiet audio is far below float32's resolution.
    frames = mono[:usable].astype(np.float64).reshape(-1, window)
    frames -= frames.mean(axis=1, keepdims=True)
    rms = np.sqrt(np.mean(frames * frames, axis=1))
    loud = np.count_nonzero(rms >= 10 ** (SILENCE_DBFS / 20))
    return float(loud * window / rate)


def _check_levels(mono: np.ndarray, rate: int, field: str) -> None:
    clipped = np.count_nonzero(np.abs(mono) >= CLIP_LEVEL) / mono.size
    if clipped > MAX_CLIPPED_FRACTION:
        raise VoiceAudioError(
            field, f"heavily clipped: {clipped:.0%} of samples at full scale (at most 5%)"
        )
    sound = sound_seconds(mono, rate)
    if sound < MIN_SOUND_SECONDS:
        raise VoiceAudioError(
            field,
            f"silent: {sound:.2f} s above {SILENCE_DBFS:g} dBFS, at least {MIN_SOUND_SECONDS:g} s",
        )


def encode_wav(samples: np.ndarray, rate: int) -> bytes:
    """16-bit PCM mono WAV bytes (what voxcpm's librosa / torchaudio loaders read)."""
    buffer = io.BytesIO()
    clipped = np.clip(np.asarray(samples, dtype=np.float32), -1.0, 1.0)
    soundfile.write(buffer, clipped, rate, format="WAV", subtype="PCM_16")
    return buffer.getvalue()


def write_bytes_atomic(path: Path, data: bytes) -> None:
    """Write a file so a reader (or a crash) only ever sees all of it or none of it."""
    tmp = path.with_name(f".{path.name}.tmp-{uuid.uuid4().hex}")
    try:
        with open(tmp, "wb") as file:
            file.write(data)
            file.flush()
            os.fsync(file.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        raise
    fsync_dir(path.parent)


def write_wav_atomic(path: Path, samples: np.ndarray, rate: int) -> str:
    """Write a 16-bit mono WAV atomically; return the SHA-256 of the bytes written."""
    data = encode_wav(samples, rate)
    write_bytes_atomic(path, data)
    return hashlib.sha256(data).hexdigest()


def fsync_dir(path: Path) -> None:
    """Make a rename or new entry in `path` durable (best effort where unsupported)."""
    with contextlib.suppress(OSError):
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
