"""The agent programs of docs/INTEGRATIONS.md run as written, against a real server."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import wave
from pathlib import Path

import pytest

from tests.integrations.conftest import require
from tests.served import ServedProcess

require("pipecat", "pipecat")
require("livekit.agents", "livekit")

DOC = Path(__file__).resolve().parents[2] / "docs" / "INTEGRATIONS.md"


def example(name: str) -> str:
    """The python block that follows `<!-- example: name -->` in the document."""
    match = re.search(
        rf"<!-- example: {name} -->\n```python\n(.*?)\n```", DOC.read_text(), re.DOTALL
    )
    assert match, f"no example {name!r} in {DOC}"
    return match.group(1)


@pytest.mark.parametrize(
    ("name", "wav", "rate"),
    [("pipecat", "bot.wav", 16000), ("livekit", "agent.wav", 24000)],
)
def test_the_documented_agent_runs_and_speaks(
    tiny_served: ServedProcess,
    tmp_path: Path,
    name: str,
    wav: str,
    rate: int,
) -> None:
    """Copy, paste, run: the program speaks its reply into a WAV file at the framework's rate."""
    script = tmp_path / f"{name}_agent.py"
    script.write_text(example(name))
    subprocess.run(
        # Deprecations in the example's own code fail it: the document must stay current.
        [sys.executable, "-W", "error::DeprecationWarning:__main__", str(script)],
        cwd=tmp_path,
        env={**os.environ, "VOXTRIO_URL": tiny_served.url},
        check=True,
        timeout=120,
        capture_output=True,
    )
    with wave.open(str(tmp_path / wav)) as audio:
        assert audio.getframerate() == rate
        seconds = audio.getnframes() / rate
    # Two sentences, each capped at 12 steps of 0.16 s by the example's max_len.
    assert 2 * 0.16 <= seconds <= 2 * 12 * 0.16 + 0.01
