"""The loop mailbox: calls posted from model threads, run on the Trio thread, paced.

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

Trio runs every task made runnable together as one batch, and a timer's task waits
for the batch in front of it: when hundreds of requests end at once, or their
clients close, one batch took 60-70 ms, and the next step's drain, woken by a timer
or by its `run_sync_soon`, waited behind it. So the drain also goes on between two
task steps (`LoopMailbox.between_steps`, called from `MailboxInstrument`): a burst
stopped ahead of its pace resumes when it is due, and calls just posted are taken
at once, whatever batch is running.

A stream also keeps its place in the burst. Paced by count, a chunk leaves as long
after the burst begins as there are rows ahead of it; when hundreds of rows ahead
end at once (streams that started together end together), the rows behind move up
and their next chunk leaves that much early (traced: the last 191 rows' last gap
34-37 ms short at 1,000 streams). So a step's chunks are posted with their places
(`Job.hold_place`, on the step thread: a stream moves up by at most
`speech._jobs.PLACE_SLEW` rows a step) and the drain paces by place; calls without
one (a job's end) follow the call before them.
"""

from __future__ import annotations

import collections
import threading
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import trio

Call = tuple[Callable[..., object], tuple[Any, ...]]
"""A mailbox entry: a function and its arguments."""

# A call as the mailbox holds it: with its place in its step's burst (None: right
# after the call before it) and whether it is the first of its `post_all`.
_Entry = tuple[Callable[..., object], tuple[Any, ...], "int | None", bool]


class _StoppedBurst(NamedTuple):
    """A burst stopped ahead of its pace, and when it goes on."""

    began: float
    last: int  # the place of the last call it ran
    base: int  # where its current step's places start
    resume_at: float


class LoopMailbox:
    """Calls posted from any thread, run in order on the Trio thread, in batches.

    Callbacks must not raise or block: they run inside a `run_sync_soon` callback,
    where an exception crashes the whole run, or between two task steps (inside no task's
    step). While they run, `drained_at` is when the loop took them (Trio clock).
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
        self._calls: collections.deque[_Entry] = collections.deque()
        self._drain_scheduled = False
        self.drained_at = 0.0
        self._last_due = -float("inf")
        self._stopped: _StoppedBurst | None = None
        self._timer_armed = False  # a timer task waits for a stopped burst

    def post(self, fn: Callable[..., object], *args: Any) -> None:
        """Any thread: run `fn(*args)` on the loop after everything posted before it.

        Raises trio.RunFinishedError once the loop has gone.
        """
        self.post_all(((fn, args),))

    def post_all(self, calls: Sequence[Call], places: Sequence[int | None] = ()) -> None:
        """`post` each of `calls` in order, with one lock and at most one wake-up.

        `places`, if given (one per call): each call's place in this step's burst, for
        the drain's pace (`Job.hold_place`); None, or none given, runs a call a slot
        after the one before.

        A step loop hands a whole step's chunks over at once: posted one by one, each
        wake-up of the loop thread while the step thread still encodes makes the two
        trade the GIL (measured: the step thread then spent most of its time waiting
        for it). Raises trio.RunFinishedError once the loop has gone.
        """
        if not calls:
            return
        entries = [
            (fn, args, places[index] if places else None, index == 0)
            for index, (fn, args) in enumerate(calls)
        ]
        with self._lock:
            self._calls.extend(entries)
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
        began, last, base, _ = self._stopped or (now, -1, 0, now)
        self._stopped = None
        slot = self.burst_slot if paced else 0.0
        while calls:
            fn, args, place, first = calls[0]
            if first:
                base = last + 1  # a step posted during a burst goes on after it
            at = last + 1 if place is None else max(last + 1, base + place)
            if slot > 0:
                due = began + min(at * slot, self.max_hold)
                if due > now + self.burst_ahead:
                    self._stop(calls, _StoppedBurst(began, last, base, due))
                    return
            calls.popleft()
            fn(*args)
            last = at
            if slot > 0:
                now = trio.current_time()

    def _stop(self, rest: collections.deque[_Entry], stopped: _StoppedBurst) -> None:
        """Put `rest` back ahead of what was posted since; drain again when it is due."""
        with self._lock:
            rest.extend(self._calls)
            self._calls = rest
            self._drain_scheduled = True  # later posts ride the resumed drain
        self._stopped = stopped
        if not self._timer_armed:
            self._timer_armed = True
            trio.lowlevel.spawn_system_task(self._pace, name="voxtrio.mailbox-pace")

    async def _pace(self) -> None:
        """The timer of a stopped burst, for when no task step comes first (an idle loop)."""
        try:
            while (stopped := self._stopped) is not None:
                await trio.sleep_until(stopped.resume_at)
                if self._stopped is stopped:  # not resumed between task steps meanwhile
                    self._drain()
        except trio.Cancelled:
            # The run is ending: what is left still runs (a job's end must be seen).
            self._drain(paced=False)
            raise
        finally:
            self._timer_armed = False

    def between_steps(self) -> None:
        """Trio thread, between two task steps: go on with a stopped burst once it is
        due, or take calls just posted, instead of waiting for the batch to end."""
        stopped = self._stopped
        if stopped is not None:
            if trio.current_time() >= stopped.resume_at:
                self._drain()
        elif self._calls:  # posted; the `run_sync_soon` drain then finds nothing
            self._drain()

    def due_time(self) -> float:
        """Trio thread, in a callback: when the chunk it hands over should be written."""
        now = self.drained_at
        due = min(max(now, self._last_due + self.delivery_slot), now + self.max_hold)
        self._last_due = due
        return due


class MailboxInstrument(trio.abc.Instrument):
    """Lets a mailbox drain between any two task steps of the Trio run it is added to."""

    def __init__(self, mailbox: LoopMailbox) -> None:
        self.mailbox = mailbox

    def before_task_step(self, task: trio.lowlevel.Task) -> None:
        self.mailbox.between_steps()
