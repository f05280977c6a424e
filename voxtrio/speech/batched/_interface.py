"""The contract between the step loop and a batched model (one thread owns both)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol, TypeVar

import attrs
import numpy as np

from voxtrio.speech._engine import SynthesisSpec

RowT = TypeVar("RowT")
"""A model's per-generation state (KV positions, causal VAE state, RNG, ...).

Opaque to the scheduler and the loop: created by `BatchModel.prefill`, advanced by
`step`, freed by `release`."""


def power_of_two_bucket(rows: int, max_batch: int) -> int:
    """The smallest of 1, 2, 4, 8, ... (and `max_batch` itself) that holds `rows`."""
    bucket = 1
    while bucket < rows:
        bucket *= 2
    return min(bucket, max_batch)


@attrs.frozen
class StepResult:
    """What one step produced for one row."""

    audio: np.ndarray  # mono float32 at `sample_rate`; may be empty
    finished: bool  # the row stopped (stop head, max_len); release it


class BatchModel(Protocol[RowT]):
    @property
    def sample_rate(self) -> int: ...

    @property
    def max_batch(self) -> int:
        """Rows one step can carry (KV slots allocated up front)."""
        ...

    def bucket_for(self, rows: int) -> int:
        """The padded batch size a step of `rows` rows runs at (metrics label steps by it)."""
        ...

    def max_steps(self, spec: SynthesisSpec) -> int:
        """Upper bound on steps (= chunks) for this spec: progress's denominator."""
        ...

    def prefill(self, specs: Sequence[SynthesisSpec]) -> list[RowT]:
        """Admit rows (text + prompt through the LMs); no audio yet. One handle per spec."""
        ...

    def step(self, rows: Sequence[RowT]) -> list[StepResult]:
        """Advance exactly these rows by one chunk; rows not passed do not move."""
        ...

    def release(self, row: RowT) -> None:
        """Free a row's slot (finished, cancelled or failed). Idempotent."""
        ...

    def warm_up(self) -> None: ...

    def close(self) -> None: ...
