"""LOG_FORMAT=json: every line the server writes is one JSON object."""

from __future__ import annotations

import json
import signal
import sys
from pathlib import Path

import trio


async def test_every_line_of_a_debug_run_is_json(tiny_model_dir: Path, tmp_path: Path) -> None:
    """Structlog events, stdlib loggers, warnings and voxcpm's load prints all come out as JSON."""
    ready = tmp_path / "ready"
    out, err = tmp_path / "stdout", tmp_path / "stderr"
    with out.open("wb") as stdout, err.open("wb") as stderr:
        process = await trio.lowlevel.open_process(
            [sys.executable, "-m", "voxtrio", "serve", "--model", str(tiny_model_dir),
             "--device", "cpu", "--port", "0", "--metrics-port", "0", "--ready-file",
             str(ready), "--log-level", "DEBUG", "--log-format", "json"],
            stdout=stdout, stderr=stderr,
        )  # fmt: skip
    try:
        with trio.fail_after(120):
            while not ready.exists():
                assert process.poll() is None, err.read_text()
                await trio.sleep(0.05)
        process.send_signal(signal.SIGTERM)
        with trio.fail_after(60):
            await process.wait()
    finally:
        if process.poll() is None:
            process.kill()
            await process.wait()
    lines = [line for line in (out.read_text() + err.read_text()).splitlines() if line]
    events = [json.loads(line) for line in lines]  # raises on the first non-JSON line
    names = {e["event"] for e in events}
    assert {"model_loading", "listening"} <= names
    assert any(e["event"] == "library_output" for e in events)  # voxcpm's own prints
    assert all({"event", "level", "timestamp"} <= e.keys() for e in events)
    assert process.returncode == 0
