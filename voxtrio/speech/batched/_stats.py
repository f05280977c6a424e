"""What a step loop measures about itself (written by its thread, read anywhere)."""

from __future__ import annotations

from collections.abc import Callable

import attrs

StepObserver = Callable[[int, int, float], None]
"""Called on the loop thread after each step with (rows stepped, bucket, seconds)."""

PrefillObserver = Callable[[int, float], None]
"""Called on the loop thread after each prefill group with (rows, seconds)."""


@attrs.define
class LoopStats:
    steps: int = 0
    join_steps: int = 0  # steps of newly joined rows alone, between full steps
    rows_stepped: int = 0
    step_seconds: float = 0.0
    skipped: int = 0  # row-steps left out for want of a credit
    prefills: int = 0
    # The longest prefill while other rows were running: the stall a join imposes.
    max_prefill_stall: float = 0.0
    last_batch: int = 0
    on_step: StepObserver | None = None
    on_prefill: PrefillObserver | None = None

    def summary(self) -> dict[str, float]:
        return {
            "steps": self.steps,
            "join_steps": self.join_steps,
            "rows_stepped": self.rows_stepped,
            "mean_batch": round(self.rows_stepped / self.steps, 2) if self.steps else 0.0,
            "mean_step_ms": round(1000 * self.step_seconds / self.steps, 2) if self.steps else 0.0,
            "skipped": self.skipped,
            "prefills": self.prefills,
            "max_prefill_stall_ms": round(1000 * self.max_prefill_stall, 2),
        }

    def stepped(self, rows: int, bucket: int, seconds: float, *, full: bool = True) -> None:
        self.steps += 1
        self.join_steps += not full
        self.rows_stepped += rows
        self.step_seconds += seconds
        self.last_batch = rows
        if self.on_step is not None:
            self.on_step(rows, bucket, seconds)

    def prefilled(self, rows: int, seconds: float, *, running: int) -> None:
        self.prefills += rows
        if running:
            self.max_prefill_stall = max(self.max_prefill_stall, seconds)
        if self.on_prefill is not None:
            self.on_prefill(rows, seconds)
