"""The batched VoxCPM stages alone (no server): step time at batch 1 vs batch N.

    python -m bench batched_stages [--arch voxcpm2] [--rows 1,16] [--threads 1]

Builds a tiny (or --size full) random-weight checkpoint, loads it through voxcpm's
loader, and times `BatchedVoxCPM.step` for every row count, split (inside the same
steps) into the AudioVAE decode of the step's patches and the rest, "model" (LocDiT/CFM
+ LocEnc + both LMs + stop head); "decode alone" times the decoder with nothing else
running. Medians over --steps steps; "step/row" is the step divided by the rows. This
is the bound a batched server can approach.
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


class _TimedDecode(BatchedVoxCPM):
    """Records how long each step's AudioVAE decode took, inside the step itself."""

    decode_seconds: float = 0.0

    def _decode(self, rows, pred):  # type: ignore[no-untyped-def]
        _sync(pred.device)
        start = time.perf_counter()
        try:
            return super()._decode(rows, pred)
        finally:
            _sync(pred.device)
            self.decode_seconds = time.perf_counter() - start


def time_steps(
    model: _TimedDecode, rows: int, steps: int, device: torch.device
) -> tuple[float, float, float]:
    """Median step, in-step decode and the rest (LocDiT/CFM + LocEnc + LMs), in ms."""
    specs = [SynthesisSpec(text=TEXT, seed=i, max_len=steps + 4) for i in range(rows)]
    handles = model.prefill(specs)
    try:
        totals, decodes, rest = [], [], []
        for index in range(steps + 2):
            _sync(device)
            start = time.perf_counter()
            model.step(handles)
            _sync(device)
            if index >= 2:  # the first steps warm caches and allocators
                total = time.perf_counter() - start
                totals.append(total)
                decodes.append(model.decode_seconds)
                rest.append(total - model.decode_seconds)
        return _median_ms(totals), _median_ms(decodes), _median_ms(rest)
    finally:
        for handle in handles:
            model.release(handle)


@torch.inference_mode()
def time_decode(engine: VoxCPMEngine, rows: int, steps: int, device: torch.device) -> float:
    tts = engine.tts_model
    latent = torch.randn(rows, tts.audio_vae.latent_dim, tts.patch_size, device=device)
    samples = []
    if engine.architecture == "voxcpm2":
        decoder = StreamingDecoder(tts.audio_vae, max_batch=rows)
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
        model = _TimedDecode(engine, max_batch=max(counts), max_length=1024)
        print(
            f"{engine.architecture} {args.size} on {device}, {torch.get_num_threads()} torch "
            f"thread(s), median of {args.steps} steps"
        )
        print(
            f"{'rows':>5} {'step ms':>8} {'model ms':>9} {'decode ms':>10} "
            f"{'decode alone ms':>16} {'step/row ms':>12}"
        )
        for rows in counts:
            step, decode, rest = time_steps(model, rows, args.steps, device)
            alone = time_decode(engine, rows, args.steps, device)
            print(
                f"{rows:>5} {step:>8.1f} {rest:>9.1f} {decode:>10.1f} {alone:>16.1f} "
                f"{step / rows:>12.2f}"
            )
