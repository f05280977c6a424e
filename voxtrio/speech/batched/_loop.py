"""One model instance: a thread that loads it, then joins its scheduler and its model.

The thread's loop is `plan = scheduler.schedule()` -> `model.prefill` or `model.step`
-> `scheduler.prefilled` / `scheduler.postprocess`; everything it decides is in
`_scheduler.py`. This module does the rest: the inbox from the Trio side, the
per-chunk transform (a step's plain PCM rows together, `audio/_pcm_batch.py`) and
hand-over through the job's mailbox (a paced model's step held until its tick,
`_clock.py`), telling the event loop when it computes (`_gil.py`), releasing a row's
slot before its job is reported done, and the heartbeat /health reads.
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Callable, Sequence
from contextlib import suppress
from typing import Any

import attrs
import numpy as np
import outcome
import structlog
import trio

from voxtrio.audio._pcm_batch import gatherable
from voxtrio.speech._engine import Engine
from voxtrio.speech._jobs import Job
from voxtrio.speech._mailbox import LoopMailbox
from voxtrio.speech._output import BatchTransform, EncodedAudio, OutputStream
from voxtrio.speech.batched._clock import StepClock
from voxtrio.speech.batched._gil import GilTurns
from voxtrio.speech.batched._interface import BatchModel
from voxtrio.speech.batched._scheduler import (
    BadcaseRule,
    Output,
    Plan,
    Scheduler,
    Waiting,
    never_badcase,
)
from voxtrio.speech.batched._stats import LoopStats

log = structlog.get_logger("voxtrio.batched")

# How long a loop with nothing to do sleeps before looking again (every join, credit
# and stop wakes it at once); shorter while rows wait for credit, for their timeout.
_IDLE_TICK_S = 1.0
_STARVED_TICK_S = 0.05


@attrs.frozen
class LoadedModel:
    """What an instance's thread loads: the engine, its batched form, its retry rule."""

    engine: Engine
    model: BatchModel[Any]
    badcase_steps: BadcaseRule = never_badcase
    # Set where a step's time is a clock's tick, not work (the synthetic engine): no
    # join steps (one would only delay every running row by a tick and give the new
    # rows a short first gap), every waiting request is prefilled at once (it costs
    # nothing), and a step's chunks are held until its tick (`_clock.py`).
    clock: StepClock | None = None

    @property
    def paced(self) -> bool:
        return self.clock is not None


ModelLoader = Callable[[], LoadedModel]
"""Builds one instance's model; called on the thread that will own it."""

_Posting = tuple[LoopMailbox, Callable[..., object], tuple[Any, ...], "int | None"]
"""An entry of a step's outbox: the mailbox it goes to, a function, its arguments, and
its place in the step's burst (`Job.hold_place`; None for a job's end)."""

JobDone = Callable[["ModelInstance", Job], None]


class _Shutdown:
    pass


class ModelInstance:
    """One model instance and its step loop: `slots` generations at once."""

    def __init__(
        self,
        index: int,
        load: ModelLoader,
        *,
        prefill_group: int = 2,
        prefill_budget: float = 0.025,
        join_steps: bool = True,
        credit_timeout: float = 30.0,
    ) -> None:
        self.index = index
        self.join_steps = join_steps
        self._load = load
        self.prefill_group = prefill_group
        self.prefill_budget = prefill_budget
        self.credit_timeout = credit_timeout
        self.engine: Engine | None = None
        self.model: BatchModel[Any] | None = None
        self.slots = 0  # known once loaded
        self.stats = LoopStats()
        self.jobs_run = 0
        self.slots_busy = 0  # jobs submitted and not yet reported done (Trio side)
        self._heartbeat: float | None = None
        self._inbox: queue.SimpleQueue[Job | _Shutdown] = queue.SimpleQueue()
        self._wake = threading.Event()
        self._thread = threading.Thread(
            target=self._main, name=f"voxtrio-instance-{index}", daemon=True
        )
        self._loaded: trio.Event | None = None
        self._load_error: BaseException | None = None
        self._token: trio.lowlevel.TrioToken | None = None
        self._on_job_done: JobDone | None = None
        # What this iteration hands to the loop thread, posted at its end in one go
        # (`LoopMailbox.post_all`): every chunk in row order, then every finished job's
        # end (each after its own chunks). An end wakes its request task to finish the
        # request; among the chunks it would make the rows behind it wait for that.
        self._outbox: list[_Posting] = []
        self._ends: list[_Posting] = []
        # Encodes a step's plain PCM/WAV chunks together; used on the instance's thread only.
        self._transform_batch = BatchTransform()
        # Shared with the event loop by the pool (`_gil.py`); until then, this one's own.
        self.gil_turns = GilTurns()

    # -- Trio side ------------------------------------------------------------

    @property
    def thread(self) -> threading.Thread:
        return self._thread

    @property
    def load_error(self) -> BaseException | None:
        return self._load_error

    @property
    def last_progress_at(self) -> float | None:
        """While busy, the loop's last beat (it beats even when every row is skipped)."""
        return self._heartbeat if self.slots_busy else None

    def start(self, token: trio.lowlevel.TrioToken, on_job_done: JobDone) -> trio.Event:
        self._token = token
        self._on_job_done = on_job_done
        self._loaded = trio.Event()
        self._thread.start()
        return self._loaded

    def submit(self, job: Job) -> None:
        # The pool gives an instance at most `slots` jobs at once, so this is bounded.
        self.slots_busy += 1
        job.wake = self._wake
        self._inbox.put(job)
        self._wake.set()

    def shutdown(self) -> None:
        self._inbox.put(_Shutdown())
        self._wake.set()

    # -- the instance's own thread ---------------------------------------------

    def _main(self) -> None:
        assert self._token is not None
        assert self._loaded is not None
        try:
            loaded = self._load()
            loaded.model.warm_up()
        except BaseException as exc:
            self._load_error = exc
            self._token.run_sync_soon(self._loaded.set)
            return
        model = loaded.model
        self.engine, self.model, self.slots = loaded.engine, model, model.max_batch
        scheduler: Scheduler[Job, Any] = Scheduler(
            model.max_batch,
            prefill_group=model.max_batch if loaded.paced else self.prefill_group,
            prefill_budget=self.prefill_budget,
            join_steps=self.join_steps and not loaded.paced,
            credit_timeout=self.credit_timeout,
            badcase_steps=loaded.badcase_steps,
            bucket_for=model.bucket_for,
        )
        if loaded.clock is not None:
            loaded.clock.sleep = self._sleep_aside
        self._token.run_sync_soon(self._loaded.set)
        try:
            self._run(model, scheduler, loaded.clock)
        finally:
            waiting, running = scheduler.drain()
            for entry in waiting:
                self._finish(entry.request, outcome.Value(None), stopped=True)
            for row in running:
                self._end(model, row.request, row.handle, outcome.Value(None), stopped=True)
            self._flush()
            model.close()
            log.info("step_loop_finished", instance=self.index, **self.stats.summary())

    def _run(
        self, model: BatchModel[Any], scheduler: Scheduler[Job, Any], clock: StepClock | None
    ) -> None:
        while True:
            self._heartbeat = time.perf_counter()
            self._wake.clear()
            if self._take_inbox(scheduler):
                return
            plan = scheduler.schedule(time.perf_counter())
            with self.gil_turns.computing(self.index):
                self._carry_out(model, scheduler, plan, clock)
            if not plan.prefill and not plan.step:
                if scheduler.empty:
                    self._transform_batch.release()
                self._wake.wait(_IDLE_TICK_S if scheduler.empty else _STARVED_TICK_S)
            self.stats.skipped = scheduler.skipped

    def _carry_out(
        self,
        model: BatchModel[Any],
        scheduler: Scheduler[Job, Any],
        plan: Plan[Job, Any],
        clock: StepClock | None,
    ) -> None:
        for leaving in plan.leaving:
            if leaving.reason == "reader_timeout":
                log.warning("row_reader_timeout", request_id=leaving.request.request_id)
            self._end(model, leaving.request, leaving.handle, outcome.Value(None), stopped=True)
        if plan.prefill:
            self._prefill(model, scheduler, plan.prefill)
        elif plan.step:
            self._step(model, scheduler, plan)
            if clock is not None:
                clock.release()
        self._flush()

    def _sleep_aside(self, seconds: float) -> None:
        """The step clock's sleeps: no GIL turns wanted meanwhile."""
        with self.gil_turns.waiting(self.index):
            time.sleep(seconds)

    def _take_inbox(self, scheduler: Scheduler[Job, Any]) -> bool:
        while True:
            try:
                item = self._inbox.get_nowait()
            except queue.Empty:
                return False
            if isinstance(item, _Shutdown):
                return True
            item.started_at = time.perf_counter()
            scheduler.add(item)

    def _prefill(
        self, model: BatchModel[Any], scheduler: Scheduler[Job, Any], group: Sequence[Waiting[Job]]
    ) -> None:
        began = time.perf_counter()
        try:
            handles = model.prefill([waiting.spec for waiting in group])
        except Exception as exc:
            if len(group) == 1:
                self._finish(group[0].request, outcome.Error(exc), stopped=False)
            else:
                # One bad request must not fail its group: find it by prefilling alone.
                for waiting in group:
                    self._prefill(model, scheduler, [waiting])
            return
        seconds = time.perf_counter() - began
        self.stats.prefilled(len(group), seconds, running=len(scheduler.running))
        scheduler.prefilled(group, handles, seconds)

    def _step(
        self, model: BatchModel[Any], scheduler: Scheduler[Job, Any], plan: Plan[Job, Any]
    ) -> None:
        began = time.perf_counter()
        try:
            results = model.step([row.handle for row in plan.step])
        except Exception as exc:
            for row in scheduler.step_failed(plan):
                self._end(model, row.request, row.handle, outcome.Error(exc), stopped=False)
            return
        now = time.perf_counter()
        rows = len(plan.step)
        self.stats.stepped(rows, model.bucket_for(rows), now - began, full=plan.full)
        for row in plan.step:
            job = row.request
            job.steps += 1
            job.last_step_at = now
            if job.expected_steps is None:
                job.expected_steps = model.max_steps(job.spec)
        outputs = scheduler.postprocess(plan, results, now - began)
        encoded = _encode_together(outputs, self._transform_batch)
        index = 0  # among this step's chunks, in row order (`Job.hold_place`)
        for out, piece in zip(outputs, encoded, strict=True):
            job = out.row.request
            if out.audio is not None:
                try:
                    self._deliver(job, out.audio, piece, job.hold_place(index))
                    index += 1
                except Exception as exc:
                    scheduler.remove(out.row)
                    self._end(model, job, out.row.handle, outcome.Error(exc), stopped=False)
                    continue
            if out.end == "finished":
                self._end(model, job, out.row.handle, outcome.Value(None), stopped=False)
            elif out.end == "retry":
                log.info("badcase_retry", request_id=job.request_id, steps=out.row.steps)
                model.release(out.row.handle)
                job.expected_steps = (job.expected_steps or 0) + model.max_steps(job.spec)

    def _deliver(
        self,
        job: Job,
        audio: np.ndarray,
        encoded: EncodedAudio | None = None,
        place: int | None = None,
    ) -> None:
        if encoded is not None:
            item: Any = encoded
        else:
            item = audio if job.transform is None else job.transform(audio)
        self._outbox.append((job.mailbox, job.deliver, (item,), place))

    def _flush(self) -> None:
        """Post the outbox, then the ends: one `post_all` per run of the same mailbox."""
        outbox, self._outbox = self._outbox, []
        outbox += self._ends
        self._ends = []
        start = 0
        with suppress(trio.RunFinishedError):
            for end in range(1, len(outbox) + 1):
                if end == len(outbox) or outbox[end][0] is not outbox[start][0]:
                    batch = outbox[start:end]
                    batch[0][0].post_all(
                        [(fn, args) for _, fn, args, _ in batch],
                        [place for _, _, _, place in batch],
                    )
                    start = end

    def _end(
        self,
        model: BatchModel[Any],
        job: Job,
        handle: Any,
        result: outcome.Outcome[None],
        *,
        stopped: bool,
    ) -> None:
        if handle is not None:
            model.release(handle)  # the slot is free before the job is reported done
        self._finish(job, result, stopped=stopped)

    def _finish(self, job: Job, result: outcome.Outcome[None], *, stopped: bool) -> None:
        job.finished_at = time.perf_counter()
        self.jobs_run += 1
        self._ends.append((job.mailbox, self._finished, (job, result, stopped), None))

    def _finished(self, job: Job, result: outcome.Outcome[None], stopped: bool) -> None:
        # Back on the Trio thread, after every chunk this job posted.
        job.result = result
        job.stopped = stopped
        job.send_channel.close()
        self.slots_busy -= 1
        job.done.set()
        assert self._on_job_done is not None
        self._on_job_done(self, job)


def _encode_together(
    outputs: Sequence[Output[Job, Any]], transform: BatchTransform
) -> list[EncodedAudio | None]:
    """A step's chunks for plain PCM/WAV streams, encoded together per chunk length
    (`BatchTransform`: a few GIL hand-offs a block of rows instead of five a row); None
    where a row's own `transform` must run (another format, a stretcher, word capture,
    a non-finite chunk, a length no other row has)."""
    done: list[EncodedAudio | None] = [None] * len(outputs)
    by_length: dict[int, list[tuple[int, OutputStream, np.ndarray]]] = {}
    for index, out in enumerate(outputs):
        stream, audio = out.row.request.output, out.audio
        if stream is not None and audio is not None and gatherable(audio) and stream.batchable:
            by_length.setdefault(audio.size, []).append((index, stream, audio))
    for members in by_length.values():
        if len(members) < 2:
            continue
        pieces = transform([m[1] for m in members], [m[2] for m in members])
        for (index, _, _), piece in zip(members, pieces, strict=True):
            done[index] = piece
    return done
