"""Model instances behind a capacity limit: admission, slots and the job lifecycle.

Each instance (`batched.ModelInstance`) is one model on one long-lived thread, whose
step loop advances up to `--max-batch` generations at once; its slots are known once
it has loaded. Admission is a `trio.CapacityLimiter` with one token per slot, and a
slot (and its token) is given back only when the instance has really finished the
job, by a callback its thread schedules on the Trio loop.

Chunks travel to the request task through a bounded memory channel with credits
(see `_jobs.py`): a client that does not read stops its own row, never the batch.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import asynccontextmanager, suppress
from typing import Any

import numpy as np
import structlog
import trio

from voxtrio.speech._engine import SynthesisSpec
from voxtrio.speech._errors import EngineUnavailable, Overloaded, QueueTimeout
from voxtrio.speech._jobs import ChunkStream, Job
from voxtrio.speech._mailbox import LoopMailbox, MailboxInstrument
from voxtrio.speech._output import OutputStream
from voxtrio.speech.batched._gil import GilTurns, GilTurnsInstrument
from voxtrio.speech.batched._loop import ModelInstance

log = structlog.get_logger("voxtrio.pool")


class EngineLoadError(RuntimeError):
    """An instance could not load or warm up its model."""


class InstancePool:
    """Model instances, admission with a bounded wait, and the job lifecycle."""

    def __init__(
        self,
        instances: Sequence[ModelInstance],
        *,
        max_admitted: int = 10,
        queue_timeout: float = 60.0,
        stop_timeout: float = 10.0,
        chunk_buffer: int = 2,
    ) -> None:
        if not instances:
            raise ValueError("a pool needs at least one model instance")
        self.instances = list(instances)
        # Tokens are set to the real slot count once the models are loaded.
        self.limiter = trio.CapacityLimiter(len(self.instances))
        self.max_admitted = max(max_admitted, len(self.instances))
        self.slots = 0
        self.queue_timeout = queue_timeout
        self.stop_timeout = stop_timeout
        self.chunk_buffer = chunk_buffer
        self._free: list[ModelInstance] = []  # one entry per free slot
        self._mailbox: LoopMailbox | None = None
        self._borrowers: dict[Job, object] = {}
        self.admitted = 0
        self.waiting = 0
        self.ready = False
        self.sample_rate = 0
        # The model threads' turns at the GIL while the event loop is busy (`_gil.py`).
        self.gil_turns = GilTurns()
        self._gil_instrument = GilTurnsInstrument(self.gil_turns)
        self._mailbox_instrument: MailboxInstrument | None = None

    @property
    def slots_busy(self) -> int:
        """Slots holding a generation (running, or still stopping)."""
        return self.slots - len(self._free)

    async def start(self, *, load_timeout: float = 900.0) -> None:
        """Load and warm every instance; `ready` only once all of them are."""
        token = trio.lowlevel.current_trio_token()
        self._mailbox = LoopMailbox(token)
        self._mailbox_instrument = MailboxInstrument(self._mailbox)
        trio.lowlevel.add_instrument(self._mailbox_instrument)
        for instance in self.instances:
            instance.gil_turns = self.gil_turns
        trio.lowlevel.add_instrument(self._gil_instrument)
        events = [instance.start(token, self._job_done) for instance in self.instances]
        with trio.move_on_after(load_timeout) as scope:
            for event in events:
                await event.wait()
        if scope.cancelled_caught:
            raise EngineLoadError(f"the model did not load within {load_timeout:g} s")
        for instance in self.instances:
            if instance.load_error is not None:
                err = instance.load_error
                raise EngineLoadError(f"{type(err).__name__}: {err}") from err
        rates = {instance.model.sample_rate for instance in self.instances if instance.model}
        if len(rates) != 1:
            raise EngineLoadError(f"instances disagree on the sample rate: {sorted(rates)}")
        (self.sample_rate,) = rates
        # Interleaved, so consecutive jobs spread over the instances.
        self._free = [
            instance
            for slot in range(max(i.slots for i in self.instances))
            for instance in reversed(self.instances)
            if instance.slots > slot
        ]
        self.slots = len(self._free)
        self.limiter.total_tokens = self.slots
        self.ready = True

    async def aclose(self, *, join_timeout: float = 10.0) -> None:
        """Tell every thread to finish and wait for them (each job is stopped first)."""
        self.ready = False
        for instance in self.instances:
            instance.shutdown()
        with trio.move_on_after(join_timeout):
            for instance in self.instances:
                if instance.thread.is_alive():
                    await trio.to_thread.run_sync(instance.thread.join, join_timeout)
        for instance in self.instances:
            if instance.thread.is_alive():
                log.error("instance_thread_did_not_exit", instance=instance.index)
        for instrument in (self._gil_instrument, self._mailbox_instrument):
            with suppress(KeyError):  # never added (not started), or removed already
                if instrument is not None:
                    trio.lowlevel.remove_instrument(instrument)

    def max_steps(self, spec: SynthesisSpec) -> int:
        model = self.instances[0].model
        return model.max_steps(spec) if model is not None else spec.max_len

    @asynccontextmanager
    async def run(
        self,
        spec: SynthesisSpec,
        *,
        request_id: str,
        transform: Callable[[np.ndarray], Any] | None = None,
        on_wait: Callable[[], Awaitable[None]] | None = None,
        output: OutputStream | None = None,
    ) -> AsyncIterator[tuple[Job, ChunkStream]]:
        """Admit a job, start it on a free slot, and yield it with its chunk stream.

        `on_wait` is awaited first when no slot is free (to tell the client). With
        `output`, `transform` must be `output.transform` (the step loop may then encode
        the chunk together with other rows').

        On exit (done, error, cancel) the job is told to stop and this waits,
        shielded, until its instance has really let it go before returning.
        """
        if not self.ready:
            raise EngineUnavailable("the model is not loaded")
        assert self._mailbox is not None  # set by start(), before ready
        if self.admitted >= self.max_admitted:
            raise Overloaded(self.max_admitted)
        self.admitted += 1
        try:
            borrower = object()
            # A request already cancelled takes no slot. (No full checkpoint after
            # taking the token: a cancel there would leak it.)
            await trio.lowlevel.checkpoint_if_cancelled()
            try:
                self.limiter.acquire_on_behalf_of_nowait(borrower)
            except trio.WouldBlock:
                await self._wait_for_slot(borrower, on_wait)
            instance = self._free.pop()
            send, receive = trio.open_memory_channel[Any](self.chunk_buffer)
            job = Job(
                spec,
                request_id,
                send,
                self._mailbox,
                transform,
                chunk_buffer=self.chunk_buffer,
                output=output,
            )
            self._borrowers[job] = borrower
            instance.submit(job)
            try:
                async with receive:
                    yield job, ChunkStream(job, receive)
            finally:
                job.request_stop()
                with trio.CancelScope(shield=True):
                    with trio.move_on_after(self.stop_timeout):
                        await job.done.wait()
                if not job.done.is_set():
                    # The slot stays taken until the thread really lets the job go.
                    log.error(
                        "instance_stop_timeout",
                        instance=instance.index,
                        request_id=request_id,
                        stop_timeout=self.stop_timeout,
                    )
        finally:
            self.admitted -= 1

    async def _wait_for_slot(
        self, borrower: object, on_wait: Callable[[], Awaitable[None]] | None
    ) -> None:
        self.waiting += 1
        try:
            if on_wait is not None:
                await on_wait()
            with trio.move_on_after(self.queue_timeout) as queue_scope:
                await self.limiter.acquire_on_behalf_of(borrower)
        finally:
            self.waiting -= 1
        if queue_scope.cancelled_caught:
            raise QueueTimeout(self.queue_timeout)

    def _job_done(self, instance: ModelInstance, job: Job) -> None:
        self._free.append(instance)
        self.limiter.release_on_behalf_of(self._borrowers.pop(job))
