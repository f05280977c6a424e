"""What a request gives back whole (Speech); its pieces are the protocol's AudioChunk."""

from __future__ import annotations

import os
from pathlib import Path

import attrs

from voxtrio.client._wav import write_atomically, write_wav
from voxtrio.protocol._formats import AudioFormat
from voxtrio.protocol._messages import SynthesisResult


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
