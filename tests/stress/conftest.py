"""The stress suites' figures go to $VOXTRIO_STRESS_FIGURES (JSON) when it is set."""

from __future__ import annotations

import datetime
import os
from pathlib import Path

import pytest

from .harness import FIGURES, record_figures, write_figures


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    target = os.environ.get("VOXTRIO_STRESS_FIGURES")
    if target and FIGURES:
        args = " ".join(session.config.invocation_params.args)
        record_figures(
            "run",
            command=f"pytest {args}",
            exit_status=int(exitstatus),
            finished=datetime.datetime.now().isoformat(timespec="seconds"),
        )
        write_figures(Path(target))
