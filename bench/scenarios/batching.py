"""Batched step loop vs one generation at a time (`--max-batch 1`), side by side.

    python -m bench batching [--device cpu] [--size tiny] \
        [--concurrency 1,4,16,32] [--modes replica,batched] [--out DIR]

Per mode, one `voxtrio serve` process (one model instance) on a never-stopping
random-weight checkpoint; per concurrency level a closed loop (each user sends its
next request when the last one ends). Reports aggregate audio s/s, per-request RTF
((end - first audio) / audio s), time to first audio p50/p95 and, on CUDA, the GPU
memory in use. Writes `batching.json` under --out and prints one line per level.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import trio

from ..harness._load import closed_loop, level_figures
from ..harness._procs import ServerProcess, raise_open_files_limit
from ..harness._texts import make_jobs
from .server import ensure_checkpoint


def _ints(text: str) -> list[int]:
    return [int(part) for part in text.split(",") if part.strip()]


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m bench batching", description=__doc__)
    p.add_argument("--arch", choices=("voxcpm2", "voxcpm"), default="voxcpm2")
    p.add_argument("--size", choices=("tiny", "full"), default="tiny")
    p.add_argument("--model", type=Path, help="an existing model directory instead")
    p.add_argument("--device", default="cpu")
    p.add_argument("--concurrency", type=_ints, default=[1, 4, 16, 32])
    p.add_argument("--modes", default="replica,batched", help="replica, batched or both")
    p.add_argument("--max-batch", type=int, default=0, help="0: the largest concurrency")
    p.add_argument("--max-len", type=int, default=24, help="chunks per request")
    p.add_argument("--rounds", type=int, default=2, help="requests per user and level")
    p.add_argument("--torch-threads", type=int, default=None)
    p.add_argument("--optimize", default="false", help="--optimize for the server")
    p.add_argument("--level-timeout", type=float, default=600.0)
    p.add_argument("--out", type=Path, default=Path("bench/results"))
    return p


def gpu_memory_mib() -> int | None:
    """Memory in use on GPU 0 as nvidia-smi reports it (None without one)."""
    try:
        out = subprocess.run(
            ["nvidia-smi", "--query-gpu=memory.used", "--format=csv,noheader,nounits"],
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    return int(out.split()[0]) if out.strip() else None


def server_args(args: argparse.Namespace, model: Path, mode: str) -> list[str]:
    batch = args.max_batch or max(args.concurrency)
    limit = str(max(args.concurrency) * 2)
    return [
        *("--engine", "voxcpm", "--model", str(model), "--device", args.device),
        *("--workers", "1", "--max-concurrent", limit, "--max-connections", limit),
        *("--max-requests-per-connection", "1", "--optimize", args.optimize),
        # replica: one generation at a time (the path before batching, now --max-batch 1).
        *("--max-batch", str(batch) if mode == "batched" else "1", "--log-level", "INFO"),
        *(["--torch-threads", str(args.torch_threads)] if args.torch_threads else []),
    ]


async def run_mode(args: argparse.Namespace, model: Path, mode: str) -> dict[str, Any]:
    levels: dict[str, Any] = {}
    async with trio.open_nursery() as nursery:
        began = time.perf_counter()
        server = await ServerProcess.start(
            nursery, server_args(args, model, mode), torch_threads=args.torch_threads
        )
        load_s = time.perf_counter() - began
        try:
            for c in args.concurrency:
                jobs = make_jobs("short", c * args.rounds, max_len=args.max_len, seed=c)
                with trio.move_on_after(args.level_timeout):
                    run = await closed_loop(server.url, jobs, c, request_timeout=args.level_timeout)
                figures = level_figures(run)
                figures.pop("usage", None)
                figures["gpu_memory_mib"] = gpu_memory_mib()
                levels[str(c)] = figures
                print(
                    f"{mode:8s} c={c:<4d} audio_s/s={figures['audio_s_per_s']} "
                    f"rtf_p50={figures['rtf']['p50']} ttfa_ms={figures['ttfa_ms']} "
                    f"errors={figures['errors']} gpu_mib={figures['gpu_memory_mib']}",
                    flush=True,
                )
        finally:
            await server.stop()
        nursery.cancel_scope.cancel()
    stats = loop_stats(server.log_path)
    if stats:
        print(f"{mode:8s} step loop: {stats}", flush=True)
    return {
        "load_s": round(load_s, 1),
        "server_args": server.args,
        "levels": levels,
        "step_loop": loop_stats(server.log_path),
    }


def loop_stats(log_path: Path) -> dict[str, Any] | None:
    """The step loop's own summary (steps, mean batch, longest prefill stall) from its log."""
    for line in reversed(log_path.read_text(errors="replace").splitlines()):
        if '"step_loop_finished"' in line:
            record: dict[str, Any] = json.loads(line)
            return {k: v for k, v in record.items() if k not in ("event", "timestamp", "level")}
    return None


async def run(argv: list[str]) -> dict[str, Any]:
    args = build_parser().parse_args(argv)
    raise_open_files_limit()
    model = args.model or ensure_checkpoint(args.arch, args.size)
    result: dict[str, Any] = {
        "command": " ".join([sys.executable, "-m", "bench", "batching", *argv]),
        "arch": args.arch,
        "size": args.size,
        "device": args.device,
        "modes": {},
    }
    for mode in args.modes.split(","):
        result["modes"][mode] = await run_mode(args, model, mode)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "batching.json").write_text(json.dumps(result, indent=2) + "\n")
    return result


def main(argv: list[str]) -> None:
    trio.run(run, argv)
