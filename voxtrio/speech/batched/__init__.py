"""Continuous batching: one model instance steps many generations at once.

Three parts, as in nano-vllm: the `Scheduler` (`_scheduler.py`: which rows join,
which step, which leave; no threads, no torch), the model (`BatchModel` below:
prefill, step, release; `_voxcpm.py` is batched VoxCPM built from voxcpm's own
modules, `_synthetic.py` a paced model-free one), and the instance's step loop
(`_loop.py`: one thread joining the two and handing chunks to the Trio side).

Part of the speech layer: may import `voxtrio.speech`'s own modules (the engine
interface, jobs, seeding) and what they may (voices, audio, protocol, _config), plus
torch, numpy and voxcpm's modules and weights; never `voxtrio.ops`,
`voxtrio.server` or above (import-linter contracts in pyproject.toml).
"""

from voxtrio.speech.batched._interface import BatchModel, RowT, StepResult

__all__ = ["BatchModel", "RowT", "StepResult"]
