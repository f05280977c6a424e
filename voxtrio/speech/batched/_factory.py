"""Batched models from the engines `--engine` loads, and the model instances."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from voxtrio.speech._engine import Engine, EngineFactory
from voxtrio.speech._synthetic import SyntheticEngine
from voxtrio.speech.batched._interface import BatchModel
from voxtrio.speech.batched._loop import LoadedModel, ModelInstance

if TYPE_CHECKING:  # _graphs imports torch: the synthetic engine's server never needs it
    from voxtrio.speech.batched._graphs import CompileSetting

# `--max-batch 0` (auto): rows per instance by where the model runs.
AUTO_MAX_BATCH = {"synthetic": 256, "cpu": 16, "cuda": 64}


def auto_max_batch(engine: Engine) -> int:
    if isinstance(engine, SyntheticEngine):
        return AUTO_MAX_BATCH["synthetic"]
    from voxtrio.speech._voxcpm_engine import VoxCPMEngine

    device = engine.device if isinstance(engine, VoxCPMEngine) else "cpu"
    return AUTO_MAX_BATCH["cuda" if device.startswith("cuda") else "cpu"]


def batch_model_for(
    engine: Engine, max_batch: int = 0, compile: CompileSetting = "off"
) -> BatchModel[Any]:
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


def load_model(
    factory: EngineFactory, max_batch: int = 0, compile: CompileSetting = "off"
) -> LoadedModel:
    """Load an engine and its batched form; VoxCPM keeps voxcpm's bad-case retry."""
    engine = factory()
    from voxtrio.speech._voxcpm_engine import VoxCPMEngine

    if isinstance(engine, VoxCPMEngine):
        return LoadedModel(
            engine, batch_model_for(engine, max_batch, compile), engine.badcase_steps
        )
    model = batch_model_for(engine, max_batch, compile)
    from voxtrio.speech.batched._synthetic import BatchedSynthetic

    clock = model.clock if isinstance(model, BatchedSynthetic) else None
    return LoadedModel(engine, model, clock=clock)


def model_instances(
    factory: EngineFactory,
    *,
    workers: int,
    max_batch: int = 0,
    compile: CompileSetting = "off",
    prefill_group: int = 2,
    prefill_budget: float = 0.025,
    join_steps: bool = True,
    credit_timeout: float = 30.0,
) -> list[ModelInstance]:
    """`workers` model instances, each loaded on its own step-loop thread."""

    def load() -> LoadedModel:
        return load_model(factory, max_batch, compile)

    return [
        ModelInstance(
            i,
            load,
            prefill_group=prefill_group,
            prefill_budget=prefill_budget,
            join_steps=join_steps,
            credit_timeout=credit_timeout,
        )
        for i in range(workers)
    ]
