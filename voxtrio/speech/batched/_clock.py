"""A paced model's step clock: when a step is computed, and when its chunks leave.

A paced model (the synthetic engine) has a step whose time is a clock's tick, not
work. Computing a step at its tick and posting the chunks once encoded made them
leave at the tick plus the step's own time, which varies from step to step (23-38 ms
at 1,000 streams on a quiet 2-core box; over 80 ms while a storm of new connections
keeps the event loop busy, since every numpy call of the encoding gives the GIL away
and waits up to a switch interval to get it back), and every stream's gap varied with
it. So once the step loop releases the steps (`release`), a step is computed half a
period ahead of its tick and its chunks are held until the tick itself. The lead
costs no first-audio time: the loop takes new requests only between steps.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import attrs

# How far ahead of its tick a released step is computed, as a share of the period.
LEAD_SHARE = 0.5


@attrs.define
class StepClock:
    """Ticks `period` apart; used from the model's thread only."""

    period: float
    # The tick of the step being computed (time.perf_counter()).
    tick: float = 0.0
    # How long before its tick a step starts: 0 until the step loop releases steps.
    lead: float = 0.0
    # How the model's thread sleeps (its step loop marks the sleep for `GilTurns`).
    sleep: Callable[[float], None] | None = None

    def _sleep(self, seconds: float) -> None:
        (self.sleep or time.sleep)(seconds)

    def wait_for_step(self) -> None:
        """At a step's start: sleep until `lead` before its tick.

        Keeps the tick grid, but never catches up on ticks missed while idle.
        """
        if self.period <= 0:
            return
        now = time.perf_counter()
        self.tick = max(self.tick + self.period, now)
        start = self.tick - self.lead
        if start > now:
            self._sleep(start - now)

    def release(self) -> None:
        """Once the step's chunks are ready: sleep until its tick."""
        if self.period <= 0:
            return
        self.lead = self.period * LEAD_SHARE
        delay = self.tick - time.perf_counter()
        if delay > 0:
            self._sleep(delay)
