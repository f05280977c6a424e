"""Continuous batching: one model instance steps many generations at once.

Three parts, as in nano-vllm: the `Scheduler` (`_scheduler.py`: which rows join,
which step, which leave; no threads, no torch), the model (`BatchModel` below:
prefill, step, release; `_voxcpm.py` is batched VoxCPM built from voxcpm's own
modules, `_synthetic.py` a paced model-free one), and the instance's step loop
(`_loop.py`: one thread joining the two and handing chunks to the Trio side).
"""

from voxtrio.speech.batched._interface import BatchModel, RowT, StepResult

__all__ = ["BatchModel", "RowT", "StepResult"]
