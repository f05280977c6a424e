"""A model thread's step beside a busy event loop, with and without GIL turns.

    python -m bench gil_turns [--rows 455 1000] [--steps 5]

The event loop is a Trio run whose one task writes 100-byte messages to a socket
pair, each after 200 µs of Python work (a loop busy with a burst of writes or with
hundreds of requests finishing). The model thread, inside `GilTurns.computing`,
encodes one step's PCM: `rows` chunks of 160 ms at 48 kHz, either together
(`BatchTransform`, what the step loop does) or row by row (`OutputStream.transform`,
what it did before). Per row of the table: the median wall time of a step with the
loop idle, busy, and busy with `GilTurnsInstrument` in the run (voxtrio.speech.
batched._gil). A configuration stops repeating after 10 s.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import numpy as np
import trio

from voxtrio.speech._output import BatchTransform, OutputSpec, OutputStream
from voxtrio.speech.batched._gil import GilTurns, GilTurnsInstrument

RATE = 48000
CHUNK = 7680  # 160 ms


async def _busy(stop: trio.Event) -> None:
    left, right = trio.socket.socketpair()
    with left, right:

        async def drain() -> None:
            while True:
                await right.recv(1 << 16)

        async with trio.open_nursery() as nursery:
            nursery.start_soon(drain)
            while not stop.is_set():
                began = time.perf_counter()
                while time.perf_counter() - began < 0.0002:
                    pass
                await left.send(b"x" * 100)
            nursery.cancel_scope.cancel()


def _steps(step: Callable[[], object], turns: GilTurns, count: int) -> list[float]:
    took: list[float] = []
    started = time.perf_counter()
    while len(took) < count and time.perf_counter() - started < 10.0:
        with turns.computing(0):
            began = time.perf_counter()
            step()
            took.append(time.perf_counter() - began)
        time.sleep(0.02)
    return took


async def _measure(step: Callable[[], object], loop: str, count: int) -> list[float]:
    turns = GilTurns()
    instrument = GilTurnsInstrument(turns)
    if loop == "busy, turns":
        trio.lowlevel.add_instrument(instrument)
    stop = trio.Event()
    try:
        async with trio.open_nursery() as nursery:
            if loop != "idle":
                nursery.start_soon(_busy, stop)
            took = await trio.to_thread.run_sync(_steps, step, turns, count)
            stop.set()
    finally:
        if loop == "busy, turns":
            trio.lowlevel.remove_instrument(instrument)
    return took


def _step_makers(rows: int) -> dict[str, Callable[[], object]]:
    rng = np.random.default_rng(0)
    chunks = [rng.uniform(-0.5, 0.5, CHUNK).astype(np.float32) for _ in range(rows)]
    streams = [OutputStream(OutputSpec(), input_rate=RATE) for _ in range(rows)]
    together = BatchTransform()
    return {
        "together": lambda: together(streams, chunks),
        "row by row": lambda: [s.transform(c) for s, c in zip(streams, chunks, strict=True)],
    }


async def _run(rows_list: list[int], count: int) -> None:
    print("  rows  encoding     loop idle     loop busy  busy, turns   (median ms a step)")
    for rows in rows_list:
        for name, step in _step_makers(rows).items():
            cells = []
            for loop in ("idle", "busy", "busy, turns"):
                took = await _measure(step, loop, count)
                cells.append(f"{statistics.median(took) * 1000:>9.1f} ({len(took)})")
            print(f"{rows:>6}  {name:<10} " + "  ".join(cells), flush=True)


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, nargs="+", default=[455, 1000])
    parser.add_argument("--steps", type=int, default=5)
    args = parser.parse_args(argv)
    trio.run(_run, args.rows, args.steps)
