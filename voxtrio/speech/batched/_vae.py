"""AudioVAE decoding for many streams at once.

VoxCPM2 streams decode one latent patch per step and carry causal-conv state from
one call to the next; upstream keeps that state in closures patched onto the
decoder's convs for the life of one generator. Here the state lives in per-slot
buffers ([slots, channels, context] per conv) of a weight-sharing copy of the
decoder: each step gathers the state of the rows it decodes and scatters the new
state back. VoxCPM 1.x decodes a window of the last patches statelessly.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, cast

import torch
from torch import nn

from voxtrio.speech.batched._upstream import CausalConv, causal_convs

if TYPE_CHECKING:
    from voxcpm.modules.audiovae.audio_vae_v2 import AudioVAE


class _Rows:
    """The slots the current decode call serves, shared by every stateful conv."""

    slots: torch.Tensor | None = None


class _StatefulConv:
    """Forward of one decoder conv that reads and writes its per-slot causal context."""

    def __init__(self, conv: CausalConv, rows: _Rows, *, slots: int) -> None:
        self.module = conv.module
        self.context = conv.context
        self.trim = conv.trim
        self.transposed = conv.transposed
        self.rows = rows
        weight = next(conv.module.parameters())
        self.state = torch.zeros(
            slots, conv.module.in_channels, conv.context, device=weight.device, dtype=weight.dtype
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        slots = self.rows.slots
        assert slots is not None
        full = torch.cat([self.state[slots], x], dim=-1)
        self.state[slots] = full[:, :, -self.context :]
        if isinstance(self.module, nn.Conv1d):
            return nn.Conv1d.forward(self.module, full)
        out = nn.ConvTranspose1d.forward(self.module, full)
        left = self.context * self.module.stride[0]
        return out[..., left : -self.trim] if self.trim > 0 else out[..., left:]


def _sharing_copy(module: nn.Module) -> nn.Module:
    """A copy of `module`'s tree whose tensors (parameters, buffers, weight-norm weights)
    are the original's: new module objects, no new memory."""
    memo: dict[int, object] = {}
    for sub in module.modules():
        for value in vars(sub).values():
            if isinstance(value, torch.Tensor):
                memo[id(value)] = value
        for tensor in (*sub.parameters(recurse=False), *sub.buffers(recurse=False)):
            memo[id(tensor)] = tensor
    clone = copy.deepcopy(module, memo)
    _freeze_weight_norm(clone)
    return clone


def _freeze_weight_norm(module: nn.Module) -> None:
    """Compute each weight-normed weight once (the weights never change while serving)
    and drop the hook that recomputes it on every call."""
    from torch.nn.utils.weight_norm import WeightNorm

    with torch.no_grad():
        for sub in module.modules():
            for key, hook in list(sub._forward_pre_hooks.items()):
                if isinstance(hook, WeightNorm):
                    setattr(sub, hook.name, hook.compute_weight(sub))
                    del sub._forward_pre_hooks[key]


class StreamingDecoder:
    """Batched stateful decode of VoxCPM2's AudioVAE (`audio_vae_v2.AudioVAE`).

    Runs a copy of the VAE whose causal convs carry per-slot state permanently (the
    copy shares every weight), so nothing is patched on voxcpm's own model and one
    decode call has no Python side effects a compiler or a CUDA graph would miss.
    """

    def __init__(self, vae: AudioVAE, *, slots: int) -> None:
        if getattr(vae, "use_noise_block", False):
            raise ValueError("batched decoding does not support an AudioVAE with noise blocks")
        self.vae = _sharing_copy(vae)
        self._rows = _Rows()
        self.convs = [
            _StatefulConv(conv, self._rows, slots=slots)
            for conv in causal_convs(cast(nn.Module, self.vae.decoder))
        ]
        for conv in self.convs:
            # The copy's module, not voxcpm's.
            conv.module.forward = conv.forward  # type: ignore[method-assign,assignment]

    def reset(self, slot: int) -> None:
        """A new stream in `slot`: silence as context, as upstream's first chunk."""
        for conv in self.convs:
            conv.state[slot].zero_()

    def decode(
        self, latents: torch.Tensor, slots: torch.Tensor, sr_cond: torch.Tensor | None = None
    ) -> torch.Tensor:
        """latents [B, D, P] for streams in `slots` -> audio [B, samples]."""
        self._rows.slots = slots
        try:
            decode = cast(Callable[..., torch.Tensor], self.vae.decode)
            return decode(latents.to(torch.float32), sr_cond).squeeze(1)
        finally:
            self._rows.slots = None


def decode_windows(
    vae: nn.Module, windows: Sequence[torch.Tensor], patch_samples: int
) -> list[torch.Tensor]:
    """VoxCPM 1.x: decode each row's window [D, T*P]; keep its last patch of audio.

    Rows with equal window lengths are decoded together.
    """
    out: list[torch.Tensor | None] = [None] * len(windows)
    by_length: dict[int, list[int]] = {}
    for index, window in enumerate(windows):
        by_length.setdefault(window.size(-1), []).append(index)
    for indices in by_length.values():
        batch = torch.stack([windows[i] for i in indices]).to(torch.float32)
        decode = cast(Callable[..., torch.Tensor], vae.decode)
        audio = decode(batch)[..., -patch_samples:].squeeze(1)
        for row, index in enumerate(indices):
            out[index] = audio[row]
    return [audio for audio in out if audio is not None]
