"""Speed changes that keep the pitch (time-scale modification), streamed chunk by chunk.

libavfilter's ``atempo`` through PyAV, which the encoder already depends on: a WSOLA
family stretcher (overlap-add of windowed fragments placed by FFT cross-correlation),
in C, LGPL like the rest of PyAV's bundled FFmpeg, so the default install takes on no
new licence and no new package. Chosen over the alternatives because it streams with
its state carried across chunks: chunked output equals whole-buffer output bit for
bit (tests/audio/test_tsm.py), so chunk seams cannot click. The alternatives: audiotsm
(MIT, streaming WSOLA) has had no release since 2017; libtsm (MIT) and librosa's
phase vocoder are whole-buffer only; pytsmod is GPL-3.0; Rubber Band (pylibrb) is
GPL-2.0 and stays the optional extra for DashScope's `pitch` (voxtrio.audio._dsp).

`output_seconds` is the one place that maps a time in the model's audio to a time in
what the client hears; anything timed against the model's audio (word timestamps)
goes through it.
"""

from __future__ import annotations

import itertools
import math
from fractions import Fraction
from typing import Final

import av
import numpy as np
import numpy.typing as npt
from av.filter import Graph

from voxtrio.protocol._limits import SPEED_RANGE

__all__ = ["SPEED_RANGE", "TempoStretch", "output_seconds"]

# atempo takes one factor from 0.5 to 100 per instance; slower speeds chain two.
_ATEMPO_MIN: Final = 0.5
# Input is pushed in 10 ms frames. atempo emits an output frame only once it holds
# 1/speed times the input frame it came from, so a whole 160 ms model chunk pushed at
# once would come out a chunk late; 10 ms frames leave only atempo's own look-ahead
# (measured at 24 kHz: 25-60 ms of output for speeds 0.5-4, 200 ms at 0.25).
_BLOCKS_PER_SECOND: Final = 100


def output_seconds(model_seconds: float, speed: float) -> float:
    """Where `model_seconds` into an utterance's model audio lands in the output.

    A `TempoStretch` makes each utterance exactly ``round(samples / speed)`` samples
    long, so this is exact at utterance ends and within the stretcher's window
    (tens of ms) inside one. Silence the server adds itself (SSML breaks) is not
    stretched: map only times within the model's audio through this.
    """
    return model_seconds / speed


def check_speed(speed: float) -> float:
    """`speed` as a float, or ValueError when it is not a number in SPEED_RANGE."""
    if isinstance(speed, bool) or not isinstance(speed, int | float):
        raise TypeError(f"speed must be a number, not {speed!r}")
    low, high = SPEED_RANGE
    if not low <= speed <= high:  # also refuses NaN
        raise ValueError(f"speed must be between {low} and {high}, not {speed!r}")
    return float(speed)


def _stages(speed: float) -> list[float]:
    """atempo factors whose product is `speed`, each within atempo's own range."""
    if speed >= _ATEMPO_MIN:
        return [speed]
    # Two equal stages (0.25 -> 0.5 x 0.5) rather than 0.5 and a remainder: each stage
    # then stretches as little as it can.
    return [math.sqrt(speed)] * 2


class TempoStretch:
    """Play mono float audio `speed` times as fast (2.0: half as long), pitch unchanged.

    Feed one utterance's chunks to :meth:`process`, which returns the output ready now;
    :meth:`flush` returns the rest, exactly ``round(samples_in / speed)`` samples in all,
    and readies the object for the next utterance. :meth:`close` frees the filter graph.
    Not thread-safe: one per output stream, used by one thread at a time.
    """

    def __init__(self, speed: float, sample_rate: int) -> None:
        self.speed = check_speed(speed)
        if isinstance(sample_rate, bool) or not isinstance(sample_rate, int) or sample_rate <= 0:
            raise ValueError(f"sample_rate must be a positive integer, not {sample_rate!r}")
        self.sample_rate = sample_rate
        self._graph: Graph | None = None
        self._in = 0  # input samples of the current utterance
        self._out = 0  # output samples returned for it

    def process(self, chunk: np.ndarray) -> npt.NDArray[np.float32]:
        """Stretch one chunk; return the output that is ready now (possibly none)."""
        x = np.ascontiguousarray(chunk, dtype=np.float32)
        if x.ndim != 1:
            raise ValueError(f"audio must be mono (1-D), got shape {x.shape}")
        if not x.size:
            return np.zeros(0, np.float32)
        graph = self._graph or self._open()
        block = max(1, self.sample_rate // _BLOCKS_PER_SECOND)
        parts = []
        for start in range(0, x.size, block):
            piece = x[start : start + block]
            frame = av.AudioFrame.from_ndarray(piece.reshape(1, -1), format="flt", layout="mono")
            frame.sample_rate = self.sample_rate
            frame.pts = self._in
            self._in += piece.size
            graph.push(frame)
            parts.append(self._drain(graph))
        y = np.concatenate(parts)
        self._out += y.size
        return y

    def flush(self) -> npt.NDArray[np.float32]:
        """End the utterance: the rest of its output, trimmed or padded to the exact length."""
        graph = self._graph
        if graph is None:
            return np.zeros(0, np.float32)
        graph.push(None)
        tail = self._drain(graph)
        want = round(self._in / self.speed) - self._out
        # atempo's length is within ~2 % of in/speed; make it exact so `output_seconds`
        # holds at every utterance end and the request's timeline adds up.
        tail = tail[: max(want, 0)] if tail.size >= want else np.pad(tail, (0, want - tail.size))
        self._graph, self._in, self._out = None, 0, 0
        return tail

    def close(self) -> None:
        """Drop the filter graph (a cancelled request); idempotent."""
        self._graph, self._in, self._out = None, 0, 0

    def _open(self) -> Graph:
        graph = Graph()
        # One graph per stream: without this libavfilter starts a worker pool of one
        # thread per core for every graph, and atempo does not use it.
        graph.threads = 1
        nodes = [
            graph.add_abuffer(
                sample_rate=self.sample_rate,
                format="flt",
                layout="mono",
                time_base=Fraction(1, self.sample_rate),
            )
        ]
        nodes += [graph.add("atempo", repr(factor)) for factor in _stages(self.speed)]
        nodes.append(graph.add("abuffersink"))
        for upstream, downstream in itertools.pairwise(nodes):
            upstream.link_to(downstream)
        graph.configure()
        self._graph = graph
        return graph

    @staticmethod
    def _drain(graph: Graph) -> npt.NDArray[np.float32]:
        parts: list[npt.NDArray[np.float32]] = []
        while True:
            try:
                frame = graph.pull()
            except (av.error.BlockingIOError, av.error.EOFError):
                break
            parts.append(frame.to_ndarray().reshape(-1).astype(np.float32, copy=False))
        return np.concatenate(parts) if parts else np.zeros(0, np.float32)
