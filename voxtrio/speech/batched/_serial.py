"""Any `Engine` as a one-row `BatchModel`: its generator, advanced one chunk a step.

For engines with no batched form (test doubles, a subclass that replaces
`generate`): they run through the same step loop, one generation at a time.
"""

from __future__ import annotations

from collections.abc import Generator, Sequence

import attrs
import numpy as np

from voxtrio.speech._engine import Engine, SynthesisSpec
from voxtrio.speech.batched._interface import StepResult

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

    def max_steps(self, spec: SynthesisSpec) -> int:
        return self.engine.max_steps(spec)

    def prefill(self, specs: Sequence[SynthesisSpec]) -> list[SerialRow]:
        if len(specs) > self.max_batch:
            raise RuntimeError(f"{len(specs)} rows asked of a one-row engine")
        return [SerialRow(self.engine.generate(spec, lambda step: None)) for spec in specs]

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
            row.chunks.close()  # on the loop thread, like the replica closes it

    def warm_up(self) -> None:
        self.engine.warm_up()

    def close(self) -> None:
        self.engine.close()
