"""Any `Engine` as a one-row `BatchModel`: its generator, advanced one chunk a step.

For engines with no batched form (test doubles, a subclass that replaces
`generate`): they run through the same step loop, one generation at a time.
"""

from __future__ import annotations

from collections.abc import Generator, Sequence

import attrs
import numpy as np

from voxtrio.speech._engine import Engine, SynthesisSpec
from voxtrio.speech.batched._interface import StepResult, power_of_two_bucket

_EMPTY = np.zeros(0, np.float32)


@attrs.define(eq=False)
class SerialRow:
    chunks: Generator[np.ndarray, None, None]
    released: bool = False


@attrs.define
class SerialBatch:
    engine: Engine
    max_batch: int = 1

    @property
    def sample_rate(self) -> int:
        return self.engine.sample_rate

    def bucket_for(self, rows: int) -> int:
        return power_of_two_bucket(rows, self.max_batch)  # no padding: only the metrics' label

    def max_steps(self, spec: SynthesisSpec) -> int:
        return self.engine.max_steps(spec)

    def prefill(self, specs: Sequence[SynthesisSpec]) -> list[SerialRow]:
        if len(specs) > self.max_batch:
            raise RuntimeError(f"{len(specs)} rows asked of a one-row engine")
        # Always as a stream: one chunk a step, so the loop can stop a non-streaming
        # generation midway, beat its heartbeat, and collect and retry it itself.
        streams = [attrs.evolve(spec, streaming=True, retry_badcase=False) for spec in specs]
        return [SerialRow(self.engine.generate(spec, lambda step: None)) for spec in streams]

    def step(self, rows: Sequence[SerialRow]) -> list[StepResult]:
        results = []
        for row in rows:
            try:
                results.append(StepResult(next(row.chunks), False))
            except StopIteration:
                results.append(StepResult(_EMPTY, True))
        return results

    def release(self, row: SerialRow) -> None:
        if not row.released:
            row.released = True
            row.chunks.close()  # on the loop thread that opened it

    def warm_up(self) -> None:
        self.engine.warm_up()

    def close(self) -> None:
        self.engine.close()
