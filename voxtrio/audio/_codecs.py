"""Streaming audio encoding and resampling for TTS output (sans-IO: bytes in, bytes out).

The engine yields mono float32 chunks at the model's rate; the server must hand each
one to the client as soon as it exists. An `AudioEncoder` turns every chunk into the
bytes a live client can decode the moment they arrive, in the requested format:

- ``pcm16``: raw little-endian int16 samples, no header.
- ``wav``: a 44-byte PCM WAVE header first, then raw int16 samples. The total length
  is unknown when the header goes out, so the RIFF and data chunk sizes are both
  0xFFFFFFFF, what ffmpeg writes to a pipe; readers take that as "until end of
  stream" (libsndfile, Python's wave module and ffmpeg do).
- ``mp3``: whole MPEG audio frames (LAME, CBR), no ID3 tag and no Xing/LAME info frame
  (that frame's counts can only be filled in by seeking back, which a stream can't).
- ``opus``: Ogg pages (Ogg Opus, RFC 7845, as OpenAI and DashScope send it), one 20 ms
  Opus packet per page.
- ``flac``: the ``fLaC`` stream header (STREAMINFO with total samples 0 = unknown,
  MD5 unset) first, then whole FLAC frames of 20 ms.

Codecs and containers are libav's through PyAV; resampling is libsoxr's streaming
resampler. The encoder never holds back more audio than the codec needs, except for
Opus: libav's Ogg muxer keeps the newest page until the next one is complete (it may
have to mark that page end-of-stream), so the last 20 ms packet of each chunk goes out
with the next chunk. See ``bench/codecs_bench.py`` for measured latencies.
"""

from __future__ import annotations

import math
import struct
from dataclasses import dataclass, field
from typing import Final, Literal, Protocol

import av
import numpy as np
import numpy.typing as npt
import soxr
from av.audio.stream import AudioStream

from voxtrio.protocol._formats import (
    AUDIO_FORMATS,
    OPUS_BIT_RATE_RANGE,
    SUPPORTED_RATES,
    AudioFormat,
    mp3_bit_rates,
)

# What the encoder writes: the protocol's formats, and AAC (ADTS), which only the
# OpenAI-compatible endpoint offers (its clients ask for it; the native protocol's do not).
EncoderFormat = AudioFormat | Literal["aac"]
ENCODER_FORMATS: Final[tuple[EncoderFormat, ...]] = (*AUDIO_FORMATS, "aac")

# Rates the Opus codec itself runs at. A request for another rate is encoded at the
# next Opus rate up (22050 -> 24000, 44100 -> 48000), as ffmpeg picks for `-c:a libopus`:
# Opus decoders play every stream at 48 kHz anyway (RFC 7845 §5.1) and the OpusHead rate
# is informational, so this loses no band the client asked for and spends no bits on
# bands it did not. `AudioEncoder.sample_rate` reports the rate actually encoded.
OPUS_RATES: Final = (8000, 12000, 16000, 24000, 48000)

# Written for both the RIFF and the data chunk size of a streamed WAV header.
WAV_UNKNOWN_SIZE: Final = 0xFFFFFFFF


def _default_mp3_bit_rate(sample_rate: int) -> int:
    # Generous for mono speech at every rate (ElevenLabs' default is 128k at 44.1 kHz).
    if sample_rate >= 32000:
        return 128_000
    if sample_rate >= 16000:
        return 64_000
    return 32_000


# The most libav's libopus wrapper takes per channel (see OPUS_BIT_RATE_RANGE).
_OPUS_MONO_MAX_BIT_RATE: Final = 256_000
OPUS_DEFAULT_BIT_RATE: Final = 32_000

# Codec frame length for Opus (its default and best trade-off) and FLAC. FLAC's libav
# default is ~100 ms blocks, which would hold back up to 100 ms of every chunk; 20 ms
# blocks compress speech within ±3% of that (measured at 16, 24 and 48 kHz).
_FRAME_MS: Final = 20

# Largest `volume` (+40 dB): DashScope's 0-100 volume maps to far less than this.
MAX_VOLUME: Final = 100.0
# Input samples are bounded to ±16 before gain and resampling (see AudioEncoder.encode).
_PRE_CLIP: Final = 16.0


class NonFiniteAudio(ValueError):
    """Audio holding NaN or ±inf (a model that went wrong)."""


EncoderSetting = Literal["format", "sample_rate", "bit_rate", "volume"]


class InvalidEncoderSetting(ValueError):
    """An `AudioEncoder` argument it cannot honour; `setting` names which one."""

    def __init__(self, setting: EncoderSetting, message: str) -> None:
        super().__init__(message)
        self.setting: EncoderSetting = setting


def check_finite(chunk: npt.ArrayLike) -> None:
    """Raise NonFiniteAudio("non-finite audio") if `chunk` holds NaN or ±inf."""
    x = np.asarray(chunk)
    if x.dtype in (np.float32, np.float16) and x.ndim == 1:
        # One pass instead of isfinite + all (each numpy call here hands the GIL to
        # other replica threads): a float64 sum of float32 values is finite exactly
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


def _quantize16(chunk: np.ndarray) -> npt.NDArray[np.int16]:
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
    return _quantize16(_as_float_mono(chunk)).tobytes()


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


class _Backend(Protocol):
    def encode(self, samples: npt.NDArray[np.float32]) -> bytes: ...
    def finish(self) -> bytes: ...
    def close(self) -> None: ...


class _PcmBackend:
    """pcm16 and wav: quantize with numpy; wav puts its header before the first bytes."""

    def __init__(self, header: bytes) -> None:
        self._header = header

    def encode(self, samples: npt.NDArray[np.float32]) -> bytes:
        header, self._header = self._header, b""
        return header + _quantize16(samples).tobytes()

    def finish(self) -> bytes:
        # A stream with no audio still gets its (valid, empty) WAV header.
        header, self._header = self._header, b""
        return header

    def close(self) -> None:
        pass


class _Sink:
    """Write-only file object for libav to write into.

    It has no seek/tell on purpose: PyAV then opens the output as non-seekable, so the
    muxers never go back to patch bytes we already sent (FLAC's STREAMINFO, MP3's Xing
    frame) and write streaming-friendly headers up front.
    """

    def __init__(self) -> None:
        self._buffer = bytearray()

    def write(self, data: bytes) -> int:
        self._buffer += data
        return len(data)

    def take(self) -> bytes:
        data = bytes(self._buffer)
        self._buffer.clear()
        return data


@dataclass(frozen=True)
class _AvSpec:
    container: str
    codec: str
    sample_format: str
    container_options: dict[str, str] = field(default_factory=dict)


_AV_SPECS: Final[dict[str, _AvSpec]] = {
    "mp3": _AvSpec(
        "mp3",
        "libmp3lame",
        "fltp",
        # No ID3v2 tag, so the stream is frames from byte 0 (clients may join anywhere);
        # no Xing frame, whose counts only a seekable output could fill in.
        {"id3v2_version": "0", "write_xing": "0"},
    ),
    "opus": _AvSpec(
        "ogg",
        "libopus",
        "flt",
        # The muxer holds back the newest complete page, and by default fills pages for
        # 1 s: one packet per page bounds the hold-back to one packet (20 ms), for
        # 28 bytes of page header per packet (~11 kbit/s).
        {"page_duration": str(_FRAME_MS * 1000)},
    ),
    "flac": _AvSpec(
        "flac",
        "flac",
        "s16",
        # The default 8 KiB PADDING block only serves in-place tag edits of files.
        {"metadata_header_padding": "0"},
    ),
    # ADTS: a header on every frame, so the stream decodes from any point (no moov atom).
    "aac": _AvSpec("adts", "aac", "fltp"),
}


class _AvBackend:
    """mp3/opus/flac/aac through a PyAV (libav) encoder and muxer writing into a `_Sink`."""

    def __init__(self, fmt: EncoderFormat, sample_rate: int, bit_rate: int | None) -> None:
        spec = _AV_SPECS[fmt]
        self._sample_format = spec.sample_format
        self._sample_rate = sample_rate
        self._pts = 0
        codec_options: dict[str, str] = {}
        if bit_rate is not None:
            codec_options["b"] = str(bit_rate)
        if fmt == "mp3":
            # The bit reservoir lets a frame's data start in earlier frames, so LAME
            # can only release a frame once later ones are coded: ~50 ms more latency.
            codec_options["reservoir"] = "0"
        elif fmt == "opus":
            codec_options["frame_duration"] = str(_FRAME_MS)
        elif fmt == "flac":
            codec_options["frame_size"] = str(sample_rate * _FRAME_MS // 1000)
        self._sink = _Sink()
        self._container = av.open(
            self._sink, "w", format=spec.container, container_options=spec.container_options
        )
        stream = self._container.add_stream(spec.codec, rate=sample_rate, options=codec_options)
        if not isinstance(stream, AudioStream):  # narrows add_stream's union for mypy
            raise TypeError(f"{spec.codec} is not an audio codec")
        stream.codec_context.layout = "mono"
        stream.codec_context.format = spec.sample_format
        self._stream = stream
        # Opens the codec now (bad options fail in the constructor, not mid-stream) and
        # writes the container header, which goes out with the first chunk.
        self._container.start_encoding()

    def encode(self, samples: npt.NDArray[np.float32]) -> bytes:
        if samples.size:
            data: np.ndarray = _quantize16(samples) if self._sample_format == "s16" else samples
            frame = av.AudioFrame.from_ndarray(
                data.reshape(1, -1), format=self._sample_format, layout="mono"
            )
            frame.sample_rate = self._sample_rate
            frame.pts = self._pts
            self._pts += samples.size
            # PyAV re-blocks arbitrary frames into the codec's frame size internally.
            self._container.mux(self._stream.encode(frame))
        return self._sink.take()

    def finish(self) -> bytes:
        self._container.mux(self._stream.encode(None))
        self._container.close()  # writes the trailer (Opus: the last page, marked EOS)
        self._release()
        return self._sink.take()

    def close(self) -> None:
        # PyAV's streams and container reference each other, so without this an
        # abandoned encoder's codec lives until the cyclic GC runs.
        self._container.close()
        self._release()
        self._sink.take()

    def _release(self) -> None:
        # Drop the closed container and stream now: libav keeps each encoder's codec
        # threads alive for as long as anything (a reference cycle) holds them.
        del self._stream
        del self._container


def _rate(name: str, value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int | np.integer) or value <= 0:
        raise InvalidEncoderSetting(
            "sample_rate", f"{name} must be a positive integer, not {value!r}"
        )
    return int(value)


def _check_bit_rate(fmt: EncoderFormat, sample_rate: int, bit_rate: object) -> int | None:
    """Validate `bit_rate` (bits/s) for `fmt`; return the effective one (None = n/a)."""
    if fmt not in ("mp3", "opus"):
        if bit_rate is not None:
            raise InvalidEncoderSetting(
                "bit_rate", f"bit_rate applies to mp3 and opus only, not {fmt}"
            )
        return None
    if bit_rate is None:
        return _default_mp3_bit_rate(sample_rate) if fmt == "mp3" else OPUS_DEFAULT_BIT_RATE
    if isinstance(bit_rate, bool) or not isinstance(bit_rate, int | np.integer):
        raise InvalidEncoderSetting(
            "bit_rate", f"bit_rate must be an integer (bits/s), not {bit_rate!r}"
        )
    if fmt == "mp3":
        allowed = mp3_bit_rates(sample_rate)
        if bit_rate not in allowed:
            raise InvalidEncoderSetting(
                "bit_rate",
                f"mp3 bit_rate at {sample_rate} Hz must be one of "
                f"{', '.join(str(b) for b in allowed)} (bits/s), not {bit_rate!r}",
            )
    else:
        low, high = OPUS_BIT_RATE_RANGE
        if not low <= bit_rate <= high:
            raise InvalidEncoderSetting(
                "bit_rate", f"opus bit_rate must be from {low} to {high} (bits/s), not {bit_rate!r}"
            )
        return min(int(bit_rate), _OPUS_MONO_MAX_BIT_RATE)
    return int(bit_rate)


class AudioEncoder:
    """Encode one stream of mono float audio chunk by chunk into `format`.

    Per chunk: refuse NaN/inf (ValueError, nothing consumed), apply `volume`, resample
    to `sample_rate` (soxr, streaming), clip to [-1, 1], encode. Every call returns the
    bytes that became complete, which a client can decode appended to what it already
    has; b"" means the codec has not completed a frame/page yet. `finish()` flushes the
    resampler, the codec and the container trailer; `close()` abandons a stream that
    will not be finished (a cancelled request) and frees the codec at once. One per
    stream; not thread-safe; cheap to create (µs for pcm16/wav, ~25 µs more with a
    resampler, ~0.1 ms for opus/flac, ~0.6 ms for mp3, mostly LAME's setup).

    `samples_in` counts input samples accepted, `samples_out` output-rate samples
    handed to the codec (codec padding not included), so `samples_out / sample_rate`
    is the duration the client gets.
    """

    format: EncoderFormat
    input_rate: int
    sample_rate: int  # output rate actually encoded (see OPUS_RATES for opus)
    bit_rate: int | None  # bits/s for mp3/opus, None for the lossless formats
    volume: float
    samples_in: int
    samples_out: int

    def __init__(
        self,
        fmt: EncoderFormat,
        *,
        input_rate: int,
        output_rate: int | None = None,
        bit_rate: int | None = None,
        volume: float = 1.0,
    ) -> None:
        if fmt not in ENCODER_FORMATS:
            raise InvalidEncoderSetting(
                "format",
                f"unsupported audio format {fmt!r}; expected one of {', '.join(ENCODER_FORMATS)}",
            )
        self.input_rate = _rate("input_rate", input_rate)
        requested = self.input_rate if output_rate is None else output_rate
        if isinstance(requested, bool) or requested not in SUPPORTED_RATES:
            raise InvalidEncoderSetting(
                "sample_rate",
                f"unsupported output sample rate {requested!r}; expected one of "
                f"{', '.join(str(r) for r in SUPPORTED_RATES)}",
            )
        rate = int(requested)
        if fmt == "opus":
            rate = min(r for r in OPUS_RATES if r >= rate)
        if isinstance(volume, bool) or not isinstance(volume, int | float):
            raise InvalidEncoderSetting("volume", f"volume must be a number, not {volume!r}")
        if not 0 <= volume <= MAX_VOLUME:  # also refuses NaN
            raise InvalidEncoderSetting(
                "volume", f"volume must be a gain from 0 to {MAX_VOLUME}, not {volume!r}"
            )
        self.format = fmt
        self.sample_rate = rate
        self.bit_rate = _check_bit_rate(fmt, rate, bit_rate)
        self.volume = float(volume)
        self.samples_in = 0
        self.samples_out = 0
        self._finished = False
        self._resampler = (
            None
            if self.input_rate == rate
            else soxr.ResampleStream(self.input_rate, rate, 1, dtype="float32", quality="HQ")
        )
        self._backend: _Backend
        if fmt == "pcm16":
            self._backend = _PcmBackend(b"")
        elif fmt == "wav":
            self._backend = _PcmBackend(wav_header(rate))
        else:
            self._backend = _AvBackend(fmt, rate, self.bit_rate)

    @property
    def duration(self) -> float:
        """Seconds of audio encoded so far (`samples_out / sample_rate`)."""
        return self.samples_out / self.sample_rate

    def encode(self, chunk: np.ndarray) -> bytes:
        """Encode one chunk; return the bytes ready to send now (may be b"")."""
        if self._finished:
            raise RuntimeError("encode() on a finished or closed encoder")
        x = _as_float_mono(chunk)
        self.samples_in += x.size
        # Samples this far out are garbage that ends up at ±1 anyway; bounding them first
        # keeps float32 (a float64 1e300 would become inf), the gain and the resampler
        # finite. Float32 going straight to 16-bit PCM is clipped there; skip a pass.
        if not (
            x.dtype == np.float32
            and self.volume == 1.0
            and self._resampler is None
            and isinstance(self._backend, _PcmBackend)
        ):
            x = np.clip(x, -_PRE_CLIP, _PRE_CLIP).astype(np.float32, copy=False)
        if self.volume != 1.0:
            x = x * np.float32(self.volume)
        if self._resampler is not None:
            x = self._resampler.resample_chunk(np.ascontiguousarray(x))
        return self._encode_out(x)

    def finish(self) -> bytes:
        """Flush everything held back and end the stream; a second call returns b""."""
        if self._finished:
            return b""
        self._finished = True
        data = b""
        if self._resampler is not None:
            tail = self._resampler.resample_chunk(np.zeros(0, np.float32), last=True)
            data = self._encode_out(tail)
        return data + self._backend.finish()

    def close(self) -> None:
        """Abandon the stream: free the codec now, produce nothing more. Idempotent."""
        if not self._finished:
            self._finished = True
            self._backend.close()

    def _encode_out(self, x: npt.NDArray[np.float32]) -> bytes:
        # Clip after gain and after resampling, whose ringing can overshoot full scale.
        x = np.clip(x, -1.0, 1.0)
        self.samples_out += x.size
        return self._backend.encode(x)
