"""The hand-over: one step's chunks reach their request tasks (or the socket) in post order."""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

import pytest
import trio
import trio.testing

from voxtrio.speech._engine import SynthesisSpec
from voxtrio.speech._jobs import ChunkStream, Job, LoopMailbox

STREAMS, STEPS = 40, 12


def _job(mailbox: LoopMailbox, index: int) -> tuple[Job, ChunkStream]:
    send, receive = trio.open_memory_channel[object](2)
    job = Job(SynthesisSpec(text="x"), f"r{index}", send, mailbox)
    return job, ChunkStream(job, receive)


async def test_a_steps_chunks_are_taken_in_post_order_every_step(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """Trio may run a batch of woken tasks reversed; paced chunks still leave in row order."""
    mailbox = LoopMailbox(trio.lowlevel.current_trio_token())
    pairs = [_job(mailbox, index) for index in range(STREAMS)]
    taken: list[tuple[int, int]] = []

    async def request(stream: ChunkStream) -> None:
        for _ in range(STEPS):
            taken.append(await stream.receive())

    def post_step(step: int) -> None:  # the model thread: one chunk per row, in row order
        for index, (job, _) in enumerate(pairs):
            mailbox.post(job.deliver, (step, index))

    async with trio.open_nursery() as nursery:
        for _, stream in pairs:
            nursery.start_soon(request, stream)
        for step in range(STEPS):
            await trio.to_thread.run_sync(post_step, step)
            while len(taken) < (step + 1) * STREAMS:
                await trio.sleep(0.01)
    for step in range(STEPS):
        rows = [index for taken_step, index in taken if taken_step == step]
        assert rows == list(range(STREAMS)), f"step {step} left out of order"


async def test_due_times_are_a_slot_apart_and_never_held_past_max_hold() -> None:
    """A burst is spread one slot per chunk, but no chunk is held longer than max_hold."""
    mailbox = LoopMailbox(trio.lowlevel.current_trio_token())
    mailbox.drained_at = 100.0
    dues = [mailbox.due_time() for _ in range(3)]
    assert dues[0] == 100.0
    assert dues[1] - dues[0] == pytest.approx(LoopMailbox.delivery_slot)
    assert dues[2] - dues[1] == pytest.approx(LoopMailbox.delivery_slot)
    crowded = [mailbox.due_time() for _ in range(int(2 * mailbox.max_hold / mailbox.delivery_slot))]
    assert max(crowded) == pytest.approx(100.0 + mailbox.max_hold)
    mailbox.drained_at = 200.0  # a later step starts when the loop takes it
    assert mailbox.due_time() == 200.0


class CountingToken:
    """A Trio token that only records the wake-ups it is asked for."""

    def __init__(self) -> None:
        self.scheduled: list[Callable[[], object]] = []

    def run_sync_soon(self, fn: Callable[[], object]) -> None:
        self.scheduled.append(fn)


def _recorder(log: list[Any], name: str) -> Callable[[Any], None]:
    return lambda value: log.append((name, value))


async def test_post_all_runs_its_calls_in_order_after_what_was_posted_before() -> None:
    """post_all keeps the order of its calls, behind earlier posts and ahead of later ones."""
    token = CountingToken()
    mailbox = LoopMailbox(token)  # type: ignore[arg-type]
    ran: list[Any] = []
    mailbox.post(_recorder(ran, "a"), 0)
    mailbox.post_all([(_recorder(ran, "b"), (1,)), (_recorder(ran, "b"), (2,))])
    mailbox.post(_recorder(ran, "c"), 3)
    for drain in token.scheduled:
        drain()
    assert ran == [("a", 0), ("b", 1), ("b", 2), ("c", 3)]


async def test_post_all_wakes_the_loop_once_for_all_its_calls() -> None:
    """A whole step posted with post_all asks for one wake-up, and one drain runs them all."""
    token = CountingToken()
    mailbox = LoopMailbox(token)  # type: ignore[arg-type]
    ran: list[Any] = []
    mailbox.post_all([(_recorder(ran, "x"), (index,)) for index in range(5)])
    mailbox.post_all([(_recorder(ran, "y"), (index,)) for index in range(3)])
    assert len(token.scheduled) == 1  # the second post_all rides the pending drain
    token.scheduled[0]()
    assert len(ran) == 8
    mailbox.post_all([(_recorder(ran, "z"), (0,))])
    assert len(token.scheduled) == 2  # once drained, the next post wakes the loop again


async def test_post_all_of_nothing_wakes_nobody() -> None:
    """An empty step posts nothing and schedules no drain."""
    token = CountingToken()
    LoopMailbox(token).post_all([])  # type: ignore[arg-type]
    assert token.scheduled == []


def _handover_job(mailbox: LoopMailbox) -> tuple[Job, ChunkStream, trio.MemorySendChannel[Any]]:
    send, receive = trio.open_memory_channel[Any](2)
    job = Job(SynthesisSpec(text="x"), "r", send, mailbox)
    job.wake = threading.Event()
    return job, ChunkStream(job, receive), send


async def test_a_chunk_the_handover_takes_skips_the_channel_and_returns_its_credit() -> None:
    """Taken by the handover: nothing queued for the task, the credit back, the loop woken."""
    mailbox = LoopMailbox(trio.lowlevel.current_trio_token())
    job, _, send = _handover_job(mailbox)
    sent: list[str] = []

    def handover(chunk: str) -> bool:
        sent.append(chunk)
        return True

    job.handover = handover
    assert job.take_credit()  # the step loop takes one before the step
    job.deliver("chunk")
    assert sent == ["chunk"]
    assert job.credits.value == job.chunk_buffer
    assert job.queued == 0
    assert job.wake is not None
    assert job.wake.is_set()
    assert send.statistics().current_buffer_used == 0


async def test_a_chunk_still_with_the_task_makes_later_ones_queue_behind_it(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """Once a chunk went to the task, later ones follow it there until the task is done with
    it: what reaches the wire keeps the step order end to end."""
    mailbox = LoopMailbox(trio.lowlevel.current_trio_token())
    job, stream, send = _handover_job(mailbox)
    wire: list[int] = []
    busy = True

    def handover(chunk: int) -> bool:
        if busy:
            return False
        wire.append(chunk)
        return True

    job.handover = handover
    job.deliver(1)  # the connection is busy: to the task
    busy = False
    job.deliver(2)  # free now, but 1 is not written yet
    wire.append(await stream.receive())
    job.deliver(3)  # 1 is written, but the task still holds it
    assert job.queued == 3
    wire.append(await stream.receive())
    wire.append(await stream.receive())

    async def request_task() -> None:
        async for chunk in stream:  # asking for the next says it is done with 3
            wire.append(chunk)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(request_task)
        await trio.testing.wait_all_tasks_blocked()
        assert job.queued == 0
        job.deliver(4)  # nothing with the task any more: handed over
        send.close()
    assert wire == [1, 2, 3, 4]


async def test_a_handover_that_raises_stops_the_job_and_sends_nothing_again() -> None:
    """A failed handover may have sent part of the chunk: the job stops, no second copy."""
    mailbox = LoopMailbox(trio.lowlevel.current_trio_token())
    job, _, send = _handover_job(mailbox)

    def broken(chunk: object) -> bool:
        raise OSError("half a frame went out")

    job.handover = broken
    job.deliver("chunk")
    assert job.stop_requested()
    assert job.queued == 0
    assert job.wake is not None
    assert job.wake.is_set()  # its step loop takes the row out before the next step
    assert send.statistics().current_buffer_used == 0


def _paced_mailbox(slot: float) -> LoopMailbox:
    mailbox = LoopMailbox(trio.lowlevel.current_trio_token())
    mailbox.burst_slot = slot
    return mailbox


async def test_a_drain_ahead_of_its_pace_runs_each_call_a_slot_after_the_one_before(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """A burst leaves one slot per call from its start, and none later than max_hold."""
    mailbox = _paced_mailbox(0.005)
    times: list[float] = []
    began = trio.current_time()
    calls = round(mailbox.max_hold / 0.005) + 4  # the last few reach max_hold
    mailbox.post_all([(lambda: times.append(trio.current_time()), ()) for _ in range(calls)])
    while len(times) < calls:
        await trio.sleep(0.001)
    expected = [began + min(index * 0.005, mailbox.max_hold) for index in range(calls)]
    assert times == pytest.approx(expected)
    assert times[-1] == pytest.approx(began + mailbox.max_hold)


def test_a_thousand_streams_burst_fits_in_max_hold() -> None:
    """1,000 calls a burst slot apart are all paced: none reaches max_hold and leaves unpaced."""
    assert 1000 * LoopMailbox.burst_slot < LoopMailbox.max_hold


async def test_a_drain_behind_its_pace_never_stops(mock_clock: trio.testing.MockClock) -> None:
    """Calls slower than the slot run back to back in one drain (no timer, no wait)."""
    mailbox = _paced_mailbox(0.005)
    ran: list[int] = []

    def slow_call(index: int) -> None:
        mock_clock.jump(0.01)  # each call takes two slots
        ran.append(index)

    mailbox.post_all([(slow_call, (index,)) for index in range(20)])
    await trio.testing.wait_all_tasks_blocked()
    assert ran == list(range(20))  # a drain that stopped would wait on a clock that never moves


async def test_calls_posted_while_a_burst_waits_run_after_it_in_order(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """What arrives during a paced burst goes behind the burst's remaining calls."""
    mailbox = _paced_mailbox(0.005)
    ran: list[Any] = []
    mailbox.post_all([(_recorder(ran, "step"), (index,)) for index in range(6)])
    await trio.sleep(0.012)  # the burst is part-way through
    mailbox.post_all([(_recorder(ran, "next"), (index,)) for index in range(2)])
    while len(ran) < 8:
        await trio.sleep(0.001)
    assert ran == [("step", index) for index in range(6)] + [("next", 0), ("next", 1)]


def test_a_burst_still_waiting_when_the_run_ends_runs_the_rest_at_once() -> None:
    """Calls a paced drain holds back are not lost when Trio's run ends (a job's end among
    them must still be seen)."""
    ran: list[int] = []

    async def main() -> None:
        mailbox = _paced_mailbox(10.0)  # every call after the first waits (max_hold)
        mailbox.post_all([(ran.append, (index,)) for index in range(3)])
        await trio.testing.wait_all_tasks_blocked()
        assert ran == [0]

    trio.run(main)
    assert ran == [0, 1, 2]
