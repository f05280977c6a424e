"""`generating` progress for one generation, at most once per interval."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

import attrs
import trio

from voxtrio.speech._jobs import Job

ReportProgress = Callable[[int, int], Awaitable[None]]
"""Called with (steps done, steps expected)."""

ReportProgressNow = Callable[[int, int], bool]
"""The same without waiting; False: nothing sent (still due)."""


@attrs.define
class ProgressReporter:
    job: Job
    report: ReportProgress
    interval: float
    last_at: float = attrs.field(factory=trio.current_time)

    def due(self) -> bool:
        """Whether `report_if_due` would report now."""
        return trio.current_time() - self.last_at >= self.interval

    def report_nowait_if_due(self, report: ReportProgressNow) -> None:
        """`report_if_due` through `report`, which sends without waiting or not at all
        (then the report stays due, for the next chunk)."""
        now = trio.current_time()
        if now - self.last_at < self.interval:
            return
        steps, expected = self.job.steps, self.job.expected_steps
        if not (expected and steps) or report(steps, expected):
            self.last_at = now  # nothing to report yet counts as reported, as in `_report`

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
