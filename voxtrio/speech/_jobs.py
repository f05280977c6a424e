"""A job's hand-over between its model thread and its request task.

A `Job` is one generation, shared by the request task (Trio) and the thread that runs
it; chunks reach the task through a bounded memory channel with credits, so a slow
client blocks its generator instead of piling up audio (`ChunkStream` gives a credit
back as each chunk is taken).

A request may give its job a `handover`, a synchronous "write this chunk now" that
the mailbox callback calls as the chunk comes off the mailbox (`speech/_mailbox.py`:
one mailbox per pool, its pacing). When it takes the chunk, no task wakes at all;
when it cannot (the connection is busy, a progress message is due, an earlier chunk
is still with the task), the chunk goes through the channel, due when the mailbox
says (`LoopMailbox.due_time`), and its request task writes it then.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import attrs
import numpy as np
import outcome
import structlog
import trio

from voxtrio.speech._engine import SynthesisSpec
from voxtrio.speech._mailbox import LoopMailbox

if TYPE_CHECKING:
    from voxtrio.speech._output import OutputStream

log = structlog.get_logger("voxtrio.speech")

# How many rows a stream's place in its step's burst may move up from one step to the
# next (64 burst slots, about 4 ms; why: speech/_mailbox.py).
PLACE_SLEW = 64

Handover = Callable[[Any], bool]
"""Trio thread, in a mailbox callback: send this chunk now, without waiting.

True: it is sent (or its sending is under way and will finish on its own); False:
nothing was done, the chunk goes through the channel to the request task. Must not
raise and must not block.
"""


class Credits:
    """Chunks a job may still hand over before its request takes one: taken without
    blocking by the step loop, given back by the Trio side.

    A lock and an int: `threading.Semaphore` is a Python-level condition variable,
    several microseconds a call, and the step loop never waits on it.
    """

    def __init__(self, value: int) -> None:
        self._lock = threading.Lock()
        self._value = value

    @property
    def value(self) -> int:
        return self._value

    def take(self) -> bool:
        with self._lock:
            if self._value <= 0:
                return False
            self._value -= 1
            return True

    def give(self) -> None:
        with self._lock:
            self._value += 1


@attrs.define(eq=False)
class Job:
    """One generation on one model instance; shared by the request task and its thread."""

    spec: SynthesisSpec
    request_id: str
    send_channel: trio.MemorySendChannel[Any]
    mailbox: LoopMailbox
    # Runs on the instance's thread on each chunk before it is sent (e.g. encoding), so
    # codec work stays off the event loop; what it returns is what the channel carries.
    transform: Callable[[np.ndarray], Any] | None = None
    # Chunks the thread may hand over before the request task has taken them.
    chunk_buffer: int = 2
    # The stream `transform` is the plain `transform` of, if any: a step loop may then
    # encode its chunk together with other rows' (`speech._output.BatchTransform`).
    output: OutputStream | None = None
    stop_event: threading.Event = attrs.Factory(threading.Event)
    credits: Credits = attrs.field(init=False)
    # Its step loop's wake-up: set on a credit or a stop (None until submitted).
    wake: threading.Event | None = None
    done: trio.Event = attrs.Factory(trio.Event)
    # Written by the thread, read by the Trio side; plain attribute stores are atomic.
    steps: int = 0
    expected_steps: int | None = None
    last_step_at: float | None = None
    started_at: float | None = None
    finished_at: float | None = None
    result: outcome.Outcome[None] | None = None
    stopped: bool = False
    # Set by the request task while it reads the chunks (see `Handover`).
    handover: Handover | None = None
    # Chunks sent into the channel that the request task has not finished with: while
    # any is, a later chunk queues behind it rather than overtaking it by a handover.
    queued: int = 0
    # Step thread: its chunk's place in its step's burst last time (`hold_place`).
    place: int | None = None

    def __attrs_post_init__(self) -> None:
        self.credits = Credits(self.chunk_buffer)

    def hold_place(self, index: int) -> int:
        """Step thread: the place in its step's burst of this chunk, `index`-th of the
        step's chunks: no more than `PLACE_SLEW` rows ahead of its place last step."""
        kept = index if self.place is None else max(index, self.place - PLACE_SLEW)
        self.place = kept
        return kept

    # The step loop's side (speech.batched's `Request`): non-blocking, any thread.
    def stop_requested(self) -> bool:
        return self.stop_event.is_set()

    def take_credit(self) -> bool:
        return self.credits.take()

    def give_credit(self) -> None:
        self.credits.give()

    def wake_loop(self) -> None:
        """Tell its step loop something changed (a credit, a stop)."""
        wake = self.wake
        if wake is not None and not wake.is_set():  # set() takes a condition's lock
            wake.set()

    def request_stop(self) -> None:
        self.stop_event.set()
        self.credits.give()  # a stopped row needs no credit to be seen leaving
        self.wake_loop()  # its step loop takes the row out before its next step

    def deliver(self, item: Any) -> None:
        """Trio thread (a mailbox callback): hand a chunk over or put it in the channel.

        Never raises.
        """
        if self.handover is not None and not self.queued:
            try:
                taken = self.handover(item)
            except Exception:
                # Part of it may have gone out: sending it again could repeat audio.
                log.exception("handover_failed", request_id=self.request_id)
                self.request_stop()
                return
            if taken:
                self.give_credit()
                self.wake_loop()
                return
        due = self.mailbox.due_time() if self.mailbox.delivery_slot > 0 else 0.0
        try:
            self.send_channel.send_nowait((due, item))
            self.queued += 1
        except (trio.WouldBlock, trio.BrokenResourceError, trio.ClosedResourceError):
            # The request has gone (or is stopping); the chunk has nowhere to go.
            self.stop_event.set()


class ChunkStream:
    """The request side of a job's chunks: receiving one gives its credit back.

    A chunk is returned at its due time (see the module's docstring), so the request
    task writes it in its place in the step's order.
    """

    def __init__(self, job: Job, receive: trio.MemoryReceiveChannel[Any]) -> None:
        self._job = job
        self._receive = receive
        self._holding = False  # the last chunk returned counts in `job.queued`

    async def receive(self) -> Any:
        """The next chunk; `trio.EndOfChannel` once the job has finished.

        Calling it again says the caller is done with the chunk before (sent it).
        """
        if self._holding:
            self._holding = False
            self._job.queued -= 1
        due, item = await self._receive.receive()
        self._holding = True
        self._job.give_credit()
        self._job.wake_loop()
        if due > trio.current_time():
            await trio.sleep_until(due)
        return item

    def __aiter__(self) -> ChunkStream:
        return self

    async def __anext__(self) -> Any:
        try:
            return await self.receive()
        except trio.EndOfChannel:
            raise StopAsyncIteration from None
