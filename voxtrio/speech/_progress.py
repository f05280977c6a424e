"""`generating` progress for one generation, at most once per interval."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

import attrs
import trio

from voxtrio.speech._jobs import Job

ReportProgress = Callable[[int, int], Awaitable[None]]
"""Called with (steps done, steps expected)."""


@attrs.define
class ProgressReporter:
    job: Job
    report: ReportProgress
    interval: float
    last_at: float = attrs.field(factory=trio.current_time)

    async def report_if_due(self) -> None:
        now = trio.current_time()
        if now - self.last_at >= self.interval:
            self.last_at = now
            await self._report()

    async def run_timer(self) -> None:
        while True:
            await trio.sleep(self.interval)
            try:
                await self._report()
            except Exception:
                # The audio loop meets the same failure (a broken writer) and ends the request.
                return

    async def _report(self) -> None:
        if self.job.expected_steps and self.job.steps:
            await self.report(self.job.steps, self.job.expected_steps)
