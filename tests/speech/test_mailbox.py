"""The loop mailbox: calls from any thread run on the Trio thread in order, paced by
their places in a step's burst, between task steps when a batch runs long."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
import trio
import trio.testing

from voxtrio.speech._mailbox import LoopMailbox, MailboxInstrument


async def test_due_times_are_a_slot_apart_and_never_held_past_max_hold() -> None:
    """A burst is spread one slot per chunk, but no chunk is held longer than max_hold."""
    mailbox = LoopMailbox(trio.lowlevel.current_trio_token())
    mailbox.drained_at = 100.0
    dues = [mailbox.due_time() for _ in range(3)]
    assert dues[0] == 100.0
    assert dues[1] - dues[0] == pytest.approx(LoopMailbox.delivery_slot)
    assert dues[2] - dues[1] == pytest.approx(LoopMailbox.delivery_slot)
    crowded = [mailbox.due_time() for _ in range(int(2 * mailbox.max_hold / mailbox.delivery_slot))]
    assert max(crowded) == pytest.approx(100.0 + mailbox.max_hold)
    mailbox.drained_at = 200.0  # a later step starts when the loop takes it
    assert mailbox.due_time() == 200.0


class CountingToken:
    """A Trio token that only records the wake-ups it is asked for."""

    def __init__(self) -> None:
        self.scheduled: list[Callable[[], object]] = []

    def run_sync_soon(self, fn: Callable[[], object]) -> None:
        self.scheduled.append(fn)


def _recorder(log: list[Any], name: str) -> Callable[[Any], None]:
    return lambda value: log.append((name, value))


async def test_post_all_runs_its_calls_in_order_after_what_was_posted_before() -> None:
    """post_all keeps the order of its calls, behind earlier posts and ahead of later ones."""
    token = CountingToken()
    mailbox = LoopMailbox(token)  # type: ignore[arg-type]
    ran: list[Any] = []
    mailbox.post(_recorder(ran, "a"), 0)
    mailbox.post_all([(_recorder(ran, "b"), (1,)), (_recorder(ran, "b"), (2,))])
    mailbox.post(_recorder(ran, "c"), 3)
    for drain in token.scheduled:
        drain()
    assert ran == [("a", 0), ("b", 1), ("b", 2), ("c", 3)]


async def test_post_all_wakes_the_loop_once_for_all_its_calls() -> None:
    """A whole step posted with post_all asks for one wake-up, and one drain runs them all."""
    token = CountingToken()
    mailbox = LoopMailbox(token)  # type: ignore[arg-type]
    ran: list[Any] = []
    mailbox.post_all([(_recorder(ran, "x"), (index,)) for index in range(5)])
    mailbox.post_all([(_recorder(ran, "y"), (index,)) for index in range(3)])
    assert len(token.scheduled) == 1  # the second post_all rides the pending drain
    token.scheduled[0]()
    assert len(ran) == 8
    mailbox.post_all([(_recorder(ran, "z"), (0,))])
    assert len(token.scheduled) == 2  # once drained, the next post wakes the loop again


async def test_post_all_of_nothing_wakes_nobody() -> None:
    """An empty step posts nothing and schedules no drain."""
    token = CountingToken()
    LoopMailbox(token).post_all([])  # type: ignore[arg-type]
    assert token.scheduled == []


def _paced_mailbox(slot: float) -> LoopMailbox:
    mailbox = LoopMailbox(trio.lowlevel.current_trio_token())
    mailbox.burst_slot = slot
    return mailbox


async def test_a_drain_ahead_of_its_pace_runs_each_call_a_slot_after_the_one_before(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """A burst leaves one slot per call from its start, and none later than max_hold."""
    mailbox = _paced_mailbox(0.005)
    times: list[float] = []
    began = trio.current_time()
    calls = round(mailbox.max_hold / 0.005) + 4  # the last few reach max_hold
    mailbox.post_all([(lambda: times.append(trio.current_time()), ()) for _ in range(calls)])
    while len(times) < calls:
        await trio.sleep(0.001)
    expected = [began + min(index * 0.005, mailbox.max_hold) for index in range(calls)]
    assert times == pytest.approx(expected)
    assert times[-1] == pytest.approx(began + mailbox.max_hold)


def test_a_thousand_streams_burst_fits_in_max_hold() -> None:
    """1,000 calls a burst slot apart are all paced: none reaches max_hold and leaves unpaced."""
    assert 1000 * LoopMailbox.burst_slot < LoopMailbox.max_hold


async def test_a_drain_behind_its_pace_never_stops(mock_clock: trio.testing.MockClock) -> None:
    """Calls slower than the slot run back to back in one drain (no timer, no wait)."""
    mailbox = _paced_mailbox(0.005)
    ran: list[int] = []

    def slow_call(index: int) -> None:
        mock_clock.jump(0.01)  # each call takes two slots
        ran.append(index)

    mailbox.post_all([(slow_call, (index,)) for index in range(20)])
    await trio.testing.wait_all_tasks_blocked()
    assert ran == list(range(20))  # a drain that stopped would wait on a clock that never moves


async def test_calls_posted_while_a_burst_waits_run_after_it_in_order(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """What arrives during a paced burst goes behind the burst's remaining calls."""
    mailbox = _paced_mailbox(0.005)
    ran: list[Any] = []
    mailbox.post_all([(_recorder(ran, "step"), (index,)) for index in range(6)])
    await trio.sleep(0.012)  # the burst is part-way through
    mailbox.post_all([(_recorder(ran, "next"), (index,)) for index in range(2)])
    while len(ran) < 8:
        await trio.sleep(0.001)
    assert ran == [("step", index) for index in range(6)] + [("next", 0), ("next", 1)]


def test_a_burst_still_waiting_when_the_run_ends_runs_the_rest_at_once() -> None:
    """Calls a paced drain holds back are not lost when Trio's run ends (a job's end among
    them must still be seen)."""
    ran: list[int] = []

    async def main() -> None:
        mailbox = _paced_mailbox(10.0)  # every call after the first waits (max_hold)
        mailbox.post_all([(ran.append, (index,)) for index in range(3)])
        await trio.testing.wait_all_tasks_blocked()
        assert ran == [0]

    trio.run(main)
    assert ran == [0, 1, 2]


async def _steps_of_one_batch(first_step: Callable[[], None], ran: list[int]) -> list[int]:
    """Six tasks woken into one scheduler batch: the one stepped first runs `first_step`;
    returns `len(ran)` as each of the other five steps."""
    go = trio.Event()
    seen: list[int] = []
    stepped = 0

    async def member() -> None:
        nonlocal stepped
        await go.wait()
        stepped += 1
        if stepped == 1:
            first_step()
        else:
            seen.append(len(ran))

    async with trio.open_nursery() as nursery:
        for _ in range(6):
            nursery.start_soon(member)
        await trio.testing.wait_all_tasks_blocked()
        go.set()
    return seen


@pytest.mark.parametrize("instrumented", [True, False])
async def test_a_due_burst_goes_on_between_two_task_steps_of_one_batch(
    mock_clock: trio.testing.MockClock, instrumented: bool
) -> None:
    """A burst stopped ahead of its pace resumes before the next task step once due (with
    the instrument), not after the whole batch as its timer alone would."""
    mailbox = _paced_mailbox(0.005)
    if instrumented:
        trio.lowlevel.add_instrument(MailboxInstrument(mailbox))
    ran: list[int] = []
    mailbox.post_all([(ran.append, (index,)) for index in range(2)])
    await trio.testing.wait_all_tasks_blocked()
    assert ran == [0]  # the second call waits for its slot

    def slow_step() -> None:
        mock_clock.jump(0.006)  # a long task step: the second call falls due meanwhile

    seen = await _steps_of_one_batch(slow_step, ran)
    assert seen == ([2] * 5 if instrumented else [1] * 5)
    await trio.testing.wait_all_tasks_blocked()
    assert ran == [0, 1]  # either way it ran, once


@pytest.mark.parametrize("instrumented", [True, False])
async def test_calls_posted_mid_batch_run_before_the_next_task_step(instrumented: bool) -> None:
    """A step posted while a batch runs is taken between two task steps (with the
    instrument), not after the batch by its `run_sync_soon` callback."""
    mailbox = LoopMailbox(trio.lowlevel.current_trio_token())
    if instrumented:
        trio.lowlevel.add_instrument(MailboxInstrument(mailbox))
    ran: list[int] = []
    seen = await _steps_of_one_batch(lambda: mailbox.post_all([(ran.append, (0,))]), ran)
    assert seen == ([1] * 5 if instrumented else [0] * 5)
    await trio.testing.wait_all_tasks_blocked()
    assert ran == [0]  # the callback's later drain found nothing left to run twice


async def _call_times(mailbox: LoopMailbox, places: list[int | None]) -> list[float]:
    times: list[float] = []
    began = trio.current_time()
    call = (lambda: times.append(trio.current_time() - began), ())
    mailbox.post_all([call] * len(places), places)
    while len(times) < len(places):
        await trio.sleep(0.001)
    return times


async def test_a_placed_call_leaves_at_its_place_not_its_count(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """A drain paces each call by its place in the burst; a call without one (a job's end)
    follows the call before it a slot later."""
    times = await _call_times(_paced_mailbox(0.005), [0, 10, 11, None])
    assert times == pytest.approx([0.0, 0.05, 0.055, 0.06])


async def test_a_step_posted_during_a_burst_takes_places_after_it(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """Places count from where the burst a step joins has got to, not from its start."""
    mailbox = _paced_mailbox(0.005)
    times: list[tuple[str, float]] = []
    began = trio.current_time()

    def mark(label: str) -> None:
        times.append((label, trio.current_time() - began))

    mailbox.post_all([(mark, ("a",)), (mark, ("b",)), (mark, ("c",))], [0, 1, 4])
    await trio.sleep(0.001)  # "a" ran; the burst waits for "b"
    mailbox.post_all([(mark, ("d",)), (mark, ("e",))], [0, 2])
    while len(times) < 5:
        await trio.sleep(0.001)
    assert [label for label, _ in times] == ["a", "b", "c", "d", "e"]
    assert [at for _, at in times] == pytest.approx([0.0, 0.005, 0.02, 0.025, 0.035])
