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
- ``ulaw_8000`` / ``alaw_8000``: raw G.711 mu-law / A-law bytes at 8 kHz, one byte per
  sample, no header (Twilio Media Streams, SIP/RTP PCMU and PCMA payloads).

Codecs and containers are libav's through PyAV; resampling is libsoxr's streaming
resampler. The encoder never holds back more audio than the codec needs, except for
Opus: libav's Ogg muxer keeps the newest page until the next one is complete (it may
have to mark that page end-of-stream), so the last 20 ms packet of each chunk goes out
with the next chunk. See ``python -m bench audio_codecs`` for measured latencies.
"""

from __future__ import annotations

from typing import Final, Literal

import numpy as np
import numpy.typing as npt
import soxr

from voxtrio.audio._backends import EncoderFormat as EncoderFormat
from voxtrio.audio._backends import _AvBackend, _Backend, _G711Backend, _PcmBackend
from voxtrio.audio._pcm import WAV_UNKNOWN_SIZE as WAV_UNKNOWN_SIZE
from voxtrio.audio._pcm import NonFiniteAudio as NonFiniteAudio
from voxtrio.audio._pcm import (
    _as_float_mono,
    wav_header,
)
from voxtrio.audio._pcm import check_finite as check_finite
from voxtrio.audio._pcm import float_to_pcm16 as float_to_pcm16
from voxtrio.protocol._formats import (
    AUDIO_FORMATS,
    FIXED_RATE_FORMATS,
    OPUS_BIT_RATE_RANGE,
    SUPPORTED_RATES,
    mp3_bit_rates,
)
from voxtrio.protocol._formats import (
    AudioFormat as AudioFormat,
)

ENCODER_FORMATS: Final[tuple[EncoderFormat, ...]] = (*AUDIO_FORMATS, "aac")

# Rates the Opus codec itself runs at. A request for another rate is encoded at the
# next Opus rate up (22050 -> 24000, 44100 -> 48000), as ffmpeg picks for `-c:a libopus`:
# Opus decoders play every stream at 48 kHz anyway (RFC 7845 §5.1) and the OpusHead rate
# is informational, so this loses no band the client asked for and spends no bits on
# bands it did not. `AudioEncoder.sample_rate` reports the rate actually encoded.
OPUS_RATES: Final = (8000, 12000, 16000, 24000, 48000)


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

# Largest `volume` (+40 dB): DashScope's 0-100 volume maps to far less than this.
MAX_VOLUME: Final = 100.0
# Input samples are bounded to ±16 before gain and resampling (see AudioEncoder.encode).
_PRE_CLIP: Final = 16.0


EncoderSetting = Literal["format", "sample_rate", "bit_rate", "volume"]


class InvalidEncoderSetting(ValueError):
    """An `AudioEncoder` argument it cannot honour; `setting` names which one."""

    def __init__(self, setting: EncoderSetting, message: str) -> None:
        super().__init__(message)
        self.setting: EncoderSetting = setting


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
        fixed_rate = FIXED_RATE_FORMATS.get(fmt)
        if fixed_rate is not None and output_rate not in (None, fixed_rate):
            raise InvalidEncoderSetting(
                "sample_rate", f"{fmt} is {fixed_rate} Hz only, not {output_rate!r}"
            )
        requested = output_rate if output_rate is not None else fixed_rate or self.input_rate
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
        elif fixed_rate is not None:
            self._backend = _G711Backend(fmt, rate)
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

    @property
    def batchable(self) -> bool:
        """pcm16 or WAV at the input rate, unit volume: `PcmBatchEncoder` takes it."""
        return (
            self._resampler is None
            and self.volume == 1.0
            and isinstance(self._backend, _PcmBackend)
            and not self._finished
        )

    def emit_quantized(self, quantized: npt.NDArray[np.int16]) -> bytes:
        """`encode`'s bytes for a chunk already clipped and quantised (`batchable` only)."""
        assert isinstance(self._backend, _PcmBackend)
        self.samples_in += quantized.size
        self.samples_out += quantized.size
        return self._backend.emit(quantized)

    @property
    def holds_nothing_back(self) -> bool:
        """PCM or WAV at the input rate: `finish` costs next to nothing (no codec, no
        resampler to flush), so it need not leave the event loop."""
        return self._resampler is None and isinstance(self._backend, _PcmBackend)

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
