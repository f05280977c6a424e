"""`voxtrio say TEXT -o out.wav`: speak a text through a running server into a WAV file.

Exit status: 0 done, 1 the server could not be reached or refused or failed the
request, 2 invalid arguments, 130 interrupted (Ctrl-C cancels the request first).
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Any, Final, TextIO

import attrs
import trio

from voxtrio.client._connect import connect, open_nursery_unwrapped
from voxtrio.client._streams import SynthesisStream
from voxtrio.client._wav import write_wav
from voxtrio.protocol._client_errors import ConnectError, SynthesisError, VoxtrioClientError
from voxtrio.protocol._client_outgoing import (
    DEFAULT_CONNECT_TIMEOUT,
    DEFAULT_RESPONSE_TIMEOUT,
    DEFAULT_URL,
)
from voxtrio.protocol._converter import structure_message
from voxtrio.protocol._errors import ProtocolError
from voxtrio.protocol._messages import Mode, TtsRequest

URL_ENV: Final = "VOXTRIO_URL"
API_KEY_ENV: Final = "VOXTRIO_API_KEY"
EXIT_OK: Final = 0
EXIT_FAILED: Final = 1
EXIT_USAGE: Final = 2
EXIT_INTERRUPTED: Final = 130
# Requests shorter than this print only the summary line.
DISPLAY_DELAY: Final = 1.0
DISPLAY_INTERVAL: Final = 0.1
# Without a terminal (a log file, CI) print at most this many progress lines.
PLAIN_LINES: Final = 5

# Request parameter -> the flag that sets it, for error messages.
_FLAGS: Final = {
    "params.text": "TEXT",
    "params.seed": "--seed",
    "params.cfg_value": "--cfg-value",
    "params.inference_timesteps": "--timesteps",
    "params.max_len": "--max-len",
}


class _UsageError(Exception):
    pass


def _positive_seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be a positive number of seconds, got {text}")
    return value


def add_say_arguments(parser: argparse.ArgumentParser) -> None:
    """The flags of `voxtrio say`."""
    parser.description = (
        "Speak TEXT through a running voxtrio server and write a 16-bit mono WAV file. "
        "Ctrl-C cancels the request."
    )
    parser.add_argument("text", metavar="TEXT", help="the text to speak; - reads standard input")
    parser.add_argument(
        "-o", "--output", required=True, metavar="FILE.wav", help="the WAV file to write"
    )
    parser.add_argument(
        "--url", help=f"server URL (default: ${URL_ENV}, else {DEFAULT_URL})", default=None
    )
    parser.add_argument(
        "--api-key",
        metavar="KEY",
        help=f"API key for a server that requires one (default: ${API_KEY_ENV}; "
        "prefer the variable: a flag shows in the process list)",
    )
    parser.add_argument(
        "--mode",
        choices=("streaming", "non_streaming"),
        default="streaming",
        help="receive audio as it is generated, or all at once (default: streaming)",
    )
    parser.add_argument("--seed", type=int, help="random seed, for repeatable speech")
    parser.add_argument("--cfg-value", type=float, help="guidance scale, 0.1-10 (server: 2.0)")
    parser.add_argument(
        "--timesteps", type=int, help="diffusion steps per chunk, 1-50 (server: 10)"
    )
    parser.add_argument("--max-len", type=int, help="cap on generation steps, 1-4096")
    parser.add_argument(
        "--connect-timeout",
        type=_positive_seconds,
        default=DEFAULT_CONNECT_TIMEOUT,
        metavar="SECONDS",
        help=f"give up connecting after this long (default: {DEFAULT_CONNECT_TIMEOUT:g})",
    )
    parser.add_argument(
        "--response-timeout",
        type=_positive_seconds,
        default=DEFAULT_RESPONSE_TIMEOUT,
        metavar="SECONDS",
        help=(
            "give up when the server sends nothing for this long "
            f"(default: {DEFAULT_RESPONSE_TIMEOUT:g})"
        ),
    )
    parser.add_argument(
        "-q", "--quiet", action="store_true", help="no progress display, no summary line"
    )


@attrs.frozen
class SayJob:
    """What `voxtrio say` was asked to do, checked."""

    text: str
    output: Path
    url: str
    api_key: str | None
    mode: Mode
    params: dict[str, Any]
    connect_timeout: float
    response_timeout: float
    quiet: bool


def job_from_args(args: argparse.Namespace, stdin: TextIO | None = None) -> SayJob:
    """Check the arguments (the server's own rules for the parameters) or raise _UsageError."""
    text: str = args.text
    if text == "-":
        text = (stdin or sys.stdin).read().strip()
    if not text.strip():
        raise _UsageError("no text to speak")
    params = {
        "seed": args.seed,
        "cfg_value": args.cfg_value,
        "inference_timesteps": args.timesteps,
        "max_len": args.max_len,
    }
    params = {name: value for name, value in params.items() if value is not None}
    payload = {"request_id": "say", "params": {"text": text, "mode": args.mode, **params}}
    try:
        structure_message(TtsRequest, payload, request_id=None)
    except ProtocolError as exc:
        problems = "; ".join(f"{_FLAGS.get(k, k)}: {v}" for k, v in exc.details.items())
        raise _UsageError(problems or exc.message) from None
    output = Path(args.output)
    if output.is_dir():
        raise _UsageError(f"-o {output}: is a directory")
    if not output.parent.is_dir():
        raise _UsageError(f"-o {output}: directory {output.parent} does not exist")
    url = args.url or os.environ.get(URL_ENV) or DEFAULT_URL
    if not url.startswith(("ws://", "wss://")):
        raise _UsageError(f"--url {url}: must start with ws:// or wss://")
    return SayJob(
        text=text,
        output=output,
        url=url,
        api_key=args.api_key or os.environ.get(API_KEY_ENV) or None,
        mode=args.mode,
        params=params,
        connect_timeout=args.connect_timeout,
        response_timeout=args.response_timeout,
        quiet=args.quiet,
    )


def run_say(args: argparse.Namespace) -> int:
    """`voxtrio say`: returns the exit status."""
    err = sys.stderr
    try:
        job = job_from_args(args)
    except _UsageError as exc:
        print(f"voxtrio say: {exc}", file=err)
        return EXIT_USAGE
    try:
        # Ctrl-C lands in the main task at a checkpoint, never inside the client's tasks
        # or a shielded send, so the request is always cancelled and answered.
        status: int = trio.run(say, job, err, restrict_keyboard_interrupt_to_checkpoints=True)
    except KeyboardInterrupt:  # outside the request (connecting, writing the file)
        print("voxtrio say: interrupted", file=err)
        return EXIT_INTERRUPTED
    return status


async def say(job: SayJob, err: TextIO) -> int:
    """Run one request and write its WAV; report on `err`."""
    display = ProgressDisplay(err, enabled=not job.quiet)
    stream: SynthesisStream | None = None
    try:
        async with (
            connect(
                job.url,
                api_key=job.api_key,
                connect_timeout=job.connect_timeout,
                response_timeout=job.response_timeout,
            ) as client,
            client.synthesize(job.text, mode=job.mode, **job.params) as stream,
        ):
            pcm = await _collect(stream, display)
    except KeyboardInterrupt:
        # synthesize() has cancelled the request and waited for the server's answer.
        display.clear()
        outcome = "the request was cancelled" if stream and stream.cancelled else "stopped"
        print(f"voxtrio say: interrupted; {outcome}", file=err)
        return EXIT_INTERRUPTED
    except ConnectError as exc:
        display.clear()
        print(f"voxtrio say: {exc}", file=err)
        return EXIT_FAILED
    except SynthesisError as exc:
        display.clear()
        print(f"voxtrio say: the server answered {exc.code}: {exc.message}", file=err)
        for field, problem in exc.details.items():
            print(f"  {field}: {problem}", file=err)
        return EXIT_FAILED
    except VoxtrioClientError as exc:
        display.clear()
        print(f"voxtrio say: {type(exc).__name__}: {exc}", file=err)
        return EXIT_FAILED
    assert stream is not None
    result = stream.result
    if result is None:
        print("voxtrio say: the request was cancelled by someone else", file=err)
        return EXIT_FAILED
    try:
        write_wav(job.output, pcm, result.sample_rate)
    except OSError as exc:
        print(f"voxtrio say: cannot write {job.output}: {exc}", file=err)
        return EXIT_FAILED
    if not job.quiet:
        timings = result.timings
        first = "n/a" if timings.first_audio_ms is None else f"{timings.first_audio_ms:.0f} ms"
        rtf = "n/a" if timings.rtf is None else f"{timings.rtf:.3f}"
        print(
            f"voxtrio say: wrote {job.output}: {result.duration:.2f} s at "
            f"{result.sample_rate} Hz, first audio {first}, rtf {rtf}, seed {result.seed}",
            file=err,
        )
    return EXIT_OK


async def _collect(stream: SynthesisStream, display: ProgressDisplay) -> bytes:
    pcm = bytearray()
    try:
        async with open_nursery_unwrapped() as nursery:
            nursery.start_soon(display.run, stream)
            async for chunk in stream:
                pcm += chunk.pcm
    finally:
        display.clear()
    return bytes(pcm)


class ProgressDisplay:
    """Progress on stderr: one line redrawn in place on a terminal, a few lines otherwise."""

    def __init__(
        self,
        out: TextIO,
        *,
        enabled: bool = True,
        tty: bool | None = None,
        delay: float = DISPLAY_DELAY,
        interval: float = DISPLAY_INTERVAL,
    ) -> None:
        self.out = out
        self.enabled = enabled
        self.tty = out.isatty() if tty is None else tty
        self.delay = delay
        self.interval = interval
        self._drawn = 0  # width of the line on screen (tty)
        self._milestones: set[str] = set()

    async def run(self, stream: SynthesisStream) -> None:
        """Redraw until cancelled, starting only after `delay` (short requests stay quiet)."""
        if not self.enabled:
            return
        started = trio.current_time()
        await trio.sleep(self.delay)
        while True:
            self.update(stream, trio.current_time() - started)
            await trio.sleep(self.interval)

    def update(self, stream: SynthesisStream, elapsed: float) -> None:
        progress = stream.progress
        state: str = progress.state if progress else "sending"
        audio = stream.audio_seconds
        received = "" if audio is None else f" {audio:6.1f} s audio"
        if progress and state in ("generating", "encoding"):
            share = f"{progress.progress * 100:3.0f}%"
        else:
            # No share of the work is known ("queued", "processing"): none is shown, and
            # a stream whose audio is arriving says so rather than "0% processing".
            share = "    "
            if audio:
                state = "streaming"
        line = f"{share} {state:<10}{received} {elapsed:6.1f} s elapsed"
        if self.tty:
            padding = " " * max(0, self._drawn - len(line))
            self.out.write(f"\r{line}{padding}")
            self._drawn = len(line)
        else:
            # A log file gets a line per quarter of the work, not a redraw every 100 ms.
            fraction = progress.progress if progress else 0.0
            milestone = f"{state}:{int(fraction * 4)}"
            if milestone in self._milestones or len(self._milestones) >= PLAIN_LINES:
                return
            self._milestones.add(milestone)
            self.out.write(f"voxtrio say: {line.strip()}\n")
        self.out.flush()

    def clear(self) -> None:
        """Erase the redrawn line, so what follows starts on a clean one."""
        if self.tty and self._drawn:
            self.out.write("\r" + " " * self._drawn + "\r")
            self.out.flush()
            self._drawn = 0
