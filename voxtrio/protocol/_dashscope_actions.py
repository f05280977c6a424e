"""What the DashScope task state machine asks the I/O layer to do, in order."""

from __future__ import annotations

from typing import Any

import attrs

from voxtrio.protocol._dashscope_params import TaskParams


@attrs.frozen
class SendEvent:
    """Send this JSON text frame. `event`: its header.event, or output.type for results."""

    event: str
    text: str


@attrs.frozen
class StartTask:
    """A task starts: set up its encoder (make_encoder), voice, DSP and synthesis worker."""

    task_id: str
    model: str
    model_known: bool  # False: log that `model` is not a name this server knows
    params: TaskParams
    ignored: dict[str, Any]  # accepted parameters with a value that has no effect: log


@attrs.frozen
class SpeakSentence:
    """Queue this sentence behind the task's earlier ones.

    The worker plays `silence_before_ms` of silence, the synthesised `text` (nothing
    when `text` is "": an SSML break with no sentence to sit beside), then
    `silence_after_ms`, through the task's one encoder.
    """

    task_id: str
    index: int
    text: str
    silence_before_ms: int = 0
    silence_after_ms: int = 0


@attrs.frozen
class FinishTask:
    """No more sentences: once the queue is spoken, flush the encoder, then `finished()`.

    Any bytes `encoder.finish()` returns go out after `synthesis_event(task_id,
    last_index)` like other audio.
    """

    task_id: str
    last_index: int


@attrs.frozen
class CancelTask:
    """Stop the task now: cancel its worker, wait until it has exited, close the encoder
    (no tail bytes), drop queued sentences. Only then go on to the next action."""

    task_id: str


TaskAction = SendEvent | StartTask | SpeakSentence | FinishTask | CancelTask
