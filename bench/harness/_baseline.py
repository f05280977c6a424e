"""The direct-engine baseline: the engine called in-process, no sockets, no server.

`python -m bench.harness._baseline --model DIR --workers W` loads W `VoxCPMEngine`s, each
built, warmed and used by its own thread (as the server's model instances are), then
answers JSON-lines commands on stdin/stdout. A `run` command replays a level the
way the load generator drives the server:

- closed loop at concurrency N: N "users" each submit their next job when the
  previous one ends; W engine threads take jobs from one FIFO queue;
- open loop: a feeder submits job i at offset `arrivals[i]`.

For each job it reports the time from submission to the first chunk out of
`engine.generate` (time to first audio, queueing included, as the client sees it
on the server), to the last chunk, and the samples produced. Fairness: same jobs
(text, seed, max_len), same load options, same torch thread count as the server.
"""

from __future__ import annotations

import argparse
import json
import os
import queue
import sys
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any, TextIO

import attrs


def _claim_stdout() -> TextIO:
    """Keep stdout for the protocol; anything else printing to it goes to stderr.

    voxcpm prints its loading messages to stdout.
    """
    protocol = os.fdopen(os.dup(1), "w", buffering=1)
    os.dup2(2, 1)
    sys.stdout = sys.stderr
    return protocol


@attrs.define(eq=False)
class _Run:
    """One level being replayed."""

    jobs: list[dict[str, Any]]
    closed_loop: bool
    started: float
    results: list[dict[str, Any] | None]
    next_index: int = 0
    remaining: int = 0
    lock: threading.Lock = attrs.Factory(threading.Lock)
    done: threading.Event = attrs.Factory(threading.Event)

    def take(self) -> int | None:
        with self.lock:
            if self.next_index >= len(self.jobs):
                return None
            index = self.next_index
            self.next_index += 1
            return index


class EnginePool:
    """W threads, each owning one engine for its whole life."""

    def __init__(self, factory: Callable[[], Any], workers: int) -> None:
        self._factory = factory
        self._queue: queue.Queue[tuple[_Run, float, int] | None] = queue.Queue()
        self._threads = [
            threading.Thread(target=self._main, name=f"baseline-{i}", daemon=True)
            for i in range(workers)
        ]
        self._ready = threading.Barrier(workers + 1)
        self._errors: list[BaseException] = []
        self.sample_rate = 0

    def start(self) -> None:
        for thread in self._threads:
            thread.start()
        self._ready.wait()
        if self._errors:
            raise RuntimeError(f"engine load failed: {self._errors[0]!r}") from self._errors[0]

    def close(self) -> None:
        for _ in self._threads:
            self._queue.put(None)
        for thread in self._threads:
            thread.join(timeout=30)

    def _main(self) -> None:
        try:
            engine = self._factory()
            engine.warm_up()
            self.sample_rate = engine.sample_rate
        except BaseException as exc:
            self._errors.append(exc)
            self._ready.wait()
            return
        self._ready.wait()
        try:
            while (item := self._queue.get()) is not None:
                self._run_one(engine, *item)
        finally:
            engine.close()

    def _run_one(self, engine: Any, run: _Run, submitted: float, index: int) -> None:
        from voxtrio.speech._engine import SynthesisSpec

        job = run.jobs[index]
        spec = SynthesisSpec(
            text=job["text"], seed=job["seed"], max_len=job["max_len"], streaming=True
        )
        first: float | None = None
        samples = chunks = 0
        error: str | None = None
        try:
            for chunk in engine.generate(spec, _no_op):
                if first is None:
                    first = time.perf_counter()
                samples += int(chunk.shape[0])
                chunks += 1
        except Exception as exc:  # reported per job, as the server reports an error
            error = type(exc).__name__
        end = time.perf_counter()
        if run.closed_loop and (following := run.take()) is not None:
            self._queue.put((run, end, following))
        run.results[index] = {
            "sent": submitted - run.started,
            "first": None if first is None else first - run.started,
            "done": end - run.started,
            "samples": samples,
            "chunks": chunks,
            "error": error,
        }
        with run.lock:
            run.remaining -= 1
            if run.remaining == 0:
                run.done.set()

    def run(
        self,
        jobs: list[dict[str, Any]],
        *,
        concurrency: int | None = None,
        arrivals: Sequence[float] | None = None,
    ) -> dict[str, Any]:
        """Replay one level; times are seconds from its start."""
        if (concurrency is None) == (arrivals is None):
            raise ValueError("give either concurrency (closed loop) or arrivals (open loop)")
        run = _Run(
            jobs,
            closed_loop=arrivals is None,
            started=time.perf_counter(),
            results=[None] * len(jobs),
            remaining=len(jobs),
        )
        cpu0 = time.process_time()
        if not jobs:
            run.done.set()
        if concurrency is not None:
            for _ in range(min(concurrency, len(jobs))):
                index = run.take()
                assert index is not None
                self._queue.put((run, time.perf_counter(), index))
        else:
            assert arrivals is not None
            for index, offset in enumerate(arrivals):
                time.sleep(max(0.0, run.started + offset - time.perf_counter()))
                # Open loop: the clock starts at the scheduled arrival.
                self._queue.put((run, run.started + offset, index))
        run.done.wait()
        return {
            "results": run.results,
            "sample_rate": self.sample_rate,
            "cpu_seconds": time.process_time() - cpu0,
        }


def _no_op(_steps: int) -> None:
    pass


def _gpu_name(device: str) -> str | None:
    import torch

    if device.startswith("cuda") and torch.cuda.is_available():
        return str(torch.cuda.get_device_name(torch.device(device)))
    return None


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench._baseline", description=__doc__)
    parser.add_argument("--model", required=True)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--torch-threads", type=int, default=None)
    args = parser.parse_args(argv)
    protocol = _claim_stdout()
    os.environ.setdefault("TQDM_DISABLE", "1")

    import torch

    from voxtrio.speech._voxcpm_engine import VoxCPMEngine, VoxCPMOptions, resolve_device

    if args.torch_threads:
        torch.set_num_threads(args.torch_threads)
    # What the server builds for `--engine voxcpm --model DIR --device D` (_app.py).
    options = VoxCPMOptions(model=args.model, device=args.device)
    pool = EnginePool(lambda: VoxCPMEngine.load(options), args.workers)
    pool.start()
    device = resolve_device(args.device)
    hello = {
        "ready": True,
        "pid": os.getpid(),
        "sample_rate": pool.sample_rate,
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "device": device,
        "gpu": _gpu_name(device),
    }
    protocol.write(json.dumps(hello) + "\n")
    for line in sys.stdin:
        command = json.loads(line)
        if command["op"] == "quit":
            break
        result = pool.run(
            command["jobs"],
            concurrency=command.get("concurrency"),
            arrivals=command.get("arrivals"),
        )
        protocol.write(json.dumps(result) + "\n")
    pool.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
