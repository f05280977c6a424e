"""``config.json`` content for random-weight VoxCPM checkpoints (tiny and released sizes).

Pure data: the shapes of openbmb/VoxCPM2 and openbmb/VoxCPM-0.5B, and the tiny
shapes that keep the real strides (so sample rate and chunk size are the releases').
"""

from __future__ import annotations

import json
from typing import Any

ARCHITECTURES = ("voxcpm2", "voxcpm")
SIZES = ("tiny", "full")

#: Parameter dtypes a checkpoint may be written in (torch.<name>).
DTYPE_NAMES = ("float32", "bfloat16", "float16")


def _rope(head_dim: int) -> dict[str, Any]:
    # Identity LongRoPE factors: they change values, not shapes or compute cost.
    return {
        "type": "longrope",
        "long_factor": [1.0] * (head_dim // 2),
        "short_factor": [1.0] * (head_dim // 2),
        "original_max_position_embeddings": 32768,
    }


def _lm_config(
    *, hidden: int, ffn: int, heads: int, kv_heads: int, head_dim: int, layers: int, vocab: int
) -> dict[str, Any]:
    return {
        "bos_token_id": 1,
        "eos_token_id": 2,
        "hidden_size": hidden,
        "intermediate_size": ffn,
        "max_position_embeddings": 32768,
        "num_attention_heads": heads,
        "num_hidden_layers": layers,
        "num_key_value_heads": kv_heads,
        "rms_norm_eps": 1e-05,
        "rope_theta": 10000,
        "kv_channels": head_dim,
        "rope_scaling": _rope(head_dim),
        "vocab_size": vocab,
        "use_mup": False,
        "scale_emb": 12,
        "dim_model_base": 256,
        "scale_depth": 1.4,
    }


def _local_config(
    *, hidden: int, ffn: int, heads: int, layers: int, head_dim: int
) -> dict[str, Any]:
    return {
        "hidden_dim": hidden,
        "ffn_dim": ffn,
        "num_heads": heads,
        "num_layers": layers,
        "kv_channels": head_dim,
    }


_CFM = {"sigma_min": 1e-06, "solver": "euler", "t_scheduler": "log-norm", "inference_cfg_rate": 2.0}


def _voxcpm2_config(size: str) -> dict[str, Any]:
    # Full sizes follow the released openbmb/VoxCPM2 config.json. Every transformer
    # shares lm_config.rope_scaling, so all of them need the same head dim
    # (kv_channels): 128 in the release, 16 in the tiny model.
    if size == "full":
        lm = _lm_config(
            hidden=2048, ffn=6144, heads=16, kv_heads=2, head_dim=128, layers=28, vocab=73448
        )
        local = {"hidden": 1024, "ffn": 4096, "heads": 16, "layers": 12, "head_dim": 128}
        top = {"feat_dim": 64, "residual_lm_num_layers": 8, "scalar_quantization_latent_dim": 512}
        vae = {"encoder_dim": 128, "latent_dim": 64, "decoder_dim": 2048}
    else:
        lm = _lm_config(hidden=32, ffn=64, heads=2, kv_heads=1, head_dim=16, layers=2, vocab=512)
        local = {"hidden": 32, "ffn": 64, "heads": 2, "layers": 1, "head_dim": 16}
        top = {"feat_dim": 16, "residual_lm_num_layers": 1, "scalar_quantization_latent_dim": 16}
        # decoder_dim must stay divisible by 2**len(decoder_rates) = 64.
        vae = {"encoder_dim": 2, "latent_dim": 16, "decoder_dim": 64}
    return {
        "architecture": "voxcpm2",
        "lm_config": lm,
        "patch_size": 4,
        "feat_dim": top["feat_dim"],
        "scalar_quantization_latent_dim": top["scalar_quantization_latent_dim"],
        "scalar_quantization_scale": 9,
        "residual_lm_num_layers": top["residual_lm_num_layers"],
        "residual_lm_no_rope": True,
        "encoder_config": _local_config(**local),
        "dit_config": {
            **_local_config(**local),
            "dit_mean_mode": False,
            "cfm_config": dict(_CFM),
        },
        "audio_vae_config": {
            "encoder_dim": vae["encoder_dim"],
            "encoder_rates": [2, 5, 8, 8],
            "latent_dim": vae["latent_dim"],
            "decoder_dim": vae["decoder_dim"],
            "decoder_rates": [8, 6, 5, 2, 2, 2],
            "depthwise": True,
            "sr_bin_boundaries": [20000, 30000, 40000],
            "sample_rate": 16000,
            "out_sample_rate": 48000,
        },
        "max_length": 8192,
        "device": "cuda",
        "dtype": "bfloat16" if size == "full" else "float32",
    }


def _voxcpm_config(size: str) -> dict[str, Any]:
    # Full sizes follow openbmb/VoxCPM-0.5B (head dim 1024 / 16 = 64 everywhere).
    if size == "full":
        lm = _lm_config(
            hidden=1024, ffn=4096, heads=16, kv_heads=2, head_dim=64, layers=24, vocab=73448
        )
        local = {"hidden": 1024, "ffn": 4096, "heads": 16, "layers": 4, "head_dim": 64}
        top = {"feat_dim": 64, "residual_lm_num_layers": 6, "scalar_quantization_latent_dim": 256}
        vae = {"encoder_dim": 128, "latent_dim": 64, "decoder_dim": 1536}
    else:
        lm = _lm_config(hidden=32, ffn=64, heads=2, kv_heads=1, head_dim=16, layers=2, vocab=512)
        local = {"hidden": 32, "ffn": 64, "heads": 2, "layers": 1, "head_dim": 16}
        top = {"feat_dim": 16, "residual_lm_num_layers": 1, "scalar_quantization_latent_dim": 16}
        # decoder_dim must stay divisible by 2**len(decoder_rates) = 16.
        vae = {"encoder_dim": 2, "latent_dim": 16, "decoder_dim": 32}
    return {
        "architecture": "voxcpm",
        "lm_config": lm,
        "patch_size": 2,
        "feat_dim": top["feat_dim"],
        "scalar_quantization_latent_dim": top["scalar_quantization_latent_dim"],
        "scalar_quantization_scale": 9,
        "residual_lm_num_layers": top["residual_lm_num_layers"],
        "encoder_config": _local_config(**local),
        "dit_config": {**_local_config(**local), "cfm_config": dict(_CFM)},
        "audio_vae_config": {
            "encoder_dim": vae["encoder_dim"],
            "encoder_rates": [2, 5, 8, 8],
            "latent_dim": vae["latent_dim"],
            "decoder_dim": vae["decoder_dim"],
            "decoder_rates": [8, 8, 5, 2],
            "depthwise": True,
            "sample_rate": 16000,
        },
        "max_length": 4096,
        "device": "cuda",
        "dtype": "bfloat16" if size == "full" else "float32",
        "dit_mean_mode": False,
    }


def model_config(
    arch: str = "voxcpm2", size: str = "tiny", *, dtype: str | None = None
) -> dict[str, Any]:
    """The ``config.json`` content (without the builder record) for ``arch`` and ``size``."""
    if arch not in ARCHITECTURES:
        raise ValueError(f"arch must be one of {ARCHITECTURES}, not {arch!r}")
    if size not in SIZES:
        raise ValueError(f"size must be one of {SIZES}, not {size!r}")
    config = _voxcpm2_config(size) if arch == "voxcpm2" else _voxcpm_config(size)
    if dtype is not None:
        if dtype not in DTYPE_NAMES:
            raise ValueError(f"dtype must be one of {DTYPE_NAMES}, not {dtype!r}")
        config["dtype"] = dtype
    return config


def full_config(arch: str) -> dict[str, Any]:
    """The released model's ``config.json`` shapes for ``arch`` (bfloat16)."""
    return model_config(arch, "full")


def json_text(obj: Any) -> str:
    """``obj`` as the checkpoint's JSON files are written: indented, UTF-8, final newline."""
    return json.dumps(obj, indent=2, ensure_ascii=False) + "\n"
