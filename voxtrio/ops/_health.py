"""/health and /ready: pure functions of a snapshot of the engine's state.

/health answers "should this process be restarted?": answering at all shows the
process and its event loop are alive; it fails (503) when the engine has stopped
making progress: a replica has had a job whose last step (or its start, before
the first step) is older than `stall_timeout`, or a loaded replica's thread has
exited. The systemd watchdog uses the same verdict.

/ready answers "should the load balancer send new connections here?": the model
is loaded and warm, the server is not draining, not every replica is stalled, and
it is not full (every admission slot taken: new work would only queue or be refused
here, so a balancer should send it elsewhere; open streams are not affected).

Timestamps are `time.perf_counter()` values (what `Job` records); the clock is
injectable so tests are deterministic.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Sequence
from typing import Any, Protocol

import attrs

from voxtrio.ops._http import HttpRequest, RouteResult

DEFAULT_STALL_TIMEOUT = 60.0


@attrs.frozen
class ReplicaState:
    index: int
    busy: bool
    # perf_counter of the current job's last step, or of its start before the first
    # step; None when idle or not yet started on the thread.
    last_progress_at: float | None = None
    thread_alive: bool = True


@attrs.frozen
class EngineState:
    loaded: bool
    draining: bool
    replicas: tuple[ReplicaState, ...] = ()
    queue_length: int = 0
    admitted: int = 0  # requests generating or waiting for a replica
    capacity: int | None = None  # admission slots (--max-concurrent); None: unbounded


class _JobLike(Protocol):
    last_step_at: float | None
    started_at: float | None


class _ThreadLike(Protocol):
    def is_alive(self) -> bool: ...


class _ReplicaLike(Protocol):
    @property
    def index(self) -> int: ...
    @property
    def current(self) -> _JobLike | None: ...
    @property
    def thread(self) -> _ThreadLike: ...


class _PoolLike(Protocol):
    @property
    def ready(self) -> bool: ...
    @property
    def waiting(self) -> int: ...
    @property
    def admitted(self) -> int: ...
    @property
    def max_admitted(self) -> int: ...
    @property
    def replicas(self) -> Sequence[_ReplicaLike]: ...


def snapshot(pool: _PoolLike, *, draining: bool) -> EngineState:
    """Read a `ReplicaPool` (from the Trio thread) into an `EngineState`."""
    replicas = []
    for replica in pool.replicas:
        job = replica.current
        progress = None
        if job is not None:
            progress = job.last_step_at if job.last_step_at is not None else job.started_at
        replicas.append(
            ReplicaState(
                index=replica.index,
                busy=job is not None,
                last_progress_at=progress,
                thread_alive=replica.thread.is_alive(),
            )
        )
    return EngineState(
        loaded=pool.ready,
        draining=draining,
        replicas=tuple(replicas),
        queue_length=pool.waiting,
        admitted=pool.admitted,
        capacity=pool.max_admitted,
    )


def stalled(state: EngineState, *, now: float, stall_timeout: float) -> dict[int, float]:
    """Replica index -> seconds since its current job last made progress, for stalled ones."""
    result = {}
    for replica in state.replicas:
        if replica.busy and replica.last_progress_at is not None:
            idle = now - replica.last_progress_at
            if idle > stall_timeout:
                result[replica.index] = idle
    return result


def dead_replicas(state: EngineState) -> list[int]:
    """Loaded replicas whose thread has exited (they will never run a job again)."""
    if not state.loaded:
        return []
    return [replica.index for replica in state.replicas if not replica.thread_alive]


def health(
    state: EngineState, *, now: float, stall_timeout: float = DEFAULT_STALL_TIMEOUT
) -> tuple[int, dict[str, Any]]:
    """The /health status code and body."""
    stalls = stalled(state, now=now, stall_timeout=stall_timeout)
    dead = dead_replicas(state)
    status = "stalled" if stalls else "replica_exited" if dead else "ok"
    body: dict[str, Any] = {
        "status": status,
        "loaded": state.loaded,
        "draining": state.draining,
        "replicas_total": len(state.replicas),
        "replicas_busy": sum(replica.busy for replica in state.replicas),
        "stall_timeout_s": stall_timeout,
        "stalled_replicas": [
            {"replica": index, "seconds_since_progress": round(idle, 3)}
            for index, idle in sorted(stalls.items())
        ],
        "exited_replicas": dead,
    }
    return (200 if status == "ok" else 503), body


def readiness(
    state: EngineState, *, now: float, stall_timeout: float = DEFAULT_STALL_TIMEOUT
) -> tuple[int, dict[str, Any]]:
    """The /ready status code and body."""
    stalls = stalled(state, now=now, stall_timeout=stall_timeout)
    all_stalled = bool(state.replicas) and len(stalls) == len(state.replicas)
    if state.draining:
        status = "draining"
    elif not state.loaded:
        status = "loading"
    elif all_stalled:
        status = "stalled"
    elif state.capacity is not None and state.admitted >= state.capacity:
        status = "full"
    else:
        status = "ready"
    body: dict[str, Any] = {
        "status": status,
        "ready": status == "ready",
        "draining": state.draining,
        "replicas_total": len(state.replicas),
        "replicas_busy": sum(replica.busy for replica in state.replicas),
        "queue_length": state.queue_length,
        "admitted": state.admitted,
        "capacity": state.capacity,
    }
    return (200 if status == "ready" else 503), body


def json_result(status: int, body: dict[str, Any]) -> RouteResult:
    """An HTTP route result carrying `body` as JSON; never cached by a proxy."""
    headers = [("content-type", "application/json"), ("cache-control", "no-store")]
    return status, headers, json.dumps(body, separators=(",", ":")).encode() + b"\n"


class HealthChecks:
    """The /health and /ready routes and the watchdog's verdict, over a state source."""

    def __init__(
        self,
        state: Callable[[], EngineState],
        *,
        stall_timeout: float = DEFAULT_STALL_TIMEOUT,
        clock: Callable[[], float] = time.perf_counter,
    ) -> None:
        self._state = state
        self.stall_timeout = stall_timeout
        self._clock = clock

    def health(self) -> tuple[int, dict[str, Any]]:
        return health(self._state(), now=self._clock(), stall_timeout=self.stall_timeout)

    def readiness(self) -> tuple[int, dict[str, Any]]:
        return readiness(self._state(), now=self._clock(), stall_timeout=self.stall_timeout)

    def is_healthy(self) -> bool:
        """For the systemd watchdog: ping only while /health would answer 200."""
        return self.health()[0] == 200

    def health_route(self, request: HttpRequest) -> RouteResult:
        return json_result(*self.health())

    def ready_route(self, request: HttpRequest) -> RouteResult:
        return json_result(*self.readiness())
