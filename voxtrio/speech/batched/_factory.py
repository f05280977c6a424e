"""Batched models from the engines `--engine` loads, and the step-loop replicas."""

from __future__ import annotations

from voxtrio.speech._engine import Engine, EngineFactory
from voxtrio.speech._synthetic import SyntheticEngine
from voxtrio.speech.batched._graphs import CompileSetting
from voxtrio.speech.batched._interface import BatchModel
from voxtrio.speech.batched._loop import BatchReplica

# `--max-batch 0` (auto): rows per instance by where the model runs.
AUTO_MAX_BATCH = {"synthetic": 256, "cpu": 16, "cuda": 64}


def auto_max_batch(engine: Engine) -> int:
    if isinstance(engine, SyntheticEngine):
        return AUTO_MAX_BATCH["synthetic"]
    device = str(getattr(engine, "device", "cpu"))
    return AUTO_MAX_BATCH["cuda" if device.startswith("cuda") else "cpu"]


def batch_model_for(
    engine: Engine, max_batch: int = 0, compile: CompileSetting = "off"
) -> BatchModel:
    """The batched form of a loaded engine (same weights, same voices); else one row."""
    rows = max_batch or auto_max_batch(engine)
    if type(engine) is SyntheticEngine:
        from voxtrio.speech.batched._synthetic import BatchedSynthetic

        return BatchedSynthetic(engine, max_batch=rows)
    from voxtrio.speech._voxcpm_engine import VoxCPMEngine

    if isinstance(engine, VoxCPMEngine):
        from voxtrio.speech.batched._voxcpm import BatchedVoxCPM

        return BatchedVoxCPM(engine, max_batch=rows, compile=compile)
    from voxtrio.speech.batched._serial import SerialBatch

    return SerialBatch(engine)


def batch_replicas(
    factory: EngineFactory,
    *,
    workers: int,
    max_batch: int = 0,
    compile: CompileSetting = "off",
    prefill_group: int = 2,
    credit_timeout: float = 30.0,
) -> list[BatchReplica]:
    """`workers` model instances, each loaded on its own step-loop thread."""

    def load() -> BatchModel:
        return batch_model_for(factory(), max_batch, compile)

    return [
        BatchReplica(i, load, prefill_group=prefill_group, credit_timeout=credit_timeout)
        for i in range(workers)
    ]
