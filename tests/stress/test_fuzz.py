"""Protocol fuzzing at length: thousands of generated messages on both endpoints."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

from . import runs

pytestmark = pytest.mark.slow

# Fresh inputs every run (set VOXTRIO_FUZZ_EXAMPLES to go longer or shorter).
EXAMPLES = int(os.environ.get("VOXTRIO_FUZZ_EXAMPLES", "1500"))


@pytest.fixture(scope="module")
def fuzz_server() -> Iterator[runs.FuzzServer]:
    """One server for every example of the module: it must survive them all in a row."""
    with runs.fuzz_server() as fuzz:
        yield fuzz


def test_fuzzed_native_messages_each_get_their_error(fuzz_server: runs.FuzzServer) -> None:
    """Every generated native message gets its specific error or close; bystanders complete."""
    figures = runs.fuzz_native(
        fuzz_server, runs.fuzz_settings(EXAMPLES, derandomize=False), "fuzz_native"
    )
    assert set(figures["bystanders"]) == {"ok"}
    assert figures["leaks"] == {}


def test_fuzzed_dashscope_frames_each_get_task_failed(fuzz_server: runs.FuzzServer) -> None:
    """Every generated DashScope mistake gets task-failed; every connection takes a task after."""
    figures = runs.fuzz_dashscope(
        fuzz_server, runs.fuzz_settings(EXAMPLES // 2, derandomize=False), "fuzz_dashscope"
    )
    assert figures["leaks"] == {}


@pytest.mark.parametrize("endpoint", ["native", "dashscope"])
@pytest.mark.parametrize("utf8", [True, False], ids=["invalid_utf8", "oversized"])
def test_broken_frames_again_and_again(
    fuzz_server: runs.FuzzServer, endpoint: str, utf8: bool
) -> None:
    """Fifty broken frames in a row: each closes its own connection, never a bystander's."""
    assert runs.broken_frames(fuzz_server, endpoint=endpoint, utf8=utf8, times=50) == []
    assert fuzz_server.audit() == {}
