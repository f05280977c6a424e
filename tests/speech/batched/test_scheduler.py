"""The scheduler alone: joins, steps, leaves, credits and retries with plain objects.

No threads, no model, no clock: a test plays the loop (`schedule`, then `prefilled`
or `postprocess` with made-up results and durations) and counts steps.
"""

from __future__ import annotations

from collections.abc import Sequence

import attrs
import numpy as np

from voxtrio.speech._engine import SynthesisSpec
from voxtrio.speech.batched._interface import StepResult, power_of_two_bucket
from voxtrio.speech.batched._scheduler import (
    RETRY_SEED_STRIDE,
    BadcaseRule,
    Plan,
    Scheduler,
    never_badcase,
)

CHUNK = np.ones(4, np.float32)


@attrs.define(eq=False)
class Request:
    """A request as the scheduler sees it: a spec, a stop flag and credits."""

    name: str
    spec: SynthesisSpec = attrs.field(factory=lambda: SynthesisSpec(text="hello"))
    credits: int = 2
    stopped: bool = False
    given_back: int = 0

    def stop_requested(self) -> bool:
        return self.stopped

    def take_credit(self) -> bool:
        if self.credits == 0:
            return False
        self.credits -= 1
        return True

    def give_credit(self) -> None:
        self.credits += 1
        self.given_back += 1


@attrs.define(eq=False)
class Handle:
    """A model row: which request and attempt it was prefilled for."""

    name: str
    seed: int


Sched = Scheduler[Request, Handle]
SchedPlan = Plan[Request, Handle]


def scheduler(
    max_rows: int = 8,
    *,
    prefill_group: int = 2,
    prefill_budget: float = 0.025,
    credit_timeout: float = 30.0,
    badcase: BadcaseRule = never_badcase,
) -> Sched:
    return Scheduler(
        max_rows,
        prefill_group=prefill_group,
        prefill_budget=prefill_budget,
        credit_timeout=credit_timeout,
        badcase_steps=badcase,
        bucket_for=lambda rows: power_of_two_bucket(rows, max_rows),
    )


def prefill(sched: Sched, plan: SchedPlan, seconds: float = 0.01) -> list[str]:
    """Play the model's prefill of a plan; the names it admitted."""
    handles = [Handle(w.request.name, w.spec.seed) for w in plan.prefill]
    sched.prefilled(plan.prefill, handles, seconds)
    return [h.name for h in handles]


def step(
    sched: Sched, plan: SchedPlan, seconds: float = 0.05, finished: Sequence[str] = ()
) -> list[str]:
    """Play the model's step of a plan (one chunk each); the names it stepped."""
    results = [StepResult(CHUNK, row.request.name in finished) for row in plan.step]
    sched.postprocess(plan, results, seconds)
    return [row.request.name for row in plan.step]


def test_an_idle_scheduler_plans_nothing() -> None:
    """With nothing waiting or running the plan is idle and the scheduler empty."""
    sched = scheduler()
    plan = sched.schedule(0.0)
    assert plan.idle
    assert sched.empty


def test_waiting_requests_are_prefilled_a_group_at_a_time_then_stepped() -> None:
    """Three arrivals: a group of two, a group of one, then one step of all three."""
    sched = scheduler(prefill_group=2, prefill_budget=1.0)
    for name in "abc":
        sched.add(Request(name))
    assert prefill(sched, sched.schedule(0.0)) == ["a", "b"]
    assert prefill(sched, sched.schedule(0.0)) == ["c"]
    plan = sched.schedule(0.0)
    assert step(sched, plan) == ["a", "b", "c"]
    assert plan.full


def test_a_join_waits_for_no_full_step_of_its_own() -> None:
    """A request arriving while 8 rows run gets its first chunk from a join step of its own."""
    sched = scheduler(max_rows=16, prefill_group=8, prefill_budget=1.0)
    for i in range(8):
        sched.add(Request(f"old{i}", credits=100))
    prefill(sched, sched.schedule(0.0))
    step(sched, sched.schedule(0.0))  # the 8 old rows are running
    sched.add(Request("new"))
    plan = sched.schedule(0.0)
    assert prefill(sched, plan) == ["new"]
    join = sched.schedule(0.0)
    assert step(sched, join, seconds=0.01) == ["new"]  # its first chunk: no full step first
    assert not join.full
    full = sched.schedule(0.0)
    assert len(step(sched, full)) == 9  # then everyone, the new row included
    assert full.full


def test_first_audio_under_load_waits_for_at_most_one_full_step() -> None:
    """16 rows running, one arrival per full step: each new row's first chunk comes
    before any further full step, and running rows never wait more than one join step."""
    sched = scheduler(max_rows=32, prefill_group=2, prefill_budget=0.025)
    for i in range(16):
        sched.add(Request(f"old{i}", credits=10**6))
    while sched.waiting:
        prefill(sched, sched.schedule(0.0))
    step(sched, sched.schedule(0.0))
    for arrival in range(10):
        sched.add(Request(f"new{arrival}", credits=10**6))
        full_steps_before_first_chunk = 0
        partial_steps = 0
        while True:
            plan = sched.schedule(0.0)
            if plan.prefill:
                prefill(sched, plan, seconds=0.03)
                continue
            stepped = step(sched, plan, seconds=0.07 if plan.full else 0.02)
            if f"new{arrival}" in stepped:
                assert stepped == [f"new{arrival}"]  # a join step of its own, not a full one
                break
            full_steps_before_first_chunk += plan.full
            partial_steps += not plan.full
        assert full_steps_before_first_chunk == 0
        assert partial_steps == 0
        # The next plan is a full step: the old rows waited one join step, no more.
        plan = sched.schedule(0.0)
        assert plan.full
        step(sched, plan)


def test_where_a_step_costs_the_same_at_any_size_new_rows_ride_the_full_step() -> None:
    """A GPU-like flat step cost: once measured, no join step (it would only delay the
    running rows); the new row's first chunk comes from the next full step."""
    sched = scheduler(max_rows=64, prefill_group=16, prefill_budget=1.0)
    for i in range(16):
        sched.add(Request(f"old{i}", credits=10**6))
    prefill(sched, sched.schedule(0.0))
    step(sched, sched.schedule(0.0), seconds=0.010)
    kinds = []
    for arrival in range(3):
        sched.add(Request(f"new{arrival}", credits=10**6))
        prefill(sched, sched.schedule(0.0), seconds=0.002)
        plan = sched.schedule(0.0)
        names = step(sched, plan, seconds=0.010 if plan.full else 0.009)
        kinds.append("full" if plan.full else "join")
        if not plan.full:
            assert names == [f"new{arrival}"]
            step(sched, sched.schedule(0.0), seconds=0.010)
    # The first join step measures the small bucket; from then on joins ride along.
    assert kinds == ["join", "full", "full"]


def test_with_join_steps_off_new_rows_wait_for_the_next_full_step() -> None:
    """`join_steps=False` (throughput first): a join rides the next full step."""
    sched = scheduler(max_rows=16, prefill_group=8, prefill_budget=1.0)
    sched.join_steps = False
    for i in range(8):
        sched.add(Request(f"old{i}", credits=100))
    prefill(sched, sched.schedule(0.0))
    step(sched, sched.schedule(0.0))
    sched.add(Request("new"))
    prefill(sched, sched.schedule(0.0))
    plan = sched.schedule(0.0)
    assert plan.full
    assert len(step(sched, plan)) == 9


def test_a_burst_of_joins_is_admitted_while_the_budget_lasts() -> None:
    """Cheap prefills: groups follow each other until their time reaches the budget,
    then everyone steps: a join step would only hold up the groups still waiting."""
    sched = scheduler(max_rows=32, prefill_group=2, prefill_budget=0.025)
    sched.add(Request("running", credits=100))
    prefill(sched, sched.schedule(0.0))
    step(sched, sched.schedule(0.0))
    for i in range(10):
        sched.add(Request(f"r{i}"))
    admitted = []
    plan = sched.schedule(0.0)
    while plan.prefill:
        admitted += prefill(sched, plan, seconds=0.01)
        plan = sched.schedule(0.0)
    assert admitted == ["r0", "r1", "r2", "r3", "r4", "r5"]  # 3 groups: 30 ms >= 25 ms
    assert len(sched.waiting) == 4
    # A burst: no join step while more requests wait to join (it would delay them);
    # the new rows ride the full step, and the next gap admits the next groups.
    assert step(sched, plan) == ["running", *admitted]
    assert plan.full
    assert prefill(sched, sched.schedule(0.0)) == ["r6", "r7"]


def test_no_more_rows_join_than_the_model_has_slots() -> None:
    """A full batch admits nobody; a row that finishes makes room for the next."""
    sched = scheduler(max_rows=2, prefill_budget=1.0)
    for name in "abc":
        sched.add(Request(name))
    assert prefill(sched, sched.schedule(0.0)) == ["a", "b"]
    assert step(sched, sched.schedule(0.0), finished=["a"]) == ["a", "b"]
    assert prefill(sched, sched.schedule(0.0)) == ["c"]


def test_a_reader_without_credit_is_skipped_and_the_others_step() -> None:
    """A streaming row with no credit left does not move; its neighbour does."""
    sched = scheduler(prefill_budget=1.0)
    sched.add(Request("slow", credits=1))
    sched.add(Request("fast", credits=100))
    prefill(sched, sched.schedule(0.0))
    assert step(sched, sched.schedule(0.0)) == ["slow", "fast"]
    assert step(sched, sched.schedule(0.1)) == ["fast"]
    assert step(sched, sched.schedule(0.2)) == ["fast"]
    assert sched.skipped == 2


def test_a_reader_starved_past_the_credit_timeout_leaves() -> None:
    """No credit for longer than `credit_timeout`: the row leaves with its handle."""
    sched = scheduler(prefill_budget=1.0, credit_timeout=5.0)
    sched.add(Request("slow", credits=1))
    prefill(sched, sched.schedule(0.0))
    step(sched, sched.schedule(0.0))
    assert sched.schedule(1.0).idle  # starved since t=1
    assert sched.schedule(6.0).leaving == []  # exactly the timeout: still waits
    plan = sched.schedule(6.5)
    assert [(left.request.name, left.reason) for left in plan.leaving] == [
        ("slow", "reader_timeout")
    ]
    assert plan.leaving[0].handle is not None
    assert sched.empty


def test_a_non_streaming_row_needs_no_credit() -> None:
    """Non-streaming rows are never skipped: their audio is held until the end."""
    sched = scheduler(prefill_budget=1.0)
    sched.add(Request("n", spec=SynthesisSpec(text="x", streaming=False), credits=0))
    prefill(sched, sched.schedule(0.0))
    for _ in range(3):
        assert step(sched, sched.schedule(0.0)) == ["n"]


def test_a_stopped_request_leaves_before_the_next_step_waiting_or_running() -> None:
    """A stop takes a waiting request out unprefilled and a running row out with its handle."""
    sched = scheduler(max_rows=1, prefill_budget=1.0)
    running, waiting = Request("running"), Request("waiting")
    sched.add(running)
    sched.add(waiting)
    prefill(sched, sched.schedule(0.0))
    running.stopped = waiting.stopped = True
    plan = sched.schedule(0.0)
    left = {(entry.request.name, entry.handle is None) for entry in plan.leaving}
    assert left == {("running", False), ("waiting", True)}
    assert plan.idle
    assert sched.empty


def test_an_empty_chunk_gives_its_credit_back() -> None:
    """A step that handed nothing over returns the credit it took."""
    sched = scheduler(prefill_budget=1.0)
    request = Request("r", credits=1)
    sched.add(request)
    prefill(sched, sched.schedule(0.0))
    plan = sched.schedule(0.0)
    (output,) = sched.postprocess(plan, [StepResult(np.zeros(0, np.float32), True)], 0.01)
    assert (output.audio, output.end) == (None, "finished")
    assert (request.credits, request.given_back) == (1, 1)


def test_non_streaming_audio_is_handed_over_once_joined() -> None:
    """A non-streaming row's chunks come out as one array when it finishes."""
    sched = scheduler(prefill_budget=1.0)
    sched.add(Request("n", spec=SynthesisSpec(text="x", streaming=False)))
    prefill(sched, sched.schedule(0.0))
    first = sched.postprocess(sched.schedule(0.0), [StepResult(CHUNK, False)], 0.01)
    (last,) = sched.postprocess(sched.schedule(0.0), [StepResult(2 * CHUNK, True)], 0.01)
    assert first == []
    assert last.end == "finished"
    assert last.audio is not None
    np.testing.assert_array_equal(last.audio, np.concatenate([CHUNK, 2 * CHUNK]))


def _run_to_end(sched: Sched, steps: int) -> list[tuple[str, int]]:
    """Play the loop: every attempt stops after `steps` chunks; (ends, seeds) seen."""
    seen: list[tuple[str, int]] = []
    for _ in range(100):
        plan = sched.schedule(0.0)
        if plan.prefill:
            sched.prefilled(plan.prefill, [Handle("n", w.spec.seed) for w in plan.prefill], 0.0)
            continue
        if plan.idle:
            return seen
        (row,) = plan.step
        done = row.steps + 1 >= steps
        for output in sched.postprocess(plan, [StepResult(CHUNK, done)], 0.01):
            if output.end is not None:
                seen.append((output.end, output.row.handle.seed))
    raise AssertionError("never finished")


def test_a_bad_case_is_generated_again_reseeded_up_to_the_attempts_allowed() -> None:
    """Audio as long as the bad-case bound is redone, re-seeded, 3 attempts in all."""
    spec = SynthesisSpec(text="x", streaming=False, seed=7, retry_badcase_max_times=3)
    sched = scheduler(badcase=lambda s: 4.0)
    sched.add(Request("n", spec=spec))
    seeds = [7, 7 + RETRY_SEED_STRIDE, (7 + 2 * RETRY_SEED_STRIDE) % 2**32]
    assert _run_to_end(sched, steps=4) == [
        ("retry", seeds[0]),
        ("retry", seeds[1]),
        ("finished", seeds[2]),  # the last attempt's audio, bad case or not
    ]


def test_audio_shorter_than_the_bad_case_bound_is_kept() -> None:
    """Below the bound (or with retry off, or streaming) there is one attempt."""
    for spec, steps in (
        (SynthesisSpec(text="x", streaming=False), 3),
        (SynthesisSpec(text="x", streaming=False, retry_badcase=False), 9),
        (SynthesisSpec(text="x", streaming=True), 9),
    ):
        sched = scheduler(badcase=lambda s: 4.0)
        sched.add(Request("n", spec=spec, credits=100))
        assert _run_to_end(sched, steps=steps) == [("finished", 0)]


def test_a_failed_step_takes_every_row_in_it_out() -> None:
    """`step_failed` returns the plan's rows and forgets them."""
    sched = scheduler(prefill_budget=1.0)
    for name in "ab":
        sched.add(Request(name))
    prefill(sched, sched.schedule(0.0))
    plan = sched.schedule(0.0)
    assert [row.request.name for row in sched.step_failed(plan)] == ["a", "b"]
    assert sched.empty
