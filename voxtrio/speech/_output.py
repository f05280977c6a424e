"""One request's output stream: the encoder (and speed/pitch stretcher) from start to end.

`speak` owns an `OutputStream` for its whole life: it opens it from an `OutputSpec`,
hands `transform` to the model instance's thread (check, stretch, encode next to the model),
and runs everything else the encoder does (silence, the stretcher's tail, the final
flush) on a worker thread. Nothing here runs codec work on the event loop, and
nothing is used by two threads at once: between generations no job holds it.
"""

from __future__ import annotations

from collections.abc import Sequence

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
from voxtrio.audio._pcm_batch import PcmBatchEncoder
from voxtrio.audio._tsm import TempoStretch, output_seconds
from voxtrio.speech._errors import InvalidOutput, OutputSetting


@attrs.frozen(kw_only=True)
class OutputSpec:
    """What the client asked to hear: format, rate, volume, speed and (DashScope) pitch."""

    format: EncoderFormat = "pcm16"
    sample_rate: int | None = None  # None: the model's own rate (or the format's own)
    bit_rate: int | None = None
    volume: float = 1.0
    # Speed factor (native/OpenAI `speed`, DashScope `rate`): 2.0 is twice as fast.
    rate: float = 1.0
    pitch: float = 1.0  # DashScope only; needs the optional Rubber Band extra

    @property
    def needs_stretch(self) -> bool:
        return self.rate != 1.0 or self.pitch != 1.0


def _stretcher(spec: OutputSpec, input_rate: int) -> StreamingStretch | TempoStretch | None:
    """Speed alone: libavfilter's atempo (LGPL, always there); pitch: Rubber Band (GPL extra)."""
    try:
        if spec.pitch != 1.0:
            return StreamingStretch(spec.rate, spec.pitch, input_rate)
        if spec.rate != 1.0:
            return TempoStretch(spec.rate, input_rate)
    except (TypeError, ValueError) as exc:
        setting: OutputSetting = "pitch" if spec.pitch != 1.0 else "speed"
        raise InvalidOutput(setting, str(exc)) from None
    return None


@attrs.frozen
class EncodedAudio:
    data: bytes
    samples: int  # output-rate samples this piece added


class OutputStream:
    """An `AudioEncoder` behind an optional stretcher (`TempoStretch` for speed alone,
    `StreamingStretch` when pitch changes too), for one request."""

    def __init__(self, spec: OutputSpec, *, input_rate: int) -> None:
        # First: it allocates nothing until used, so refusing it leaks no codec.
        self._stretch = _stretcher(spec, input_rate)
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
        self.speed = spec.rate

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

    def output_seconds(self, model_seconds: float) -> float:
        """Where `model_seconds` into an utterance's model audio is in this stream's
        output (see `voxtrio.audio._tsm.output_seconds`, the one definition)."""
        return output_seconds(model_seconds, self.speed)

    @property
    def batchable(self) -> bool:
        """No stretcher and an encoder `PcmBatchEncoder` takes (pcm16/WAV as is)."""
        return self._stretch is None and self.encoder.batchable

    def transform(self, chunk: np.ndarray) -> EncodedAudio:
        """Model instance thread, per chunk: refuse NaN/inf, stretch, encode."""
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
        """Flush the resampler, codec and container trailer (off the event loop, unless
        there is nothing to flush: a thread hop costs more than PCM's flush)."""
        if self.encoder.holds_nothing_back:
            await trio.lowlevel.checkpoint()
            return self.encoder.finish()
        return await trio.to_thread.run_sync(self.encoder.finish)

    def close(self) -> None:
        if isinstance(self._stretch, TempoStretch):
            self._stretch.close()
        self.encoder.close()


class BatchTransform:
    """`transform` for many `batchable` streams' chunks at once (a model thread's own:
    it keeps its buffers between steps, `PcmBatchEncoder`)."""

    def __init__(self) -> None:
        self._encoder = PcmBatchEncoder()

    def release(self) -> None:
        """Give the buffers back while the model thread has nothing to encode."""
        self._encoder.release()

    def __call__(
        self, streams: Sequence[OutputStream], chunks: Sequence[np.ndarray]
    ) -> list[EncodedAudio | None]:
        """`streams[i].transform(chunks[i])` for `gatherable` chunks of one length; None
        where a chunk is not finite (its stream is untouched: `transform` it alone for
        the error)."""
        encoded = self._encoder.encode([stream.encoder for stream in streams], chunks)
        return [
            None if data is None else EncodedAudio(data, len(chunk))
            for data, chunk in zip(encoded, chunks, strict=True)
        ]
