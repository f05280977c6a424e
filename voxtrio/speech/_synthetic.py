"""A model-free engine that paces chunks like a real one.

It measures the server alone (benchmarks, tests of the server in isolation): each
step sleeps `rtf` x the chunk's duration, then yields a deterministic tone whose
pitch comes from the seed, so audio from different requests is distinguishable
and the same seed always gives the same samples.

Per chunk it does no numpy work: a tone's pitch is rounded to a grid on which the
tone repeats every `_TONE_CHUNKS` chunks, so each chunk is a read-only view into one
small cached cycle. The grid (3.125 Hz for 160 ms chunks) bounds the tables to a few
hundred whatever the number of streams (17 MB at 48 kHz, all pitches), where
one-second tables per whole-Hz pitch behind a 128-entry cache recomputed a second
of sine per chunk beyond 128 streams.
"""

from __future__ import annotations

import functools
import math
import time
from collections.abc import Generator

import attrs
import numpy as np

from voxtrio.speech._engine import StepCallback, SynthesisSpec

# Pitches span 110-989 Hz; the grid is about this fine (a tone repeats every few chunks).
_PITCH_STEP_HZ = 3.125
_LOWEST_HZ, _PITCH_SPAN_HZ = 110, 880
# More than every grid pitch of one chunk size: the cache never evicts in practice.
_MAX_TONES = 1024


def tone_period_chunks(sample_rate: int, chunk_samples: int) -> int:
    """Chunks after which every tone repeats: the pitch grid is chunk rate / this."""
    return max(1, round(sample_rate / chunk_samples / _PITCH_STEP_HZ))


def seed_frequency(seed: int) -> float:
    """The requested pitch of a seed's tone (whole Hz, before rounding to the grid)."""
    return float(_LOWEST_HZ + seed % _PITCH_SPAN_HZ)


@functools.lru_cache(maxsize=_MAX_TONES)
def _tone_cycle(cycles: int, period_samples: int) -> np.ndarray:
    """0.3 x sin over `cycles` whole cycles in `period_samples`, float32, read-only."""
    n = np.arange(period_samples, dtype=np.float64)
    table = (0.3 * np.sin(2 * np.pi * cycles * n / period_samples)).astype(np.float32)
    table.flags.writeable = False
    return table


def tone_tables_computed() -> int:
    """How many tone tables have been computed (cache misses), for tests."""
    return _tone_cycle.cache_info().misses


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
        frequency = seed_frequency(spec.seed)
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
        """Chunk `step` (1-based) of a 0.3-amplitude sine near `frequency`.

        The pitch is rounded to the grid on which the tone repeats every
        `tone_period_chunks` chunks, so the chunk is a read-only view into one cached
        cycle: no numpy work per chunk. A model-free engine should cost next to
        nothing, and every numpy call on a model thread hands the GIL to the server's
        other threads.
        """
        period_chunks = tone_period_chunks(self.sample_rate, self.chunk_samples)
        period_samples = period_chunks * self.chunk_samples
        cycles = max(1, round(frequency * period_samples / self.sample_rate))
        table = _tone_cycle(cycles, period_samples)
        start = (step - 1) % period_chunks * self.chunk_samples
        return table[start : start + self.chunk_samples]

    def warm_up(self) -> None:
        self.warmed_up = True

    def close(self) -> None:
        self.closed = True
