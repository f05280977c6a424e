"""One model instance, one thread, a step loop that advances every running row.

The loop owns its `BatchModel` and runs `Job`s from the same pool API as the
one-generation `Replica` (credits, stop flag, mailbox hand-over, per-chunk
transform on this thread). Scheduling happens only between steps:

- joins: jobs waiting in the inbox are prefilled `prefill_group` at a time, groups
  following each other between two steps only while `prefill_budget` lasts, so a
  running stream waits at most the budget plus one group's prefill;
- leaves: a finished, failed or stopped row is released before the next step;
- backpressure: a row whose client holds `chunk_buffer` untaken chunks (no credit)
  is left out of the step (its position does not move) and stopped once it has had
  no credit for `credit_timeout`; it never holds up the other rows.
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Callable
from contextlib import suppress

import attrs
import numpy as np
import outcome
import structlog
import trio

from voxtrio.speech._engine import Engine
from voxtrio.speech._jobs import Job
from voxtrio.speech.batched._interface import BatchModel, RowHandle
from voxtrio.speech.batched._stats import LoopStats

log = structlog.get_logger("voxtrio.batched")

BatchModelFactory = Callable[[], BatchModel]

# How long an idle loop sleeps before re-checking (shutdown also wakes it).
_IDLE_TICK_S = 1.0


class _Shutdown:
    pass


@attrs.define(eq=False)
class _Row:
    job: Job
    handle: RowHandle
    collected: list[np.ndarray] = attrs.Factory(list)  # non-streaming jobs
    starved_since: float | None = None  # no credit since then


@attrs.frozen
class LoopProgress:
    """What /health reads as the replica's "current job": the loop's heartbeat."""

    started_at: float | None
    last_step_at: float | None


class BatchReplica:
    """A `Replica` with `capacity` slots: one model instance and its step loop."""

    def __init__(
        self,
        index: int,
        factory: BatchModelFactory,
        *,
        prefill_group: int = 2,
        prefill_budget: float = 0.025,
        credit_timeout: float = 30.0,
    ) -> None:
        self.index = index
        self._factory = factory
        self.prefill_group = prefill_group
        self.prefill_budget = prefill_budget
        self.credit_timeout = credit_timeout
        self.model: BatchModel | None = None
        self.capacity = 0  # known once loaded
        self.stats = LoopStats()
        self.jobs_run = 0
        self._inbox: queue.SimpleQueue[Job | _Shutdown] = queue.SimpleQueue()
        self._wake = threading.Event()
        self._rows: dict[Job, _Row] = {}
        self._jobs_in: int = 0  # submitted, not yet finished (Trio side)
        self._heartbeat: float | None = None
        self._thread = threading.Thread(
            target=self._main, name=f"voxtrio-replica-{index}", daemon=True
        )
        self._loaded: trio.Event | None = None
        self._load_error: BaseException | None = None
        self._token: trio.lowlevel.TrioToken | None = None
        self._on_job_done: Callable[[BatchReplica, Job], None] | None = None

    # -- Trio side ------------------------------------------------------------

    @property
    def engine(self) -> Engine | None:
        """The engine under the model (sample rate, max_steps, voices), once loaded."""
        return getattr(self.model, "engine", None)

    @property
    def thread(self) -> threading.Thread:
        return self._thread

    @property
    def load_error(self) -> BaseException | None:
        return self._load_error

    @property
    def current(self) -> LoopProgress | None:
        """None when idle; else the loop's last heartbeat (it beats even when all skip)."""
        if self._jobs_in == 0:
            return None
        return LoopProgress(started_at=self._heartbeat, last_step_at=self._heartbeat)

    def start(
        self, token: trio.lowlevel.TrioToken, on_job_done: Callable[[BatchReplica, Job], None]
    ) -> trio.Event:
        self._token = token
        self._on_job_done = on_job_done
        self._loaded = trio.Event()
        self._thread.start()
        return self._loaded

    def submit(self, job: Job) -> None:
        # The pool gives a replica at most `capacity` jobs at once, so this is bounded.
        self._jobs_in += 1
        job.wake = self._wake
        self._inbox.put(job)
        self._wake.set()

    def shutdown(self) -> None:
        self._inbox.put(_Shutdown())
        self._wake.set()

    # -- the loop's own thread --------------------------------------------------

    def _main(self) -> None:
        assert self._token is not None
        assert self._loaded is not None
        try:
            model = self._factory()
            model.warm_up()
        except BaseException as exc:
            self._load_error = exc
            self._token.run_sync_soon(self._loaded.set)
            return
        self.model = model
        self.capacity = model.max_batch
        self._token.run_sync_soon(self._loaded.set)
        joining: list[Job] = []
        try:
            while True:
                self._heartbeat = time.perf_counter()
                self._wake.clear()
                if self._take_inbox(joining):
                    return
                self._admit(model, joining)
                self._drop_stopped(model)
                ready = self._with_credit(model)
                if ready:
                    self._step(model, ready)
                elif not joining:
                    # Nothing to do until a join, a credit or a stop (each sets wake).
                    self._wake.wait(_IDLE_TICK_S if not self._rows else 0.05)
        finally:
            for job in joining:
                self._finish(job, outcome.Value(None), stopped=True)
            for row in list(self._rows.values()):
                self._leave(model, row, outcome.Value(None), stopped=True)
            model.close()
            log.info("step_loop_finished", replica=self.index, **self.stats.summary())

    def _take_inbox(self, joining: list[Job]) -> bool:
        while True:
            try:
                item = self._inbox.get_nowait()
            except queue.Empty:
                return False
            if isinstance(item, _Shutdown):
                return True
            item.started_at = time.perf_counter()
            joining.append(item)

    def _admit(self, model: BatchModel, joining: list[Job]) -> None:
        """Prefill waiting jobs in small groups until `prefill_budget` is spent.

        The stall running rows see between two steps is at most the budget plus one
        group's prefill; cheap prefills (the synthetic model) admit everyone at once.
        """
        began = time.perf_counter()
        while joining and time.perf_counter() - began < self.prefill_budget:
            group: list[Job] = []
            while joining and len(group) < self.prefill_group:
                job = joining.pop(0)
                if job.stop_event.is_set():
                    self._finish(job, outcome.Value(None), stopped=True)
                else:
                    group.append(job)
            if group:
                self._admit_group(model, group)

    def _admit_group(self, model: BatchModel, group: list[Job]) -> None:
        began = time.perf_counter()
        try:
            handles = model.prefill([job.spec for job in group])
        except Exception as exc:
            if len(group) == 1:
                self._finish(group[0], outcome.Error(exc), stopped=False)
            else:
                # One bad request must not fail its group: find it by prefilling alone.
                for job in group:
                    self._admit_group(model, [job])
            return
        self.stats.prefilled(len(group), time.perf_counter() - began, running=len(self._rows))
        for job, handle in zip(group, handles, strict=True):
            self._rows[job] = _Row(job, handle)

    def _drop_stopped(self, model: BatchModel) -> None:
        for row in list(self._rows.values()):
            if row.job.stop_event.is_set():
                self._leave(model, row, outcome.Value(None), stopped=True)

    def _with_credit(self, model: BatchModel) -> list[_Row]:
        """Rows whose client can take a chunk now; the others are skipped this step."""
        now = time.perf_counter()
        ready = []
        for row in list(self._rows.values()):
            if not row.job.spec.streaming or row.job.credits.acquire(blocking=False):
                row.starved_since = None
                ready.append(row)
            elif row.starved_since is None:
                row.starved_since = now
            elif now - row.starved_since > self.credit_timeout:
                log.warning("row_reader_timeout", request_id=row.job.request_id)
                self._leave(model, row, outcome.Value(None), stopped=True)
        if len(ready) < len(self._rows):
            self.stats.skipped += len(self._rows) - len(ready)
        return ready

    def _step(self, model: BatchModel, rows: list[_Row]) -> None:
        began = time.perf_counter()
        try:
            results = model.step([row.handle for row in rows])
        except Exception as exc:
            for row in rows:
                self._leave(model, row, outcome.Error(exc), stopped=False)
            return
        now = time.perf_counter()
        self.stats.stepped(len(rows), now - began)
        for row, result in zip(rows, results, strict=True):
            job = row.job
            job.steps += 1
            job.last_step_at = now
            if job.expected_steps is None:
                job.expected_steps = model.max_steps(job.spec)
            try:
                self._deliver(row, result.audio, result.finished)
            except Exception as exc:
                self._leave(model, row, outcome.Error(exc), stopped=False)
                continue
            if result.finished:
                self._leave(model, row, outcome.Value(None), stopped=False)

    @staticmethod
    def _deliver(row: _Row, audio: np.ndarray, finished: bool) -> None:
        job = row.job
        if not job.spec.streaming:
            if audio.size:
                row.collected.append(audio)
            if not finished:
                return
            audio = np.concatenate(row.collected) if row.collected else audio
        elif not audio.size:
            job.credits.release()  # nothing handed over: the credit goes back
            return
        item = audio if job.transform is None else job.transform(audio)
        job.mailbox.post(job.deliver, item)

    def _leave(
        self, model: BatchModel, row: _Row, result: outcome.Outcome[None], *, stopped: bool
    ) -> None:
        self._rows.pop(row.job, None)
        model.release(row.handle)  # the slot is free before the job is reported done
        self._finish(row.job, result, stopped=stopped)

    def _finish(self, job: Job, result: outcome.Outcome[None], *, stopped: bool) -> None:
        job.finished_at = time.perf_counter()
        self.jobs_run += 1
        with suppress(trio.RunFinishedError):
            job.mailbox.post(self._finished, job, result, stopped)

    def _finished(self, job: Job, result: outcome.Outcome[None], stopped: bool) -> None:
        # Back on the Trio thread, after every chunk this job posted.
        job.result = result
        job.stopped = stopped
        job.send_channel.close()
        self._jobs_in -= 1
        job.done.set()
        assert self._on_job_done is not None
        self._on_job_done(self, job)
