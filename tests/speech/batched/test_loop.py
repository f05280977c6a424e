"""The step loop on its thread: joins, leaves, skipped readers, failures, retries,
one terminal outcome each (the scheduler's decisions alone: test_scheduler.py)."""

from __future__ import annotations

import threading
import time
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager, suppress
from typing import Any

import numpy as np
import outcome
import pytest
import trio

from voxtrio.audio._codecs import AudioEncoder, NonFiniteAudio
from voxtrio.speech import _jobs
from voxtrio.speech._engine import SynthesisSpec
from voxtrio.speech._jobs import Job
from voxtrio.speech._mailbox import Call, LoopMailbox
from voxtrio.speech._output import BatchTransform, OutputSpec, OutputStream
from voxtrio.speech._pool import InstancePool
from voxtrio.speech._synthetic import SyntheticEngine
from voxtrio.speech.batched._clock import LEAD_SHARE
from voxtrio.speech.batched._factory import model_instances
from voxtrio.speech.batched._interface import StepResult
from voxtrio.speech.batched._loop import LoadedModel, ModelInstance
from voxtrio.speech.batched._scheduler import BadcaseRule, Scheduler, never_badcase, retry_spec
from voxtrio.speech.batched._synthetic import BatchedSynthetic, SyntheticRow

LONG = "a" * 400  # 100 synthetic steps


class GatedPrefill(BatchedSynthetic):
    """Prefill waits for `gate` (to cancel a request while it is being prefilled)."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.entered = threading.Event()
        self.gate = threading.Event()

    def prefill(self, specs: Sequence[SynthesisSpec]) -> list[SyntheticRow]:
        self.entered.set()
        assert self.gate.wait(10)
        return super().prefill(specs)


class GatedStep(BatchedSynthetic):
    """Once `hold` is set, the next step waits for `gate` (requests arrive meanwhile)."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.hold = False
        self.entered = threading.Event()
        self.gate = threading.Event()

    def step(self, rows: Sequence[SyntheticRow]) -> list[StepResult]:
        if self.hold:
            self.hold = False
            self.entered.set()
            assert self.gate.wait(10)
        return super().step(rows)


@asynccontextmanager
async def loop_pool(
    model: BatchedSynthetic | None = None,
    badcase: BadcaseRule = never_badcase,
    *,
    paced: bool = False,
    **kwargs: Any,
) -> AsyncIterator[tuple[InstancePool, ModelInstance, BatchedSynthetic]]:
    # Paced (3.2 ms a step) so that rows started a few ms apart share steps.
    model = model if model is not None else BatchedSynthetic(SyntheticEngine(rtf=0.02), max_batch=8)
    instance = ModelInstance(
        0,
        lambda: LoadedModel(model.engine, model, badcase, clock=model.clock if paced else None),
        **kwargs,
    )
    pool = InstancePool([instance], chunk_buffer=2, max_admitted=64)
    try:
        with trio.fail_after(10):
            await pool.start()
        yield pool, instance, model
    finally:
        with trio.CancelScope(shield=True):
            await pool.aclose()
        assert not instance.thread.is_alive()
        assert model.rows_open == 0


def expected_audio(spec: SynthesisSpec) -> np.ndarray:
    return np.concatenate(list(SyntheticEngine().generate(spec, lambda step: None)))


async def _collect(pool: InstancePool, spec: SynthesisSpec, rid: str, out: dict[str, Any]) -> None:
    async with pool.run(spec, request_id=rid) as (job, chunks):
        received = [chunk async for chunk in chunks]
        await job.done.wait()
    out[rid] = (job, np.concatenate(received))


async def test_rows_joining_at_different_steps_each_get_their_own_audio() -> None:
    """Jobs that join a running batch late get exactly their own chunks, in order."""
    async with loop_pool() as (pool, instance, _):
        out: dict[str, Any] = {}
        specs = [SynthesisSpec(text="a" * (20 + 12 * i), seed=i) for i in range(6)]
        with trio.fail_after(10):
            async with trio.open_nursery() as nursery:
                for i, spec in enumerate(specs):
                    nursery.start_soon(_collect, pool, spec, f"r{i}", out)
                    await trio.sleep(0.002)
        for i, spec in enumerate(specs):
            job, audio = out[f"r{i}"]
            np.testing.assert_array_equal(audio, expected_audio(spec))
            assert not job.stopped
        assert instance.stats.rows_stepped > instance.stats.steps  # some steps carried >1 row
        assert pool.slots_busy == 0


async def test_a_reader_that_takes_nothing_is_skipped_and_does_not_stall_the_batch() -> None:
    """A row without credit stops advancing while another row runs to its end."""
    async with loop_pool() as (pool, instance, _):
        with trio.fail_after(10):
            async with pool.run(SynthesisSpec(text=LONG), request_id="slow") as (slow, _chunks):
                out: dict[str, Any] = {}
                await _collect(pool, SynthesisSpec(text=LONG, seed=3), "fast", out)
                assert out["fast"][1].size == expected_audio(SynthesisSpec(text=LONG)).size
                assert slow.steps == 2  # its two credits, then skipped
                assert instance.stats.skipped > 0
        assert slow.stopped
        assert pool.slots_busy == 0


async def test_a_reader_stalled_past_the_credit_timeout_is_stopped_and_frees_its_slot() -> None:
    """No credit for `credit_timeout`: the loop stops the row itself and frees the slot."""
    async with loop_pool(credit_timeout=0.1) as (pool, _, model):
        with trio.fail_after(10):
            async with pool.run(SynthesisSpec(text=LONG), request_id="r") as (job, _chunks):
                await job.done.wait()
                assert job.stopped
                assert model.rows_open == 0


async def test_a_request_cancelled_during_its_prefill_leaves_no_row_behind() -> None:
    """Cancelled while the model prefills it: released on the next step, one outcome."""
    model = GatedPrefill(engine=SyntheticEngine(), max_batch=4)
    async with loop_pool(model) as (pool, _, _):
        with trio.fail_after(10):
            async with pool.run(SynthesisSpec(text=LONG), request_id="r") as (job, _chunks):
                await trio.to_thread.run_sync(model.entered.wait, 5)
                job.request_stop()
                model.gate.set()
                await job.done.wait()
        assert job.stopped
        assert model.rows_open == 0
        assert pool.slots_busy == 0


async def test_the_last_row_leaving_mid_batch_frees_its_slot_within_a_step() -> None:
    """Leaving early (the request task exits) frees the slot and stops the row."""
    async with loop_pool() as (pool, instance, model):
        with trio.fail_after(10):
            for round_ in range(3):
                async with pool.run(SynthesisSpec(text=LONG), request_id=f"r{round_}") as (
                    job,
                    chunks,
                ):
                    await chunks.receive()
                assert job.done.is_set()
                assert job.stopped
                assert model.rows_open == 0
        assert pool.slots_busy == 0
        assert instance.jobs_run == 3


async def test_a_failing_prefill_fails_only_its_own_request() -> None:
    """A prefill error is that request's outcome; a running row keeps going."""
    model = BatchedSynthetic(SyntheticEngine(), max_batch=4, fail_prefill_text="boom")
    async with loop_pool(model) as (pool, _, _):
        with trio.fail_after(10):
            out: dict[str, Any] = {}
            async with trio.open_nursery() as nursery:
                nursery.start_soon(_collect, pool, SynthesisSpec(text=LONG), "ok", out)
                async with pool.run(SynthesisSpec(text="boom"), request_id="bad") as (bad, _c):
                    await bad.done.wait()
        assert bad.result is not None
        assert isinstance(bad.result.error, RuntimeError)  # type: ignore[union-attr]
        assert out["ok"][1].size == expected_audio(SynthesisSpec(text=LONG)).size


async def test_a_failing_step_ends_every_row_in_it_with_one_error_each() -> None:
    """A step that raises fails the rows it carried, once each, and frees them."""
    model = BatchedSynthetic(SyntheticEngine(fail_at_step=3), max_batch=4)
    async with loop_pool(model) as (pool, _, _):
        jobs: list[Job] = []

        async def run(rid: str) -> None:
            async with pool.run(SynthesisSpec(text=LONG), request_id=rid) as (job, chunks):
                jobs.append(job)
                async for _chunk in chunks:
                    pass

        with trio.fail_after(10):
            async with trio.open_nursery() as nursery:
                for i in range(3):
                    nursery.start_soon(run, f"r{i}")
        assert len(jobs) == 3
        for job in jobs:
            assert isinstance(job.result.error, RuntimeError)  # type: ignore[union-attr]
        assert pool.slots_busy == 0


async def test_shutdown_with_rows_running_stops_each_once_and_ends_the_thread() -> None:
    """Closing the pool mid-batch stops every row (one outcome each), then the thread exits."""
    async with loop_pool() as (pool, instance, _):
        jobs: list[Job] = []
        with trio.fail_after(10):
            async with trio.open_nursery() as nursery:

                async def hold(rid: str) -> None:
                    async with pool.run(SynthesisSpec(text=LONG), request_id=rid) as (job, _c):
                        jobs.append(job)
                        await job.done.wait()

                for i in range(3):
                    nursery.start_soon(hold, f"r{i}")
                while len(jobs) < 3 or any(job.steps < 2 for job in jobs):
                    await trio.sleep(0.001)
                instance.shutdown()
        assert all(job.stopped for job in jobs)
        # The jobs end before the loop thread returns: give it a moment to exit.
        await trio.to_thread.run_sync(instance.thread.join, 10)
        assert not instance.thread.is_alive()


async def test_more_requests_than_slots_wait_for_a_free_row() -> None:
    """A full batch admits no more rows: the next request waits until a row leaves."""
    model = BatchedSynthetic(SyntheticEngine(), max_batch=2)
    async with loop_pool(model) as (pool, _, _):
        out: dict[str, Any] = {}
        with trio.fail_after(10):
            async with trio.open_nursery() as nursery:
                for i in range(5):
                    nursery.start_soon(
                        _collect, pool, SynthesisSpec(text="a" * 40, seed=i), f"{i}", out
                    )
        assert len(out) == 5
        assert pool.slots == 2


async def test_health_sees_the_loop_beat_while_every_row_waits_for_its_reader() -> None:
    """All rows skipped (no credit) is not a stall: /health reads the loop's heartbeat."""
    from voxtrio.ops._health import snapshot, stalled

    async with loop_pool() as (pool, _, _):
        with trio.fail_after(10):
            async with pool.run(SynthesisSpec(text=LONG), request_id="r") as (job, _chunks):
                while job.steps < 2:
                    await trio.sleep(0.01)
                await trio.sleep(0.3)  # skipped ever since, for want of a credit
                state = snapshot(pool, draining=False)
                now = time.perf_counter()
                assert state.instances[0].busy
                assert stalled(state, now=now, stall_timeout=0.2) == {}
                assert job.steps == 2


async def test_a_burst_of_cheap_joins_is_admitted_within_a_step_or_two() -> None:
    """Prefill groups follow each other while the budget lasts: 20 joins need no 10 steps."""
    model = BatchedSynthetic(SyntheticEngine(rtf=0.3), max_batch=32)  # 48 ms a step
    async with loop_pool(model, prefill_group=2) as (pool, instance, _):
        jobs: list[Job] = []

        async def hold(rid: str) -> None:
            async with pool.run(SynthesisSpec(text=LONG), request_id=rid) as (job, _c):
                jobs.append(job)
                await job.done.wait()

        with trio.fail_after(10):
            async with trio.open_nursery() as nursery:
                for i in range(20):
                    nursery.start_soon(hold, f"r{i}")
                while len(jobs) < 20 or any(job.steps < 1 for job in jobs):
                    await trio.sleep(0.005)
                assert instance.stats.steps <= 3
                nursery.cancel_scope.cancel()


async def test_a_bad_case_non_streaming_request_is_generated_again_and_the_last_kept() -> None:
    """Audio past the bad-case bound is redone re-seeded; the client gets the last attempt."""
    model = BatchedSynthetic(SyntheticEngine(), max_batch=4)
    spec = SynthesisSpec(text="a" * 40, streaming=False, seed=3, retry_badcase_max_times=3)
    async with loop_pool(model, badcase=lambda s: 5.0) as (pool, _, _):
        with trio.fail_after(10):
            out: dict[str, Any] = {}
            await _collect(pool, spec, "n", out)
    job, audio = out["n"]
    assert model.engine.generations == 3
    assert job.steps == 30  # ten chunks, three times
    np.testing.assert_array_equal(audio, expected_audio(retry_spec(spec, 3)))
    assert not np.array_equal(audio, expected_audio(spec))


class UnbatchedSynthetic(SyntheticEngine):
    """No batched form: runs through `SerialBatch`, one generation at a time."""


@pytest.mark.parametrize("engine", [SyntheticEngine, UnbatchedSynthetic])
async def test_a_non_streaming_generation_stops_midway(engine: type[SyntheticEngine]) -> None:
    """Cancelling a non-streaming request stops it at the next chunk, not at its end."""
    made: list[SyntheticEngine] = []

    def factory() -> SyntheticEngine:
        made.append(engine(rtf=0.05))  # 8 ms a chunk: 100 chunks would take 0.8 s
        return made[-1]

    pool = InstancePool(model_instances(factory, workers=1, max_batch=4))
    spec = SynthesisSpec(text=LONG, streaming=False)
    try:
        with trio.fail_after(10):
            await pool.start()
            async with pool.run(spec, request_id="n") as (job, _chunks):
                while job.steps < 2:
                    await trio.sleep(0.001)
            assert job.stopped
            assert job.steps < 50
            assert made[0].open_generations == 0
            assert pool.slots_busy == 0
    finally:
        with trio.CancelScope(shield=True):
            await pool.aclose()


async def test_a_paced_models_arrivals_all_ride_the_next_full_step() -> None:
    """Where a step is a clock's tick, requests that arrive together are prefilled at once
    and take their first step with the running rows: no join step."""
    model = GatedStep(engine=SyntheticEngine(rtf=0.02), max_batch=8)
    async with loop_pool(model, paced=True) as (pool, instance, _):
        groups: list[int] = []
        steps: list[int] = []
        instance.stats.on_prefill = lambda rows, seconds: groups.append(rows)
        instance.stats.on_step = lambda rows, bucket, seconds: steps.append(rows)
        jobs: list[Job] = []

        async def read(rid: str) -> None:
            async with pool.run(SynthesisSpec(text=LONG), request_id=rid) as (job, chunks):
                jobs.append(job)
                async for _chunk in chunks:
                    pass

        with trio.fail_after(10):
            async with trio.open_nursery() as nursery:
                nursery.start_soon(read, "running")
                while not jobs or jobs[0].steps < 2:
                    await trio.sleep(0.001)
                model.hold = True
                await trio.to_thread.run_sync(model.entered.wait, 5)
                before = len(steps)  # the held step is the next one recorded
                for index in range(5):
                    nursery.start_soon(read, f"new{index}")
                while instance.slots_busy < 6:
                    await trio.sleep(0.001)
                model.gate.set()
                while any(job.steps < 1 for job in jobs) or len(jobs) < 6:
                    await trio.sleep(0.001)
                nursery.cancel_scope.cancel()
        assert groups[-1] == 5  # one prefill for all five
        assert steps[before : before + 2] == [1, 6]  # then one step for all six rows
        assert instance.stats.join_steps == 0


async def test_a_jobs_end_reaches_its_request_after_its_last_chunk() -> None:
    """Rows that end in the same step post their last chunks before their ends: none lost."""
    async with loop_pool() as (pool, _, _):
        out: dict[str, Any] = {}
        specs = [SynthesisSpec(text="a" * 40, seed=index) for index in range(4)]
        with trio.fail_after(10):
            async with trio.open_nursery() as nursery:
                for index, spec in enumerate(specs):
                    nursery.start_soon(_collect, pool, spec, f"r{index}", out)
    for index, spec in enumerate(specs):
        job, audio = out[f"r{index}"]
        np.testing.assert_array_equal(audio, expected_audio(spec))
        assert not job.stopped
        assert isinstance(job.result, outcome.Value)


class RecordingMailbox(LoopMailbox):
    """A mailbox that only records what is posted to it, in order."""

    def __init__(self) -> None:
        self.posted: list[Callable[..., object]] = []
        self.places: list[int | None] = []

    def post_all(self, calls: Sequence[Call], places: Sequence[int | None] = ()) -> None:
        self.posted.extend(fn for fn, _ in calls)
        self.places.extend(places)


def test_a_step_posts_every_chunk_before_any_jobs_end() -> None:
    """A row that ends mid-step has its end posted after the chunks of the rows behind it,
    so the request task it wakes never runs in the middle of the step's writes."""
    instance = ModelInstance(0, lambda: LoadedModel(SyntheticEngine(), BatchedSynthetic()))
    mailbox = RecordingMailbox()
    send, _ = trio.open_memory_channel[object](2)
    ending, running = (Job(SynthesisSpec(text="x"), rid, send, mailbox) for rid in ("a", "b"))
    chunk = np.zeros(4, np.float32)
    instance._deliver(ending, chunk)
    instance._finish(ending, outcome.Value(None), stopped=False)
    instance._deliver(running, chunk)
    instance._flush()
    assert mailbox.posted == [ending.deliver, running.deliver, instance._finished]


def test_a_steps_chunks_are_posted_with_their_places_and_its_ends_without() -> None:
    """Each chunk goes to the mailbox with the place its job kept; a job's end has none."""
    instance = ModelInstance(0, lambda: LoadedModel(SyntheticEngine(), BatchedSynthetic()))
    mailbox = RecordingMailbox()
    send, _ = trio.open_memory_channel[object](2)
    job = Job(SynthesisSpec(text="x"), "a", send, mailbox)
    instance._deliver(job, np.zeros(4, np.float32), None, 7)
    instance._finish(job, outcome.Value(None), stopped=False)
    instance._flush()
    assert mailbox.places == [7, None]


def test_rows_behind_rows_that_ended_move_up_their_burst_a_slew_a_step(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Two short rows end; the long row behind them keeps its place and moves up
    PLACE_SLEW (1 here) rows a step instead of jumping to the front."""
    monkeypatch.setattr(_jobs, "PLACE_SLEW", 1)
    model = BatchedSynthetic()
    instance = ModelInstance(0, lambda: LoadedModel(SyntheticEngine(), model))
    mailbox = RecordingMailbox()
    send, _ = trio.open_memory_channel[object](2)
    texts = {"short1": "a" * 8, "short2": "a" * 8, "long": "a" * 40}  # 2, 2 and 10 steps
    jobs = [Job(SynthesisSpec(text=text), rid, send, mailbox) for rid, text in texts.items()]
    scheduler: Scheduler[Job, Any] = Scheduler(model.max_batch, prefill_group=3, join_steps=False)
    for job in jobs:
        scheduler.add(job)
    places_by_step = []
    for _ in range(5):
        mailbox.places.clear()
        instance._carry_out(model, scheduler, scheduler.schedule(time.perf_counter()), None)
        places_by_step.append([place for place in mailbox.places if place is not None])
        for job in jobs:
            job.give_credit()  # the recording mailbox delivers nothing: as if taken
    assert places_by_step == [[], [0, 1, 2], [0, 1, 2], [1], [0]]


async def test_a_paced_instance_computes_each_step_half_a_period_ahead() -> None:
    """The step loop releases a paced model's steps on their ticks, which gives its clock
    its lead; an instance that is not paced leaves the model's clock alone."""
    for paced in (True, False):
        async with loop_pool(paced=paced) as (pool, _, model):
            with trio.fail_after(10):
                async with pool.run(SynthesisSpec(text="a" * 40), request_id="r") as (_, chunks):
                    async for _chunk in chunks:
                        pass
            expected = model.clock.period * LEAD_SHARE if paced else 0.0
            assert model.clock.lead == pytest.approx(expected)


class NanForSeed(BatchedSynthetic):
    """The row with seed `bad_seed` gets a chunk of NaN at its second step."""

    bad_seed = 13

    def step(self, rows: Sequence[SyntheticRow]) -> list[StepResult]:
        results = super().step(rows)
        return [
            StepResult(np.full_like(result.audio, np.nan), result.finished)
            if row.spec.seed == self.bad_seed and row.step == 2
            else result
            for row, result in zip(rows, results, strict=True)
        ]


async def test_plain_pcm_rows_are_encoded_together_to_the_bytes_each_gets_alone(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A step's pcm16 rows go through one batch encode; each stream's bytes are its own,
    and a row whose chunk is not finite fails alone (NonFiniteAudio)."""
    batched: list[int] = []
    original = BatchTransform.__call__

    def counting(self: BatchTransform, streams: Any, chunks: Any) -> Any:
        batched.append(len(chunks))
        return original(self, streams, chunks)

    monkeypatch.setattr(BatchTransform, "__call__", counting)
    model = NanForSeed(SyntheticEngine(rtf=0.02), max_batch=8)
    specs = [SynthesisSpec(text="a" * 60, seed=seed) for seed in (1, 2, 13, 4)]
    out: dict[int, tuple[Job, bytes]] = {}

    async def speak(spec: SynthesisSpec) -> None:
        stream = OutputStream(OutputSpec(), input_rate=model.sample_rate)
        pieces: list[bytes] = []
        async with pool.run(
            spec, request_id=str(spec.seed), transform=stream.transform, output=stream
        ) as (job, chunks):
            with suppress(NonFiniteAudio):
                pieces += [piece.data async for piece in chunks]
            await job.done.wait()
        out[spec.seed] = (job, b"".join(pieces))

    async with loop_pool(model, paced=True) as (pool, _, _):
        with trio.fail_after(10):
            async with trio.open_nursery() as nursery:
                for spec in specs:
                    nursery.start_soon(speak, spec)
    # Rows in the same step are encoded in one batch. How many share a step depends on
    # when each joined (the NaN row leaves at its second step; under load a late row
    # may join after it), so at least two, not all four.
    assert max(batched) >= 2
    for spec in specs:
        job, data = out[spec.seed]
        if spec.seed == NanForSeed.bad_seed:
            assert isinstance(job.result, outcome.Error)
            assert isinstance(job.result.error, NonFiniteAudio)
        else:
            assert data == AudioEncoder("pcm16", input_rate=model.sample_rate).encode(
                expected_audio(spec)
            )
