"""A model-free engine that paces chunks like a real one.

It measures the server alone (benchmarks, tests of the server in isolation): each
step sleeps `rtf` x the chunk's duration, then yields a deterministic tone whose
pitch comes from the seed, so audio from different requests is distinguishable
and the same seed always gives the same samples.
"""

from __future__ import annotations

import functools
import math
import time
from collections.abc import Generator

import attrs
import numpy as np

from voxtrio.speech._engine import StepCallback, SynthesisSpec

# Chunks computed at a time (about 1.2 MB of float32 at 48 kHz).
_BLOCK_CHUNKS = 40


@functools.lru_cache(maxsize=128)
def _tone_table(frequency: float, sample_rate: int, chunk_samples: int) -> np.ndarray:
    """One second and one chunk of 0.3 x sin(2 pi f t), float32, read-only (shared)."""
    t = np.arange(sample_rate + chunk_samples) / sample_rate
    table = (0.3 * np.sin(2 * np.pi * frequency * t)).astype(np.float32)
    table.flags.writeable = False
    return table


@attrs.define
class SyntheticEngine:
    sample_rate: int = 48000
    chunk_samples: int = 7680
    rtf: float = 0.0
    chars_per_step: int = 4
    # Fault injection for tests: act up at this step (1-based), None = never.
    fail_at_step: int | None = None
    nan_at_step: int | None = None
    warmed_up: bool = False
    closed: bool = False
    # Generations started and those whose generator has been closed (leak checks).
    generations: int = 0
    open_generations: int = 0

    def max_steps(self, spec: SynthesisSpec) -> int:
        by_text = math.ceil(len(spec.text) / self.chars_per_step)
        return max(1, min(spec.max_len, by_text))

    def generate(
        self, spec: SynthesisSpec, on_step: StepCallback
    ) -> Generator[np.ndarray, None, None]:
        self.generations += 1
        self.open_generations += 1
        try:
            yield from self._generate(spec, on_step)
        finally:
            self.open_generations -= 1

    def _generate(
        self, spec: SynthesisSpec, on_step: StepCallback
    ) -> Generator[np.ndarray, None, None]:
        steps = self.max_steps(spec)
        frequency = 110.0 + (spec.seed % 880)
        chunk_seconds = self.chunk_samples / self.sample_rate
        collected: list[np.ndarray] = []
        for step in range(1, steps + 1):
            if self.rtf > 0:
                time.sleep(chunk_seconds * self.rtf)
            if step == self.fail_at_step:
                raise RuntimeError(f"synthetic failure at step {step}")
            on_step(step)
            chunk = self.tone(frequency, step)
            if step == self.nan_at_step:
                chunk = chunk.copy()
                chunk[0] = np.nan
            if spec.streaming:
                yield chunk
            else:
                collected.append(chunk)
        if not spec.streaming:
            yield np.concatenate(collected)

    def tone(self, frequency: float, step: int) -> np.ndarray:
        """Chunk `step` (1-based) of a 0.3-amplitude sine at `frequency` (whole Hz).

        A whole-Hz tone repeats every second, so each chunk is a read-only view into
        one cached second (plus a chunk, so no view wraps around): no numpy work per
        chunk. A model-free engine should cost next to nothing, and every numpy call
        on a replica thread hands the GIL to the server's other threads.
        """
        table = _tone_table(frequency, self.sample_rate, self.chunk_samples)
        start = (step - 1) * self.chunk_samples % self.sample_rate
        return table[start : start + self.chunk_samples]

    def warm_up(self) -> None:
        self.warmed_up = True

    def close(self) -> None:
        self.closed = True
