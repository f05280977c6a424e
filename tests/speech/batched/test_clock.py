"""A paced model's step clock: steps computed ahead, chunks released on the tick."""

from __future__ import annotations

import itertools

import pytest

from voxtrio.speech.batched import _clock
from voxtrio.speech.batched._clock import StepClock

PERIOD = 0.16


class FakeTime:
    """`time.perf_counter` and `time.sleep` on a clock that moves only when told."""

    def __init__(self) -> None:
        self.now = 1000.0

    def perf_counter(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        assert seconds > 0
        self.now += seconds


@pytest.fixture
def fake_time(monkeypatch: pytest.MonkeyPatch) -> FakeTime:
    fake = FakeTime()
    monkeypatch.setattr(_clock, "time", fake)
    return fake


def _step(clock: StepClock, fake_time: FakeTime, compute: float) -> tuple[float, float]:
    """One step of `compute` seconds; (when it started computing, when it was released)."""
    clock.wait_for_step()
    started = fake_time.now
    fake_time.now += compute
    clock.release()
    return started, fake_time.now


def test_released_steps_leave_on_the_tick_whatever_they_took(fake_time: FakeTime) -> None:
    """Steps of 5 to 40 ms are released exactly one period apart (after the first, which
    started on its tick: nothing before it to compute ahead of)."""
    clock = StepClock(PERIOD)
    released = [_step(clock, fake_time, compute)[1] for compute in (0.04, 0.02, 0.005, 0.03, 0.01)]
    assert released[1] - released[0] == pytest.approx(PERIOD - 0.04)
    gaps = [later - earlier for earlier, later in itertools.pairwise(released[1:])]
    assert gaps == pytest.approx([PERIOD] * 3)


def test_a_step_slower_than_its_lead_is_released_when_ready(fake_time: FakeTime) -> None:
    """A step that takes longer than the lead is released as soon as it is ready."""
    clock = StepClock(PERIOD)
    _step(clock, fake_time, 0.01)
    started, released = _step(clock, fake_time, 0.12)
    assert released - started == pytest.approx(0.12)


def test_a_released_step_starts_half_a_period_before_its_tick(fake_time: FakeTime) -> None:
    """Once the loop releases steps, each is computed half a period ahead."""
    clock = StepClock(PERIOD)
    _step(clock, fake_time, 0.03)
    started, released = _step(clock, fake_time, 0.01)
    assert released - started == pytest.approx(PERIOD / 2)


def test_without_release_a_step_starts_on_its_tick(fake_time: FakeTime) -> None:
    """A model paced on its own (no step loop releasing it) steps once a period."""
    clock = StepClock(PERIOD)
    starts = []
    for _ in range(3):
        clock.wait_for_step()
        starts.append(fake_time.now)
        fake_time.now += 0.02
    assert clock.lead == 0.0
    assert [b - a for a, b in itertools.pairwise(starts)] == pytest.approx([PERIOD, PERIOD])


def test_ticks_missed_while_idle_are_not_caught_up(fake_time: FakeTime) -> None:
    """After an idle second, the first step is released when ready and the next one a
    period after its start, not at once."""
    clock = StepClock(PERIOD)
    _step(clock, fake_time, 0.01)
    fake_time.now += 1.0
    first, _ = _step(clock, fake_time, 0.01)
    _, second_released = _step(clock, fake_time, 0.01)
    assert second_released - first == pytest.approx(PERIOD)
