"""Per-thread random streams for voxcpm, so a seed reproduces audio under concurrency.

voxcpm 2.0.3 takes no seed and draws its diffusion noise from torch's global
generator, which every model thread shares: seeding it before a call is only
reproducible while one generation runs at a time. We give each model thread its
own `torch.Generator` and route the random draws of voxcpm's sampling modules to
it, through a stand-in for the `torch` name in just those modules.
"""

from __future__ import annotations

import importlib
import threading
from types import ModuleType
from typing import Any

import torch

_local = threading.local()
_install_lock = threading.Lock()
_installed = False

# The modules whose inference code calls torch.randn / torch.rand.
_SAMPLING_MODULES = (
    "voxcpm.modules.locdit.unified_cfm",
    "voxcpm.modules.audiovae.audio_vae",
    "voxcpm.modules.audiovae.audio_vae_v2",
)


class _ThreadSeededTorch:
    """Forwards everything to torch, adding this thread's generator to random draws."""

    def __init__(self, real: ModuleType) -> None:
        self._real = real

    def __getattr__(self, name: str) -> Any:
        return getattr(self._real, name)

    def _draw(self, fn: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        generator = getattr(_local, "generator", None)
        if generator is not None and "generator" not in kwargs:
            kwargs["generator"] = generator
        return fn(*args, **kwargs)

    def randn(self, *args: Any, **kwargs: Any) -> Any:
        return self._draw(self._real.randn, args, kwargs)

    def rand(self, *args: Any, **kwargs: Any) -> Any:
        return self._draw(self._real.rand, args, kwargs)


def install() -> None:
    """Route voxcpm's sampling draws through the per-thread generator (idempotent)."""
    global _installed
    with _install_lock:
        if _installed:
            return
        for name in _SAMPLING_MODULES:
            module = importlib.import_module(name)
            if getattr(module, "torch", None) is torch:
                module.torch = _ThreadSeededTorch(torch)  # type: ignore[attr-defined]
        _installed = True


def use_generator(generator: torch.Generator | None) -> None:
    """Make `generator` the source of voxcpm's random draws on the calling thread."""
    _local.generator = generator
