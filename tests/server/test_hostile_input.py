"""Hostile input over real sockets (issue 15 #1 #2 #3 #12): each message gets its error,
the connection and every other request on it go on."""

from __future__ import annotations

import json
from typing import Any

import pytest
from trio_websocket import open_websocket_url

from voxtrio.server._listener import ServerHandle

from ..support import session
from .test_dashscope_endpoint import (
    collect_task,
    continue_task,
    dashscope_url,
    finish_task,
    run_task,
)

LONE = "\ud800"  # json.dumps sends it as the legal escape "\ud800"
LONG = "A sentence long enough to take many chunks to speak. " * 2


def message(kind: str, request_id: str, **fields: Any) -> dict[str, Any]:
    return {"type": kind, "request_id": request_id, **fields}


@pytest.mark.parametrize(
    ("bad", "field"),
    [
        (message("tts_request", "x" + LONE, params={"text": "Hi."}), "request_id"),
        (message("cancel", LONE), "request_id"),
        (message("tts_request", "k", params={"text": "Hi.", "cfg" + LONE: 1}), "params.cfg\\ud800"),
        (message("tts_request", "t", params={"text": "Hi " + LONE}), "params.text"),
        (message("tts_request", "y" + LONE, params={"text": 5}), "request_id"),
    ],
    ids=["tts_request_id", "cancel_id", "key", "text", "invalid_message_id"],
)
async def test_lone_surrogate_is_invalid_params_and_the_connection_goes_on(
    synthetic_server: ServerHandle, bad: dict[str, Any], field: str
) -> None:
    """INVALID_PARAMS naming the field; a request already running on the connection
    still completes, and the connection takes the next one."""
    async with session(synthetic_server.url) as s:
        await s.request("running", text=LONG)
        await s.send(bad)
        errors = []
        while not errors:
            rid, kind = await s.receive_one()
            if kind == "error":
                errors = [m for m in s.outcomes[rid or ""].messages if m["type"] == "error"]
        (error,) = errors
        assert error["error"]["code"] == "INVALID_PARAMS"
        assert field in error["error"]["details"]
        assert error["request_id"] == bad["request_id"]  # echoed, as a JSON escape
        await s.until_terminal("running")
        assert s.outcomes["running"].terminal["type"] == "complete"
        await s.request("after", text="Still here.")
        await s.until_terminal("after")
        assert s.outcomes["after"].terminal["type"] == "complete"


async def test_surrogate_request_id_gets_its_one_terminal_message(
    synthetic_server: ServerHandle,
) -> None:
    """A tts_request refused for its id ends with one terminal error for that id."""
    async with session(synthetic_server.url) as s:
        await s.request(LONE, text="Hi.")
        await s.until_terminal(LONE)
        (terminal,) = s.outcomes[LONE].messages
        assert (terminal["type"], terminal["terminal"]) == ("error", True)


@pytest.mark.parametrize(
    ("params", "fields"),
    [
        (
            {
                "text": "Hi.",
                "inference_timesteps": 51,
                "retry_badcase_max_times": 11,
                "normalize": "yes",
            },
            {"inference_timesteps", "retry_badcase_max_times", "normalize"},
        ),
        ({"text": "a" * 5001, "normalize": "yes"}, {"text", "normalize"}),
        ({"text": "Hi.", "cfg_value": 99, "cfg_valeu": 2}, {"cfg_value", "cfg_valeu"}),
    ],
)
async def test_every_field_error_is_reported_at_once(
    synthetic_server: ServerHandle, params: dict[str, Any], fields: set[str]
) -> None:
    """docs/PROTOCOL.md §2: all problems of a message in one error, keyed by path."""
    async with session(synthetic_server.url) as s:
        await s.request("r", **params)
        await s.until_terminal("r")
        error = s.outcomes["r"].terminal["error"]
    assert error["code"] == "INVALID_PARAMS"
    assert set(error["details"]) == {f"params.{f}" for f in fields}


async def test_unknown_key_flood_gets_a_short_answer(synthetic_server: ServerHandle) -> None:
    """Nearly 1 MiB of unknown keys: refused before decoding, a few hundred bytes back."""
    flood = ",".join(f'"n{i}":0' for i in range(90_000))
    async with open_websocket_url(synthetic_server.url) as ws:
        await ws.send_message('{"type":"tts_request","request_id":"f","params":{' + flood + "}}")
        reply = await ws.get_message()
        assert len(reply) < 500
        assert json.loads(reply)["error"]["code"] == "INVALID_JSON"
        # Within the budget: named up to a cap, counted, still short.
        some = ",".join(f'"n{i}":0' for i in range(20_000))
        await ws.send_message('{"type":"tts_request","request_id":"g","params":{' + some + "}}")
        reply = await ws.get_message()
    assert len(reply) < 2000
    assert json.loads(reply)["error"]["details"]["params.*"] == "and 19990 more unknown keys"


@pytest.mark.parametrize(
    ("frames", "task_id", "words"),
    [
        ([run_task(LONE)], LONE, "header.task_id: contains a lone surrogate"),
        ([run_task("t1", **{"cfg" + LONE: 1})], "t1", "payload.parameters.cfg\\ud800"),
        (
            [run_task("t1"), continue_task("t1", "Hi " + LONE + "."), finish_task("t1")],
            "t1",
            "payload.input.text: contains a lone surrogate",
        ),
        (
            [
                run_task("t1", enable_ssml=True),
                continue_task("t1", '<speak>A<break time="' + "9" * 400 + 's"/></speak>'),
            ],
            "t1",
            "at most 10000 ms",
        ),
    ],
    ids=["task_id", "parameter_key", "continue_text", "break_400_digits"],
)
async def test_dashscope_hostile_frames_are_task_failed_and_the_connection_goes_on(
    synthetic_server: ServerHandle, frames: list[str], task_id: str, words: str
) -> None:
    """task-failed InvalidParameter for that task; the connection runs the next task."""
    async with open_websocket_url(dashscope_url(synthetic_server)) as ws:
        for frame in frames:
            await ws.send_message(frame)
        events, _ = await collect_task(ws)
        header = events[-1]["header"]
        assert (header["event"], header["error_code"]) == ("task-failed", "InvalidParameter")
        assert header["task_id"] == task_id
        assert words in header["error_message"]
        await ws.send_message(run_task("t2"))
        await ws.send_message(continue_task("t2", "Still works."))
        await ws.send_message(finish_task("t2"))
        events, audio = await collect_task(ws)
    assert events[-1]["header"]["event"] == "task-finished"
    assert audio
