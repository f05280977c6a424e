"""The DashScope (CosyVoice) duplex WebSocket protocol, sans-IO.

Clients written for DashScope's ``wss://.../api-ws/v1/inference`` (the official
``dashscope`` SDK's ``SpeechSynthesizer``, relays speaking the same JSON) talk to
voxtrio unchanged. :class:`DashScopeTask` is one connection's state: it turns each
frame the client sends into actions for the I/O layer, owns the sentence splitter and
the SSML parser, numbers the sentences, keeps the audio timeline, and builds every
event exactly as the SDK reads it. docs/dashscope-notes.md has the SDK facts behind
each choice.

States (one task at a time per connection, and the connection is reused)::

    IDLE --run-task--> STARTED --finish-task--> FINISHING --finished()--> IDLE
    STARTED/FINISHING --finish-task{directive: cancel}, error, fail()--> IDLE

A ``task-failed`` for the running task's id always stops that task (:class:`CancelTask`
comes first): the SDK takes any task-failed as the end of its task, so audio must not
go on behind it. Mistakes that name another task id (a second run-task while one runs,
a continue-task for a stale id) get their own task-failed and leave the running task
alone.

The parts: :mod:`._dashscope_messages` (what clients send, parsing),
:mod:`._dashscope_params` (run-task parameters, validated), :mod:`._dashscope_events`
(what the server sends), :mod:`._dashscope_actions` (what the I/O layer does) and
:mod:`._dashscope_task` (the state machine). This module is the one import for users.
"""

from __future__ import annotations

from voxtrio.protocol._dashscope_actions import (
    CancelTask,
    FinishTask,
    SendEvent,
    SpeakSentence,
    StartTask,
    TaskAction,
)
from voxtrio.protocol._dashscope_events import (
    count_characters,
    dump_event,
    result_generated,
    task_failed,
    task_finished,
    task_started,
)
from voxtrio.protocol._dashscope_messages import (
    DEFAULT_SAMPLE_RATE,
    IGNORED_PARAMETERS,
    PATH,
    DashScopeErrorCode,
)
from voxtrio.protocol._dashscope_params import DashScopeCapabilities, TaskParams, volume_to_gain
from voxtrio.protocol._dashscope_task import DashScopeTask, TaskState

__all__ = [
    "DEFAULT_SAMPLE_RATE",
    "IGNORED_PARAMETERS",
    "PATH",
    "CancelTask",
    "DashScopeCapabilities",
    "DashScopeErrorCode",
    "DashScopeTask",
    "FinishTask",
    "SendEvent",
    "SpeakSentence",
    "StartTask",
    "TaskAction",
    "TaskParams",
    "TaskState",
    "count_characters",
    "dump_event",
    "result_generated",
    "task_failed",
    "task_finished",
    "task_started",
    "volume_to_gain",
]
