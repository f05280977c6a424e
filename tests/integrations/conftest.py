"""The integration suite: real Pipecat / LiveKit against `voxtrio serve` on the tiny checkpoint.

Needs the extras (`nox -s integrations`). Without them the tests skip, except under
CI (`CI=true`, set by .ci/run), where a missing framework fails instead.
"""

from __future__ import annotations

import importlib
import os
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

import pytest

from tests.served import ServedProcess, tiny_flags


def require(module: str, extra: str) -> ModuleType:
    """Import a framework the suite drives; skip without it (fail under CI)."""
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        message = f"{module} is not installed (pip install 'voxtrio[{extra}]'): {exc}"
        if os.environ.get("CI") == "true":
            pytest.fail(message, pytrace=False)
        pytest.skip(message, allow_module_level=True)


@pytest.fixture(scope="session")
def tiny_served(
    tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ServedProcess]:
    """One tiny-checkpoint server for the suite (CPU, 48 kHz model; clients ask other rates)."""
    workdir = tmp_path_factory.mktemp("tiny-served")
    served = ServedProcess(workdir, *tiny_flags(tiny_model_dir, workdir / "voices"))
    served.start()
    try:
        yield served
    finally:
        served.stop()


@pytest.fixture(scope="session")
def restartable_server(
    tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ServedProcess]:
    """A second server, for the tests that kill it and start it again on the same port.

    Each such test leaves it running again, so they share one (a start costs seconds).
    """
    workdir = tmp_path_factory.mktemp("restartable")
    served = ServedProcess(workdir, *tiny_flags(tiny_model_dir, workdir / "voices"))
    served.start()
    try:
        yield served
    finally:
        served.stop()


@pytest.fixture
def restartable(restartable_server: ServedProcess) -> ServedProcess:
    """The second server, running (started again if a failed test left it down)."""
    process = restartable_server.process
    if process is None or process.poll() is not None:
        restartable_server.start()
    return restartable_server
