"""Engine replicas, each owned by one long-lived thread, behind a capacity limit.

A VoxCPM model is not safe for concurrent use, and with CUDA graphs it must be
called from the thread that built it. So each replica is a thread that loads its
own engine and then runs one job at a time from a one-slot inbox. Admission is a
`trio.CapacityLimiter` with one token per replica; a token (and the replica) is
given back only when the thread has really finished the job, by a callback the
thread schedules on the Trio loop.

Chunks travel to the request task through a bounded memory channel, with credits
for backpressure: the thread takes a credit (a `threading.Semaphore` sized like the
channel) before each chunk and posts the chunk to the loop; the request task gives
the credit back as it takes the chunk. So a slow client blocks its generator
instead of piling up audio.
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import asynccontextmanager, suppress
from typing import Any, Protocol

import numpy as np
import outcome
import structlog
import trio

from voxtrio.speech._engine import Engine, EngineFactory, GenerationStopped, SynthesisSpec
from voxtrio.speech._errors import EngineUnavailable, Overloaded, QueueTimeout
from voxtrio.speech._jobs import ChunkStream, Job, LoopMailbox

log = structlog.get_logger("voxtrio.replicas")


class EngineLoadError(RuntimeError):
    """A replica could not load or warm up its engine."""


_CREDIT_RECHECK_S = 1.0


class _Shutdown:
    pass


_SHUTDOWN = _Shutdown()


class Replica:
    """One engine and the thread that owns it."""

    def __init__(self, index: int, factory: EngineFactory) -> None:
        self.index = index
        self._factory = factory
        # One job plus the shutdown sentinel can be queued at most.
        self._inbox: queue.Queue[Job | _Shutdown] = queue.Queue(maxsize=2)
        self._thread = threading.Thread(
            target=self._main, name=f"voxtrio-replica-{index}", daemon=True
        )
        self.engine: Engine | None = None
        self.current: Job | None = None
        self.jobs_run = 0
        self._loaded: trio.Event | None = None
        self._load_error: BaseException | None = None
        self._token: trio.lowlevel.TrioToken | None = None
        self._on_job_done: object = None

    # -- Trio side ------------------------------------------------------------

    def start(self, token: trio.lowlevel.TrioToken, on_job_done: object) -> trio.Event:
        self._token = token
        self._on_job_done = on_job_done
        self._loaded = trio.Event()
        self._thread.start()
        return self._loaded

    def submit(self, job: Job) -> None:
        self.current = job
        self._inbox.put_nowait(job)

    def shutdown(self) -> None:
        # The inbox holds one job at most, so the sentinel always fits.
        self._inbox.put_nowait(_SHUTDOWN)

    @property
    def thread(self) -> threading.Thread:
        return self._thread

    @property
    def load_error(self) -> BaseException | None:
        return self._load_error

    # -- the replica's own thread --------------------------------------------

    def _main(self) -> None:
        assert self._token is not None
        assert self._loaded is not None
        try:
            engine = self._factory()
            engine.warm_up()
        except BaseException as exc:
            self._load_error = exc
            self._token.run_sync_soon(self._loaded.set)
            return
        self.engine = engine
        self._token.run_sync_soon(self._loaded.set)
        try:
            while True:
                item = self._inbox.get()
                if isinstance(item, _Shutdown):
                    return
                self._run(engine, item)
        finally:
            engine.close()

    def _run(self, engine: Engine, job: Job) -> None:
        job.started_at = time.perf_counter()

        def on_step(steps: int) -> None:
            job.steps = steps
            job.last_step_at = time.perf_counter()
            if job.expected_steps is None and (steps > 1 or not job.spec.streaming):
                # Only progress needs it: computed after a streaming job's first chunk.
                job.expected_steps = engine.max_steps(job.spec)
            if job.stop_event.is_set():
                raise GenerationStopped

        result: outcome.Outcome[None]
        stopped = False
        try:
            chunks = engine.generate(job.spec, on_step)
            try:
                for chunk in chunks:
                    if job.stop_event.is_set():
                        raise GenerationStopped
                    item = chunk if job.transform is None else job.transform(chunk)
                    self._hand_over(job, item)
            finally:
                # Close on this thread: an open VoxCPM2 stream keeps the VAE patched.
                chunks.close()
            result = outcome.Value(None)
        except (
            GenerationStopped,
            trio.RunFinishedError,
        ):
            stopped = True
            result = outcome.Value(None)
        except BaseException as exc:
            result = outcome.Error(exc)
        job.finished_at = time.perf_counter()
        self.jobs_run += 1
        with suppress(trio.RunFinishedError):
            # Through the mailbox: after every chunk this job posted.
            job.mailbox.post(self._finish, job, result, stopped)

    @staticmethod
    def _hand_over(job: Job, item: Any) -> None:
        # Blocks while the request task holds `chunk_buffer` untaken chunks:
        # backpressure reaches the model. The timeout only re-checks the stop flag;
        # `request_stop` also wakes this wait directly.
        while not job.credits.acquire(timeout=_CREDIT_RECHECK_S):
            if job.stop_event.is_set():
                raise GenerationStopped
        if job.stop_event.is_set():
            raise GenerationStopped
        job.mailbox.post(job.deliver, item)

    def _finish(self, job: Job, result: outcome.Outcome[None], stopped: bool) -> None:
        # Back on the Trio thread.
        job.result = result
        job.stopped = stopped
        job.send_channel.close()
        self.current = None
        job.done.set()
        callback = self._on_job_done
        assert callable(callback)
        callback(self, job)


class BatchReplicaLike(Protocol):
    """A replica that runs `capacity` jobs at once (speech.batched's step loop)."""

    index: int
    capacity: int
    jobs_run: int

    @property
    def engine(self) -> Any: ...
    @property
    def thread(self) -> threading.Thread: ...
    @property
    def load_error(self) -> BaseException | None: ...
    @property
    def current(self) -> Any: ...
    def start(self, token: trio.lowlevel.TrioToken, on_job_done: Any) -> trio.Event: ...
    def submit(self, job: Job) -> None: ...
    def shutdown(self) -> None: ...


def replica_capacity(replica: Replica | BatchReplicaLike) -> int:
    return getattr(replica, "capacity", 1)


class ReplicaPool:
    """N replicas, admission with a bounded wait, and the job lifecycle."""

    def __init__(
        self,
        factory: EngineFactory,
        *,
        workers: int = 1,
        max_admitted: int = 10,
        queue_timeout: float = 60.0,
        stop_timeout: float = 10.0,
        chunk_buffer: int = 2,
        replicas: Sequence[Replica | BatchReplicaLike] | None = None,
    ) -> None:
        """`replicas` replaces the one-generation replicas `factory` would build
        (batched step loops: each takes as many jobs as its model has slots)."""
        if workers < 1:
            raise ValueError("workers must be at least 1")
        self.replicas: list[Replica | BatchReplicaLike] = (
            list(replicas)
            if replicas is not None
            else [Replica(i, factory) for i in range(workers)]
        )
        # Tokens are set to the real slot count once the models are loaded.
        self.limiter = trio.CapacityLimiter(len(self.replicas))
        self.max_admitted = max(max_admitted, workers)
        self.slots = len(self.replicas)
        self.queue_timeout = queue_timeout
        self.stop_timeout = stop_timeout
        self.chunk_buffer = chunk_buffer
        self._free: list[Replica] = []
        self._mailbox: LoopMailbox | None = None
        self._borrowers: dict[Job, object] = {}
        self.admitted = 0
        self.waiting = 0
        self.ready = False
        self.sample_rate = 0

    @property
    def busy(self) -> int:
        """Slots in use (a one-generation replica has one slot)."""
        return self.slots - len(self._free)

    async def start(self, *, load_timeout: float = 900.0) -> None:
        """Load and warm every replica; `ready` only once all of them are."""
        token = trio.lowlevel.current_trio_token()
        self._mailbox = LoopMailbox(token)
        events = [replica.start(token, self._job_done) for replica in self.replicas]
        with trio.move_on_after(load_timeout) as scope:
            for event in events:
                await event.wait()
        if scope.cancelled_caught:
            raise EngineLoadError(f"the model did not load within {load_timeout:g} s")
        for replica in self.replicas:
            if replica.load_error is not None:
                err = replica.load_error
                raise EngineLoadError(f"{type(err).__name__}: {err}") from err
        rates = {replica.engine.sample_rate for replica in self.replicas if replica.engine}
        if len(rates) != 1:
            raise EngineLoadError(f"replicas disagree on the sample rate: {sorted(rates)}")
        (self.sample_rate,) = rates
        # One entry per free slot; popping takes a slot on that replica.
        self._free = [
            replica
            for _ in range(max(replica_capacity(r) for r in self.replicas))
            for replica in reversed(self.replicas)
            if replica_capacity(replica) > _
        ]
        self.slots = len(self._free)
        self.limiter.total_tokens = self.slots
        self.ready = True

    async def aclose(self, *, join_timeout: float = 10.0) -> None:
        """Tell every thread to finish and wait for them (each job was stopped first)."""
        self.ready = False
        for replica in self.replicas:
            replica.shutdown()
        with trio.move_on_after(join_timeout):
            for replica in self.replicas:
                if replica.thread.is_alive():
                    await trio.to_thread.run_sync(replica.thread.join, join_timeout)
        for replica in self.replicas:
            if replica.thread.is_alive():
                log.error("replica_thread_did_not_exit", replica=replica.index)

    def max_steps(self, spec: SynthesisSpec) -> int:
        engine = self.replicas[0].engine
        return engine.max_steps(spec) if engine is not None else spec.max_len

    @asynccontextmanager
    async def run(
        self,
        spec: SynthesisSpec,
        *,
        request_id: str,
        transform: Callable[[np.ndarray], Any] | None = None,
        on_wait: Callable[[], Awaitable[None]] | None = None,
    ) -> AsyncIterator[tuple[Job, ChunkStream]]:
        """Admit a job, start it on a free replica, and yield it with its chunk stream.

        `on_wait` is awaited first when no replica is free (to tell the client).

        On exit (done, error, cancel) the job is told to stop and this waits,
        shielded, until its thread has really stopped before returning.
        """
        if not self.ready:
            raise EngineUnavailable("the model is not loaded")
        assert self._mailbox is not None  # set by start(), before ready
        if self.admitted >= self.max_admitted:
            raise Overloaded(self.max_admitted)
        self.admitted += 1
        try:
            borrower = object()
            # A request already cancelled takes no replica. (No full checkpoint after
            # taking the token: a cancel there would leak it.)
            await trio.lowlevel.checkpoint_if_cancelled()
            try:
                self.limiter.acquire_on_behalf_of_nowait(borrower)
            except trio.WouldBlock:
                await self._wait_for_replica(borrower, on_wait, request_id)
            replica = self._free.pop()
            send, receive = trio.open_memory_channel[Any](self.chunk_buffer)
            job = Job(
                spec,
                request_id,
                send,
                self._mailbox,
                transform,
                chunk_buffer=self.chunk_buffer,
            )
            self._borrowers[job] = borrower
            replica.submit(job)
            try:
                async with receive:
                    yield job, ChunkStream(job, receive)
            finally:
                job.request_stop()
                with trio.CancelScope(shield=True):
                    with trio.move_on_after(self.stop_timeout):
                        await job.done.wait()
                if not job.done.is_set():
                    # The slot stays taken until the thread really finishes.
                    log.error(
                        "replica_stop_timeout",
                        replica=replica.index,
                        request_id=request_id,
                        stop_timeout=self.stop_timeout,
                    )
        finally:
            self.admitted -= 1

    async def _wait_for_replica(
        self,
        borrower: object,
        on_wait: Callable[[], Awaitable[None]] | None,
        request_id: str,
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

    def _job_done(self, replica: Replica, job: Job) -> None:
        self._free.append(replica)
        self.limiter.release_on_behalf_of(self._borrowers.pop(job))
