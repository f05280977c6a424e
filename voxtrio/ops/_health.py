"""/health and /ready: pure functions of a snapshot of the engine's state.

/health answers "should this process be restarted?": answering at all shows the
process and its event loop are alive; it fails (503) when the engine has stopped
making progress: a model instance holding generations whose step loop has not
beaten for `stall_timeout` (a step that never returns), or a loaded instance whose
thread has exited. The systemd watchdog uses the same verdict.

/ready answers "should the load balancer send new connections here?": the model
is loaded and warm, the server is not draining, not every instance is stalled, and
it is not full (every admission slot taken: new work would only queue or be refused
here, so a balancer should send it elsewhere; open streams are not affected).

Timestamps are `time.perf_counter()` values (what the step loop records); the
clock is injectable so tests are deterministic.
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
class InstanceState:
    """One model instance: its slots, and its step loop's last beat while busy."""

    index: int
    slots: int = 1
    slots_busy: int = 0
    # perf_counter of the step loop's last beat while it holds a generation; None
    # when idle or not yet started.
    last_progress_at: float | None = None
    thread_alive: bool = True

    @property
    def busy(self) -> bool:
        return self.slots_busy > 0


@attrs.frozen
class EngineState:
    loaded: bool
    draining: bool
    instances: tuple[InstanceState, ...] = ()
    queue_length: int = 0
    admitted: int = 0  # requests generating or waiting for a slot
    capacity: int | None = None  # admission slots (--max-concurrent); None: unbounded

    @property
    def slots_total(self) -> int:
        return sum(instance.slots for instance in self.instances)

    @property
    def slots_busy(self) -> int:
        return sum(instance.slots_busy for instance in self.instances)


class _ThreadLike(Protocol):
    def is_alive(self) -> bool: ...


class _InstanceLike(Protocol):
    @property
    def index(self) -> int: ...
    @property
    def slots(self) -> int: ...
    @property
    def slots_busy(self) -> int: ...
    @property
    def last_progress_at(self) -> float | None: ...
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
    def instances(self) -> Sequence[_InstanceLike]: ...


def snapshot(pool: _PoolLike, *, draining: bool) -> EngineState:
    """Read an `InstancePool` (from the Trio thread) into an `EngineState`."""
    instances = tuple(
        InstanceState(
            index=instance.index,
            slots=instance.slots,
            slots_busy=instance.slots_busy,
            last_progress_at=instance.last_progress_at,
            thread_alive=instance.thread.is_alive(),
        )
        for instance in pool.instances
    )
    return EngineState(
        loaded=pool.ready,
        draining=draining,
        instances=instances,
        queue_length=pool.waiting,
        admitted=pool.admitted,
        capacity=pool.max_admitted,
    )


def stalled(state: EngineState, *, now: float, stall_timeout: float) -> dict[int, float]:
    """Instance index -> seconds since its step loop last beat, for busy stalled ones."""
    result = {}
    for instance in state.instances:
        if instance.busy and instance.last_progress_at is not None:
            idle = now - instance.last_progress_at
            if idle > stall_timeout:
                result[instance.index] = idle
    return result


def exited_instances(state: EngineState) -> list[int]:
    """Loaded instances whose thread has exited (they will never run a job again)."""
    if not state.loaded:
        return []
    return [instance.index for instance in state.instances if not instance.thread_alive]


def _load(state: EngineState) -> dict[str, int]:
    return {
        "instances": len(state.instances),
        "slots_total": state.slots_total,
        "slots_busy": state.slots_busy,
    }


def health(
    state: EngineState, *, now: float, stall_timeout: float = DEFAULT_STALL_TIMEOUT
) -> tuple[int, dict[str, Any]]:
    """The /health status code and body."""
    stalls = stalled(state, now=now, stall_timeout=stall_timeout)
    dead = exited_instances(state)
    status = "stalled" if stalls else "instance_exited" if dead else "ok"
    body: dict[str, Any] = {
        "status": status,
        "loaded": state.loaded,
        "draining": state.draining,
        **_load(state),
        "stall_timeout_s": stall_timeout,
        "stalled_instances": [
            {"instance": index, "seconds_since_progress": round(idle, 3)}
            for index, idle in sorted(stalls.items())
        ],
        "exited_instances": dead,
    }
    return (200 if status == "ok" else 503), body


def readiness(
    state: EngineState, *, now: float, stall_timeout: float = DEFAULT_STALL_TIMEOUT
) -> tuple[int, dict[str, Any]]:
    """The /ready status code and body."""
    stalls = stalled(state, now=now, stall_timeout=stall_timeout)
    all_stalled = bool(state.instances) and len(stalls) == len(state.instances)
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
        **_load(state),
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
