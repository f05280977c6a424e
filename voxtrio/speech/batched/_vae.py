"""AudioVAE decoding for many streams at once.

VoxCPM2 streams decode one latent patch per step and carry causal-conv state from
one call to the next; upstream keeps that state in closures patched onto the
decoder's convs for the life of one generator. Here the state lives in per-slot
buffers ([max_batch, channels, context] per conv): each step gathers the state of
the rows it decodes, patches the convs for that one call only, and scatters the
new state back. VoxCPM 1.x decodes a window of the last patches statelessly.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, cast

import torch
from torch import nn

from voxtrio.speech._voxcpm_import import import_voxcpm

if TYPE_CHECKING:
    from voxcpm.modules.audiovae.audio_vae import AudioVAE as AudioVAEV1
    from voxcpm.modules.audiovae.audio_vae_v2 import AudioVAE


class _Conv:
    """One decoder conv with its causal context length and per-slot state."""

    def __init__(
        self,
        module: nn.Conv1d | nn.ConvTranspose1d,
        context: int,
        trim: int,
        *,
        transposed: bool,
        max_batch: int,
    ) -> None:
        self.module = module
        self.context = context
        self.trim = trim
        self.transposed = transposed
        channels = module.in_channels
        weight = next(module.parameters())
        self.state = torch.zeros(
            max_batch, channels, context, device=weight.device, dtype=weight.dtype
        )
        self.rows: torch.Tensor | None = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        assert self.rows is not None
        full = torch.cat([self.state[self.rows], x], dim=-1)
        self.state[self.rows] = full[:, :, -self.context :]
        if not self.transposed:
            return nn.Conv1d.forward(cast(nn.Conv1d, self.module), full)
        out = nn.ConvTranspose1d.forward(cast(nn.ConvTranspose1d, self.module), full)
        left = self.context * self.module.stride[0]
        return out[..., left : -self.trim] if self.trim > 0 else out[..., left:]


class StreamingDecoder:
    """Batched stateful decode of VoxCPM2's AudioVAE (`audio_vae_v2.AudioVAE`)."""

    def __init__(self, vae: AudioVAE, *, max_batch: int) -> None:
        if getattr(vae, "use_noise_block", False):
            raise ValueError("batched decoding does not support an AudioVAE with noise blocks")
        import_voxcpm()
        from voxcpm.modules.audiovae.audio_vae_v2 import CausalConv1d, CausalTransposeConv1d

        self.vae = vae
        self.convs: list[_Conv] = []
        for module in vae.decoder.modules():
            if isinstance(module, CausalConv1d):
                pad = module._CausalConv1d__padding * 2 - module._CausalConv1d__output_padding
                if pad > 0:
                    self.convs.append(_Conv(module, pad, 0, transposed=False, max_batch=max_batch))
            elif isinstance(module, CausalTransposeConv1d):
                trim = (
                    module._CausalTransposeConv1d__padding * 2
                    - module._CausalTransposeConv1d__output_padding
                )
                context = (module.kernel_size[0] - 1) // module.stride[0]
                if context > 0:
                    self.convs.append(
                        _Conv(module, context, trim, transposed=True, max_batch=max_batch)
                    )

    def reset(self, slot: int) -> None:
        """A new stream in `slot`: silence as context, as upstream's first chunk."""
        for conv in self.convs:
            conv.state[slot].zero_()

    def decode(self, latents: torch.Tensor, slots: torch.Tensor) -> torch.Tensor:
        """latents [B, D, P] for streams in `slots` -> audio [B, samples]."""
        originals: list[tuple[nn.Module, Callable[..., torch.Tensor]]] = []
        try:
            for conv in self.convs:
                conv.rows = slots
                originals.append((conv.module, conv.module.forward))
                # Patched for this one call (restored below): mypy forbids assigning methods.
                conv.module.forward = conv.forward  # type: ignore[method-assign,assignment]
            audio: torch.Tensor = self.vae.decode(latents.to(torch.float32))
            return audio.squeeze(1)
        finally:
            for module, original in originals:
                module.forward = original
            for conv in self.convs:
                conv.rows = None


def decode_windows(
    vae: AudioVAEV1, windows: Sequence[torch.Tensor], patch_samples: int
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
        audio = vae.decode(batch)[..., -patch_samples:].squeeze(1)
        for row, index in enumerate(indices):
            out[index] = audio[row]
    return [audio for audio in out if audio is not None]
