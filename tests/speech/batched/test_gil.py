"""GIL turns (voxtrio.speech.batched._gil): the event loop gives way to computing
model threads once a slice, and only then."""

from __future__ import annotations

import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager

import trio

from voxtrio.speech._engine import SynthesisSpec
from voxtrio.speech._pool import InstancePool
from voxtrio.speech._synthetic import SyntheticEngine
from voxtrio.speech.batched._gil import GilTurns
from voxtrio.speech.batched._interface import StepResult
from voxtrio.speech.batched._loop import LoadedModel, ModelInstance
from voxtrio.speech.batched._synthetic import BatchedSynthetic, SyntheticRow


class FakeTime:
    def __init__(self) -> None:
        self.now = 100.0
        self.slept: list[float] = []

    def clock(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)
        self.now += seconds


def turns(fake: FakeTime) -> GilTurns:
    return GilTurns(slice_s=0.002, pause_s=0.00005, clock=fake.clock, sleep=fake.sleep)


def test_the_loop_gives_no_turn_while_no_model_thread_computes() -> None:
    """Nothing computing: `offer` never sleeps."""
    fake = FakeTime()
    gil = turns(fake)
    for _ in range(5):
        fake.now += 0.01
        gil.offer()
    assert fake.slept == []
    assert gil.turns_given == 0


def test_a_computing_thread_gets_one_turn_per_slice() -> None:
    """While a thread computes: a pause at the first offer, then once per slice."""
    fake = FakeTime()
    gil = turns(fake)
    with gil.computing(0):
        gil.offer()
        fake.now += 0.001
        gil.offer()  # within the slice: no turn
        fake.now += 0.0015
        gil.offer()
    assert fake.slept == [0.00005, 0.00005]
    gil.offer()  # done computing
    assert gil.turns_given == 2


def test_a_computing_threads_sleep_wants_no_turn() -> None:
    """Inside `waiting` (the step clock's sleeps) the loop does not give way."""
    fake = FakeTime()
    gil = turns(fake)
    with gil.computing(0):
        with gil.waiting(0):
            gil.offer()
        assert fake.slept == []
        gil.offer()
    assert gil.turns_given == 1


def test_turns_are_offered_while_any_of_several_threads_computes() -> None:
    """Two threads: the loop gives way until the last one is done."""
    fake = FakeTime()
    gil = turns(fake)
    with gil.computing(0):
        with gil.computing(1):
            gil.offer()
        fake.now += 0.01
        gil.offer()
    fake.now += 0.01
    gil.offer()
    assert gil.turns_given == 2


class HeldStep(BatchedSynthetic):
    """The first step waits for `gate` (the step loop is computing meanwhile)."""

    def __init__(self) -> None:
        super().__init__(SyntheticEngine(rtf=0.0), max_batch=2)
        self.entered = threading.Event()
        self.gate = threading.Event()

    def step(self, rows: Sequence[SyntheticRow]) -> list[StepResult]:
        if not self.entered.is_set():
            self.entered.set()
            assert self.gate.wait(10)
        return super().step(rows)


async def test_the_pools_event_loop_gives_way_while_its_model_computes() -> None:
    """While a step computes, the pool's run offers turns between task steps; once the
    pool is closed, its instrument is gone and offers none."""
    model = HeldStep()
    instance = ModelInstance(0, lambda: LoadedModel(model.engine, model))
    pool = InstancePool([instance], max_admitted=4)
    with trio.fail_after(10):
        await pool.start()
        try:
            async with trio.open_nursery() as nursery:

                async def speak() -> None:
                    async with pool.run(SynthesisSpec(text="a" * 40), request_id="r") as (
                        _,
                        chunks,
                    ):
                        async for _chunk in chunks:
                            pass

                nursery.start_soon(speak)
                await trio.to_thread.run_sync(model.entered.wait, 5)
                given = pool.gil_turns.turns_given
                for _ in range(20):  # busy loop: task steps 1 ms apart
                    await trio.sleep(0.001)
                during = pool.gil_turns.turns_given - given
                model.gate.set()
        finally:
            with trio.CancelScope(shield=True):
                await pool.aclose()
    assert during >= 5
    after = pool.gil_turns.turns_given
    with pool.gil_turns.computing(7):  # as if a thread computed: no instrument to offer
        for _ in range(5):
            await trio.sleep(0.003)
    assert pool.gil_turns.turns_given == after


class RecordingTurns(GilTurns):
    """Notes, at each sleep marked `waiting`, whether any thread still counted as computing."""

    def __init__(self) -> None:
        super().__init__()
        self.sleeps: list[bool] = []

    @contextmanager
    def waiting(self, thread: int) -> Iterator[None]:
        with super().waiting(thread):
            self.sleeps.append(bool(self._computing))
            yield


async def test_a_paced_instance_wants_no_turns_while_its_step_clock_sleeps() -> None:
    """The step clock's sleeps are marked `waiting`: the loop is not asked to give way."""
    model = BatchedSynthetic(SyntheticEngine(rtf=0.02), max_batch=2)
    instance = ModelInstance(0, lambda: LoadedModel(model.engine, model, clock=model.clock))
    pool = InstancePool([instance], max_admitted=4)
    recording = RecordingTurns()
    pool.gil_turns = recording
    with trio.fail_after(10):
        await pool.start()
        try:
            async with pool.run(SynthesisSpec(text="a" * 40), request_id="r") as (_, chunks):
                steps = len([chunk async for chunk in chunks])
        finally:
            with trio.CancelScope(shield=True):
                await pool.aclose()
    assert steps >= 5
    assert len(recording.sleeps) >= steps  # each step waits for its tick
    assert not any(recording.sleeps)
