"""Continuous batching: one model instance steps many generations at once.

`BatchModel` (below) is the seam between the step loop (`_loop.py`: admission,
scheduling, hand-over to the Trio side) and the model math (`_voxcpm.py`: batched
VoxCPM built from voxcpm's own modules; `_synthetic.py`: a paced model-free one).
Everything here runs on the instance's one step-loop thread.

Part of the speech layer: may import `voxtrio.speech`'s own modules (the engine
interface, jobs, seeding) and what they may (voices, audio, protocol, _config), plus
torch, numpy and voxcpm's modules and weights; never `voxtrio.ops`,
`voxtrio.server` or above (import-linter contracts in pyproject.toml).
"""

from voxtrio.speech.batched._interface import BatchModel, RowHandle, StepResult

__all__ = ["BatchModel", "RowHandle", "StepResult"]
