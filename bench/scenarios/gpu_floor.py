"""The floor: voxcpm's own `generate_streaming`, one stream, compiled as upstream ships it.

    python -m bench gpu_floor --model DIR [--device cuda] [--max-len 40]

Loads the checkpoint with `VoxCPM.from_pretrained(..., optimize=True)` (upstream's
torch.compile with CUDA graphs; on a CPU rehearsal optimize=False), then
streams --runs requests one after another, the same short sentences the server
bench sends. Per request: time to first audio and RTF ((end - first audio) / audio
seconds, as bench.batching counts it); audio s/s over all runs; GPU memory. Writes
floor.json under --out and prints one line.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path
from typing import Any

import torch

from voxtrio.speech._voxcpm_import import import_voxcpm

from ..harness._texts import TEXT_SETS
from .batching import gpu_memory_mib


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q / 100 * (len(ordered) - 1)))]


def measure(args: argparse.Namespace) -> dict[str, Any]:
    voxcpm = import_voxcpm()
    if args.device == "cpu":
        torch.set_num_threads(1)  # as bench.batching's server on CPU: no oversubscription
    started = time.perf_counter()
    model = voxcpm.VoxCPM.from_pretrained(
        str(args.model),
        load_denoiser=False,
        # Upstream's compile targets CUDA; on CPU it would only spend the budget compiling.
        optimize=args.device.startswith("cuda"),
        device=args.device,
    )
    load_s = time.perf_counter() - started
    rate = int(model.tts_model.sample_rate)
    texts = TEXT_SETS["short"]
    ttfa, rtf, audio_total = [], [], 0.0
    wall_started = time.perf_counter()
    for index in range(args.runs + 1):  # the first run warms what from_pretrained did not
        sent = time.perf_counter()
        first = None
        samples = 0
        for chunk in model.generate_streaming(
            text=texts[index % len(texts)], max_len=args.max_len, retry_badcase=False
        ):
            if first is None:
                if args.device.startswith("cuda"):
                    torch.cuda.synchronize()
                first = time.perf_counter()
            samples += len(chunk)
        done = time.perf_counter()
        if index == 0:
            wall_started = done
            continue
        seconds = samples / rate
        audio_total += seconds
        ttfa.append((first or done) - sent)
        rtf.append((done - (first or done)) / seconds)
    wall = time.perf_counter() - wall_started
    return {
        "load_s": round(load_s, 1),
        "runs": args.runs,
        "ttfa_ms": {
            "p50": round(statistics.median(ttfa) * 1000, 1),
            "p95": round(_percentile(ttfa, 95) * 1000, 1),
        },
        "rtf": {"p50": round(statistics.median(rtf), 4), "p95": round(_percentile(rtf, 95), 4)},
        "audio_s_per_s": round(audio_total / wall, 4),
        "gpu_memory_mib": gpu_memory_mib(),
    }


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, required=True)
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--max-len", type=int, default=40)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--out", type=Path, default=Path("bench/results"))
    args = parser.parse_args(argv)
    figures = measure(args)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "floor.json").write_text(json.dumps(figures, indent=2))
    print(f"floor (voxcpm generate_streaming, one stream): {figures}", flush=True)
