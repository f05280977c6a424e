"""Random weights for a checkpoint: voxcpm's real modules, a predictable stop head, a
calibrated output level, and safetensors files."""

from __future__ import annotations

import contextlib
import copy
import math
import pathlib
import types
import warnings
from collections.abc import Iterator
from typing import Any, Literal

import torch

from voxtrio.speech._voxcpm_import import import_voxcpm
from voxtrio.tools._tiny_config import DTYPE_NAMES

DTYPES = {name: getattr(torch, name) for name in DTYPE_NAMES}

StopPolicy = Literal["never", "always", "random"]
"""How the stop head behaves.

- ``"never"``: never stops; a generation runs to voxcpm's cap,
  ``min(int(tokens(text) * retry_badcase_ratio_threshold + 10), max_len)`` steps.
- ``"always"``: stops at the first step voxcpm allows: its loop checks
  ``i > min_len`` after yielding step ``i``, so a generation is ``min_len + 2`` steps
  (4 with the default ``min_len=2``), or the cap if that is smaller.
- ``"random"``: leaves the random weights; the length depends on the seed and text.
"""


def parameter_count(config: dict[str, Any]) -> int:
    """Parameters of the model ``config`` describes, VAE included, allocating no weights."""
    cfg = copy.deepcopy(config)
    # The static KV caches are allocated on an explicit device, outside the meta
    # context; their length does not change the parameter count.
    cfg["max_length"] = 1
    with torch.device("meta"):
        model, vae = instantiate(cfg)
    del vae  # already a submodule of model
    return sum(p.numel() for p in model.parameters())


def instantiate(config: dict[str, Any]) -> tuple[Any, Any]:
    """voxcpm's real model (with its VAE as ``.audio_vae``) for ``config``, on CPU."""
    import_voxcpm()
    if config.get("architecture", "voxcpm") == "voxcpm2":
        from voxcpm.model import voxcpm2 as model_module
        from voxcpm.modules.audiovae import audio_vae_v2 as vae_module

        model_cls = model_module.VoxCPM2Model
    else:
        from voxcpm.model import voxcpm as model_module
        from voxcpm.modules.audiovae import audio_vae as vae_module

        model_cls = model_module.VoxCPMModel

    model_config_obj = model_module.VoxCPMConfig.model_validate(config)
    vae_config = vae_module.AudioVAEConfig.model_validate(config["audio_vae_config"])
    # The model only reads the tokenizer's .vocab (to find multi-character Chinese
    # tokens) at construction; the checkpoint's tokenizer is loaded from disk later.
    no_vocab = types.SimpleNamespace(vocab={})
    with warnings.catch_warnings():
        # voxcpm's VAE uses torch.nn.utils.weight_norm, deprecated (FutureWarning,
        # once per conv layer) since torch 2.1; nothing to act on here.
        warnings.filterwarnings(
            "ignore",
            message=r"`torch\.nn\.utils\.weight_norm` is deprecated",
            category=FutureWarning,
        )
        # The VAE always runs in float32 (voxcpm's loader casts it back), so it is
        # built outside the default-dtype switch.
        with _default_dtype(torch.float32):
            vae = vae_module.AudioVAE(config=vae_config)
        with _default_dtype(DTYPES[config["dtype"]]):
            model = model_cls(model_config_obj, no_vocab, vae, device="cpu")
    return model, vae


@contextlib.contextmanager
def _default_dtype(dtype: torch.dtype) -> Iterator[None]:
    # Creating parameters directly in the target dtype keeps a full-size bfloat16
    # build at 1x its size in RAM instead of a float32 copy (2x) cast afterwards.
    # torch's default dtype is process-wide: do not build while other threads
    # create tensors.
    previous = torch.get_default_dtype()
    if previous == dtype:
        yield
        return
    torch.set_default_dtype(dtype)
    try:
        yield
    finally:
        torch.set_default_dtype(previous)


@torch.no_grad()
def set_stop_policy(model: Any, stop: StopPolicy) -> None:
    """Make the stop logits independent of the hidden state (class 0 = go on, 1 = stop)."""
    if stop == "random":
        return
    # stop_head(silu(stop_proj(h))): a zero weight and unit bias make silu(...) a
    # constant positive vector, so the head's rows alone decide the argmax.
    model.stop_proj.weight.zero_()
    model.stop_proj.bias.fill_(1.0)
    winner, loser = (0, 1) if stop == "never" else (1, 0)
    model.stop_head.weight[winner].fill_(1.0)
    model.stop_head.weight[loser].fill_(-1.0)


#: Pre-tanh standard deviation the VAE's last conv is scaled to (about -20 dBFS).
_OUTPUT_STD = 0.1


@torch.no_grad()
def calibrate_output_level(vae: Any, seed: int) -> None:
    """Make the random VAE's output zero-mean noise at a moderate level.

    Left alone, the Snake activations stack up a large DC offset: the tiny VoxCPM2
    VAE's output sits at about -0.93 (a full-scale DC "click", not noise). Decode a
    few random latent frames, then shift and scale the last conv (just before the
    tanh) so its output has mean 0 and std ~_OUTPUT_STD. Both corrections are
    rounded (mean to 1e-3, scale to a power of two) so float noise from thread
    counts or CPU kernels cannot change the written bytes.
    """
    conv = vae.decoder.model[-2]  # WNCausalConv1d(out_dim, 1) before the final Tanh
    captured: list[torch.Tensor] = []
    hook = conv.register_forward_hook(lambda _m, _i, out: captured.append(out))
    try:
        generator = torch.Generator().manual_seed(seed)
        vae.decode(torch.randn(1, vae.latent_dim, 16, generator=generator))
    finally:
        hook.remove()
    out = captured[0].double()
    mean = round(float(out.mean()), 3)
    scale = 2.0 ** round(math.log2(_OUTPUT_STD / max(float(out.std()), 1e-12)))
    # weight_norm: weight = g * v / |v|, so scaling g scales the weight.
    conv.weight_g.mul_(scale)
    conv.bias.copy_((conv.bias - mean) * scale)


def save_weights(model: Any, vae: Any, directory: pathlib.Path) -> None:
    from safetensors.torch import save_file

    metadata = {"format": "pt"}
    # Saved tensors must be contiguous and not share storage; clone only those
    # that are not (none in practice), so a full-size build is not copied.
    vae_state = {k: _own(v) for k, v in vae.state_dict().items()}
    save_file(vae_state, directory / "audiovae.safetensors", metadata=metadata)
    del vae_state
    model_state = {
        k: _own(v) for k, v in model.state_dict().items() if not k.startswith("audio_vae.")
    }
    save_file(model_state, directory / "model.safetensors", metadata=metadata)


def _own(tensor: torch.Tensor) -> torch.Tensor:
    tensor = tensor.detach()
    if not tensor.is_contiguous() or tensor.untyped_storage().nbytes() != (
        tensor.numel() * tensor.element_size()
    ):
        return tensor.contiguous().clone()
    return tensor
