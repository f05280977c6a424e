"""A model-free engine that paces chunks like a real one.

It measures the server alone (benchmarks, tests of the server in isolation): each
step sleeps `rtf` x the chunk's duration, then yields a deterministic tone whose
pitch comes from the seed, so audio from different requests is distinguishable
and the same seed always gives the same samples.

Per chunk it does no numpy work: a tone's pitch is rounded to a grid on which the
tone repeats every `tone_period_chunks` chunks, so each chunk is a read-only view into
one small shared cycle. The grid (3.125 Hz for 160 ms chunks) bounds the tables to a
few hundred whatever the number of streams (17 MB at 48 kHz, all pitches), where
one-second tables per whole-Hz pitch behind a 128-entry cache recomputed a second
of sine per chunk beyond 128 streams. `warm_up` computes every table and the engine
keeps them (17 MB at 48 kHz), so a request never computes one: on a model thread each
numpy call gives the GIL away and, while the event loop is busy (a storm of new
connections), waits up to a switch interval to get it back; prefills of 35 new rows
took 90 ms that way. Before warm-up (tests, a bare engine) a table lives while a
stream holds it and is freed with the last one.
"""

from __future__ import annotations

import math
import threading
import time
import weakref
from collections.abc import Generator

import attrs
import numpy as np

from voxtrio.speech._engine import StepCallback, SynthesisSpec

# Pitches span 110-989 Hz; the grid is about this fine (a tone repeats every few chunks).
_PITCH_STEP_HZ = 3.125
_LOWEST_HZ, _PITCH_SPAN_HZ = 110, 880


def tone_period_chunks(sample_rate: int, chunk_samples: int) -> int:
    """Chunks after which every tone repeats: the pitch grid is chunk rate / this."""
    return max(1, round(sample_rate / chunk_samples / _PITCH_STEP_HZ))


def seed_frequency(seed: int) -> float:
    """The requested pitch of a seed's tone (whole Hz, before rounding to the grid)."""
    return float(_LOWEST_HZ + seed % _PITCH_SPAN_HZ)


class _ToneTables:
    """Tone cycles shared by every stream at one pitch, kept only while one is held."""

    def __init__(self) -> None:
        self._live: weakref.WeakValueDictionary[tuple[int, int], np.ndarray] = (
            weakref.WeakValueDictionary()
        )
        self._lock = threading.Lock()  # instances step on threads of their own
        self.computed = 0

    def get(self, cycles: int, period_samples: int) -> np.ndarray:
        """0.3 x sin over `cycles` whole cycles in `period_samples`, float32, read-only."""
        key = (cycles, period_samples)
        with self._lock:
            table = self._live.get(key)
            if table is None:
                n = np.arange(period_samples, dtype=np.float64)
                table = (0.3 * np.sin(2 * np.pi * cycles * n / period_samples)).astype(np.float32)
                table.flags.writeable = False
                self._live[key] = table
                self.computed += 1
            return table

    def live(self, period_samples: int | None = None) -> int:
        return sum(1 for _, period in list(self._live) if period_samples in (None, period))


_tables = _ToneTables()


def tone_tables_computed() -> int:
    """How many tone tables have been computed since the process began, for tests."""
    return _tables.computed


def tone_tables_live(engine: SyntheticEngine | None = None) -> int:
    """How many tone tables something still holds (those of `engine`'s cycle), for tests."""
    return _tables.live(None if engine is None else engine.cycle_samples)


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
    # Every pitch's table, computed by `warm_up` and held while the engine lives.
    _tables_held: list[np.ndarray] = attrs.field(factory=list, init=False, repr=False)
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
        table = self.tone_table(seed_frequency(spec.seed))  # held while this stream runs
        chunk_seconds = self.chunk_samples / self.sample_rate
        collected: list[np.ndarray] = []
        for step in range(1, steps + 1):
            if self.rtf > 0:
                time.sleep(chunk_seconds * self.rtf)
            if step == self.fail_at_step:
                raise RuntimeError(f"synthetic failure at step {step}")
            on_step(step)
            chunk = self.chunk_of(table, step)
            if step == self.nan_at_step:
                chunk = chunk.copy()
                chunk[0] = np.nan
            if spec.streaming:
                yield chunk
            else:
                collected.append(chunk)
        if not spec.streaming:
            yield np.concatenate(collected)

    def tone_table(self, frequency: float) -> np.ndarray:
        """The cycle of the tone nearest `frequency` on the grid; a stream holds it.

        The pitch is rounded to the grid on which the tone repeats every
        `tone_period_chunks` chunks, so each chunk is a read-only view into the cycle:
        no numpy work per chunk. A model-free engine should cost next to nothing, and
        every numpy call on a model thread hands the GIL to the server's other threads.
        """
        period_samples = self.cycle_samples
        cycles = max(1, round(frequency * period_samples / self.sample_rate))
        return _tables.get(cycles, period_samples)

    @property
    def cycle_samples(self) -> int:
        """Samples after which every tone on the grid repeats (its tables' length)."""
        return tone_period_chunks(self.sample_rate, self.chunk_samples) * self.chunk_samples

    def chunk_of(self, table: np.ndarray, step: int) -> np.ndarray:
        """Chunk `step` (1-based) of a tone: a read-only view into its table."""
        start = (step - 1) * self.chunk_samples % len(table)
        return table[start : start + self.chunk_samples]

    def tone(self, frequency: float, step: int) -> np.ndarray:
        """Chunk `step` (1-based) of a 0.3-amplitude sine near `frequency`."""
        return self.chunk_of(self.tone_table(frequency), step)

    def warm_up(self) -> None:
        if not self._tables_held:
            pitches = range(_LOWEST_HZ, _LOWEST_HZ + _PITCH_SPAN_HZ)
            self._tables_held = [self.tone_table(hz) for hz in pitches]  # shared, not copied
        self.warmed_up = True

    def close(self) -> None:
        self.closed = True
