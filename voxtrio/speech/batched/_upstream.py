"""Every use of voxcpm's private names by the batched model, in one place.

voxcpm 2.0.3 has no batching API, so the batched model reaches past its public
surface in a few spots. They are all here, each with what it stands for, so that
a voxcpm upgrade is checked against this one module:

- `_generate_with_prompt_cache` / `_inference`: the request's model inputs are
  taken from voxcpm's own input builder (it runs against a probe whose
  `_inference` records its arguments instead of generating);
- `_feat_encoder_raw`, `_orig_mod`: the eager modules under voxcpm's `optimize`
  (torch.compile at batch 1; batch sizes vary here);
- `CausalConv1d.__padding` / `__output_padding` (name-mangled): the causal
  context each AudioVAE v2 decoder conv keeps between streaming chunks.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import attrs
import torch
from torch import nn

from voxtrio.speech._voxcpm_import import import_voxcpm


def eager(module: nn.Module) -> nn.Module:
    """The module itself when voxcpm's `optimize` wrapped it in torch.compile."""
    return getattr(module, "_orig_mod", module)


def feat_encoder(tts: Any) -> nn.Module:
    """LocEnc as voxcpm's prefill runs it (the raw module, not its compiled wrapper)."""
    return eager(getattr(tts, "_feat_encoder_raw", tts.feat_encoder))


def rotary() -> Any:
    """MiniCPM4's `apply_rotary_pos_emb(q, k, cos, sin)`."""
    import_voxcpm()
    from voxcpm.modules.minicpm4.model import apply_rotary_pos_emb

    return apply_rotary_pos_emb


@attrs.frozen
class CausalConv:
    """One AudioVAE v2 decoder conv and the causal context it carries across chunks."""

    module: nn.Conv1d | nn.ConvTranspose1d
    context: int  # input frames kept from the previous chunk
    trim: int  # output frames a transposed conv drops at the end
    transposed: bool


def causal_convs(decoder: nn.Module) -> Iterator[CausalConv]:
    """The decoder's convs that need state between chunks (context > 0), in module order."""
    import_voxcpm()
    from voxcpm.modules.audiovae.audio_vae_v2 import CausalConv1d, CausalTransposeConv1d

    for module in decoder.modules():
        if isinstance(module, CausalConv1d):
            pad = module._CausalConv1d__padding * 2 - module._CausalConv1d__output_padding
            if pad > 0:
                yield CausalConv(module, pad, 0, transposed=False)
        elif isinstance(module, CausalTransposeConv1d):
            trim = (
                module._CausalTransposeConv1d__padding * 2
                - module._CausalTransposeConv1d__output_padding
            )
            context = (module.kernel_size[0] - 1) // module.stride[0]
            if context > 0:
                yield CausalConv(module, context, trim, transposed=True)


class _Captured(Exception):
    def __init__(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        super().__init__("inputs captured")
        self.args = args
        self.kwargs = kwargs


class _InputsProbe:
    """Stands in for the model: everything forwards, `_inference` records and stops."""

    def __init__(self, tts: Any) -> None:
        self._tts = tts

    def __getattr__(self, name: str) -> Any:
        return getattr(self._tts, name)

    def _inference(self, *args: Any, **kwargs: Any) -> Any:
        raise _Captured(args, kwargs)


def inference_arguments(
    tts: Any, *, text: str, prompt_cache: Any, max_len: int, ratio_threshold: float
) -> tuple[tuple[torch.Tensor, ...], dict[str, Any]]:
    """The positional and keyword arguments voxcpm's streaming path hands `_inference`."""
    stream = type(tts)._generate_with_prompt_cache(
        _InputsProbe(tts),
        target_text=text,
        prompt_cache=prompt_cache,
        max_len=max_len,
        retry_badcase=False,
        retry_badcase_ratio_threshold=ratio_threshold,
        streaming=True,
    )
    try:
        next(stream)
    except _Captured as captured:
        return captured.args, captured.kwargs
    finally:
        stream.close()
    raise RuntimeError("voxcpm generated without calling _inference")
