"""A model-free `BatchModel`: one thread paces every stream it carries.

Each step waits for the step clock's next tick (`rtf` x one chunk's duration after
the last; `_clock.py`, less the clock's lead when the step loop releases the chunks
on the tick), then hands every given row the next chunk of its tone (the same
samples `SyntheticEngine` yields for that seed and step). So a thousand real-time
streams cost one thread and one sleep per chunk period, not a thousand threads.
"""

from __future__ import annotations

from collections.abc import Sequence

import attrs
import numpy as np

from voxtrio.speech._engine import SynthesisSpec
from voxtrio.speech._synthetic import SyntheticEngine, seed_frequency
from voxtrio.speech.batched._clock import StepClock
from voxtrio.speech.batched._interface import StepResult, power_of_two_bucket

_NO_TABLE = np.zeros(0, dtype=np.float32)


@attrs.define(eq=False)
class SyntheticRow:
    spec: SynthesisSpec
    # The row's tone cycle, held while the row lives (freed with the last row at its pitch).
    table: np.ndarray = attrs.field(repr=False)
    steps_total: int
    step: int = 0
    released: bool = False


@attrs.define
class BatchedSynthetic:
    engine: SyntheticEngine = attrs.Factory(SyntheticEngine)
    max_batch: int = 1024
    # Fault injection for tests: prefill raises for a text containing this.
    fail_prefill_text: str | None = None
    rows_open: int = 0
    clock: StepClock = attrs.field(init=False)

    def __attrs_post_init__(self) -> None:
        engine = self.engine
        self.clock = StepClock(engine.chunk_samples / engine.sample_rate * engine.rtf)

    @property
    def sample_rate(self) -> int:
        return self.engine.sample_rate

    def bucket_for(self, rows: int) -> int:
        return power_of_two_bucket(rows, self.max_batch)  # no padding: only the metrics' label

    def max_steps(self, spec: SynthesisSpec) -> int:
        return self.engine.max_steps(spec)

    def prefill(self, specs: Sequence[SynthesisSpec]) -> list[SyntheticRow]:
        if self.rows_open + len(specs) > self.max_batch:
            raise RuntimeError(f"{len(specs)} rows asked, {self.max_batch - self.rows_open} free")
        for spec in specs:
            if self.fail_prefill_text and self.fail_prefill_text in spec.text:
                raise RuntimeError("synthetic prefill failure")
        self.rows_open += len(specs)
        # The engine's own leak counters count rows as generations.
        self.engine.generations += len(specs)
        self.engine.open_generations += len(specs)
        return [
            SyntheticRow(
                spec,
                self.engine.tone_table(seed_frequency(spec.seed)),
                self.engine.max_steps(spec),
            )
            for spec in specs
        ]

    def step(self, rows: Sequence[SyntheticRow]) -> list[StepResult]:
        self.clock.wait_for_step()
        results = []
        for row in rows:
            if row.released:
                raise RuntimeError("step on a released row")
            row.step += 1
            if row.step == self.engine.fail_at_step:
                raise RuntimeError(f"synthetic failure at step {row.step}")
            chunk = self.engine.chunk_of(row.table, row.step)
            if row.step == self.engine.nan_at_step:
                chunk = chunk.copy()
                chunk[0] = np.nan
            results.append(StepResult(chunk, row.step >= row.steps_total))
        return results

    def release(self, row: SyntheticRow) -> None:
        if not row.released:
            row.released = True
            row.table = _NO_TABLE  # a released row may be kept a while; its table need not
            self.rows_open -= 1
            self.engine.open_generations -= 1

    def warm_up(self) -> None:
        self.engine.warm_up()

    def close(self) -> None:
        self.engine.close()
