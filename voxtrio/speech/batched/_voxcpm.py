"""Batched VoxCPM (VoxCPM2 and 1.x) from voxcpm's own modules and weights.

One step advances every given row by one patch (one streaming chunk): both LMs'
hidden states -> LocDiT/CFM solve (per-row noise, cfg and timesteps) -> LocEnc ->
AudioVAE decode -> stop head -> one token through both LMs. The math is upstream's
`_inference` loop; what is per row here (KV slot and position, generator, caps,
decode state) is one scalar for the whole batch there. The device work runs at a
padded batch size (`bucket_for`) in fixed shapes (`_kernels`), eager, compiled or
as CUDA graphs (`_graphs`); the host reads one tensor per step: the audio with the
stop flags.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import TYPE_CHECKING

import attrs
import numpy as np
import structlog
import torch

from voxtrio.speech._engine import SynthesisSpec
from voxtrio.speech.batched._cfm import EulerSchedule, draw_noise
from voxtrio.speech.batched._graphs import (
    CompileSetting,
    Mode,
    bucket_for,
    bucket_sizes,
    resolve,
    span_bucket,
)
from voxtrio.speech.batched._interface import StepResult
from voxtrio.speech.batched._kernels import StepKernels
from voxtrio.speech.batched._prefill import model_inputs, run_prefill
from voxtrio.speech.batched._vae import decode_windows

if TYPE_CHECKING:
    from voxtrio.speech._voxcpm_engine import VoxCPMEngine

log = structlog.get_logger("voxtrio.batched")


@attrs.define(eq=False)
class VoxCPMRow:
    """One generation's place in the batch (the model's row type); its tensors live in its slot."""

    slot: int
    spec: SynthesisSpec
    generator: torch.Generator
    position: int  # next KV position in both LMs
    max_len: int  # steps allowed (upstream's text-length cap applied)
    min_len: int
    window: list[torch.Tensor]  # 1.x: the last patches [P, D], decoded together
    window_len: int
    steps: int = 0
    finished: bool = False
    released: bool = False


class BatchedVoxCPM:
    """A `BatchModel` over one loaded voxcpm model (either architecture)."""

    def __init__(
        self,
        engine: VoxCPMEngine,
        *,
        max_batch: int,
        max_length: int | None = None,
        compile: CompileSetting = "off",
        buckets: Sequence[int] | None = None,
    ) -> None:
        tts = engine.tts_model
        self._engine = engine
        self._tts = tts
        self._v2 = engine.architecture == "voxcpm2"
        self._max_batch = max_batch
        self._fixed_buckets = sorted(buckets) if buckets else None
        if self._fixed_buckets and self._fixed_buckets[-1] < max_batch:
            raise ValueError(f"buckets {self._fixed_buckets} do not reach max_batch {max_batch}")
        self._max_length = max_length or int(tts.config.max_length)
        # One more slot than rows: padding rows read and write it, real rows never do.
        self._scratch = max_batch
        self._kernels = StepKernels(
            tts, v2=self._v2, slots=max_batch + 1, max_length=self._max_length
        )
        self._patch_samples = int(tts.patch_size * tts.chunk_size)
        self._free = list(range(max_batch))
        self._device = self._kernels.device
        self._compile = compile
        self._ready: set[tuple[int, int]] = set()  # (bucket, span) compiled or captured
        mode = resolve(compile, self._device)
        self._pool = torch.cuda.graph_pool_handle() if self._device.type == "cuda" else None
        self._set_mode(mode or "eager")
        self._mode_chosen = mode is not None

    @property
    def engine(self) -> VoxCPMEngine:
        """The loaded engine underneath (its voices, architecture, tts_model)."""
        return self._engine

    @property
    def sample_rate(self) -> int:
        return self._engine.sample_rate

    @property
    def max_batch(self) -> int:
        return self._max_batch

    @property
    def free_slots(self) -> int:
        return len(self._free)

    @property
    def mode(self) -> Mode:
        """How steps run: eager, inductor or cuda-graphs (`auto` decided at warm-up)."""
        return self._kernels.mode

    @property
    def buckets(self) -> list[int]:
        return list(self._buckets)

    def bucket_for(self, rows: int) -> int:
        """The padded batch size a step of `rows` rows runs at."""
        return bucket_for(rows, self._buckets)

    def max_steps(self, spec: SynthesisSpec) -> int:
        return self._engine.max_steps(spec)

    @torch.inference_mode()
    def prefill(self, specs: Sequence[SynthesisSpec]) -> list[VoxCPMRow]:
        if len(specs) > len(self._free):
            raise RuntimeError(f"{len(specs)} rows asked, {len(self._free)} slots free")
        rows: list[VoxCPMRow] = []
        try:
            for spec in specs:
                rows.append(self._prefill_one(spec))
        except BaseException:
            for row in rows:
                self.release(row)
            raise
        return rows

    def _prefill_one(self, spec: SynthesisSpec) -> VoxCPMRow:
        tts = self._tts
        text = self._engine.target_text(spec)
        prompt_cache = self._engine.prompt_cache_for(spec)
        inputs = model_inputs(
            tts,
            text=text,
            prompt_cache=prompt_cache,
            # TextTooLong and the context cap exactly as the one-at-a-time engine.
            max_len=self._engine.fit_max_len(text, prompt_cache, spec.max_len),
            ratio_threshold=spec.retry_badcase_ratio_threshold,
        )
        # The last step writes no KV, so a row needs prompt + max_len - 1 positions.
        needed = inputs.text.size(1) + inputs.max_len - 1
        if needed > self._max_length:
            raise ValueError(
                f"this request needs {needed} KV positions (prompt + max_len); "
                f"the batched model holds {self._max_length}"
            )
        state, base_kv, residual_kv = run_prefill(tts, inputs, fused_residual=self._v2)
        kernels = self._kernels
        slot = self._free.pop()
        try:
            kernels.base.fill(slot, base_kv)
            kernels.residual.fill(slot, residual_kv)
        except BaseException:
            self._free.append(slot)
            raise
        kernels.lm_hidden[slot] = state.lm_hidden
        kernels.residual_hidden[slot] = state.residual_hidden
        kernels.prefix_cond[slot] = state.prefix_cond
        if kernels.decoder is not None:
            kernels.decoder.reset(slot)
        generator = torch.Generator(device=self._device)
        generator.manual_seed(spec.seed)
        return VoxCPMRow(
            slot=slot,
            spec=spec,
            generator=generator,
            position=state.length,
            max_len=inputs.max_len,
            min_len=inputs.min_len,
            window=state.context,
            window_len=inputs.streaming_prefix_len,
        )

    @torch.inference_mode()
    def step(self, rows: Sequence[VoxCPMRow]) -> list[StepResult]:
        if not rows:
            return []
        for row in rows:
            if row.released or row.finished:
                raise ValueError(f"row in slot {row.slot} is no longer running")
        host = self._run(rows)
        results: list[StepResult] = []
        for index, row in enumerate(rows):
            step = row.steps
            row.steps += 1
            stop = host[index, -1] == 1
            row.finished = (step > row.min_len and stop) or row.steps >= row.max_len
            if not row.finished:
                row.position += 1
            results.append(StepResult(audio=host[index, :-1], finished=row.finished))
        return results

    def _run(self, rows: Sequence[VoxCPMRow]) -> np.ndarray:
        """One step at the rows' bucket: [rows, samples + 1] on the host (audio, stop flag)."""
        bucket = self.bucket_for(len(rows))
        pad = bucket - len(rows)
        scratch = self._scratch
        last = [row.steps + 1 >= row.max_len for row in rows]
        slots = [row.slot for row in rows] + [scratch] * pad
        # A row in its last step advances no LM: its token goes to the scratch slot.
        lm_slots = [scratch if end else row.slot for row, end in zip(rows, last, strict=True)]
        positions = [0 if end else row.position for row, end in zip(rows, last, strict=True)]
        timesteps = [row.spec.inference_timesteps for row in rows]
        span = span_bucket(max(positions) + 1, self._max_length)
        self._prepare(bucket, span)
        ints = torch.tensor(
            [
                slots,
                [*lm_slots, *[scratch] * pad],
                [*positions, *[0] * pad],
                [*timesteps, *[0] * pad],
            ]
        ).to(self._device, non_blocking=True)
        cfg = torch.tensor([row.spec.cfg_value for row in rows] + [0.0] * pad)
        cfm, dtype = self._tts.feat_decoder, self._kernels.dtype
        noise = [draw_noise(cfm, self._tts.patch_size, row.generator, dtype=dtype) for row in rows]
        if pad:
            noise.append(torch.zeros(pad, *noise[0].shape[1:], device=self._device, dtype=dtype))
        audio, pred = self._device_step(
            torch.cat(noise),
            ints,
            cfg.to(self._device, non_blocking=True),
            EulerSchedule.iterations(timesteps),
            span,
        )
        if self._v2:
            return audio[: len(rows)].cpu().numpy()  # the one device-to-host copy
        windows = []
        for index, row in enumerate(rows):
            row.window = [*row.window, pred[index].clone()][-row.window_len :]
            windows.append(torch.cat(row.window, dim=0).transpose(0, 1))  # [D, T*P]
        decoded = torch.stack(decode_windows(self._tts.audio_vae, windows, self._patch_samples))
        packed = torch.cat([decoded.to(torch.float32), audio[: len(rows)]], dim=1)
        return packed.cpu().numpy()  # the one device-to-host copy

    def _device_step(
        self,
        noise: torch.Tensor,
        ints: torch.Tensor,
        cfg: torch.Tensor,
        iterations: range,
        span: int,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        kernels = self._kernels
        slots, lm_slots, positions, timesteps = ints
        mu_in, cond_in, t, dt, live = kernels.begin(slots, timesteps)
        x = noise
        for k in iterations:
            (x,) = kernels.euler(x, mu_in, cond_in, t[k], dt[k], live[k], cfg)
        audio, pred = kernels.finish(x, slots, lm_slots, positions, span)
        return audio, pred

    def _prepare(self, bucket: int, span: int) -> None:
        """Compile or capture this shape with padding rows only (they touch the scratch
        slot alone), so that a capture's warm-up runs never move a real row."""
        if self.mode == "eager" or (bucket, span) in self._ready:
            return
        started = time.perf_counter()
        self._padding_step(bucket, span)
        self._ready.add((bucket, span))
        log.info(
            "batched_shape_ready",
            mode=self.mode,
            bucket=bucket,
            span=span,
            seconds=round(time.perf_counter() - started, 3),
        )

    def _padding_step(self, bucket: int, span: int) -> None:
        scratch, device, kernels = self._scratch, self._device, self._kernels
        ints = torch.tensor([[scratch] * bucket, [scratch] * bucket, [0] * bucket, [1] * bucket])
        noise = torch.zeros(
            bucket,
            self._tts.feat_decoder.in_channels,
            self._tts.patch_size,
            device=device,
            dtype=kernels.dtype,
        )
        self._device_step(
            noise, ints.to(device), torch.zeros(bucket, device=device), range(1), span
        )

    def release(self, row: VoxCPMRow) -> None:
        if row.released:
            return
        row.released = True
        self._free.append(row.slot)

    @torch.inference_mode()
    def warm_up(self) -> None:
        """Compile or capture every bucket (shortest span), pick `auto`'s mode, then run
        one real request: all before the server says it is ready."""
        if not self._mode_chosen:
            self._choose_mode()
        span = span_bucket(1, self._max_length)
        for bucket in self._buckets:
            self._prepare(bucket, span)
        rows = self.prefill([SynthesisSpec(text="Hello, this is a warm-up sentence.", max_len=2)])
        try:
            while not rows[0].finished:
                self.step(rows)
        finally:
            self.release(rows[0])

    def _set_mode(self, mode: Mode) -> None:
        self._kernels.set_mode(mode, pool=self._pool)
        self._ready.clear()
        if self._fixed_buckets:
            self._buckets = self._fixed_buckets
        elif mode == "eager":
            # Eager has no per-shape cost: padding would only add work.
            self._buckets = list(range(1, self._max_batch + 1))
        else:
            self._buckets = bucket_sizes(self._max_batch)

    def _choose_mode(self) -> None:
        """`auto` on CUDA: time the smallest and largest bucket eager and as CUDA graphs."""
        span = span_bucket(1, self._max_length)
        timings: dict[Mode, float] = {}
        for mode in ("eager", "cuda-graphs"):
            self._set_mode(mode)
            total = 0.0
            for bucket in {1, self._max_batch}:
                self._prepare(bucket, span)
                self._padding_step(bucket, span)
                torch.cuda.synchronize(self._device)
                started = time.perf_counter()
                for _ in range(3):
                    self._padding_step(bucket, span)
                torch.cuda.synchronize(self._device)
                total += time.perf_counter() - started
            timings[mode] = total
        best = min(timings, key=timings.__getitem__)
        self._set_mode(best)
        self._mode_chosen = True
        log.info(
            "batched_compile_auto",
            chosen=best,
            seconds={k: round(v, 4) for k, v in timings.items()},
        )

    def close(self) -> None:
        self._free.clear()
