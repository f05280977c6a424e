"""The hand-over's pacing: one step's chunks reach their request tasks in post order."""

from __future__ import annotations

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
