"""A step loop's decisions: which requests join, which rows step, which leave.

No threads, no torch, no clock of its own (`now` and durations are passed in), so it
is tested with plain objects. The loop asks `schedule()` for a `Plan`, runs it on the
model, and hands the outcome back (`prefilled`, `postprocess`, `step_failed`).

- Joins: waiting requests are prefilled `prefill_group` at a time, groups following
  each other between two full steps while their time is under `prefill_budget`. Then
  the rows prefilled in that gap take their first step on their own (a join step, a
  small bucket), before the next full step: a new request's first chunk waits for at
  most the one full step running when it came, never for a full step of its own. A
  running stream's gap between two chunks is at most one full step plus the budget,
  one group's prefill and one join step. The join step is taken only while it pays:
  when a full step is measured to cost more than two join steps (what the new rows
  save exceeds what the running ones lose), and not in a burst (requests still
  waiting to join would wait for it too). Where a step costs about the same at any
  batch size (a GPU running CUDA graphs), the batch is small or a burst is being
  admitted, the new rows simply ride the next full step.
- Steps: a full step carries every running row that has a credit. A row whose client
  holds `chunk_buffer` untaken chunks (no credit) is skipped (its position does not
  move) and leaves once it has had no credit for `credit_timeout`.
- Leaves: a stopped request (cancel, disconnect, shutdown) before its next step; a
  finished row after its step. A non-streaming row that ends as a bad case (at least
  `badcase_steps` chunks: voxcpm's audio-to-text ratio test) is generated again,
  re-seeded, up to `retry_badcase_max_times` attempts in all, like voxcpm's generate.
"""

from __future__ import annotations

import collections
from collections.abc import Callable, Sequence
from typing import Generic, Literal, Protocol, TypeVar

import attrs
import numpy as np

from voxtrio.speech._engine import SynthesisSpec
from voxtrio.speech.batched._interface import RowT, StepResult


class Request(Protocol):
    """What the scheduler reads and does to a request (a `Job`, or a test's object)."""

    @property
    def spec(self) -> SynthesisSpec: ...

    def stop_requested(self) -> bool: ...

    def take_credit(self) -> bool:
        """Take one chunk's credit if the client has room for it; never blocks."""
        ...

    def give_credit(self) -> None:
        """Return a credit taken for a step that handed nothing over."""
        ...


ReqT = TypeVar("ReqT", bound=Request)

BucketFor = Callable[[int], int]
"""The batch size a step of n rows runs at (`BatchModel.bucket_for`)."""

BadcaseRule = Callable[[SynthesisSpec], float | None]
"""Chunks at which a non-streaming generation counts as a bad case (None: never)."""

LeaveReason = Literal["stopped", "reader_timeout"]

# Weight of the newest step time in a bucket's running estimate.
_COST_WEIGHT = 0.3


def no_padding(rows: int) -> int:
    return rows


# A retry's seed: the request's seed moved by a fixed odd stride, within the 32 bits
# torch's CPU generator keeps (it drops the rest), so a retry differs from the first
# attempt and the whole request stays reproducible from its seed.
RETRY_SEED_STRIDE = 0x9E3779B9


def never_badcase(spec: SynthesisSpec) -> float | None:
    return None


def retry_spec(spec: SynthesisSpec, attempt: int) -> SynthesisSpec:
    """The spec of attempt `attempt` (1-based) of a generation."""
    if attempt == 1:
        return spec
    return attrs.evolve(spec, seed=(spec.seed + (attempt - 1) * RETRY_SEED_STRIDE) % 2**32)


@attrs.define(eq=False)
class Waiting(Generic[ReqT]):
    """A request not prefilled yet (or again, for a bad-case retry)."""

    request: ReqT
    attempt: int = 1

    @property
    def spec(self) -> SynthesisSpec:
        return retry_spec(self.request.spec, self.attempt)


@attrs.define(eq=False)
class Row(Generic[ReqT, RowT]):
    """A prefilled request: its model handle and what the scheduler tracks of it."""

    request: ReqT
    handle: RowT
    attempt: int
    badcase_steps: float | None  # None: no retry for this row
    steps: int = 0
    collected: list[np.ndarray] = attrs.Factory(list)  # non-streaming audio so far
    starved_since: float | None = None  # no credit since then

    @property
    def streaming(self) -> bool:
        return self.request.spec.streaming


@attrs.frozen
class Leaving(Generic[ReqT, RowT]):
    """A request that leaves without finishing; `handle` None when never prefilled."""

    request: ReqT
    handle: RowT | None
    reason: LeaveReason


@attrs.frozen
class Plan(Generic[ReqT, RowT]):
    """What the loop does next: release `leaving`, then prefill or step (or wait)."""

    leaving: list[Leaving[ReqT, RowT]] = attrs.Factory(list)
    prefill: list[Waiting[ReqT]] = attrs.Factory(list)
    step: list[Row[ReqT, RowT]] = attrs.Factory(list)
    # Every running row with a credit is in `step` (else: a join step of new rows).
    full: bool = False

    @property
    def idle(self) -> bool:
        return not self.prefill and not self.step


@attrs.frozen
class Output(Generic[ReqT, RowT]):
    """One row's outcome of a step, for the loop to act on."""

    row: Row[ReqT, RowT]
    audio: np.ndarray | None  # hand this to the request now
    end: Literal["finished", "retry"] | None  # release the handle (and end the job)


class Scheduler(Generic[ReqT, RowT]):
    def __init__(
        self,
        max_rows: int,
        *,
        prefill_group: int = 2,
        prefill_budget: float = 0.025,
        join_steps: bool = True,
        credit_timeout: float = 30.0,
        badcase_steps: BadcaseRule = never_badcase,
        bucket_for: BucketFor = no_padding,
    ) -> None:
        self.max_rows = max_rows
        self._bucket_for = bucket_for
        # Seconds a step takes, per bucket (a running estimate): whether a join step pays.
        self.step_cost: dict[int, float] = {}
        self.prefill_group = prefill_group
        self.prefill_budget = prefill_budget
        self.join_steps = join_steps
        self.credit_timeout = credit_timeout
        self._badcase_steps = badcase_steps
        self.waiting: collections.deque[Waiting[ReqT]] = collections.deque()
        self.running: list[Row[ReqT, RowT]] = []
        # Seconds of prefills and join steps since the last full step: the stall the
        # running rows have seen so far.
        self.stall = 0.0
        self.skipped = 0  # row-steps left out for want of a credit

    @property
    def empty(self) -> bool:
        return not self.waiting and not self.running

    def add(self, request: ReqT) -> None:
        self.waiting.append(Waiting(request))

    def schedule(self, now: float) -> Plan[ReqT, RowT]:
        leaving = self._drop_stopped()
        free = self.max_rows - len(self.running)
        if self.waiting and free > 0 and self.stall < self.prefill_budget:
            return Plan(leaving, prefill=self._take_group(free))
        joined = [row for row in self.running if row.steps == 0]
        if (
            joined
            and self._join_step_pays(len(joined))
            and (rows := self._with_credit(joined, now, leaving))
        ):
            # Rows prefilled since the last step take their first step on their own.
            return Plan(leaving, step=rows, full=len(joined) == len(self.running))
        rows = self._with_credit(self.running, now, leaving)
        if rows:
            return Plan(leaving, step=rows, full=True)
        self.stall = 0.0  # nobody can step: a prefill stalls nobody
        if self.waiting and free > 0:
            return Plan(leaving, prefill=self._take_group(free))
        return Plan(leaving)

    def prefilled(
        self, group: Sequence[Waiting[ReqT]], handles: Sequence[RowT], seconds: float
    ) -> None:
        """The model prefilled `group` (all of it or a part) in `seconds`."""
        self.stall += seconds
        for waiting, handle in zip(group, handles, strict=True):
            spec = waiting.request.spec
            retries = not spec.streaming and spec.retry_badcase
            last = waiting.attempt >= spec.retry_badcase_max_times
            badcase = None if not retries or last else self._badcase_steps(spec)
            self.running.append(Row(waiting.request, handle, waiting.attempt, badcase))

    def postprocess(
        self, plan: Plan[ReqT, RowT], results: Sequence[StepResult], seconds: float
    ) -> list[Output[ReqT, RowT]]:
        """The model stepped `plan.step` in `seconds`: what each row hands over or ends."""
        self.stall = 0.0 if plan.full else self.stall + seconds
        bucket = self._bucket_for(len(plan.step))
        known = self.step_cost.get(bucket)
        self.step_cost[bucket] = (
            seconds if known is None else known + _COST_WEIGHT * (seconds - known)
        )
        outputs = []
        for row, result in zip(plan.step, results, strict=True):
            row.steps += 1
            output = self._stream(row, result) if row.streaming else self._collect(row, result)
            if output.end is not None:
                self.remove(row)
            if output.audio is not None or output.end is not None:
                outputs.append(output)
        return outputs

    def step_failed(self, plan: Plan[ReqT, RowT]) -> list[Row[ReqT, RowT]]:
        """The step raised: every row in it leaves (the loop fails each)."""
        for row in plan.step:
            self.remove(row)
        return plan.step

    def remove(self, row: Row[ReqT, RowT]) -> None:
        """`row` leaves now (its audio could not be handed over). Idempotent."""
        if row in self.running:
            self.running.remove(row)

    def drain(self) -> tuple[list[Waiting[ReqT]], list[Row[ReqT, RowT]]]:
        """Shutdown: everything waiting and running, forgotten here."""
        waiting, running = list(self.waiting), self.running
        self.waiting.clear()
        self.running = []
        return waiting, running

    # -- helpers -----------------------------------------------------------------

    def _drop_stopped(self) -> list[Leaving[ReqT, RowT]]:
        leaving: list[Leaving[ReqT, RowT]] = []
        for waiting in [w for w in self.waiting if w.request.stop_requested()]:
            self.waiting.remove(waiting)
            leaving.append(Leaving(waiting.request, None, "stopped"))
        for row in [row for row in self.running if row.request.stop_requested()]:
            self.running.remove(row)
            leaving.append(Leaving(row.request, row.handle, "stopped"))
        return leaving

    def _join_step_pays(self, joined: int) -> bool:
        """A join step before the full step gains the new rows more than it costs the
        running ones: full step > 2 x join step (unmeasured: try it, and so measure),
        and no more requests wait to join (in a burst it would delay them too)."""
        if joined == len(self.running):
            return True  # nobody else runs: it is the full step
        if not self.join_steps:
            return False
        if self.waiting and len(self.running) < self.max_rows:
            return False  # a burst: the next group's prefill should not wait for it
        join = self.step_cost.get(self._bucket_for(joined))
        full = self.step_cost.get(self._bucket_for(len(self.running)))
        return join is None or full is None or full > 2 * join

    def _take_group(self, free: int) -> list[Waiting[ReqT]]:
        size = min(self.prefill_group, free, len(self.waiting))
        return [self.waiting.popleft() for _ in range(size)]

    def _with_credit(
        self, rows: Sequence[Row[ReqT, RowT]], now: float, leaving: list[Leaving[ReqT, RowT]]
    ) -> list[Row[ReqT, RowT]]:
        """Rows whose client can take a chunk now; the others are skipped this step."""
        ready = []
        for row in list(rows):
            if not row.streaming or row.request.take_credit():
                row.starved_since = None
                ready.append(row)
            elif row.starved_since is not None and now - row.starved_since > self.credit_timeout:
                self.running.remove(row)
                leaving.append(Leaving(row.request, row.handle, "reader_timeout"))
            else:
                if row.starved_since is None:
                    row.starved_since = now
                self.skipped += 1
        return ready

    @staticmethod
    def _stream(row: Row[ReqT, RowT], result: StepResult) -> Output[ReqT, RowT]:
        if not result.audio.size:
            row.request.give_credit()  # nothing handed over: the credit goes back
        audio = result.audio if result.audio.size else None
        return Output(row, audio, "finished" if result.finished else None)

    def _collect(self, row: Row[ReqT, RowT], result: StepResult) -> Output[ReqT, RowT]:
        if result.audio.size:
            row.collected.append(result.audio)
        if not result.finished:
            return Output(row, None, None)
        if row.badcase_steps is not None and row.steps >= row.badcase_steps:
            # Generated again, first in line for the next free slot.
            self.waiting.appendleft(Waiting(row.request, row.attempt + 1))
            return Output(row, None, "retry")
        audio = np.concatenate(row.collected) if row.collected else result.audio
        return Output(row, audio, "finished")
