"""One request's output stream: the encoder (and rate/pitch stretcher) from start to end.

`speak` owns an `OutputStream` for its whole life: it opens it from an `OutputSpec`,
hands `transform` to the replica thread (check, stretch, encode next to the model),
and runs everything else the encoder does (silence, the stretcher's tail, the final
flush) on a worker thread. Nothing here runs codec work on the event loop, and
nothing is used by two threads at once: between generations no job holds it.
"""

from __future__ import annotations

import attrs
import numpy as np
import trio

from voxtrio.audio._codecs import (
    AudioEncoder,
    EncoderFormat,
    InvalidEncoderSetting,
    check_finite,
)
from voxtrio.audio._dsp import StreamingStretch
from voxtrio.speech._errors import InvalidOutput


@attrs.frozen(kw_only=True)
class OutputSpec:
    """What the client asked to hear: format, rate, and the DashScope volume/rate/pitch."""

    format: EncoderFormat = "pcm16"
    sample_rate: int | None = None  # None: the model's own rate
    bit_rate: int | None = None
    volume: float = 1.0
    rate: float = 1.0
    pitch: float = 1.0

    @property
    def needs_stretch(self) -> bool:
        return self.rate != 1.0 or self.pitch != 1.0


@attrs.frozen
class EncodedAudio:
    data: bytes
    samples: int  # output-rate samples this piece added


class OutputStream:
    """An `AudioEncoder` behind an optional `StreamingStretch`, for one request."""

    def __init__(self, spec: OutputSpec, *, input_rate: int) -> None:
        try:
            self.encoder = AudioEncoder(
                spec.format,
                input_rate=input_rate,
                output_rate=spec.sample_rate,
                bit_rate=spec.bit_rate,
                volume=spec.volume,
            )
        except InvalidEncoderSetting as exc:
            raise InvalidOutput(exc.setting, str(exc)) from None
        self.input_rate = input_rate
        self._stretch = (
            StreamingStretch(spec.rate, spec.pitch, input_rate) if spec.needs_stretch else None
        )

    @property
    def format(self) -> EncoderFormat:
        return self.encoder.format

    @property
    def sample_rate(self) -> int:
        return self.encoder.sample_rate

    @property
    def samples_in(self) -> int:
        return self.encoder.samples_in

    @property
    def samples_out(self) -> int:
        return self.encoder.samples_out

    @property
    def duration(self) -> float:
        return self.encoder.duration

    def transform(self, chunk: np.ndarray) -> EncodedAudio:
        """Replica thread, per chunk: refuse NaN/inf, stretch, encode."""
        before = self.encoder.samples_out
        if self._stretch is not None:
            check_finite(chunk)  # before the stretcher smears a NaN over its window
            chunk = self._stretch.process(chunk)
        # encode() refuses NaN/inf with NonFiniteAudio before it encodes anything.
        data = self.encoder.encode(chunk)
        return EncodedAudio(data, self.encoder.samples_out - before)

    async def silence(self, ms: int) -> bytes:
        """`ms` of silence, encoded off the event loop (seconds of mp3 cost real time)."""
        if ms <= 0:
            return b""
        samples = np.zeros(self.input_rate * ms // 1000, np.float32)
        return await trio.to_thread.run_sync(self.encoder.encode, samples)

    async def end_utterance(self) -> bytes:
        """After a generation: the stretcher's held-back tail, encoded."""
        stretch = self._stretch
        if stretch is None:
            return b""
        return await trio.to_thread.run_sync(lambda: self.encoder.encode(stretch.flush()))

    async def finish(self) -> bytes:
        """Flush the resampler, codec and container trailer (off the event loop)."""
        return await trio.to_thread.run_sync(self.encoder.finish)

    def close(self) -> None:
        self.encoder.close()
