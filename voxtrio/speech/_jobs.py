"""A job's hand-over between its model thread and its request task.

A `Job` is one generation, shared by the request task (Trio) and the thread that runs
it; chunks reach the task through a bounded memory channel with credits, so a slow
client blocks its generator instead of piling up audio (`ChunkStream` gives a credit
back as each chunk is taken).

Posting goes through one `LoopMailbox` per pool rather than a `run_sync_soon` per
chunk: trio's entry queue holds a lock across its wake-up syscall, and with
hundreds of model threads each taking it per chunk the lock and the GIL convoy
(measured: 38 of 256 threads queued on it, a core and a half of futex traffic).
The mailbox's lock covers a deque append only, and one loop callback drains
everything posted since the last one. (`trio.from_thread.run` per chunk, the
first design, also spawned a system task per chunk.)

Delivery is paced: a step hands every stream its chunk at once, and Trio runs the
request tasks those chunks wake as one batch, in post order or reversed at random
(its scheduler does so on purpose), so a stream's write moved from the front of the
burst to its back from one step to the next and its gap swung by the whole burst
(~30 ms at 1,000 streams). Each chunk instead gets a due time, when the loop takes
it from the mailbox but at least `LoopMailbox.delivery_slot` after the chunk before
it, and its request task writes it then. The writes leave in post order (a stable
row order), spread over about the burst's own length, so each stream's gap is the
step clock's gap.

The mailbox paces its own drain the same way: the k-th call of a burst runs no
earlier than k x `LoopMailbox.burst_slot` after the burst began (up to `max_hold`),
and a drain ahead of that pace stops and goes on from a timer. So when a stream's
chunk leaves depends on its place in the burst, not on how fast the writes before it
went: at 1,000 streams on a shared 2-core box one write took 20-35 us (median) from
step to step, and the tail of a step's burst left 25-54 ms after its head. A drain
that is behind its pace never waits, so the slot must be longer than a write on a
slow step, not an average one: traced with a 40 us slot, some steps' first drain ran
all 1,000 calls in 55-60 ms, behind its pace from the start, and that step's tail
left 20 ms later than the one before (docs/BENCHMARKS.md, issue 20, sixth pass).

Faster still, and in row order whatever the loop's load: a request may give its job
a `handover`, a synchronous "write this chunk now" that the mailbox callback calls
as the chunk comes off the mailbox. When it takes the chunk, no task wakes at all;
when it cannot (the connection is busy, a progress message is due, an earlier chunk
is still with the task), the chunk goes through the channel as above.
"""

from __future__ import annotations

import collections
import threading
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

import attrs
import numpy as np
import outcome
import structlog
import trio

from voxtrio.speech._engine import SynthesisSpec

if TYPE_CHECKING:
    from voxtrio.speech._output import OutputStream

log = structlog.get_logger("voxtrio.speech")

Call = tuple[Callable[..., object], tuple[Any, ...]]
"""A mailbox entry: a function and its arguments."""

Handover = Callable[[Any], bool]
"""Trio thread, in a mailbox callback: send this chunk now, without waiting.

True: it is sent (or its sending is under way and will finish on its own); False:
nothing was done, the chunk goes through the channel to the request task. Must not
raise and must not block.
"""


class LoopMailbox:
    """Calls posted from any thread, run in order on the Trio thread, in batches.

    Callbacks must not raise: they run inside a `run_sync_soon` callback, where an
    exception crashes the whole run. While they run, `drained_at` is when the
    loop took them (Trio clock).
    """

    # Due times of successive chunks are at least this far apart: about the event
    # loop's cost of writing one (docs/BENCHMARKS.md). 0 turns pacing off.
    delivery_slot: float = 25e-6
    # A chunk is never held longer than this (a burst larger than this many slots
    # leaves its tail at once rather than stretching every later due time); nor is a
    # call of a drain held longer than this past the drain's start. Room for 1,000
    # streams at `burst_slot` with a margin: a held tail would leave unpaced.
    max_hold: float = 0.08
    # A drain's calls run at least this far apart (a write took 20-35 us, up to 60 on
    # a slow step): see the module's docstring. 0 turns the drain's pacing off.
    burst_slot: float = 60e-6
    # A drain this far ahead of its pace or less goes on (a timer would wake later).
    burst_ahead: float = 0.001

    def __init__(self, token: trio.lowlevel.TrioToken) -> None:
        self._token = token
        self._lock = threading.Lock()
        self._calls: collections.deque[Call] = collections.deque()
        self._drain_scheduled = False
        self.drained_at = 0.0
        self._last_due = -float("inf")
        # A burst stopped ahead of its pace: when it began, and how many calls it ran.
        self._burst: tuple[float, int] | None = None

    def post(self, fn: Callable[..., object], *args: Any) -> None:
        """Any thread: run `fn(*args)` on the loop after everything posted before it.

        Raises trio.RunFinishedError once the loop has gone.
        """
        self.post_all(((fn, args),))

    def post_all(self, calls: Sequence[Call]) -> None:
        """`post` each of `calls` in order, with one lock and at most one wake-up.

        A step loop hands a whole step's chunks over at once: posted one by one, each
        wake-up of the loop thread while the step thread still encodes makes the two
        trade the GIL (measured: the step thread then spent most of its time waiting
        for it). Raises trio.RunFinishedError once the loop has gone.
        """
        if not calls:
            return
        with self._lock:
            self._calls.extend(calls)
            if self._drain_scheduled:
                return  # the pending drain will take these too
            self._drain_scheduled = True
        try:
            self._token.run_sync_soon(self._drain)
        except trio.RunFinishedError:
            with self._lock:
                self._drain_scheduled = False
            raise

    def _drain(self, *, paced: bool = True) -> None:
        with self._lock:
            calls, self._calls = self._calls, collections.deque()
            self._drain_scheduled = False
        self.drained_at = now = trio.current_time()
        began, ran = self._burst or (now, 0)
        self._burst = None
        slot = self.burst_slot if paced else 0.0
        while calls:
            if slot > 0:
                due = began + min(ran * slot, self.max_hold)
                if due > now + self.burst_ahead:
                    self._stop_until(due, calls, (began, ran))
                    return
            fn, args = calls.popleft()
            fn(*args)
            ran += 1
            if slot > 0:
                now = trio.current_time()

    def _stop_until(
        self, resume_at: float, rest: collections.deque[Call], burst: tuple[float, int]
    ) -> None:
        """Put `rest` back ahead of what was posted since; drain again at `resume_at`."""
        with self._lock:
            rest.extend(self._calls)
            self._calls = rest
            self._drain_scheduled = True  # later posts ride the timer's drain
        self._burst = burst
        trio.lowlevel.spawn_system_task(self._drain_at, resume_at, name="voxtrio.mailbox-pace")

    async def _drain_at(self, resume_at: float) -> None:
        try:
            await trio.sleep_until(resume_at)
        except trio.Cancelled:
            # The run is ending: what is left still runs (a job's end must be seen).
            self._drain(paced=False)
            raise
        self._drain()

    def due_time(self) -> float:
        """Trio thread, in a callback: when the chunk it hands over should be written."""
        now = self.drained_at
        due = min(max(now, self._last_due + self.delivery_slot), now + self.max_hold)
        self._last_due = due
        return due


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

    def __attrs_post_init__(self) -> None:
        self.credits = Credits(self.chunk_buffer)

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
