"""The hand-over: one step's chunks reach their request tasks (or the socket) in post order."""

from __future__ import annotations

import threading
from typing import Any

import trio
import trio.testing

from voxtrio.speech._engine import SynthesisSpec
from voxtrio.speech._jobs import PLACE_SLEW, ChunkStream, Job
from voxtrio.speech._mailbox import LoopMailbox

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


async def test_a_stream_moves_up_its_burst_by_at_most_place_slew_rows_a_step() -> None:
    """Rows ahead of it gone, a stream holds its place and moves up PLACE_SLEW rows a step;
    moving back (rows joined ahead of it) is never held."""
    job, _ = _job(LoopMailbox(trio.lowlevel.current_trio_token()), 0)
    assert job.hold_place(900) == 900  # its first chunk goes where it is
    assert job.hold_place(100) == 900 - PLACE_SLEW
    assert job.hold_place(100) == 900 - 2 * PLACE_SLEW
    assert job.hold_place(950) == 950
