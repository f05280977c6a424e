"""Many pcm16/WAV streams' chunks encoded together, for a model thread.

A step loop encodes every row's chunk on the model's thread while the event loop
runs on another, and each numpy call there hands the GIL over; while the loop is
busy, getting it back can take far longer than the call (`speech/batched/_gil.py`
says why). Row by row that is five hand-overs a row: a thousand rows took 739 ms
beside a busy loop instead of 20 (docs/BENCHMARKS.md, issue 20). Here the rows of a
block are gathered with plain memory copies, which keep the GIL, and a block costs
four numpy calls whatever its row count, none of them a buffered cast (which hands
the GIL over once per 8,192 samples). The buffers are kept between steps (fresh
ones for a thousand rows were 75 MB of new pages a step) and given back when the
model thread idles.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np
import numpy.typing as npt

if TYPE_CHECKING:
    from voxtrio.audio._codecs import AudioEncoder

# Samples a block holds: 12 MB of buffers (float32 and int16), 273 rows of 160 ms at
# 48 kHz, so a thousand rows take 4 blocks (16 numpy calls).
BLOCK_SAMPLES = 1 << 21
_FULL_SCALE = np.float32(32767.0)
_NO_FLOATS = np.empty(0, np.float32)
_NO_INTS = np.empty(0, "<i2")


def gatherable(chunk: np.ndarray) -> bool:
    """A chunk `PcmBatchEncoder` takes: 1-D, float32, contiguous, not empty."""
    return (
        chunk.dtype == np.float32
        and chunk.ndim == 1
        and chunk.size > 0
        and chunk.flags.c_contiguous
    )


class PcmBatchEncoder:
    """`encode` for many `batchable` encoders' chunks: the same bytes, a few numpy calls."""

    def __init__(self, block_samples: int = BLOCK_SAMPLES) -> None:
        self.block_samples = block_samples
        self._floats = _NO_FLOATS
        self._ints = _NO_INTS

    def release(self) -> None:
        """Give the buffers back (the next `encode` allocates them again)."""
        self._floats = _NO_FLOATS
        self._ints = _NO_INTS

    def encode(
        self, encoders: Sequence[AudioEncoder], chunks: Sequence[npt.NDArray[np.float32]]
    ) -> list[bytes | None]:
        """`encoders[i].encode(chunks[i])` for every i.

        Every encoder must be `batchable`, every chunk `gatherable` and all of one
        length. A chunk holding NaN or inf gets None and its encoder is left untouched
        (`encode` it alone for the error).
        """
        if not chunks:
            return []
        length = chunks[0].size
        per_block = max(1, self.block_samples // length)
        room = min(len(chunks), per_block) * length
        if self._floats.size < room:
            self._floats = np.empty(room, np.float32)
            self._ints = np.empty(room, "<i2")
        out: list[bytes | None] = []
        for start in range(0, len(chunks), per_block):
            block = chunks[start : start + per_block]
            out += self._encode_block(encoders[start : start + len(block)], block, length)
        return out

    def _encode_block(
        self,
        encoders: Sequence[AudioEncoder],
        block: Sequence[npt.NDArray[np.float32]],
        length: int,
    ) -> list[bytes | None]:
        rows = len(block)
        floats = self._floats[: rows * length]
        raw = floats.data.cast("B")
        size = length * 4
        for index, chunk in enumerate(block):  # memcpy under the GIL: no hand-over
            raw[index * size : (index + 1) * size] = chunk.data.cast("B")
        grid = floats.reshape(rows, length)
        finite = [True] * rows
        # One pass, and no cast (see below): a float32 sum is finite when every sample is
        # (NaN and inf propagate); only if it is not, the exact float64 check per row.
        if not math.isfinite(np.add.reduce(floats)):
            finite = np.isfinite(np.add.reduce(grid, axis=1, dtype=np.float64)).tolist()
            grid[[not ok for ok in finite]] = 0.0  # its bytes are dropped
        # quantize16's passes: clip(x, ±1) x 32767 == clip(x x 32767, ±32767). All in
        # float32 and the cast last, on its own: a pass that casts as it goes is
        # buffered, and hands the GIL over once per 8,192 samples.
        np.multiply(floats, _FULL_SCALE, out=floats)
        np.clip(floats, -_FULL_SCALE, _FULL_SCALE, out=floats)
        np.rint(floats, out=floats)
        ints = self._ints[: rows * length]
        np.copyto(ints, floats, casting="unsafe")
        quantized = ints.reshape(rows, length)
        return [
            encoder.emit_quantized(row) if ok else None
            for encoder, row, ok in zip(encoders, quantized, finite, strict=True)
        ]
