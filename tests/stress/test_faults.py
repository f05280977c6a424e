"""Engine faults on a schedule: raises, NaN audio and hangs, on the synthetic engine and
on the tiny checkpoint through real voxcpm."""

from __future__ import annotations

import json
import random
from collections import Counter
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

import pytest
import trio

from voxtrio.server._listener import ServerHandle
from voxtrio.speech._engine import SynthesisSpec
from voxtrio.speech._synthetic import SyntheticEngine

from . import fuzzing
from .harness import (
    Fault,
    FaultyEngine,
    LeakCheck,
    Ledger,
    connect,
    dashscope_url,
    record_figures,
    released,
    server_errors,
    settle_deadline,
    watch_logs,
)
from .runs import speak_all, until_health, wait_for

pytestmark = pytest.mark.slow

TEXTS = (
    "Short and sweet.",
    "A medium sentence that takes a few more chunks to say.",
    "A longer sentence, which takes a good number of chunks to speak out loud.",
)


def schedule(spec: SynthesisSpec, generation: int) -> Fault | None:
    """Every 7th generation of a replica returns NaN at step 1; every 5th raises at step 2."""
    if generation % 7 == 0:
        return Fault("nan", 1)
    if generation % 5 == 0:
        return Fault("raise", 2)
    return None


async def test_scheduled_raises_and_nans_fail_only_their_requests(
    start_server: Callable[..., Any],
) -> None:
    """240 requests on 20 connections, faults on a schedule: each fault fails exactly its
    request with GENERATION_FAILED, every other request completes, nothing leaks."""
    engines: list[FaultyEngine] = []

    def engine() -> FaultyEngine:
        made = FaultyEngine(SyntheticEngine(rtf=0.01), plan=schedule)
        engines.append(made)
        return made

    threads = LeakCheck.before_start()
    with watch_logs() as logs:
        handle: ServerHandle = await start_server(engine, workers=3, max_concurrent=64)
        ledgers: list[Ledger] = []

        async def connection(index: int) -> None:
            rng = random.Random(index)
            for batch in range(4):
                requests = {
                    f"r{batch}-{n}": {
                        "text": rng.choice(TEXTS),
                        "mode": rng.choice(["streaming", "non_streaming"]),
                    }
                    for n in range(3)
                }
                ledgers.append(await speak_all(handle.url, requests, timeout=120))

        async with trio.open_nursery() as nursery:
            for index in range(20):
                nursery.start_soon(connection, index)
        leaks = await LeakCheck(handle, engines, threads).audit(
            settle_deadline(handle.server.settings)
        )
    outcomes = Counter(r.outcome for ledger in ledgers for r in ledger.records)
    faults = Counter[str]()
    for made in engines:
        faults.update(made.faults)
    record_figures(
        "faults_scheduled",
        requests=sum(outcomes.values()),
        outcomes=dict(outcomes),
        faults=dict(faults),
        leaks=leaks,
        server_errors=server_errors(logs),
    )
    assert outcomes["GENERATION_FAILED"] == faults["raise"] + faults["nan"] > 0
    assert outcomes["ok"] == sum(outcomes.values()) - outcomes["GENERATION_FAILED"]
    assert leaks == {}
    assert server_errors(logs) == []


async def test_repeated_hangs_are_each_reported_and_recovered(
    start_server: Callable[..., Any],
) -> None:
    """Three hangs in a row: each makes /health 503 within the stall timeout, the other
    replicas serve meanwhile, and each replica comes back once its generation ends."""
    engines: list[FaultyEngine] = []

    def engine() -> FaultyEngine:
        made = FaultyEngine(SyntheticEngine(rtf=0.02), max_hang=60.0)
        engines.append(made)
        return made

    handle: ServerHandle = await start_server(
        engine, workers=3, stall_timeout=1.0, stop_timeout=0.5
    )
    health = f"http://127.0.0.1:{handle.metrics_port}/health"
    pool = handle.server.pool
    detected: list[float] = []
    with released(engines[0]), released(engines[1]), released(engines[2]):
        for round_ in range(3):
            async with connect(handle.url) as ws:
                body = {
                    "type": "tts_request",
                    "request_id": "h",
                    "params": {"text": "FAULT:hang@1 x"},
                }
                await ws.send_message(json.dumps(body))
                await wait_for(lambda: any(e.hanging.is_set() for e in engines), 10)
                hung = next(e for e in engines if e.hanging.is_set())
                started = trio.current_time()
                verdict = await until_health(health, 503, handle.server.settings.stall_timeout + 5)
                detected.append(round(trio.current_time() - started, 3))
                assert len(verdict["stalled_instances"]) == 1
                others = {f"m{n}": {"text": TEXTS[1]} for n in range(4)}
                ledger = await speak_all(handle.url, others)
                assert {r.outcome for r in ledger.records} == {"ok"}, round_
                await ws.send_message(json.dumps({"type": "cancel", "request_id": "h"}))
                with trio.fail_after(10):
                    while True:
                        message = await ws.get_message()
                        if isinstance(message, str) and json.loads(message)["type"] == "complete":
                            break
            hung.release.set()
            await wait_for(partial(_recovered, hung, pool), 10)
            hung.release.clear()
            await until_health(health, 200, 10)
    record_figures("faults_hangs", hangs=3, seconds_to_503=detected, stall_timeout_s=1.0)
    assert sum(e.open_generations for e in engines) == 0


def _recovered(engine: FaultyEngine, pool: Any) -> bool:
    return not engine.hanging.is_set() and pool.slots_busy == 0


async def test_faults_on_the_tiny_checkpoint(
    start_server: Callable[..., Any], tiny_model_dir: Path
) -> None:
    """Real voxcpm wrapped: raise and NaN fail their requests (native and DashScope), the
    request beside them completes, and the replica serves again afterwards."""
    from voxtrio.speech._voxcpm_engine import VoxCPMEngine, VoxCPMOptions

    options = VoxCPMOptions(model=str(tiny_model_dir), device="cpu", warm_normalizer=False)
    engines: list[FaultyEngine] = []

    def engine() -> FaultyEngine:
        made = FaultyEngine(VoxCPMEngine.load(options))
        engines.append(made)
        return made

    handle: ServerHandle = await start_server(engine, engine="voxcpm", workers=2)
    ledger = await speak_all(
        handle.url,
        {
            "raise": {"text": "FAULT:raise@2 Hello.", "max_len": 6},
            "nan": {"text": "FAULT:nan@2 Hello.", "max_len": 6, "mode": "non_streaming"},
            "fine": {"text": "Hello.", "max_len": 6},
        },
        timeout=120,
    )
    outcomes = {r.request_id: r.outcome for r in ledger.records}
    assert outcomes == {"raise": "GENERATION_FAILED", "nan": "GENERATION_FAILED", "fine": "ok"}
    dash = fuzzing.DashLedger()
    async with connect(dashscope_url(handle.url)) as ws:
        for task, text in (("t1", "FAULT:nan@1 Hi."), ("t2", "Hi.")):
            await ws.send_message(fuzzing.dumps(fuzzing.run_task(task)))
            await ws.send_message(fuzzing.dumps(fuzzing.continue_task(task, text)))
            await ws.send_message(fuzzing.dumps(fuzzing.finish_task(task)))
            with trio.fail_after(120):
                while not dash.terminals[task]:
                    dash.observe(await ws.get_message())
    assert dash.outcomes == {"t1": "InternalError", "t2": "finished"}
    assert sum(e.open_generations for e in engines) == 0
    record_figures("faults_tiny_checkpoint", native=outcomes, dashscope=dash.outcomes)


async def test_dashscope_tasks_with_faulty_sentences_fail_alone(
    start_server: Callable[..., Any],
) -> None:
    """Ten connections of five tasks, some with a faulty sentence: task-failed for those,
    task-finished for the rest, on the same connections."""
    engines: list[FaultyEngine] = []

    def engine() -> FaultyEngine:
        made = FaultyEngine(SyntheticEngine(rtf=0.01))
        engines.append(made)
        return made

    handle: ServerHandle = await start_server(engine, workers=2, max_concurrent=32)
    results: Counter[tuple[bool, str]] = Counter()

    async def connection(index: int) -> None:
        rng = random.Random(index)
        ledger = fuzzing.DashLedger()
        async with connect(dashscope_url(handle.url)) as ws:
            for n in range(5):
                task = f"t{n}"
                faulty = rng.random() < 0.4
                second = (
                    rng.choice(["FAULT:raise@1 Oops.", "FAULT:nan@2 Oops."]) if faulty else "Fine."
                )
                await ws.send_message(fuzzing.dumps(fuzzing.run_task(task)))
                for text in ("First sentence here.", second):
                    await ws.send_message(fuzzing.dumps(fuzzing.continue_task(task, text)))
                await ws.send_message(fuzzing.dumps(fuzzing.finish_task(task)))
                with trio.fail_after(60):
                    while not ledger.terminals[task]:
                        ledger.observe(await ws.get_message())
                results[(faulty, ledger.outcomes[task])] += 1
        # InternalError is what a faulty sentence must give; anything else is a problem.
        assert [p for p in ledger.problems if not p.startswith("InternalError")] == []

    async with trio.open_nursery() as nursery:
        for index in range(10):
            nursery.start_soon(connection, index)
    record_figures("faults_dashscope", tasks={f"{k[0]}:{k[1]}": v for k, v in results.items()})
    assert set(results) <= {(True, "InternalError"), (False, "finished")}
    assert sum(e.open_generations for e in engines) == 0
