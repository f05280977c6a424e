"""The synthetic engine: a distinct, steady tone per seed that costs next to nothing per chunk."""

from __future__ import annotations

import numpy as np
import pytest

from voxtrio.speech._engine import SynthesisSpec
from voxtrio.speech._synthetic import (
    SyntheticEngine,
    seed_frequency,
    tone_tables_computed,
    tone_tables_live,
)
from voxtrio.speech.batched._synthetic import BatchedSynthetic

STREAMS = 1000
# Every pitch the grid has at the default chunk (110-989 Hz in 3.125 Hz steps).
GRID_PITCHES = 283


def _specs(count: int) -> list[SynthesisSpec]:
    return [SynthesisSpec(text="a" * 400, seed=seed) for seed in range(count)]


def _dominant_hz(samples: np.ndarray, rate: int) -> float:
    spectrum = np.abs(np.fft.rfft(samples.astype(np.float64)))
    return float(np.argmax(spectrum) * rate / len(samples))


def _unshared_engine() -> SyntheticEngine:
    """160 ms chunks at a rate no other test uses: tables no warmed-up engine holds."""
    return SyntheticEngine(sample_rate=32000, chunk_samples=5120)


def test_a_thousand_streams_compute_a_bounded_number_of_tone_tables() -> None:
    """1,000 distinct streams stepping on compute each grid pitch once, never per chunk."""
    before = tone_tables_computed()
    model = BatchedSynthetic(_unshared_engine(), max_batch=STREAMS)
    rows = model.prefill(_specs(STREAMS))
    for _ in range(3):
        model.step(rows)
    computed = tone_tables_computed() - before
    assert 0 < computed <= GRID_PITCHES
    for _ in range(5):
        model.step(rows)
    assert tone_tables_computed() - before == computed


def test_tone_tables_are_freed_once_no_stream_holds_them() -> None:
    """Before warm-up, a load's tables do not outlive it: released rows and closed
    generations free theirs."""
    engine = _unshared_engine()
    model = BatchedSynthetic(engine, max_batch=STREAMS)
    rows = model.prefill(_specs(STREAMS))
    chunks = model.step(rows)
    generation = engine.generate(SynthesisSpec(text="a" * 40, seed=5), lambda s: None)
    next(generation)
    assert tone_tables_live(engine) >= GRID_PITCHES - 1
    for row in rows:
        model.release(row)
    del chunks
    assert tone_tables_live(engine) == 1  # the generation's, still running
    generation.close()
    assert tone_tables_live(engine) == 0


def test_a_warmed_up_engine_holds_every_table_while_it_lives() -> None:
    """warm_up keeps one table per grid pitch; they go with the engine."""
    engine = _unshared_engine()
    engine.warm_up()
    assert tone_tables_live(engine) >= GRID_PITCHES - 1
    del engine
    assert tone_tables_live(_unshared_engine()) == 0


def test_a_chunk_is_a_read_only_view_into_a_shared_table() -> None:
    """No array is made per chunk: the chunk borrows a cached table's memory."""
    engine = SyntheticEngine()
    first, second = engine.tone(440.0, 1), engine.tone(440.0, 1 + 2 * 10)
    assert not first.flags.owndata
    assert not first.flags.writeable
    assert np.shares_memory(first, second)
    assert first.dtype == np.float32
    assert len(first) == engine.chunk_samples


@pytest.mark.parametrize("seed", [0, 3, 330, 879, 1000])
def test_the_tone_is_within_two_hz_of_the_seeds_pitch(seed: int) -> None:
    """Seed s sounds at 110 + s % 880 Hz (to the 3.125 Hz grid), continuously over chunks."""
    engine = SyntheticEngine()
    spec = SynthesisSpec(text="a" * 4 * 12, seed=seed)
    audio = np.concatenate(list(engine.generate(spec, lambda step: None)))
    assert len(audio) == 12 * engine.chunk_samples
    assert _dominant_hz(audio, engine.sample_rate) == pytest.approx(seed_frequency(seed), abs=2)
    # Chunks join without a jump: the largest step between samples is a sine's.
    assert np.max(np.abs(np.diff(audio))) < 0.3 * 2 * np.pi * 1000 / engine.sample_rate * 1.01


def test_batched_rows_get_the_engines_samples() -> None:
    """A batched row's chunks are the samples the one-stream engine yields for that seed."""
    engine = SyntheticEngine()
    spec = SynthesisSpec(text="a" * 4 * 5, seed=77)
    alone = list(engine.generate(spec, lambda step: None))
    model = BatchedSynthetic(SyntheticEngine(), max_batch=1)
    rows = model.prefill([spec])
    batched = [model.step(rows)[0].audio for _ in range(5)]
    for mine, theirs in zip(batched, alone, strict=True):
        np.testing.assert_array_equal(mine, theirs)


def test_a_warmed_up_engine_computes_no_table_for_its_streams() -> None:
    """warm_up computes every pitch's table; 1,000 distinct streams then compute none."""
    engine = _unshared_engine()
    engine.warm_up()
    before = tone_tables_computed()
    model = BatchedSynthetic(engine, max_batch=STREAMS)
    rows = model.prefill(_specs(STREAMS))
    model.step(rows)
    assert tone_tables_computed() == before
