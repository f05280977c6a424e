"""What voice-agent frameworks expect of the OpenAI route: request ids, voice names, 429 in time."""

from __future__ import annotations

import typing
from collections.abc import Callable
from typing import Any

import httpx
import openai
import pytest
import trio
from openai.types.audio import speech_create_params
from structlog.contextvars import merge_contextvars
from structlog.testing import capture_logs

from tests.server.http_raw import LOCAL, request
from voxtrio.server._listener import ServerHandle
from voxtrio.server.openai._voices import OPENAI_VOICES
from voxtrio.speech._synthetic import SyntheticEngine


def sdk_voice_names() -> list[str]:
    """The built-in names in the installed openai SDK's speech `voice` type."""
    names: list[str] = []
    for member in typing.get_args(speech_create_params.Voice):
        if typing.get_origin(member) is typing.Literal:
            names += typing.get_args(member)
    return names


# Pipecat 1.14's OpenAITTSService.VALID_VOICES (pipecat/services/openai/tts.py); the
# integrations session checks this copy against the installed package.
PIPECAT_VOICES = (
    *("alloy", "ash", "ballad", "cedar", "coral", "echo", "fable"),
    *("marin", "nova", "onyx", "sage", "shimmer", "verse"),
)


def speech_url(server: ServerHandle) -> str:
    return f"http://127.0.0.1:{server.port}/v1/audio/speech"


def test_the_sdk_still_lists_marin_and_cedar() -> None:
    """The SDK's literal is read for real (the parametrized test below is not vacuous)."""
    assert {"marin", "cedar", "alloy"} <= set(sdk_voice_names())


@pytest.mark.parametrize("voice", sorted({*sdk_voice_names(), *PIPECAT_VOICES}))
async def test_every_sdk_and_pipecat_voice_name_speaks(
    synthetic_server: ServerHandle, voice: str
) -> None:
    """Each built-in name the SDK or Pipecat offers is accepted and speaks."""
    assert voice in OPENAI_VOICES

    def create() -> bytes:
        base_url = f"http://127.0.0.1:{synthetic_server.port}/v1"
        with openai.OpenAI(base_url=base_url, api_key="unused", max_retries=0) as client:
            return client.audio.speech.create(
                model="tts-1", voice=voice, input="Hi.", response_format="pcm"
            ).content

    assert len(await trio.to_thread.run_sync(create)) == 7680 // 2 * 2


async def test_every_response_carries_a_generated_request_id(
    synthetic_server: ServerHandle,
) -> None:
    """200, 404 and 400 answers each carry their own `x-request-id`."""
    async with httpx.AsyncClient(timeout=10) as client:
        ok = await client.post(speech_url(synthetic_server), json={"input": "Hi."})
        missing = await client.get(f"http://127.0.0.1:{synthetic_server.port}/nowhere")
        bad = await client.post(speech_url(synthetic_server), json={"input": ""})
    ids = [r.headers.get("x-request-id") for r in (ok, missing, bad)]
    assert [ok.status_code, missing.status_code, bad.status_code] == [200, 404, 400]
    assert all(i is not None and i.startswith("req_") for i in ids)
    assert len(set(ids)) == 3


async def test_a_malformed_request_gets_a_request_id_too(synthetic_server: ServerHandle) -> None:
    """Even a head h11 refuses is answered with an id."""
    reply = await request(synthetic_server.port, b"GET /v1/models HTTP/1.1\r\n\r\n")
    assert reply.status == 400
    assert (reply.header("x-request-id") or "").startswith("req_")


async def test_the_sdk_exposes_the_request_id(synthetic_server: ServerHandle) -> None:
    """The OpenAI SDK's `_request_id` is the server's id (what LiveKit logs)."""

    def create() -> str | None:
        base_url = f"http://127.0.0.1:{synthetic_server.port}/v1"
        with openai.OpenAI(base_url=base_url, api_key="unused") as client:
            response = client.audio.speech.with_raw_response.create(
                model="tts-1", voice="alloy", input="Hi."
            )
            return response.request_id

    assert (await trio.to_thread.run_sync(create) or "").startswith("req_")


@pytest.mark.parametrize(
    ("sent", "kept"),
    [
        ("lk-utt-42", True),
        ("9f1c2a4e-1b2c-4d5e-8f90-123456789abc", True),
        ("a" * 129, False),
        ("bad id with spaces", False),
        ("evil\u00e9", False),
    ],
)
async def test_a_sane_client_request_id_is_kept_and_others_replaced(
    synthetic_server: ServerHandle, sent: str, kept: bool
) -> None:
    """A client's id is echoed when short and of safe characters; otherwise a new one."""
    head = (
        b"GET /v1/models HTTP/1.1\r\n"
        + LOCAL
        + b"X-Request-Id: "
        + sent.encode("utf-8")
        + b"\r\nConnection: close\r\n\r\n"
    )
    reply = await request(synthetic_server.port, head)
    assert reply.status == 200
    answered = reply.header("x-request-id")
    assert (answered == sent) is kept
    if not kept:
        assert (answered or "").startswith("req_")


async def test_the_request_id_is_in_the_requests_log_lines(
    synthetic_server: ServerHandle,
) -> None:
    """The server's log lines of a request carry the id its response carries."""
    with capture_logs(processors=[merge_contextvars]) as logs:
        async with httpx.AsyncClient(timeout=10) as client:
            response = await client.post(
                speech_url(synthetic_server),
                json={"input": "Hi."},
                headers={"x-request-id": "agent-turn-7"},
            )
        with trio.fail_after(2):  # logged as the route returns, just after the last byte
            while not any(e["event"] == "openai_speech_finished" for e in logs):
                await trio.sleep(0.01)
    assert response.headers["x-request-id"] == "agent-turn-7"
    events = {entry["event"]: entry for entry in logs if entry.get("request_id")}
    assert events["http_request"]["request_id"] == "agent-turn-7"
    assert events["openai_speech_finished"]["request_id"] == "agent-turn-7"


async def test_a_request_id_does_not_leak_into_the_next_request_on_the_connection(
    synthetic_server: ServerHandle,
) -> None:
    """Two requests on one kept-alive connection get two different ids."""
    async with httpx.AsyncClient(timeout=10) as client:
        first = await client.post(
            speech_url(synthetic_server), json={"input": "Hi."}, headers={"x-request-id": "one"}
        )
        second = await client.post(speech_url(synthetic_server), json={"input": "Hi."})
    assert first.headers["x-request-id"] == "one"
    assert second.headers["x-request-id"] not in ("one", None)


async def test_a_saturated_server_answers_429_within_the_http_queue_wait(
    start_server: Callable[..., Any],
) -> None:
    """Waiting for a model slot past http_queue_timeout is 429 + Retry-After, not a hang."""
    server: ServerHandle = await start_server(
        lambda: SyntheticEngine(rtf=1.0),
        workers=1,
        max_batch=1,
        max_concurrent=4,
        queue_timeout=30.0,
        http_queue_timeout=0.5,
    )
    async with (
        httpx.AsyncClient(timeout=10) as client,
        # One sentence: a long text is spoken sentence by sentence, and a request waits
        # for a slot again between two of them.
        client.stream("POST", speech_url(server), json={"input": "a long text " * 20}) as busy,
    ):
        assert busy.status_code == 200
        started = trio.current_time()
        queued = await client.post(speech_url(server), json={"input": "Hi."})
        waited = trio.current_time() - started
    assert queued.status_code == 429
    assert int(queued.headers["retry-after"]) >= 1
    assert queued.json()["error"]["type"] == "rate_limit_error"
    assert 0.4 <= waited < 5.0  # the HTTP bound, far from the 30 s queue_timeout


def test_the_http_queue_wait_defaults_under_common_client_timeouts() -> None:
    """LiveKit reads for 30 s: the HTTP route's default wait is a third of that."""
    from voxtrio._config import Settings

    assert Settings().http_queue_timeout <= 10.0 < Settings().queue_timeout
