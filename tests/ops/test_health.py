"""/health and /ready verdicts from engine snapshots, with an injected clock."""

from __future__ import annotations

import json
from functools import partial

import trio

from voxtrio.ops._health import (
    EngineState,
    HealthChecks,
    InstanceState,
    health,
    json_result,
    readiness,
    snapshot,
)
from voxtrio.ops._http import HttpRequest
from voxtrio.speech._engine import SynthesisSpec
from voxtrio.speech._pool import InstancePool
from voxtrio.speech._synthetic import SyntheticEngine
from voxtrio.speech.batched._factory import model_instances

NOW = 1000.0
GET = HttpRequest(method="GET", target="/health", path="/health", headers=())


def idle(index: int = 0) -> InstanceState:
    return InstanceState(index=index, slots=4)


def working(index: int = 0, *, progress_ago: float | None) -> InstanceState:
    at = None if progress_ago is None else NOW - progress_ago
    return InstanceState(index=index, slots=4, slots_busy=2, last_progress_at=at)


def loaded(*instances: InstanceState, draining: bool = False) -> EngineState:
    return EngineState(loaded=True, draining=draining, instances=instances or (idle(),))


def test_idle_loaded_engine_is_healthy() -> None:
    """A loaded engine with no work answers 200 "ok"."""
    status, body = health(loaded(), now=NOW)
    assert status == 200
    assert body["status"] == "ok"
    assert body["stalled_instances"] == []


def test_recent_progress_is_healthy() -> None:
    """A job that stepped recently is not a stall."""
    status, _ = health(loaded(working(progress_ago=5.0)), now=NOW)
    assert status == 200


def test_job_without_progress_past_stall_timeout_is_unhealthy() -> None:
    """A job whose last progress is older than stall_timeout makes /health 503."""
    status, body = health(loaded(idle(0), working(1, progress_ago=61.0)), now=NOW)
    assert status == 503
    assert body["status"] == "stalled"
    assert body["stalled_instances"] == [{"instance": 1, "seconds_since_progress": 61.0}]


def test_stall_timeout_is_configurable_and_exclusive() -> None:
    """Exactly stall_timeout old is still healthy; a bit older is not."""
    state = loaded(working(progress_ago=10.0))
    assert health(state, now=NOW, stall_timeout=10.0)[0] == 200
    assert health(state, now=NOW + 0.001, stall_timeout=10.0)[0] == 503


def test_job_not_yet_started_on_its_thread_is_not_a_stall() -> None:
    """A job with no timestamps yet cannot be judged and is not reported."""
    assert health(loaded(working(progress_ago=None)), now=NOW)[0] == 200


def test_loading_engine_is_healthy_but_not_ready() -> None:
    """While the model loads the process is healthy and /ready says "loading"."""
    state = EngineState(loaded=False, draining=False, instances=(idle(),))
    assert health(state, now=NOW)[0] == 200
    status, body = readiness(state, now=NOW)
    assert status == 503
    assert body["status"] == "loading"
    assert body["ready"] is False


def test_exited_instance_thread_is_unhealthy_once_loaded() -> None:
    """A loaded instance whose thread has exited makes /health 503."""
    state = loaded(idle(0), InstanceState(index=1, slots=4, thread_alive=False))
    status, body = health(state, now=NOW)
    assert status == 503
    assert body["status"] == "instance_exited"
    assert body["exited_instances"] == [1]


def test_threads_not_started_before_loading_are_fine() -> None:
    """Before start-up no instance thread runs yet; that is not a failure."""
    state = EngineState(
        loaded=False, draining=False, instances=(InstanceState(0, slots=0, thread_alive=False),)
    )
    assert health(state, now=NOW)[0] == 200


def test_loaded_engine_is_ready_with_its_load_in_the_body() -> None:
    """A loaded, non-draining engine is ready; the body shows instances, slots and queue."""
    state = EngineState(
        loaded=True,
        draining=False,
        instances=(working(0, progress_ago=1.0), idle(1)),
        queue_length=3,
        admitted=4,
        capacity=10,
    )
    status, body = readiness(state, now=NOW)
    assert status == 200
    assert body == {
        "status": "ready",
        "ready": True,
        "draining": False,
        "instances": 2,
        "slots_total": 8,
        "slots_busy": 2,
        "queue_length": 3,
        "admitted": 4,
        "capacity": 10,
    }


def test_full_is_not_ready_but_still_healthy() -> None:
    """With every admission slot taken /ready says "full" so a balancer looks elsewhere."""
    state = EngineState(
        loaded=True, draining=False, instances=(working(0, progress_ago=1.0),), admitted=10,
        capacity=10,
    )  # fmt: skip
    status, body = readiness(state, now=NOW)
    assert (status, body["status"]) == (503, "full")
    assert health(state, now=NOW)[0] == 200
    one_free = EngineState(
        loaded=True, draining=False, instances=(working(0, progress_ago=1.0),), admitted=9,
        capacity=10,
    )  # fmt: skip
    assert readiness(one_free, now=NOW)[0] == 200


def test_draining_is_not_ready_but_still_healthy() -> None:
    """Draining turns /ready 503 first; /health stays 200 so nothing restarts it."""
    state = loaded(draining=True)
    status, body = readiness(state, now=NOW)
    assert status == 503
    assert body["status"] == "draining"
    assert health(state, now=NOW)[0] == 200


def test_ready_while_some_instance_still_works() -> None:
    """One stalled instance out of two leaves the server ready (it still serves)."""
    state = loaded(working(0, progress_ago=100.0), idle(1))
    assert readiness(state, now=NOW)[0] == 200


def test_not_ready_when_every_instance_is_stalled() -> None:
    """With every instance stalled new connections should go elsewhere."""
    state = loaded(working(0, progress_ago=100.0), working(1, progress_ago=70.0))
    status, body = readiness(state, now=NOW)
    assert status == 503
    assert body["status"] == "stalled"


def test_json_result_is_uncached_json() -> None:
    """Bodies are compact JSON, typed, and marked no-store."""
    status, headers, body = json_result(503, {"status": "draining"})
    assert status == 503
    assert ("content-type", "application/json") in headers
    assert ("cache-control", "no-store") in headers
    assert json.loads(body) == {"status": "draining"}


def test_health_checks_use_the_injected_clock() -> None:
    """The same state turns unhealthy as the injected clock passes the stall timeout."""
    clock = [NOW]
    state = loaded(working(progress_ago=0.0))
    checks = HealthChecks(lambda: state, stall_timeout=30.0, clock=lambda: clock[0])
    assert checks.is_healthy()
    clock[0] = NOW + 31.0
    assert not checks.is_healthy()


def test_routes_answer_json_for_the_http_server() -> None:
    """The /health and /ready routes return status codes and JSON bodies."""
    checks = HealthChecks(lambda: loaded(draining=True), clock=lambda: NOW)
    health_status, _, health_body = checks.health_route(GET)
    ready_status, _, ready_body = checks.ready_route(GET)
    assert (health_status, json.loads(health_body)["status"]) == (200, "ok")
    assert (ready_status, json.loads(ready_body)["status"]) == (503, "draining")


async def test_snapshot_reads_a_real_instance_pool() -> None:
    """`snapshot` reads InstancePool's fields: loading, loaded and idle, busy with progress."""
    instances = model_instances(partial(SyntheticEngine, rtf=0.0), workers=2, max_batch=3)
    pool = InstancePool(instances, chunk_buffer=1)
    assert snapshot(pool, draining=False).loaded is False
    with trio.fail_after(10):
        try:
            await pool.start()
            state = snapshot(pool, draining=False)
            assert state.loaded
            assert [(i.slots, i.busy, i.thread_alive) for i in state.instances] == [
                (3, False, True)
            ] * 2
            async with pool.run(SynthesisSpec(text="a" * 64), request_id="r1") as (job, chunks):
                await chunks.receive()
                while job.last_step_at is None:  # the thread records its first step
                    await trio.sleep(0.001)
                (busy,) = [i for i in snapshot(pool, draining=True).instances if i.busy]
                assert busy.slots_busy == 1
                assert busy.last_progress_at is not None
        finally:
            with trio.CancelScope(shield=True):
                await pool.aclose()
