"""MiniCPM4 decode steps over many rows: per-slot KV caches, per-row positions.

The weights are voxcpm's own `MiniCPMModel` layers; only the cache layout and the
attention mask differ from upstream's batch-1 `forward_step` (one scalar position).
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import torch
from torch.nn import functional as F

from voxtrio.speech.batched._upstream import rotary

if TYPE_CHECKING:
    from voxcpm.modules.minicpm4.model import (
        MiniCPMAttention,
        MiniCPMDecoderLayer,
        MiniCPMModel,
    )


def _head_dim(lm: MiniCPMModel) -> int:
    config = lm.config
    return int(config.kv_channels or config.hidden_size // config.num_attention_heads)


class SlotKVCache:
    """K/V of one LM for `slots` slots: [2, layers, slots, kv_heads, length, dim]."""

    def __init__(self, lm: MiniCPMModel, *, slots: int, max_length: int) -> None:
        self._rotate = rotary()
        config = lm.config
        weight = lm.layers[0].self_attn.q_proj.weight
        self.lm = lm
        self.max_length = max_length
        self.buffer = torch.zeros(
            2,
            config.num_hidden_layers,
            slots,
            config.num_key_value_heads,
            max_length,
            _head_dim(lm),
            device=weight.device,
            dtype=weight.dtype,
        )

    def fill(self, slot: int, kv: list[tuple[torch.Tensor, torch.Tensor]]) -> None:
        """Store one row's prefill keys/values (each [1, kv_heads, length, dim]) in `slot`."""
        length = kv[0][0].size(2)
        if length > self.max_length:
            raise ValueError(
                f"prompt of {length} positions exceeds the KV cache ({self.max_length})"
            )
        self.buffer[:, :, slot].zero_()
        for layer, (key, value) in enumerate(kv):
            self.buffer[0, layer, slot, :, :length] = key[0]
            self.buffer[1, layer, slot, :, :length] = value[0]

    def step(
        self, embeds: torch.Tensor, slots: torch.Tensor, positions: torch.Tensor, span: int
    ) -> torch.Tensor:
        """One token per row: `embeds` [B, H] at `positions` [B] in `slots` [B] -> [B, H].

        Attends over the first `span` positions of each slot (a static size: a bucket
        above every row's position), masked per row to its own position.
        """
        lm = self.lm
        position_emb = lm.rope_emb(positions) if lm.rope_emb is not None else None
        if position_emb is not None:
            cos, sin = position_emb
            position_emb = (cos[:, None, None, :], sin[:, None, None, :])
        mask = torch.arange(span, device=embeds.device)[None, :] <= positions[:, None]
        mask = mask[:, None, None, :]
        hidden = embeds
        for index, layer in enumerate(lm.layers):
            residual = hidden
            attn_out = self._attention(
                layer.self_attn,
                layer.input_layernorm(hidden),
                index,
                slots,
                positions,
                span,
                mask,
                position_emb,
            )
            hidden = residual + _scaled(layer, attn_out)
            residual = hidden
            hidden = residual + _scaled(layer, layer.mlp(layer.post_attention_layernorm(hidden)))
        normed: torch.Tensor = lm.norm(hidden)
        return normed

    def _attention(
        self,
        attn: MiniCPMAttention,
        hidden: torch.Tensor,
        layer: int,
        slots: torch.Tensor,
        positions: torch.Tensor,
        span: int,
        mask: torch.Tensor,
        position_emb: tuple[torch.Tensor, torch.Tensor] | None,
    ) -> torch.Tensor:
        rows = hidden.size(0)
        query = attn.q_proj(hidden).view(rows, 1, attn.num_heads, attn.head_dim).transpose(1, 2)
        key = attn.k_proj(hidden).view(rows, 1, attn.num_key_value_heads, attn.head_dim)
        key = key.transpose(1, 2)
        value = attn.v_proj(hidden).view(rows, 1, attn.num_key_value_heads, attn.head_dim)
        value = value.transpose(1, 2)
        if position_emb is not None:
            query, key = self._rotate(query, key, *position_emb)
        key_cache, value_cache = self.buffer[0, layer], self.buffer[1, layer]
        key_cache[slots, :, positions] = key[:, :, 0]
        value_cache[slots, :, positions] = value[:, :, 0]
        keys = key_cache[slots, :, :span]
        values = value_cache[slots, :, :span]
        out = F.scaled_dot_product_attention(
            query.contiguous(), keys, values, attn_mask=mask, enable_gqa=True
        )
        out = out.transpose(1, 2).reshape(rows, attn.num_heads * attn.head_dim)
        projected: torch.Tensor = attn.o_proj(out)
        return projected


def _scaled(layer: MiniCPMDecoderLayer, delta: torch.Tensor) -> torch.Tensor:
    if layer.use_mup:
        scaled: torch.Tensor = delta * (layer.scale_depth / math.sqrt(layer.num_hidden_layers))
        return scaled
    return delta
