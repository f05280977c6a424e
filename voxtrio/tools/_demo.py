"""The offline main job: serve a checkpoint in a subprocess and speak one sentence to a WAV.

    python -m voxtrio.tools._demo --model out/tiny-voxcpm2 --text "Hello" -o out/hello.wav

It runs the same commands a user would (`voxtrio serve`, `voxtrio say`), then
checks the WAV and stops the server with SIGTERM.
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import tempfile
import time
import wave
from pathlib import Path


def _wait_for_ready(ready: Path, server: subprocess.Popen[bytes], timeout: float) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if ready.exists() and ready.read_text().strip():
            return ready.read_text().split()[0]
        if server.poll() is not None:
            raise SystemExit(f"voxtrio serve exited with {server.returncode} before it was ready")
        time.sleep(0.1)
    raise SystemExit(f"voxtrio serve was not ready within {timeout:g} s")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--model", required=True)
    parser.add_argument("--text", required=True)
    parser.add_argument("-o", "--output", required=True)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--ready-timeout", type=float, default=300.0)
    args = parser.parse_args(argv)

    voxtrio = [sys.executable, "-m", "voxtrio"]
    with tempfile.TemporaryDirectory() as tmp:
        ready = Path(tmp) / "ready"
        server = subprocess.Popen(
            [
                *voxtrio,
                "serve",
                "--model",
                args.model,
                "--device",
                args.device,
                "--port",
                "0",
                "--metrics-port",
                "0",
                "--ready-file",
                str(ready),
                "--log-format",
                "console",
            ],
            env={**os.environ, "TQDM_DISABLE": "1"},
        )
        try:
            url = _wait_for_ready(ready, server, args.ready_timeout)
            print(f"demo: server ready at {url}", file=sys.stderr)
            said = subprocess.run(
                [*voxtrio, "say", args.text, "-o", args.output, "--url", url, "--seed", "1"],
                check=False,
            )
            if said.returncode != 0:
                return said.returncode
        finally:
            server.send_signal(signal.SIGTERM)
            try:
                server.wait(timeout=30)
            except subprocess.TimeoutExpired:
                server.kill()
    with wave.open(args.output, "rb") as wav:
        seconds = wav.getnframes() / wav.getframerate()
        print(
            f"demo: wrote {args.output}: {seconds:.2f} s of {wav.getframerate()} Hz "
            f"{8 * wav.getsampwidth()}-bit mono",
            file=sys.stderr,
        )
    print(next_steps(args.model), file=sys.stderr)
    return 0


def next_steps(model: str) -> str:
    """What to run after the demo: its checkpoint, served by the environment it ran in."""
    command = Path(sys.executable).with_name("voxtrio")
    if command.is_relative_to(Path.cwd()):
        command = command.relative_to(Path.cwd())  # e.g. .nox/demo/bin/voxtrio
    return (
        f"demo: the checkpoint is {Path(model).resolve()} (random weights: it speaks noise)\n"
        f"demo: serve it:  {command} serve --model {model} --device cpu\n"
        "demo: then open http://127.0.0.1:8765/ (the page), speak with "
        f"`{command} say 'Hello' -o hello.wav`, and check http://127.0.0.1:9090/health"
    )


if __name__ == "__main__":
    sys.exit(main())
