"""voxcpm's bad-case retry on the one engine path: batched VoxCPM behind a step loop."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import attrs
import numpy as np
import trio

from voxtrio.speech._engine import SynthesisSpec
from voxtrio.speech._pool import InstancePool
from voxtrio.speech.batched._loop import LoadedModel, ModelInstance
from voxtrio.speech.batched._scheduler import retry_spec
from voxtrio.speech.batched._voxcpm import BatchedVoxCPM

from .conftest import Loaded

TEXT = "Hello there."


@asynccontextmanager
async def instance_pool(loaded: Loaded) -> AsyncIterator[tuple[InstancePool, ModelInstance]]:
    engine = loaded.engine

    def load() -> LoadedModel:
        return LoadedModel(engine, BatchedVoxCPM(engine, max_batch=2), engine.badcase_steps)

    instance = ModelInstance(0, load)
    pool = InstancePool([instance])
    try:
        with trio.fail_after(60):
            await pool.start()
        yield pool, instance
    finally:
        with trio.CancelScope(shield=True):
            await pool.aclose()


async def _audio(pool: InstancePool, spec: SynthesisSpec) -> np.ndarray:
    with trio.fail_after(120):
        async with pool.run(spec, request_id="r") as (job, chunks):
            pieces = [chunk async for chunk in chunks]
            await job.done.wait()
    assert job.result is not None
    job.result.unwrap()
    return np.concatenate(pieces)


async def test_a_bad_case_is_generated_again_and_the_last_attempt_is_kept(loaded: Loaded) -> None:
    """Never-stopping weights run to voxcpm's cap, a bad case every time: three attempts,
    and the audio is the third one, the same as a stream of its re-seeded spec."""
    # Ratio 1: the cap is tokens + 10 chunks, a bad case from `tokens` chunks on.
    spec = SynthesisSpec(text=TEXT, streaming=False, seed=11, retry_badcase_ratio_threshold=1.0)
    async with instance_pool(loaded) as (pool, instance):
        audio = await _audio(pool, spec)
        assert instance.stats.prefills == 3
        last = as_stream(retry_spec(spec, 3))
        np.testing.assert_array_equal(audio, await _audio(pool, last))
        first = await _audio(pool, as_stream(spec))
    assert audio.size == first.size  # both ran to voxcpm's cap
    assert not np.array_equal(audio, first)


async def test_retry_off_or_a_stream_is_one_attempt(loaded: Loaded) -> None:
    """`retry_badcase=False` (and any streaming request) generates once."""
    spec = SynthesisSpec(
        text=TEXT, streaming=False, retry_badcase=False, seed=11, retry_badcase_ratio_threshold=1.0
    )
    async with instance_pool(loaded) as (pool, instance):
        await _audio(pool, spec)
        await _audio(pool, as_stream(spec))
        assert instance.stats.prefills == 2


def as_stream(spec: SynthesisSpec) -> SynthesisSpec:
    return attrs.evolve(spec, streaming=True)
