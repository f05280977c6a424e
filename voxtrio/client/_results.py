"""What a request gives back: audio chunks as they arrive, or the whole speech."""

from __future__ import annotations

import os
from pathlib import Path

import attrs

from voxtrio.client._wav import write_atomically, write_wav
from voxtrio.protocol._formats import AudioFormat
from voxtrio.protocol._messages import SynthesisResult


@attrs.frozen
class AudioChunk:
    """A piece of audio. A non-streaming request yields one, with sequence 0.

    With the default format, pcm16, `pcm` is mono 16-bit little-endian PCM;
    with another `format` (wav, mp3, opus, flac) it holds the next bytes of
    that encoded stream, and the chunks concatenated make the whole file.
    """

    pcm: bytes = attrs.field(repr=lambda pcm: f"<{len(pcm)} bytes>")
    sample_rate: int
    sequence: int
    format: AudioFormat = "pcm16"

    @property
    def samples(self) -> int | None:
        """Samples in this chunk; None for an encoded format (see the result's `samples`)."""
        return len(self.pcm) // 2 if self.format == "pcm16" else None

    @property
    def duration(self) -> float | None:
        samples = self.samples
        return None if samples is None else samples / self.sample_rate


@attrs.frozen
class Speech:
    """Everything one request produced (`VoxtrioClient.speak`)."""

    pcm: bytes = attrs.field(repr=lambda pcm: f"<{len(pcm)} bytes>")
    sample_rate: int
    result: SynthesisResult
    format: AudioFormat = "pcm16"

    @property
    def duration(self) -> float:
        return self.result.duration

    def save(self, path: str | os.PathLike[str]) -> None:
        """Write it to a file, atomically: pcm16 as a WAV file, other formats as they came."""
        if self.format == "pcm16":
            write_wav(path, self.pcm, self.sample_rate)
        else:
            write_atomically(Path(path), self.pcm)
