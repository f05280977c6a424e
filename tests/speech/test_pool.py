"""The instance pool: chunk hand-over, backpressure by credits, stopping, slots."""

from __future__ import annotations

import threading
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from functools import partial

import numpy as np
import pytest
import trio
import trio.testing

from voxtrio.speech._engine import SynthesisSpec
from voxtrio.speech._mailbox import LoopMailbox
from voxtrio.speech._pool import InstancePool
from voxtrio.speech._synthetic import SyntheticEngine
from voxtrio.speech.batched._factory import model_instances

LONG = "a" * 400  # 100 synthetic steps


@asynccontextmanager
async def started_pool(
    *, workers: int = 1, max_batch: int = 1, chunk_buffer: int = 2
) -> AsyncIterator[InstancePool]:
    engine = partial(SyntheticEngine, rtf=0.0)
    instances = model_instances(engine, workers=workers, max_batch=max_batch)
    pool = InstancePool(instances, chunk_buffer=chunk_buffer)
    try:
        with trio.fail_after(10):
            await pool.start()
        yield pool
    finally:
        with trio.CancelScope(shield=True):
            await pool.aclose()


async def test_every_chunk_arrives_in_order_then_the_stream_ends() -> None:
    """A job's chunks reach the request task in order, and the stream then ends."""
    async with started_pool(chunk_buffer=2) as pool:
        with trio.fail_after(10):
            async with pool.run(SynthesisSpec(text="a" * 40), request_id="r") as (job, chunks):
                received = [chunk async for chunk in chunks]
                await job.done.wait()
    assert len(received) == 10
    starts = [float(chunk[0]) for chunk in received]
    engine = SyntheticEngine()
    expected = list(engine.generate(SynthesisSpec(text="a" * 40), lambda step: None))
    assert starts == [float(chunk[0]) for chunk in expected]
    assert job.result is not None
    assert not job.stopped


async def test_a_request_that_takes_nothing_holds_its_row_to_the_buffer() -> None:
    """Backpressure: after `chunk_buffer` untaken chunks its row takes no more steps."""
    async with started_pool(chunk_buffer=3) as pool:
        with trio.fail_after(10):
            async with pool.run(SynthesisSpec(text=LONG), request_id="r") as (job, chunks):
                while job.steps < 3:
                    await trio.sleep(0.001)
                await trio.sleep(0.2)  # the loop would run all 100 steps in this time
                assert job.steps == 3  # 3 handed over, then skipped for want of a credit
                await chunks.receive()
                while job.steps < 4:
                    await trio.sleep(0.001)
                await trio.sleep(0.1)
                assert job.steps == 4  # one credit back: exactly one more step


async def test_leaving_early_stops_a_row_waiting_for_a_credit_at_once() -> None:
    """A stop wakes a loop whose only row waits for a credit; the row leaves at once."""
    async with started_pool(chunk_buffer=1) as pool:
        with trio.fail_after(10):
            async with pool.run(SynthesisSpec(text=LONG), request_id="r") as (job, _chunks):
                while job.steps < 1:
                    await trio.sleep(0.001)
                await trio.sleep(0.1)  # skipped ever since, for want of a credit
                stopped_at = time.perf_counter()
            assert job.done.is_set()
    assert job.stopped
    assert job.steps == 1
    assert job.finished_at is not None
    assert job.finished_at - stopped_at < 0.5


async def test_a_stopped_job_gives_its_slot_back() -> None:
    """After a job is stopped the next one gets the slot and runs to the end."""
    async with started_pool(chunk_buffer=1) as pool:
        with trio.fail_after(10):
            async with pool.run(SynthesisSpec(text=LONG), request_id="a") as (first, chunks):
                await chunks.receive()
            assert pool.slots_busy == 0
            assert pool.limiter.available_tokens == 1
            async with pool.run(SynthesisSpec(text="a" * 8), request_id="b") as (second, rest):
                assert len([chunk async for chunk in rest]) == 2
    assert first.stopped
    assert not second.stopped


async def test_chunks_for_a_request_that_is_gone_are_dropped_without_harm() -> None:
    """A chunk delivered after the request closed its stream stops the job quietly."""
    async with started_pool(chunk_buffer=4) as pool:
        with trio.fail_after(10):
            async with pool.run(SynthesisSpec(text=LONG), request_id="r") as (job, _chunks):
                pass
            job.deliver(np.zeros(4, np.float32))  # as a late run_sync_soon callback would
    assert job.stop_event.is_set()
    assert job.stopped


@pytest.mark.parametrize("chunk_buffer", [1, 2, 8])
async def test_many_jobs_in_turn_leave_no_credits_or_slots_behind(chunk_buffer: int) -> None:
    """Jobs read fully, read partly and not at all all leave the pool as they found it."""
    async with started_pool(chunk_buffer=chunk_buffer, workers=2, max_batch=2) as pool:
        with trio.fail_after(20):
            for i in range(12):
                async with pool.run(SynthesisSpec(text="a" * 40), request_id=f"r{i}") as (
                    job,
                    chunks,
                ):
                    if i % 3 == 0:  # read to the end
                        assert len([chunk async for chunk in chunks]) == 10
                    elif i % 3 == 1:  # read one chunk, then leave
                        await chunks.receive()
                    # else: leave without reading anything
                assert job.done.is_set()
            assert pool.slots_busy == 0
            assert pool.limiter.available_tokens == 4


async def test_mailbox_runs_posts_from_many_threads_in_each_threads_order() -> None:
    """LoopMailbox: every call posted from any thread runs on the loop, per-thread in order."""
    mailbox = LoopMailbox(trio.lowlevel.current_trio_token())
    seen: list[tuple[int, int]] = []
    loop_thread = threading.get_ident()
    threads_seen: set[int] = set()

    def record(thread: int, index: int) -> None:
        threads_seen.add(threading.get_ident())
        seen.append((thread, index))

    def post_many(thread: int) -> None:
        for index in range(500):
            mailbox.post(record, thread, index)

    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            for thread in range(4):
                nursery.start_soon(trio.to_thread.run_sync, post_many, thread)
        while len(seen) < 2000:
            await trio.sleep(0.001)
    assert threads_seen == {loop_thread}
    for thread in range(4):
        assert [i for t, i in seen if t == thread] == list(range(500))


def test_mailbox_refuses_posts_once_the_loop_has_gone() -> None:
    """A post after trio.run has returned raises RunFinishedError, run after run."""

    async def make() -> LoopMailbox:
        return LoopMailbox(trio.lowlevel.current_trio_token())

    mailbox = trio.run(make)
    for _ in range(2):  # the failed post leaves no drain marked as pending
        with pytest.raises(trio.RunFinishedError):
            mailbox.post(print, "never")


async def test_a_started_pool_drains_its_mailbox_between_task_steps_until_closed() -> None:
    """While open, the pool's mailbox runs a call posted mid-batch before the next task
    step (its instrument); once closed, that instrument is gone from the run."""
    ran: list[int] = []
    seen: list[int] = []
    go = trio.Event()
    async with started_pool() as pool:
        mailbox, instrument = pool._mailbox, pool._mailbox_instrument
        assert mailbox is not None
        assert instrument is not None

        async def member() -> None:
            await go.wait()
            if not seen:
                mailbox.post_all([(ran.append, (0,))])
            seen.append(len(ran))

        with trio.fail_after(10):
            async with trio.open_nursery() as nursery:
                for _ in range(4):
                    nursery.start_soon(member)
                await trio.testing.wait_all_tasks_blocked()
                go.set()
    assert seen == [0, 1, 1, 1]
    with pytest.raises(KeyError):
        trio.lowlevel.remove_instrument(instrument)
