"""A step's device work as three fixed-shape functions over slot-indexed state.

`begin` gathers the rows' LM states and Euler tables, `euler` is one guided Euler
iteration (run as many times as the rows' largest `inference_timesteps` needs),
`finish` runs LocEnc, the AudioVAE decode (VoxCPM2), the stop head and one token
through both LMs, and scatters the new states back. Every input is a tensor whose
shape depends only on the bucket (and `finish`'s on the attention span), nothing
reads a tensor's value on the host, and the only state they touch lives in
preallocated per-slot buffers: so each can be compiled, or captured as a CUDA
graph, once per shape. Padding rows read and write the scratch slot only.
"""

from __future__ import annotations

from typing import Any

import torch

from voxtrio.speech.batched._cfm import EulerSchedule, euler_iteration
from voxtrio.speech.batched._graphs import Mode, PoolHandle, Runner
from voxtrio.speech.batched._lm import SlotKVCache
from voxtrio.speech.batched._upstream import eager, feat_encoder
from voxtrio.speech.batched._vae import StreamingDecoder


class StepKernels:
    """Per-slot state of one batched model, and the functions one step runs on it."""

    def __init__(self, tts: Any, *, v2: bool, slots: int, max_length: int) -> None:
        weight = next(tts.parameters())
        device, dtype = weight.device, weight.dtype
        hidden = tts.config.lm_config.hidden_size
        cfm = tts.feat_decoder
        self.tts = tts
        self.v2 = v2
        self.base = SlotKVCache(tts.base_lm, slots=slots, max_length=max_length)
        self.residual = SlotKVCache(tts.residual_lm, slots=slots, max_length=max_length)
        self.decoder = StreamingDecoder(tts.audio_vae, slots=slots) if v2 else None
        self.lm_hidden = torch.zeros(slots, hidden, device=device, dtype=dtype)
        self.residual_hidden = torch.zeros(slots, hidden, device=device, dtype=dtype)
        self.prefix_cond = torch.zeros(
            slots, tts.patch_size, cfm.in_channels, device=device, dtype=dtype
        )
        self.schedule = EulerSchedule(device=device, dtype=dtype)
        self.estimator = eager(cfm.estimator)
        self.mean_mode = bool(cfm.mean_mode)
        self.encoder = feat_encoder(tts)
        self.sr_cond = None
        vae = tts.audio_vae
        if v2 and getattr(vae, "sr_bin_boundaries", None) is not None:
            # What AudioVAE.decode builds from a Python int on every call (a host copy).
            self.sr_cond = torch.tensor([vae.out_sample_rate], device=device, dtype=torch.int32)
        self.device = device
        self.dtype = dtype
        self.set_mode("eager")

    def set_mode(self, mode: Mode, *, pool: PoolHandle | None = None) -> None:
        self.mode = mode
        self.begin = Runner(self._begin, mode, pool=pool)
        self.euler = Runner(self._euler, mode, pool=pool)
        self.finish = Runner(self._finish, mode, pool=pool)

    def _begin(self, slots: torch.Tensor, timesteps: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """slots, timesteps [B] -> mu_in [2B, H'], cond_in [2B, D, P], t, dt, live [K, B]."""
        tts = self.tts
        lm_part = tts.lm_to_dit_proj(self.lm_hidden[slots])
        residual_part = tts.res_to_dit_proj(self.residual_hidden[slots])
        mu = torch.cat((lm_part, residual_part), dim=-1) if self.v2 else lm_part + residual_part
        cond = self.prefix_cond[slots].transpose(1, 2).contiguous()
        schedule = self.schedule
        return (
            torch.cat([mu, torch.zeros_like(mu)]),
            torch.cat([cond, cond]),
            schedule.t[timesteps].t().contiguous(),
            schedule.dt[timesteps].t().contiguous(),
            schedule.live[timesteps].t().contiguous(),
        )

    def _euler(
        self,
        x: torch.Tensor,
        mu_in: torch.Tensor,
        cond_in: torch.Tensor,
        t: torch.Tensor,
        dt: torch.Tensor,
        live: torch.Tensor,
        cfg: torch.Tensor,
    ) -> tuple[torch.Tensor, ...]:
        out = euler_iteration(
            self.estimator,
            mean_mode=self.mean_mode,
            x=x,
            mu_in=mu_in,
            cond_in=cond_in,
            t=t,
            dt=dt,
            live=live,
            cfg=cfg,
        )
        return (out,)

    def _finish(
        self,
        x: torch.Tensor,
        slots: torch.Tensor,
        lm_slots: torch.Tensor,
        positions: torch.Tensor,
        span: int,
    ) -> tuple[torch.Tensor, ...]:
        """x [B, D, P] the solved patches -> (audio [B, N] + stop flag as column N, or for
        1.x the stop flags [B, 1] alone, and the patches [B, P, D]).

        `lm_slots`/`positions` say where each row's new token goes in the LMs' KV; a row
        whose last step this is gets the scratch slot (it has no position left).
        """
        tts = self.tts
        pred = x.transpose(1, 2)  # [B, P, D]
        curr_embed = tts.enc_to_lm_proj(self.encoder(pred.unsqueeze(1)))[:, 0]
        lm_hidden = self.lm_hidden[slots]
        stop = tts.stop_head(tts.stop_actn(tts.stop_proj(lm_hidden))).argmax(dim=-1)
        new_lm = tts.fsq_layer(self.base.step(curr_embed, lm_slots, positions, span))
        if self.v2:
            residual_in = tts.fusion_concat_proj(torch.cat((new_lm, curr_embed), dim=-1))
        else:
            residual_in = new_lm + curr_embed
        new_residual = self.residual.step(residual_in, lm_slots, positions, span)
        self.lm_hidden[slots] = new_lm
        self.residual_hidden[slots] = new_residual
        self.prefix_cond[slots] = pred
        flags = stop.to(torch.float32)[:, None]
        if self.decoder is None:
            return flags, pred.contiguous()
        audio = self.decoder.decode(x, slots, self.sr_cond).to(torch.float32)
        return torch.cat([audio, flags], dim=1), pred.contiguous()
