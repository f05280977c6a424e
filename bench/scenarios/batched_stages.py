"""The batched VoxCPM stages alone (no server): step time at batch 1 vs batch N.

    python -m bench batched_stages [--arch voxcpm2] [--rows 1,16] [--threads 1]
        [--compile off,on]

Builds a tiny (or --size full) random-weight checkpoint, loads it through voxcpm's
loader, and times `BatchedVoxCPM.step` for every row count and every --compile
setting (off, on, auto): "bucket" is the padded batch size the step ran at, "first
step" includes compiling (inductor) or capturing (CUDA graphs) that shape; "decode
alone" times the AudioVAE decoder with nothing else running. Medians over --steps
steps; "step/row" is the step divided by the rows. This is the bound a batched
server can approach.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import torch

from voxtrio.speech._engine import SynthesisSpec
from voxtrio.speech._voxcpm_engine import VoxCPMEngine, VoxCPMOptions
from voxtrio.speech.batched._vae import StreamingDecoder, decode_windows
from voxtrio.speech.batched._voxcpm import BatchedVoxCPM
from voxtrio.tools._tiny_model import build_checkpoint

TEXT = "A sentence long enough that no row reaches the text-length cap during the bench."


def _median_ms(samples: list[float]) -> float:
    return statistics.median(samples) * 1000


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_steps(
    model: BatchedVoxCPM, rows: int, steps: int, device: torch.device
) -> tuple[float, float]:
    """Seconds the first step took (compiling or capturing its shape), median step ms."""
    specs = [SynthesisSpec(text=TEXT, seed=i, max_len=steps + 4) for i in range(rows)]
    handles = model.prefill(specs)
    try:
        totals = []
        first = 0.0
        for index in range(steps + 2):
            _sync(device)
            start = time.perf_counter()
            model.step(handles)
            _sync(device)
            if index == 0:
                first = time.perf_counter() - start
            if index >= 2:  # the first steps warm caches and allocators
                totals.append(time.perf_counter() - start)
        return first, _median_ms(totals)
    finally:
        for handle in handles:
            model.release(handle)


@torch.inference_mode()
def time_decode(engine: VoxCPMEngine, rows: int, steps: int, device: torch.device) -> float:
    tts = engine.tts_model
    latent = torch.randn(rows, tts.audio_vae.latent_dim, tts.patch_size, device=device)
    samples = []
    if engine.architecture == "voxcpm2":
        decoder = StreamingDecoder(tts.audio_vae, slots=rows)
        slots = torch.arange(rows, device=device)
        for index in range(steps + 2):
            _sync(device)
            start = time.perf_counter()
            decoder.decode(latent, slots)
            _sync(device)
            if index >= 2:
                samples.append(time.perf_counter() - start)
    else:  # 1.x decodes a three-patch window per row
        windows = [torch.cat([latent[i]] * 3, dim=-1) for i in range(rows)]
        patch_samples = int(tts.patch_size * tts.chunk_size)
        for index in range(steps + 2):
            _sync(device)
            start = time.perf_counter()
            decode_windows(tts.audio_vae, windows, patch_samples)
            _sync(device)
            if index >= 2:
                samples.append(time.perf_counter() - start)
    return _median_ms(samples)


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arch", default="voxcpm2", choices=["voxcpm2", "voxcpm"])
    parser.add_argument("--size", default="tiny", choices=["tiny", "full"])
    parser.add_argument("--rows", default="1,16")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--max-batch", type=int, default=0, help="0: the largest --rows")
    parser.add_argument(
        "--max-length", type=int, default=None, help="KV positions (default: the model's)"
    )
    parser.add_argument(
        "--compile", default="off", help="comma-separated --compile settings to compare (off,on)"
    )
    parser.add_argument("--model", help="an existing checkpoint directory (default: build one)")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    counts = [int(n) for n in args.rows.split(",")]
    with tempfile.TemporaryDirectory() as scratch:
        model_dir = Path(args.model) if args.model else None
        if model_dir is None:
            model_dir = build_checkpoint(Path(scratch) / "model", arch=args.arch, size=args.size)
        engine = VoxCPMEngine.load(
            VoxCPMOptions(
                model=str(model_dir), device=args.device, optimize=False, warm_normalizer=False
            )
        )
        device = next(engine.tts_model.parameters()).device
        print(
            f"{engine.architecture} {args.size} on {device}, {torch.get_num_threads()} torch "
            f"thread(s), median of {args.steps} steps"
        )
        print(
            f"{'mode':>12} {'rows':>5} {'bucket':>6} {'first step s':>13} {'step ms':>8} "
            f"{'step/row ms':>12} {'decode alone ms':>16}"
        )
        for setting in args.compile.split(","):
            model = BatchedVoxCPM(
                engine,
                max_batch=args.max_batch or max(counts),
                max_length=args.max_length,
                compile=setting,  # type: ignore[arg-type]
            )
            for rows in counts:
                first, step = time_steps(model, rows, args.steps, device)
                alone = time_decode(engine, rows, args.steps, device)
                print(
                    f"{model.mode:>12} {rows:>5} {model.bucket_for(rows):>6} {first:>13.2f} "
                    f"{step:>8.1f} {step / rows:>12.2f} {alone:>16.1f}"
                )
