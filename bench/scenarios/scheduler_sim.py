"""The step loop's scheduling alone, on a modelled clock: first audio with and without join steps.

    python -m bench scheduler_sim [--concurrency 1,4,16,32] [--rounds 4]
        [--chunks 24] [--step-ms 22.8,71.8] [--prefill-ms 14] [--flat]

A model of time, not a measurement: it runs the real `Scheduler` against a model
whose step costs `a + b x rows` ms (fitted to two points, default the tiny VoxCPM2's
one-thread CPU step at 1 and 16 rows from issue 19) and whose prefill costs
`--prefill-ms` per row; `--flat` gives every step the one-row cost (a GPU replaying
CUDA graphs is close to that). Closed loop as `bench.batching`: each of c users sends
its next request when the last one ends. Prints first audio p50/p95 and audio s/s per
level, with join steps ("join") and without ("no-join", the policy before issue 19),
so load on a shared machine cannot blur the comparison.
"""

from __future__ import annotations

import argparse
import statistics
from collections.abc import Sequence

import attrs
import numpy as np

from voxtrio.speech._engine import SynthesisSpec
from voxtrio.speech.batched._interface import StepResult, power_of_two_bucket
from voxtrio.speech.batched._scheduler import Scheduler

CHUNK_S = 0.16  # VoxCPM2: one chunk is 160 ms of audio


@attrs.define(eq=False)
class SimRequest:
    user: int
    sent_at: float
    spec: SynthesisSpec = attrs.field(factory=lambda: SynthesisSpec(text="x"))
    first_audio_at: float | None = None

    def stop_requested(self) -> bool:
        return False

    def take_credit(self) -> bool:
        return True  # every simulated client reads at once

    def give_credit(self) -> None:
        pass


class NoJoinSteps(Scheduler[SimRequest, int]):
    """The policy before issue 19: new rows wait for the next full step."""

    def _join_step_pays(self, joined: int) -> bool:
        return joined == len(self.running)


def simulate(args: argparse.Namespace, users: int, *, join: bool) -> dict[str, float]:
    one, full = args.step_ms
    slope = 0.0 if args.flat else (full - one) / 15
    kind = Scheduler if join else NoJoinSteps
    sched: Scheduler[SimRequest, int] = kind(
        args.max_batch, bucket_for=lambda n: power_of_two_bucket(n, args.max_batch)
    )
    now = 0.0
    chunks: dict[int, int] = {}  # handle -> chunks left
    left = dict.fromkeys(range(users), args.rounds)
    first_audio: list[float] = []
    for user in range(users):
        sched.add(SimRequest(user, now))
        left[user] -= 1
    next_handle = 0
    while not sched.empty:
        plan = sched.schedule(now)
        if plan.prefill:
            now += args.prefill_ms * len(plan.prefill) / 1000
            handles = list(range(next_handle, next_handle + len(plan.prefill)))
            next_handle += len(handles)
            chunks.update(dict.fromkeys(handles, args.chunks))
            sched.prefilled(plan.prefill, handles, args.prefill_ms * len(handles) / 1000)
            continue
        rows = len(plan.step)
        seconds = (one + slope * (power_of_two_bucket(rows, args.max_batch) - 1)) / 1000
        now += seconds
        results: list[StepResult] = []
        for row in plan.step:
            chunks[row.handle] -= 1
            results.append(StepResult(_AUDIO, chunks[row.handle] == 0))
            if row.request.first_audio_at is None:
                row.request.first_audio_at = now
                first_audio.append(now - row.request.sent_at)
        for out in sched.postprocess(plan, results, seconds):
            if out.end == "finished" and left[out.row.request.user]:
                left[out.row.request.user] -= 1
                sched.add(SimRequest(out.row.request.user, now))
    return {
        "ttfa_p50_ms": round(1000 * statistics.median(first_audio), 1),
        "ttfa_p95_ms": round(1000 * _p95(first_audio), 1),
        "audio_s_per_s": round(users * args.rounds * args.chunks * CHUNK_S / now, 1),
    }


def _p95(values: Sequence[float]) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(0.95 * len(ordered)))]


_AUDIO = np.ones(1, np.float32)


def main(argv: list[str]) -> None:
    p = argparse.ArgumentParser(prog="python -m bench scheduler_sim", description=__doc__)
    p.add_argument("--concurrency", default="1,4,16,32")
    p.add_argument("--rounds", type=int, default=4)
    p.add_argument("--chunks", type=int, default=24)
    p.add_argument("--max-batch", type=int, default=32)
    p.add_argument("--step-ms", default="22.8,71.8", help="step ms at 1 and at 16 rows")
    p.add_argument("--prefill-ms", type=float, default=14.0, help="prefill ms per row")
    p.add_argument("--flat", action="store_true", help="every step costs the 1-row time")
    args = p.parse_args(argv)
    args.step_ms = [float(v) for v in args.step_ms.split(",")]
    for users in (int(c) for c in args.concurrency.split(",")):
        for join in (False, True):
            figures = simulate(args, users, join=join)
            print(f"{'join' if join else 'no-join':8s} c={users:<4d} {figures}", flush=True)
