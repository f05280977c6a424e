"""The encoder's back ends: raw PCM/WAV bytes, and libav codecs and muxers via PyAV."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Final, Literal, Protocol

import av
import numpy as np
import numpy.typing as npt
from av.audio.stream import AudioStream

from voxtrio.audio._pcm import FRAME_MS, quantize16
from voxtrio.protocol._formats import AudioFormat

# What the encoder writes: the protocol's formats, and AAC (ADTS), which only the
# OpenAI-compatible endpoint offers (its clients ask for it; the native protocol's do not).
EncoderFormat = AudioFormat | Literal["aac"]


class _Backend(Protocol):
    def encode(self, samples: npt.NDArray[np.float32]) -> bytes: ...
    def finish(self) -> bytes: ...
    def close(self) -> None: ...


class _PcmBackend:
    """pcm16 and wav: quantize with numpy; wav puts its header before the first bytes."""

    def __init__(self, header: bytes) -> None:
        self._header = header

    def encode(self, samples: npt.NDArray[np.float32]) -> bytes:
        return self.emit(quantize16(samples))

    def emit(self, quantized: npt.NDArray[np.int16]) -> bytes:
        """Bytes for samples already quantised (`PcmBatchEncoder` does many at once)."""
        header, self._header = self._header, b""
        return header + quantized.tobytes()

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
        {"page_duration": str(FRAME_MS * 1000)},
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


# libav's G.711 encoders (ITU-T G.711 tables, 16-bit linear in, one byte per sample).
_G711_CODECS: Final[dict[str, str]] = {"ulaw_8000": "pcm_mulaw", "alaw_8000": "pcm_alaw"}


class _G711Backend:
    """ulaw_8000/alaw_8000: raw G.711 bytes, no header (what Twilio and SIP carry)."""

    def __init__(self, fmt: EncoderFormat, sample_rate: int) -> None:
        codec = av.CodecContext.create(_G711_CODECS[fmt], "w")
        if not isinstance(codec, av.AudioCodecContext):  # narrows for mypy
            raise TypeError(f"{fmt} is not an audio codec")
        codec.sample_rate = sample_rate
        codec.layout = "mono"
        codec.format = "s16"
        codec.open()
        self._codec: av.AudioCodecContext | None = codec
        self._sample_rate = sample_rate
        self._pts = 0

    def encode(self, samples: npt.NDArray[np.float32]) -> bytes:
        if not samples.size or self._codec is None:
            return b""
        frame = av.AudioFrame.from_ndarray(
            quantize16(samples).reshape(1, -1), format="s16", layout="mono"
        )
        frame.sample_rate = self._sample_rate
        frame.pts = self._pts
        self._pts += samples.size
        # A PCM codec has no frame size or delay: each frame comes back as one packet.
        return b"".join(bytes(packet) for packet in self._codec.encode(frame))

    def finish(self) -> bytes:
        codec, self._codec = self._codec, None
        if codec is None:
            return b""
        return b"".join(bytes(packet) for packet in codec.encode(None))

    def close(self) -> None:
        self._codec = None


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
            codec_options["frame_duration"] = str(FRAME_MS)
        elif fmt == "flac":
            codec_options["frame_size"] = str(sample_rate * FRAME_MS // 1000)
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
            data: np.ndarray = quantize16(samples) if self._sample_format == "s16" else samples
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
