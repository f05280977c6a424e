"""PcmBatchEncoder (voxtrio.audio._pcm_batch): many streams' chunks, the bytes each
encoder gives alone, over buffers it keeps."""

from __future__ import annotations

import tracemalloc

import numpy as np
import pytest

from voxtrio.audio._codecs import AudioEncoder, AudioFormat
from voxtrio.audio._pcm_batch import PcmBatchEncoder, gatherable


def _batch_rows(count: int, length: int, seed: int = 0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    # Past full scale on purpose: the batch must clip like `encode` does.
    return [rng.uniform(-1.3, 1.3, length).astype(np.float32) for _ in range(count)]


@pytest.mark.parametrize("fmt", ["pcm16", "wav"])
def test_a_batch_encodes_each_chunk_to_the_bytes_its_encoder_gives_alone(fmt: AudioFormat) -> None:
    """PcmBatchEncoder over several blocks, twice: byte for byte what `encode` returns."""
    batch = PcmBatchEncoder(block_samples=3 * 480)
    together = [AudioEncoder(fmt, input_rate=24000) for _ in range(7)]
    alone = [AudioEncoder(fmt, input_rate=24000) for _ in range(7)]
    for step in range(2):  # WAV's header only in the first piece
        chunks = _batch_rows(7, 480, seed=step)
        expected = [encoder.encode(chunk) for encoder, chunk in zip(alone, chunks, strict=True)]
        assert batch.encode(together, chunks) == expected
    assert [e.samples_out for e in together] == [e.samples_out for e in alone] == [960] * 7


def test_a_non_finite_chunk_in_a_batch_gets_none_and_leaves_its_encoder_untouched() -> None:
    """The bad row gets None (its encoder unchanged, header unsent); the others encode."""
    chunks = _batch_rows(4, 480)
    chunks[2][17] = np.nan
    encoders = [AudioEncoder("wav", input_rate=24000) for _ in range(4)]
    pieces = PcmBatchEncoder(block_samples=2 * 480).encode(encoders, chunks)
    assert pieces[2] is None
    assert encoders[2].samples_out == 0
    assert len(encoders[2].finish()) == 44  # the header alone: nothing was sent
    reference = AudioEncoder("wav", input_rate=24000)
    assert pieces[0] == reference.encode(chunks[0])


def test_a_batch_keeps_its_buffers_between_calls() -> None:
    """A second call of the same shape allocates little beyond the bytes it returns."""
    batch = PcmBatchEncoder(block_samples=4 * 48000)
    encoders = [AudioEncoder("pcm16", input_rate=48000) for _ in range(12)]
    chunks = _batch_rows(12, 48000)
    batch.encode(encoders, chunks)
    tracemalloc.start()
    try:
        pieces = batch.encode(encoders, chunks)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    returned = sum(len(piece or b"") for piece in pieces)
    # Fresh buffers for one block of four rows would add 1.1 MB (float32 and int16).
    assert peak < returned + 200_000


def test_release_gives_the_buffers_back() -> None:
    """After `release` the block's buffers are freed; the next call still encodes."""
    batch = PcmBatchEncoder(block_samples=4 * 48000)
    encoders = [AudioEncoder("pcm16", input_rate=48000) for _ in range(4)]
    chunks = _batch_rows(4, 48000)
    tracemalloc.start()
    try:
        batch.encode(encoders, chunks)
        held, _ = tracemalloc.get_traced_memory()
        batch.release()
        after, _ = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert held - after > 0.9 * 4 * 48000 * 6  # float32 and int16 for four rows
    assert batch.encode(encoders, chunks) == [
        AudioEncoder("pcm16", input_rate=48000).encode(chunk) for chunk in chunks
    ]


@pytest.mark.parametrize(
    "chunk",
    [
        np.zeros(8, np.float64),
        np.zeros(16, np.float32)[::2],
        np.zeros((2, 4), np.float32),
        np.zeros(0, np.float32),
    ],
    ids=["float64", "strided", "2-D", "empty"],
)
def test_only_flat_contiguous_float32_chunks_are_gatherable(chunk: np.ndarray) -> None:
    """`gatherable` refuses what a memory copy of float32 rows cannot take."""
    assert gatherable(np.zeros(8, np.float32))
    assert not gatherable(chunk)
