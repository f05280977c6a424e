"""The real engine: voxcpm's loader and generator on a tiny random-weight checkpoint."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from voxtrio.speech._engine import GenerationStopped, SynthesisSpec
from voxtrio.speech._voxcpm_engine import VoxCPMEngine, VoxCPMOptions
from voxtrio.tools._tiny_model import expected_chunks

TEXT = "Hello from a tiny model."


@pytest.fixture(scope="module")
def engine(tiny_model_dir: Path) -> VoxCPMEngine:
    engine = VoxCPMEngine.load(
        VoxCPMOptions(model=str(tiny_model_dir), device="cpu", warm_normalizer=False)
    )
    engine.warm_up()
    return engine


def run(engine: VoxCPMEngine, spec: SynthesisSpec) -> tuple[list[np.ndarray], list[int]]:
    steps: list[int] = []
    chunks = list(engine.generate(spec, steps.append))
    return chunks, steps


def test_loads_through_voxcpm_at_the_model_rate(engine: VoxCPMEngine) -> None:
    """The tiny VoxCPM2 checkpoint loads through voxcpm's loader at 48 kHz."""
    assert engine.sample_rate == 48000
    assert engine.architecture == "voxcpm2"


def test_streaming_length_is_voxcpm_cap(engine: VoxCPMEngine, tiny_model_dir: Path) -> None:
    """A never-stopping model yields exactly voxcpm's cap of 7680-sample chunks."""
    spec = SynthesisSpec(text=TEXT, seed=1)
    chunks, steps = run(engine, spec)
    expected = expected_chunks(tiny_model_dir, TEXT)
    assert engine.max_steps(spec) == expected == len(chunks)
    assert steps == list(range(1, expected + 1))
    assert {c.shape for c in chunks} == {(7680,)}
    assert all(c.dtype == np.float32 for c in chunks)


def test_max_len_caps_the_length(engine: VoxCPMEngine) -> None:
    """max_len bounds the number of chunks."""
    chunks, _ = run(engine, SynthesisSpec(text=TEXT, max_len=5, seed=1))
    assert len(chunks) == 5


def test_same_seed_same_audio(engine: VoxCPMEngine) -> None:
    """Same text and seed give bit-identical audio; another seed gives other audio."""
    a, _ = run(engine, SynthesisSpec(text=TEXT, max_len=6, seed=7))
    b, _ = run(engine, SynthesisSpec(text=TEXT, max_len=6, seed=7))
    c, _ = run(engine, SynthesisSpec(text=TEXT, max_len=6, seed=8))
    assert np.array_equal(np.concatenate(a), np.concatenate(b))
    assert not np.array_equal(np.concatenate(a), np.concatenate(c))


def test_non_streaming_equals_joined_stream(engine: VoxCPMEngine) -> None:
    """Non-streaming returns one array equal to the joined streaming chunks."""
    streamed, _ = run(engine, SynthesisSpec(text=TEXT, max_len=6, seed=3))
    (whole,), steps = run(
        engine, SynthesisSpec(text=TEXT, max_len=6, seed=3, streaming=False, retry_badcase=False)
    )
    assert steps == list(range(1, 7))
    np.testing.assert_allclose(whole, np.concatenate(streamed), atol=1e-6)


def test_badcase_retry_regenerates_in_non_streaming(engine: VoxCPMEngine) -> None:
    """A run as long as voxcpm's bad-case threshold is retried up to retry_badcase_max_times."""
    spec = SynthesisSpec(
        text=TEXT, streaming=False, retry_badcase=True, retry_badcase_max_times=2, seed=1
    )
    (whole,), steps = run(engine, spec)
    cap = engine.max_steps(spec)
    # The tiny model never stops, so every attempt hits the cap and counts as a bad case.
    assert steps == list(range(1, cap + 1)) * 2
    assert whole.shape == (cap * 7680,)


def test_zero_retries_still_generates_once(engine: VoxCPMEngine) -> None:
    """retry_badcase_max_times=0 still generates (voxcpm itself would crash here)."""
    spec = SynthesisSpec(text=TEXT, streaming=False, retry_badcase_max_times=0, max_len=3)
    (whole,), _ = run(engine, spec)
    assert whole.shape == (3 * 7680,)


def test_a_stop_at_a_step_ends_generation_and_reuse_is_clean(engine: VoxCPMEngine) -> None:
    """Stopping mid-stream closes voxcpm's generator; the next run is bit-exact again."""
    reference, _ = run(engine, SynthesisSpec(text=TEXT, max_len=6, seed=5))

    def stop_at_three(step: int) -> None:
        if step == 3:
            raise GenerationStopped

    stream = engine.generate(SynthesisSpec(text=TEXT, seed=9), stop_at_three)
    with pytest.raises(GenerationStopped):
        for _ in stream:
            pass
    again, _ = run(engine, SynthesisSpec(text=TEXT, max_len=6, seed=5))
    assert np.array_equal(np.concatenate(reference), np.concatenate(again))


def test_abandoned_stream_closed_early_leaves_the_model_clean(engine: VoxCPMEngine) -> None:
    """A stream closed after one chunk (client gone) does not corrupt the next generation."""
    reference, _ = run(engine, SynthesisSpec(text=TEXT, max_len=4, seed=2))
    stream = engine.generate(SynthesisSpec(text=TEXT, seed=4), lambda _: None)
    next(stream)
    stream.close()
    again, _ = run(engine, SynthesisSpec(text=TEXT, max_len=4, seed=2))
    assert np.array_equal(np.concatenate(reference), np.concatenate(again))
