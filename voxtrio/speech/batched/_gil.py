"""Turns at the GIL for model threads while the event loop is busy.

CPython gives a thread waiting for the GIL no turn while the holder keeps releasing
it voluntarily: every release (a syscall: each socket write, each poll) wakes the
waiter and restarts its switch-interval timer, and the holder, back from its short
syscall first, takes the GIL again. A busy event loop (a burst of writes, hundreds of
requests finishing at once) makes a syscall every 20-100 µs, so a model thread that
released the GIL for a numpy call could wait many milliseconds to get it back: a
step of 455 rows took 132 ms instead of 15 and left late (docs/BENCHMARKS.md, issue
20, fifth pass).

So a model thread says when it computes (`GilTurns.computing`, not around its clock's
sleeps), and while any does, the loop sleeps `pause_s` between two task steps once
every `slice_s` (`GilTurnsInstrument`, added by the pool): long enough for the
waiting thread to wake and take the GIL, which it keeps for its switch interval or
until it next waits. `python -m bench gil_turns`: a thousand rows encoded row by row
beside a busy Trio loop, 739 -> 362 ms a step; encoded together, 34.5 -> 26.4 ms.
It costs the loop `pause_s` per `slice_s` (2.5 %) only while a model thread computes.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import trio


class GilTurns:
    """Which model threads compute now, and when the event loop last gave way."""

    def __init__(
        self,
        *,
        slice_s: float = 0.002,
        pause_s: float = 0.00005,
        clock: Callable[[], float] = time.perf_counter,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.slice_s = slice_s
        self.pause_s = pause_s
        self._clock = clock
        self._sleep = sleep  # blocking: the loop must really give way
        self.turns_given = 0
        self._computing: set[int] = set()  # add/discard/truth are atomic under the GIL
        self._last_turn = 0.0

    @contextmanager
    def computing(self, thread: int) -> Iterator[None]:
        """Model thread side: around work that needs the GIL (not around its sleeps)."""
        self._computing.add(thread)
        try:
            yield
        finally:
            self._computing.discard(thread)

    @contextmanager
    def waiting(self, thread: int) -> Iterator[None]:
        """Model thread side, inside `computing`: around a sleep that needs no turn."""
        self._computing.discard(thread)
        try:
            yield
        finally:
            self._computing.add(thread)

    def offer(self) -> None:
        """Event loop side, between task steps: give way if a turn is due."""
        if self._computing and self._clock() - self._last_turn >= self.slice_s:
            self._sleep(self.pause_s)
            self._last_turn = self._clock()
            self.turns_given += 1


class GilTurnsInstrument(trio.abc.Instrument):
    """Offers a GIL turn before every task step of the Trio run it is added to."""

    def __init__(self, turns: GilTurns) -> None:
        self.turns = turns

    def before_task_step(self, task: trio.lowlevel.Task) -> None:
        self.turns.offer()
