"""One row's prefill: voxcpm's own input layout, then its LMs over the whole prompt.

The token/feature layout of every prompt mode (zero-shot, continuation, reference,
reference + continuation; 1.x continuation) and the text-length cap on `max_len`
are taken from voxcpm itself (`_upstream.inference_arguments`).
"""

from __future__ import annotations

from typing import Any

import attrs
import torch

from voxtrio.speech.batched._upstream import feat_encoder, inference_arguments


@attrs.frozen
class ModelInputs:
    """What upstream hands `_inference` for one request (batch 1)."""

    text: torch.Tensor  # [1, T] token ids
    text_mask: torch.Tensor  # [1, T]
    feat: torch.Tensor  # [1, T, P, D] prompt latents
    feat_mask: torch.Tensor  # [1, T]
    min_len: int
    max_len: int  # already capped by the target text's length
    streaming_prefix_len: int


def model_inputs(
    tts: Any, *, text: str, prompt_cache: Any, max_len: int, ratio_threshold: float
) -> ModelInputs:
    """The inputs voxcpm would build for this request, without generating anything."""
    args, kwargs = inference_arguments(
        tts, text=text, prompt_cache=prompt_cache, max_len=max_len, ratio_threshold=ratio_threshold
    )
    text_token, text_mask, feat, feat_mask = args
    return ModelInputs(
        text=text_token,
        text_mask=text_mask,
        feat=feat,
        feat_mask=feat_mask,
        min_len=int(kwargs["min_len"]),
        max_len=int(kwargs["max_len"]),
        streaming_prefix_len=int(kwargs["streaming_prefix_len"]),
    )


@attrs.frozen
class PrefillState:
    """One row after its prompt went through both LMs (KV written by the caller's caches)."""

    lm_hidden: torch.Tensor  # [H]
    residual_hidden: torch.Tensor  # [H]
    prefix_cond: torch.Tensor  # [P, D] the last prompt patch (zeros without audio)
    context: list[torch.Tensor]  # [P, D] trailing prompt patches (1.x decode window)
    length: int  # KV positions used


def run_prefill(
    tts: Any, inputs: ModelInputs, *, fused_residual: bool
) -> tuple[PrefillState, list[Any], list[Any]]:
    """Upstream `_inference` up to its decode loop; returns the state and both LMs' KV."""
    feat, feat_mask, text_mask = inputs.feat, inputs.feat_mask, inputs.text_mask
    feat_embed = tts.enc_to_lm_proj(feat_encoder(tts)(feat))
    lm_config = tts.config.lm_config
    scale_emb = lm_config.scale_emb if lm_config.use_mup else 1.0
    text_embed = tts.base_lm.embed_tokens(inputs.text) * scale_emb
    combined = text_mask.unsqueeze(-1) * text_embed + feat_mask.unsqueeze(-1) * feat_embed

    enc_outputs, base_kv = tts.base_lm(inputs_embeds=combined, is_causal=True)
    enc_outputs = tts.fsq_layer(enc_outputs) * feat_mask.unsqueeze(
        -1
    ) + enc_outputs * text_mask.unsqueeze(-1)
    if fused_residual:  # VoxCPM2
        residual_in = tts.fusion_concat_proj(
            torch.cat((enc_outputs, feat_mask.unsqueeze(-1) * feat_embed), dim=-1)
        )
    else:  # VoxCPM 1.x
        residual_in = enc_outputs + feat_mask.unsqueeze(-1) * feat_embed
    residual_out, residual_kv = tts.residual_lm(inputs_embeds=residual_in, is_causal=True)

    audio_patches = int(feat_mask.sum().item())
    context: list[torch.Tensor] = []
    count = min(inputs.streaming_prefix_len - 1, audio_patches)
    if count > 0:
        context = list(feat[0, -count:])
    state = PrefillState(
        lm_hidden=enc_outputs[0, -1],
        residual_hidden=residual_out[0, -1],
        prefix_cond=feat[0, -1],
        context=context,
        length=combined.size(1),
    )
    return state, base_kv, residual_kv
