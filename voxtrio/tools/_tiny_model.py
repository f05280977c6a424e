"""Random-weight VoxCPM checkpoints, built offline with voxcpm's own classes.

``build_checkpoint`` writes a model directory that voxcpm's real loader
(``VoxCPM.from_pretrained(dir, load_denoiser=False, optimize=False, device="cpu")``)
reads with no missing or unexpected keys:

- ``size="tiny"``: hidden size 32, one or two layers per transformer, float32 and
  a VAE with tiny channel counts but the real strides, so the output sample rate and
  streaming chunk size are the released models' (VoxCPM2: 48 kHz, 7680 samples per
  chunk; VoxCPM 1.x / VoxCPM-0.5B: 16 kHz, 1280 samples). About 0.6 MB; loads in
  under 0.1 s and streams 50 chunks in under a second on 2 CPU cores.
- ``size="full"``: the released models' shapes (VoxCPM2: 2.29B parameters plus a 94M
  VAE; VoxCPM-0.5B: 0.65B plus 75M) in bfloat16, to measure real compute cost where
  no weights can be fetched.

The stop head is set so that the generation length is predictable (see
:data:`StopPolicy` and :func:`expected_chunks`). Audio from random weights is noise.
"""

from __future__ import annotations

import contextlib
import copy
import json
import math
import os
import pathlib
import re
import shutil
import tempfile
import types
import warnings
from collections.abc import Iterator
from typing import Any, Literal, get_args

import torch

from voxtrio.speech._voxcpm_import import import_voxcpm

__all__ = [
    "ARCHITECTURES",
    "BUILDER_VERSION",
    "SIZES",
    "StopPolicy",
    "build_checkpoint",
    "expected_chunks",
    "full_config",
    "model_config",
    "parameter_count",
]

ARCHITECTURES = ("voxcpm2", "voxcpm")
SIZES = ("tiny", "full")

StopPolicy = Literal["never", "always", "random"]
"""How the stop head behaves.

- ``"never"``: never stops; a generation runs to voxcpm's cap,
  ``min(int(tokens(text) * retry_badcase_ratio_threshold + 10), max_len)`` steps.
- ``"always"``: stops at the first step voxcpm allows: its loop checks
  ``i > min_len`` after yielding step ``i``, so a generation is ``min_len + 2`` steps
  (4 with the default ``min_len=2``), or the cap if that is smaller.
- ``"random"``: leaves the random weights; the length depends on the seed and text.
"""

#: Bumped whenever the same arguments would produce different files.
BUILDER_VERSION = 1

#: ``config.json`` key recording how a checkpoint was built (voxcpm ignores it).
CONFIG_KEY = "voxtrio_tiny"

_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}

# Hard-coded in voxcpm: 101/102 open and close the audio span, 103/104 (VoxCPM2)
# the reference-audio span. The tokenizer reserves these ids for special tokens.
_AUDIO_TOKENS = ("<|audio_start|>", "<|audio_end|>", "<|ref_audio_start|>", "<|ref_audio_end|>")
_FIRST_AUDIO_TOKEN_ID = 101


# ---------------------------------------------------------------------------
# Configs
# ---------------------------------------------------------------------------


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


def model_config(arch: str = "voxcpm2", size: str = "tiny", *, dtype: str | None = None) -> dict:
    """The ``config.json`` content (without the builder record) for ``arch`` and ``size``."""
    if arch not in ARCHITECTURES:
        raise ValueError(f"arch must be one of {ARCHITECTURES}, not {arch!r}")
    if size not in SIZES:
        raise ValueError(f"size must be one of {SIZES}, not {size!r}")
    config = _voxcpm2_config(size) if arch == "voxcpm2" else _voxcpm_config(size)
    if dtype is not None:
        if dtype not in _DTYPES:
            raise ValueError(f"dtype must be one of {tuple(_DTYPES)}, not {dtype!r}")
        config["dtype"] = dtype
    return config


def full_config(arch: str) -> dict:
    """The released model's ``config.json`` shapes for ``arch`` (bfloat16)."""
    return model_config(arch, "full")


def parameter_count(config: dict) -> int:
    """Parameters of the model ``config`` describes, VAE included, allocating no weights."""
    cfg = copy.deepcopy(config)
    # The static KV caches are allocated on an explicit device, outside the meta
    # context; their length does not change the parameter count.
    cfg["max_length"] = 1
    with torch.device("meta"):
        model, vae = _instantiate(cfg)
    del vae  # already a submodule of model
    return sum(p.numel() for p in model.parameters())


# ---------------------------------------------------------------------------
# Tokenizer
# ---------------------------------------------------------------------------

# A few multi-character tokens (merged by BPE) so tokenization is not just
# characters; the Chinese words also exercise voxcpm's mask_multichar_chinese_tokens.
_WORDS = (
    "▁the", "▁and", "▁to", "▁of", "▁a", "▁is", "▁in", "▁it", "▁you", "▁that", "▁for",
    "▁on", "▁with", "▁this", "▁hello", "▁world", "▁voice", "▁speech", "▁from",
    "ing", "ed", "er", "es", "th", "▁Hello", "▁The",
    "你好", "世界", "今天", "天气", "我们", "中国", "语音", "合成", "声音", "流式",
)  # fmt: skip
_CHINESE_PUNCTUATION = "，。！？、：；"


def _tokenizer_files() -> dict[str, str]:
    """``tokenizer.json``, ``tokenizer_config.json`` and ``special_tokens_map.json`` texts."""
    from tokenizers import AddedToken, Tokenizer, decoders, pre_tokenizers
    from tokenizers.models import BPE

    vocab: dict[str, int] = {}

    def add(token: str) -> None:
        if token not in vocab:
            vocab[token] = len(vocab)

    for token in ("<unk>", "<s>", "</s>", "▁"):
        add(token)
    for code in range(0x21, 0x7F):  # printable ASCII
        add(chr(code))
    while len(vocab) < _FIRST_AUDIO_TOKEN_ID:
        add(f"<|reserved_{len(vocab)}|>")
    for token in _AUDIO_TOKENS:
        add(token)
    for byte in range(256):  # byte fallback: any text encodes
        add(f"<0x{byte:02X}>")
    for char in _CHINESE_PUNCTUATION:
        add(char)
    merges: list[tuple[str, str]] = []
    for word in _WORDS:
        current = word[0]
        add(current)
        for char in word[1:]:
            add(char)
            if (current, char) not in merges:
                merges.append((current, char))
            current += char
            add(current)
    assert vocab[_AUDIO_TOKENS[0]] == _FIRST_AUDIO_TOKEN_ID

    # The pipeline transformers >= 5 rebuilds for LlamaTokenizerFast (it keeps only
    # vocab and merges from tokenizer.json), written out so 4.x, which uses the file
    # as is, tokenizes the same way.
    tokenizer = Tokenizer(
        BPE(vocab=vocab, merges=merges, unk_token="<unk>", fuse_unk=True, byte_fallback=True)
    )
    tokenizer.pre_tokenizer = pre_tokenizers.Metaspace(
        replacement="▁", prepend_scheme="first", split=False
    )
    tokenizer.decoder = decoders.Sequence(
        [
            decoders.Replace("▁", " "),
            decoders.ByteFallback(),
            decoders.Fuse(),
            decoders.Strip(" ", 1, 0),
        ]
    )
    specials = ["<unk>", "<s>", "</s>", *_AUDIO_TOKENS]
    reserved = [t for t in vocab if t.startswith("<|reserved_")]
    tokenizer.add_special_tokens(
        [AddedToken(t, special=True, normalized=False) for t in specials + reserved]
    )

    tokenizer_config = {
        "tokenizer_class": "LlamaTokenizerFast",
        "add_bos_token": False,
        "add_eos_token": False,
        "legacy": False,
        "bos_token": "<s>",
        "eos_token": "</s>",
        "unk_token": "<unk>",
        "model_max_length": 32768,
        "clean_up_tokenization_spaces": False,
    }
    special_tokens_map = {"bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>"}
    return {
        "tokenizer.json": tokenizer.to_str(pretty=True),
        "tokenizer_config.json": _json(tokenizer_config),
        "special_tokens_map.json": _json(special_tokens_map),
    }


# ---------------------------------------------------------------------------
# Weights
# ---------------------------------------------------------------------------


def _instantiate(config: dict) -> tuple[Any, Any]:
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
        with _default_dtype(_DTYPES[config["dtype"]]):
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
def _set_stop_policy(model: Any, stop: StopPolicy) -> None:
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
def _calibrate_output_level(vae: Any, seed: int) -> None:
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


def _save_weights(model: Any, vae: Any, directory: pathlib.Path) -> None:
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


# ---------------------------------------------------------------------------
# Public builder
# ---------------------------------------------------------------------------


def build_checkpoint(
    out_dir: str | os.PathLike[str],
    *,
    arch: str = "voxcpm2",
    size: str = "tiny",
    stop: StopPolicy = "never",
    seed: int = 0,
    dtype: str | None = None,
    force: bool = False,
) -> pathlib.Path:
    """Write a random-weight checkpoint for ``arch``/``size`` to ``out_dir`` and return its path.

    The same arguments give byte-identical files. ``dtype`` defaults to float32 for
    "tiny" and bfloat16 for "full". The directory appears atomically (built beside it,
    then renamed). An existing non-empty ``out_dir`` is an error unless ``force``,
    which replaces it only if it is a checkpoint (has ``config.json``).

    Not for use while other threads run torch: the build briefly switches torch's
    process-wide default dtype (so a bfloat16 model is created as bfloat16, 1x its
    size in RAM) and the warning filters. "full" needs about 6 GB of RAM and 40 s
    (VoxCPM2) or 2.3 GB and 15 s (VoxCPM-0.5B) on 2 CPU cores.
    """
    if stop not in get_args(StopPolicy):
        raise ValueError(f"stop must be one of {get_args(StopPolicy)}, not {stop!r}")
    config = model_config(arch, size, dtype=dtype)
    out = pathlib.Path(out_dir).absolute()
    _check_target(out, force=force)
    config[CONFIG_KEY] = {
        "builder_version": BUILDER_VERSION,
        "arch": arch,
        "size": size,
        "stop": stop,
        "seed": seed,
        "dtype": config["dtype"],
    }

    out.parent.mkdir(parents=True, exist_ok=True)
    staging = pathlib.Path(tempfile.mkdtemp(prefix=f".{out.name}.building-", dir=out.parent))
    try:
        (staging / "config.json").write_text(_json(config), encoding="utf-8")
        for name, text in _tokenizer_files().items():
            (staging / name).write_text(text, encoding="utf-8")
        # fork_rng: the seed must not leak into the caller's global RNG stream.
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            model, vae = _instantiate(config)
        _set_stop_policy(model, stop)
        _calibrate_output_level(vae, seed)
        _save_weights(model, vae, staging)
        del model, vae
        staging.chmod(0o755)  # mkdtemp creates it 0700
        _move_into_place(staging, out, force=force)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return out


def _check_target(out: pathlib.Path, *, force: bool) -> None:
    if not out.exists() and not out.is_symlink():
        return
    if not out.is_dir():
        raise FileExistsError(f"{out} exists and is not a directory")
    if not any(out.iterdir()):
        return
    if not force:
        raise FileExistsError(f"{out} is not empty; pass force=True to replace it")
    if not (out / "config.json").is_file():
        # force replaces a previous checkpoint, not an arbitrary directory.
        raise FileExistsError(f"{out} is not empty and holds no config.json; not replacing it")


def _move_into_place(staging: pathlib.Path, out: pathlib.Path, *, force: bool) -> None:
    # Re-checked here: the target may have appeared during the build.
    _check_target(out, force=force)
    if out.is_dir() and any(out.iterdir()):
        old = pathlib.Path(tempfile.mkdtemp(prefix=f".{out.name}.old-", dir=out.parent))
        os.replace(out, old / "checkpoint")
        try:
            os.replace(staging, out)
        except BaseException:
            os.replace(old / "checkpoint", out)  # put the previous checkpoint back
            old.rmdir()
            raise
        shutil.rmtree(old, ignore_errors=True)
    else:
        # rename(2) replaces an empty directory in one step.
        os.replace(staging, out)


def _json(obj: Any) -> str:
    return json.dumps(obj, indent=2, ensure_ascii=False) + "\n"


# ---------------------------------------------------------------------------
# Length prediction
# ---------------------------------------------------------------------------


def expected_chunks(
    model_dir: str | os.PathLike[str], text: str, *, max_len: int = 4096, ratio: float = 6.0
) -> int:
    """Chunks (LM steps) a "never"-stop checkpoint generates for ``text`` with no prompt.

    Mirrors voxcpm 2.0.3: ``VoxCPM.generate*`` collapses whitespace, then the model
    caps the loop at ``min(int(len(tokens(text)) * ratio + 10), max_len)``, tokenizing
    with the checkpoint's tokenizer wrapped by ``mask_multichar_chinese_tokens``.
    ``ratio`` is ``retry_badcase_ratio_threshold``; assumes ``normalize=False``.
    """
    import_voxcpm()
    from transformers import LlamaTokenizerFast
    from voxcpm.model.utils import mask_multichar_chinese_tokens

    tokenizer = mask_multichar_chinese_tokens(LlamaTokenizerFast.from_pretrained(str(model_dir)))
    text = re.sub(r"\s+", " ", text.replace("\n", " "))
    return min(int(len(tokenizer(text)) * ratio + 10), max_len)
