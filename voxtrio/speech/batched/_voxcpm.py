"""Batched VoxCPM (VoxCPM2 and 1.x) from voxcpm's own modules and weights.

One step advances every given row by one patch (one streaming chunk): both LMs'
hidden states -> LocDiT/CFM solve (per-row noise and cfg, grouped by timesteps)
-> LocEnc -> AudioVAE decode -> stop head -> one token through both LMs. The math
is upstream's `_inference` loop; what is per row here (KV slot and position,
generator, caps, decode state) is one scalar for the whole batch there.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import attrs
import numpy as np
import torch

from voxtrio.speech._engine import SynthesisSpec
from voxtrio.speech.batched._cfm import draw_noise, solve_grouped
from voxtrio.speech.batched._interface import StepResult, power_of_two_bucket
from voxtrio.speech.batched._lm import SlotKVCache
from voxtrio.speech.batched._prefill import model_inputs, run_prefill
from voxtrio.speech.batched._vae import StreamingDecoder, decode_windows

if TYPE_CHECKING:
    from voxtrio.speech._voxcpm_engine import VoxCPMEngine


@attrs.define(eq=False)
class VoxCPMRow:
    """One generation's place in the batch (the model's row type)."""

    slot: int
    spec: SynthesisSpec
    generator: torch.Generator
    position: int  # next KV position in both LMs
    max_len: int  # steps allowed (upstream's text-length cap applied)
    min_len: int
    lm_hidden: torch.Tensor  # [H]
    residual_hidden: torch.Tensor  # [H]
    prefix_cond: torch.Tensor  # [P, D] the last patch
    window: list[torch.Tensor]  # 1.x: the last patches, decoded together
    window_len: int
    steps: int = 0
    finished: bool = False
    released: bool = False


class BatchedVoxCPM:
    """A `BatchModel` over one loaded voxcpm model (either architecture)."""

    def __init__(
        self, engine: VoxCPMEngine, *, max_batch: int, max_length: int | None = None
    ) -> None:
        tts = engine.tts_model
        self._engine = engine
        self._tts = tts
        self._v2 = engine.architecture == "voxcpm2"
        self._max_batch = max_batch
        length = max_length or int(tts.config.max_length)
        self._base = SlotKVCache(tts.base_lm, max_batch=max_batch, max_length=length)
        self._residual = SlotKVCache(tts.residual_lm, max_batch=max_batch, max_length=length)
        self._decoder = StreamingDecoder(tts.audio_vae, max_batch=max_batch) if self._v2 else None
        self._patch_samples = int(tts.patch_size * tts.chunk_size)
        self._free = list(range(max_batch))
        self._device = next(tts.parameters()).device

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

    def bucket_for(self, rows: int) -> int:
        return power_of_two_bucket(rows, self._max_batch)  # no padding: only the metrics' label

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
        if needed > self._base.max_length:
            raise ValueError(
                f"this request needs {needed} KV positions (prompt + max_len); "
                f"the batched model holds {self._base.max_length}"
            )
        state, base_kv, residual_kv = run_prefill(tts, inputs, fused_residual=self._v2)
        slot = self._free.pop()
        try:
            self._base.fill(slot, base_kv)
            self._residual.fill(slot, residual_kv)
        except BaseException:
            self._free.append(slot)
            raise
        if self._decoder is not None:
            self._decoder.reset(slot)
        generator = torch.Generator(device=self._device)
        generator.manual_seed(spec.seed)
        return VoxCPMRow(
            slot=slot,
            spec=spec,
            generator=generator,
            position=state.length,
            max_len=inputs.max_len,
            min_len=inputs.min_len,
            lm_hidden=state.lm_hidden,
            residual_hidden=state.residual_hidden,
            prefix_cond=state.prefix_cond,
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
        tts = self._tts
        lm_hidden = torch.stack([row.lm_hidden for row in rows])
        residual_hidden = torch.stack([row.residual_hidden for row in rows])
        dit_lm, dit_res = tts.lm_to_dit_proj(lm_hidden), tts.res_to_dit_proj(residual_hidden)
        mu = torch.cat((dit_lm, dit_res), dim=-1) if self._v2 else dit_lm + dit_res
        cfm = tts.feat_decoder
        noise = torch.cat(
            [draw_noise(cfm, tts.patch_size, row.generator, dtype=mu.dtype) for row in rows]
        )
        cond = torch.stack([row.prefix_cond for row in rows]).transpose(1, 2).contiguous()
        cfg = torch.tensor([row.spec.cfg_value for row in rows], dtype=torch.float32)
        timesteps = [row.spec.inference_timesteps for row in rows]
        pred = solve_grouped(cfm, noise, mu, cond, cfg, timesteps).transpose(1, 2)  # [B, P, D]
        encoder = getattr(tts, "_feat_encoder_raw", tts.feat_encoder)  # eager, as in prefill
        curr_embed = tts.enc_to_lm_proj(encoder(pred.unsqueeze(1)))[:, 0]  # [B, H]
        audio = self._decode(rows, pred)
        stop = tts.stop_head(tts.stop_actn(tts.stop_proj(lm_hidden))).argmax(dim=-1).tolist()

        results: list[StepResult] = []
        going: list[int] = []
        for index, row in enumerate(rows):
            row.prefix_cond = pred[index]
            step = row.steps
            row.steps += 1
            row.finished = (step > row.min_len and stop[index] == 1) or row.steps >= row.max_len
            if not row.finished:
                going.append(index)
            results.append(StepResult(audio=audio[index], finished=row.finished))
        if going:
            self._advance_lms([rows[i] for i in going], curr_embed[going])
        return results

    def _decode(self, rows: Sequence[VoxCPMRow], pred: torch.Tensor) -> list[np.ndarray]:
        if self._decoder is not None:
            slots = torch.tensor([row.slot for row in rows], device=self._device)
            audio = self._decoder.decode(pred.transpose(1, 2), slots)
        else:
            windows = []
            for index, row in enumerate(rows):
                row.window = [*row.window, pred[index]][-row.window_len :]
                windows.append(torch.cat(row.window, dim=0).transpose(0, 1))  # [D, T*P]
            audio = torch.stack(decode_windows(self._tts.audio_vae, windows, self._patch_samples))
        return list(audio.float().cpu().numpy())  # one device-to-host copy for all rows

    def _advance_lms(self, rows: Sequence[VoxCPMRow], curr_embed: torch.Tensor) -> None:
        tts = self._tts
        slots = torch.tensor([row.slot for row in rows], device=self._device)
        positions = torch.tensor([row.position for row in rows], device=self._device)
        span = max(row.position for row in rows) + 1
        lm_hidden = tts.fsq_layer(self._base.step(curr_embed, slots, positions, span))
        if self._v2:
            residual_in = tts.fusion_concat_proj(torch.cat((lm_hidden, curr_embed), dim=-1))
        else:
            residual_in = lm_hidden + curr_embed
        residual_hidden = self._residual.step(residual_in, slots, positions, span)
        for index, row in enumerate(rows):
            row.lm_hidden = lm_hidden[index]
            row.residual_hidden = residual_hidden[index]
            row.position += 1

    def release(self, row: VoxCPMRow) -> None:
        if row.released:
            return
        row.released = True
        self._free.append(row.slot)

    def warm_up(self) -> None:
        rows = self.prefill([SynthesisSpec(text="Hello, this is a warm-up sentence.", max_len=2)])
        try:
            while not rows[0].finished:
                self.step(rows)
        finally:
            self.release(rows[0])

    def close(self) -> None:
        self._free.clear()
