"""Static shapes and how a step's device functions run: eager, inductor or CUDA graphs.

A step runs at a padded batch size (a bucket) and attends over a bucketed span, so
each device function sees a handful of fixed shapes. `--compile`:
- `off`: eager PyTorch;
- `on`: on CUDA, each function is captured as a CUDA graph per shape (a replay is a
  few launches instead of one per op; capture takes about two eager runs), on other
  devices `torch.compile` (inductor) per shape;
- `auto`: on CUDA whichever of eager and graphs measures faster at warm-up; on CPU
  eager (inductor's step was not faster on the tiny model, see docs/BENCHMARKS.md,
  and it costs minutes of compiling per bucket).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Literal

import torch

CompileSetting = Literal["off", "auto", "on"]
Mode = Literal["eager", "inductor", "cuda-graphs"]

MIN_SPAN = 128  # attention spans are powers of two from here up to the KV length

Fn = Callable[..., tuple[torch.Tensor, ...]]
PoolHandle = tuple[int, int]  # torch.cuda.graph_pool_handle(): graphs of one model share it


def bucket_sizes(max_batch: int) -> list[int]:
    """1, 2, 4, ... below `max_batch`, then `max_batch` itself."""
    sizes = []
    size = 1
    while size < max_batch:
        sizes.append(size)
        size *= 2
    return [*sizes, max_batch]


def bucket_for(rows: int, sizes: Sequence[int]) -> int:
    """The smallest bucket that holds `rows`."""
    for size in sizes:
        if size >= rows:
            return size
    raise ValueError(f"{rows} rows exceed the largest bucket ({sizes[-1]})")


def span_bucket(span: int, max_length: int) -> int:
    """The attention span a step over positions < `span` runs at."""
    size = MIN_SPAN
    while size < span:
        size *= 2
    return min(size, max_length)


def resolve(setting: CompileSetting, device: torch.device) -> Mode | None:
    """The mode a setting means on this device; None: measure at warm-up (auto on CUDA)."""
    if setting == "off":
        return "eager"
    if setting == "on":
        return "cuda-graphs" if device.type == "cuda" else "inductor"
    return None if device.type == "cuda" else "eager"


def _raise_recompile_limit(limit: int) -> None:
    config = torch._dynamo.config
    name = "recompile_limit" if hasattr(config, "recompile_limit") else "cache_size_limit"
    setattr(config, name, max(getattr(config, name), limit))


# A captured graph, its static inputs (tensors copied into, other values as given), outputs.
_Captured = tuple[torch.cuda.CUDAGraph, list[object], tuple[torch.Tensor, ...]]


class Runner:
    """Runs one device function in a mode; compiled or captured once per shape."""

    def __init__(self, fn: Fn, mode: Mode, *, pool: PoolHandle | None = None) -> None:
        self.fn = fn
        self.mode = mode
        self._pool = pool
        self._graphs: dict[tuple[object, ...], _Captured] = {}
        self._call: Fn = fn
        if mode == "inductor":
            _raise_recompile_limit(256)  # buckets x spans, each its own static graph
            self._call = torch.compile(fn, dynamic=False)

    @property
    def shapes(self) -> int:
        """CUDA graphs captured so far."""
        return len(self._graphs)

    def __call__(self, *args: object) -> tuple[torch.Tensor, ...]:
        if self.mode != "cuda-graphs":
            result: tuple[torch.Tensor, ...] = self._call(*args)
            return result
        key = tuple(
            (a.shape, a.dtype) if isinstance(a, torch.Tensor) else ("value", a) for a in args
        )
        entry = self._graphs.get(key) or self._capture(key, args)
        graph, inputs, outputs = entry
        for static, arg in zip(inputs, args, strict=True):
            if isinstance(static, torch.Tensor):
                static.copy_(arg)  # type: ignore[arg-type]
        graph.replay()
        return outputs

    def _capture(self, key: tuple[object, ...], args: tuple[object, ...]) -> _Captured:
        inputs = [a.clone() if isinstance(a, torch.Tensor) else a for a in args]
        stream = torch.cuda.Stream()  # type: ignore[no-untyped-call]
        stream.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(stream):  # allocator and kernels warm before capture
            for _ in range(2):
                self.fn(*inputs)
        torch.cuda.current_stream().wait_stream(stream)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph, pool=self._pool):  # type: ignore[arg-type]
            outputs = self.fn(*inputs)
        self._graphs[key] = (graph, inputs, outputs)
        return self._graphs[key]
