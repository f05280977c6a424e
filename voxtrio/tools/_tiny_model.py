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

Split into ``_tiny_config`` (config.json), ``_tiny_tokenizer`` (tokenizer files) and
``_tiny_weights`` (random weights); this module builds and places the directory and
re-exports the public names.
"""

from __future__ import annotations

import os
import pathlib
import re
import shutil
import tempfile
from typing import get_args

import torch

from voxtrio.speech._voxcpm_import import import_voxcpm
from voxtrio.tools._tiny_config import (
    ARCHITECTURES,
    SIZES,
    full_config,
    json_text,
    model_config,
)
from voxtrio.tools._tiny_tokenizer import tokenizer_files
from voxtrio.tools._tiny_weights import (
    StopPolicy,
    calibrate_output_level,
    instantiate,
    parameter_count,
    save_weights,
    set_stop_policy,
)

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

#: Bumped whenever the same arguments would produce different files.
BUILDER_VERSION = 1

#: ``config.json`` key recording how a checkpoint was built (voxcpm ignores it).
CONFIG_KEY = "voxtrio_tiny"


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
        (staging / "config.json").write_text(json_text(config), encoding="utf-8")
        for name, text in tokenizer_files().items():
            (staging / name).write_text(text, encoding="utf-8")
        # fork_rng: the seed must not leak into the caller's global RNG stream.
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            model, vae = instantiate(config)
        set_stop_policy(model, stop)
        calibrate_output_level(vae, seed)
        save_weights(model, vae, staging)
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
