"""POST /v1/audio/speech and friends, driven by the real OpenAI SDK against a real server."""

from __future__ import annotations

import base64
import io
import json
from collections.abc import Callable
from typing import Any

import av
import httpx
import openai
import pytest
import trio

from voxtrio.server._listener import ServerHandle
from voxtrio.speech._synthetic import SyntheticEngine

TEXT = "Hello from the OpenAI route."  # synthetic engine: 7680 samples at 48 kHz per 4 chars
EXPECTED_SECONDS = (len(TEXT) + 3) // 4 * 7680 / 48000


def base_url(server: ServerHandle) -> str:
    return f"http://127.0.0.1:{server.port}/v1"


def run_sync(fn: Callable[[], Any]) -> Any:
    return trio.to_thread.run_sync(fn)


def decoded_seconds(data: bytes, fmt: str) -> tuple[float, int]:
    """Duration and rate of `data` decoded by libav (pcm: 24 kHz s16le mono as OpenAI's)."""
    if fmt == "pcm":
        return len(data) / 2 / 24000, 24000
    container_format = {"opus": "ogg", "aac": "aac"}.get(fmt)
    with av.open(io.BytesIO(data), format=container_format) as container:
        frames = list(container.decode(audio=0))
    rate = frames[0].sample_rate
    return sum(frame.samples for frame in frames) / rate, rate


@pytest.mark.parametrize(
    ("fmt", "rate"),
    [
        ("mp3", 24000),
        ("opus", 48000),
        ("aac", 24000),
        ("flac", 24000),
        ("wav", 24000),
        ("pcm", 24000),
    ],
)
async def test_sdk_streams_every_format_to_the_expected_length(
    synthetic_server: ServerHandle, fmt: str, rate: int
) -> None:
    """The SDK's streaming response decodes to the text's length at OpenAI's rate."""

    def fetch() -> tuple[bytes, str]:
        with (
            openai.OpenAI(base_url=base_url(synthetic_server), api_key="unused") as client,
            client.audio.speech.with_streaming_response.create(
                model="tts-1",
                voice="alloy",
                input=TEXT,
                response_format=fmt,  # type: ignore[arg-type]
            ) as response,
        ):
            return b"".join(response.iter_bytes()), response.headers["content-type"]

    data, content_type = await run_sync(fetch)
    seconds, decoded_rate = decoded_seconds(data, fmt)
    assert decoded_rate == rate
    # Codec priming/padding: mp3/aac/opus add at most a few frames.
    assert seconds == pytest.approx(EXPECTED_SECONDS, abs=0.1)
    assert content_type.startswith("audio/")


async def test_sse_stream_carries_base64_deltas_and_a_done_event(
    synthetic_server: ServerHandle,
) -> None:
    """stream_format=sse sends speech.audio.delta events, then one speech.audio.done."""

    def fetch() -> list[dict[str, Any]]:
        with (
            openai.OpenAI(base_url=base_url(synthetic_server), api_key="unused") as client,
            client.audio.speech.with_streaming_response.create(
                model="gpt-4o-mini-tts",
                voice="coral",
                input=TEXT,
                response_format="pcm",
                stream_format="sse",
            ) as response,
        ):
            assert response.headers["content-type"].startswith("text/event-stream")
            return [
                json.loads(line[len("data: ") :])
                for line in response.iter_lines()
                if line.startswith("data: ")
            ]

    events = await run_sync(fetch)
    assert [e["type"] for e in events[-1:]] == ["speech.audio.done"]
    deltas = [e for e in events if e["type"] == "speech.audio.delta"]
    assert len(deltas) >= 2
    pcm = b"".join(base64.b64decode(e["audio"]) for e in deltas)
    assert len(pcm) / 2 / 24000 == pytest.approx(EXPECTED_SECONDS, abs=0.01)


async def test_unknown_fields_are_ignored_and_wrong_values_refused(
    synthetic_server: ServerHandle,
) -> None:
    """An extra field passes; a wrong response_format is a 400 in OpenAI's error shape."""

    def post(body: dict[str, Any]) -> httpx.Response:
        return httpx.post(f"{base_url(synthetic_server)}/audio/speech", json=body, timeout=10)

    ok = await run_sync(lambda: post({"input": "Hi.", "voice": "nova", "user": "x", "extra": 1}))
    assert ok.status_code == 200
    assert ok.headers["content-type"] == "audio/mpeg"
    bad = await run_sync(lambda: post({"input": "Hi.", "voice": "nova", "response_format": "ogg"}))
    assert bad.status_code == 400
    error = bad.json()["error"]
    assert error["code"] == "invalid_params"
    assert error["param"] == "response_format"
    assert error["type"] == "invalid_request_error"


async def test_sdk_raises_bad_request_for_an_unknown_voice(synthetic_server: ServerHandle) -> None:
    """A voice that is neither OpenAI's nor in the library is a 400 the SDK raises."""

    def create() -> None:
        with openai.OpenAI(base_url=base_url(synthetic_server), api_key="unused") as client:
            client.audio.speech.create(model="tts-1", voice="nobody-here", input=TEXT)

    with pytest.raises(openai.BadRequestError, match="nobody-here"):
        await run_sync(create)


async def test_missing_key_is_401_and_the_right_key_works(nursery: trio.Nursery) -> None:
    """With API keys configured the endpoint needs `Authorization: Bearer KEY`."""
    from functools import partial

    from voxtrio._app import run_server
    from voxtrio._config import Settings
    from voxtrio.ops._auth import KeyStore

    settings = Settings(port=0, metrics_port=0, engine="synthetic")
    server: ServerHandle = await nursery.start(
        partial(
            run_server,
            settings,
            engine_factory=partial(SyntheticEngine, rtf=0.0),
            keys=KeyStore(["sk-test-0123456789abcdef"]),
        )
    )

    def create(key: str) -> bytes:
        with openai.OpenAI(base_url=base_url(server), api_key=key, max_retries=0) as client:
            return client.audio.speech.create(model="tts-1", voice="alloy", input="Hi.").content

    with pytest.raises(openai.AuthenticationError):
        await run_sync(lambda: create("sk-wrong-0123456789abcdef"))
    assert len(await run_sync(lambda: create("sk-test-0123456789abcdef"))) > 0


async def test_over_the_limit_is_429_with_retry_after(start_server: Callable[..., Any]) -> None:
    """A request past max_concurrent gets 429 with Retry-After, while the first streams."""
    server: ServerHandle = await start_server(
        lambda: SyntheticEngine(rtf=1.0), max_concurrent=1, workers=1
    )
    url = f"http://127.0.0.1:{server.port}/v1/audio/speech"
    async with (
        httpx.AsyncClient(timeout=10) as client,
        client.stream("POST", url, json={"input": "A long text. " * 20}) as first,
    ):
        assert first.status_code == 200
        second = await client.post(url, json={"input": "Hi."})
        assert second.status_code == 429
        assert int(second.headers["retry-after"]) >= 1
        assert second.json()["error"]["type"] == "rate_limit_error"


async def test_models_and_voices_are_listed(synthetic_server: ServerHandle) -> None:
    """GET /v1/models lists the model ids the SDK may send; /v1/audio/voices OpenAI's names."""

    def fetch() -> tuple[list[str], list[str]]:
        with openai.OpenAI(base_url=base_url(synthetic_server), api_key="unused") as client:
            models = [m.id for m in client.models.list()]
            voices = httpx.get(f"{base_url(synthetic_server)}/audio/voices").json()["voices"]
            return models, voices

    models, voices = await run_sync(fetch)
    assert {"tts-1", "voxtrio"} <= set(models)
    assert {"alloy", "verse", "shimmer"} <= set(voices)


async def test_websocket_still_works_beside_http(synthetic_server: ServerHandle) -> None:
    """The native /tts WebSocket endpoint answers on the same port."""
    from voxtrio.client import connect

    async with connect(synthetic_server.url) as client, client.synthesize(TEXT) as stream:
        chunks = [chunk async for chunk in stream]
    assert chunks
    assert stream.result is not None
    assert stream.result.duration == pytest.approx(EXPECTED_SECONDS, abs=0.01)


async def _open_speech(port: int, body: dict[str, Any]) -> tuple[trio.SocketStream, bytes]:
    """A raw POST /v1/audio/speech; returns the stream and what arrived with the head."""
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    payload = json.dumps(body).encode()
    await stream.send_all(
        b"POST /v1/audio/speech HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
        + f"Content-Length: {len(payload)}\r\n\r\n".encode()
        + payload
    )
    received = b""
    while b"\r\n\r\n" not in received:
        received += await stream.receive_some(65536)
    return stream, received


async def test_first_bytes_leave_long_before_the_last(start_server: Callable[..., Any]) -> None:
    """Chunked transfer: the first audio arrives at the first chunk, not at the end."""
    server: ServerHandle = await start_server(lambda: SyntheticEngine(rtf=1.0))
    started = trio.current_time()
    stream, received = await _open_speech(
        server.port, {"input": "x" * 40, "response_format": "pcm"}
    )
    assert b"transfer-encoding: chunked" in received.lower()
    while received.endswith(b"\r\n\r\n"):  # the head alone: wait for the first chunk
        received += await stream.receive_some(65536)
    first_byte = trio.current_time() - started
    while not received.endswith(b"0\r\n\r\n"):
        data = await stream.receive_some(65536)
        assert data
        received += data
    total = trio.current_time() - started
    # 10 chunks of 0.16 s at real-time pace: the first is out after about one of them.
    assert total >= 1.0
    assert first_byte < total / 3
    await stream.aclose()


async def test_client_disconnect_frees_the_slot(start_server: Callable[..., Any]) -> None:
    """A client that hangs up mid-stream cancels its generation and frees its replica."""
    server: ServerHandle = await start_server(
        lambda: SyntheticEngine(rtf=1.0), max_concurrent=1, workers=1
    )
    pool = server.server.pool
    stream, _ = await _open_speech(server.port, {"input": "A long text. " * 40})
    assert pool.admitted == 1
    await stream.aclose()
    with trio.fail_after(5):  # 40 sentences at real-time pace would take ~60 s
        while pool.admitted:
            await trio.sleep(0.01)
    async with httpx.AsyncClient(timeout=10) as client:
        response = await client.post(
            f"http://127.0.0.1:{server.port}/v1/audio/speech", json={"input": "Hi."}
        )
    assert response.status_code == 200


async def test_instructions_become_voice_design_and_bad_ones_are_refused(
    synthetic_server: ServerHandle,
) -> None:
    """`instructions` is VoxCPM2 voice design; one with parentheses is a 400 naming it."""
    url = f"{base_url(synthetic_server)}/audio/speech"

    def post(instructions: str) -> httpx.Response:
        body = {"input": "Hi.", "instructions": instructions, "response_format": "pcm"}
        return httpx.post(url, json=body, timeout=10)

    ok = await run_sync(lambda: post("a calm low voice"))
    assert ok.status_code == 200
    assert len(ok.content) > 0
    bad = await run_sync(lambda: post("a (calm) voice"))
    assert bad.status_code == 400
    assert "voice_description" in bad.json()["error"]["message"]


async def test_text_over_the_server_limit_is_400(start_server: Callable[..., Any]) -> None:
    """Input longer than TTS_MAX_TEXT_CHARS is refused before any audio, naming `input`."""
    server: ServerHandle = await start_server(max_text_chars=10)
    async with httpx.AsyncClient(timeout=10) as client:
        response = await client.post(
            f"http://127.0.0.1:{server.port}/v1/audio/speech", json={"input": "x" * 11}
        )
    assert response.status_code == 400
    assert response.json()["error"]["param"] == "input"


def _prompt_wav() -> bytes:
    import numpy as np
    import soundfile

    rng = np.random.default_rng(3)
    buffer = io.BytesIO()
    soundfile.write(
        buffer, (0.1 * rng.standard_normal(32000)).astype(np.float32), 16000, format="WAV"
    )
    return buffer.getvalue()


async def test_multipart_upload_registers_a_voice_the_speech_route_uses(
    start_server: Callable[..., Any],
) -> None:
    """POST /v1/audio/voices (multipart) adds a voice; it is listed and speaks."""
    server: ServerHandle = await start_server(allow_voice_upload=True)
    url = base_url(server)
    async with httpx.AsyncClient(timeout=10) as client:
        upload = await client.post(
            f"{url}/audio/voices",
            data={"name": "my-voice", "persist": "false"},
            files={"audio_sample": ("me.wav", _prompt_wav(), "audio/wav")},
        )
        assert upload.status_code == 200, upload.text
        assert upload.json()["id"] == "my-voice"
        listed = (await client.get(f"{url}/audio/voices")).json()["voices"]
        speech = await client.post(
            f"{url}/audio/speech", json={"input": "Hi.", "voice": "my-voice"}
        )
    assert "my-voice" in listed
    assert speech.status_code == 200


async def test_multipart_upload_is_403_when_uploads_are_off(
    synthetic_server: ServerHandle,
) -> None:
    """Without --allow-voice-upload the upload is refused in OpenAI's error shape."""
    async with httpx.AsyncClient(timeout=10) as client:
        upload = await client.post(
            f"{base_url(synthetic_server)}/audio/voices",
            data={"name": "my-voice"},
            files={"audio_sample": ("me.wav", _prompt_wav(), "audio/wav")},
        )
    assert upload.status_code == 403
    assert upload.json()["error"]["type"] == "permission_error"


async def test_http_requests_past_max_connections_get_503(
    start_server: Callable[..., Any],
) -> None:
    """HTTP requests count against TTS_MAX_CONNECTIONS like WebSocket connections."""
    server: ServerHandle = await start_server(lambda: SyntheticEngine(rtf=1.0), max_connections=1)
    stream, _ = await _open_speech(server.port, {"input": "A long text. " * 10})
    async with httpx.AsyncClient(timeout=10) as client:
        response = await client.get(f"http://127.0.0.1:{server.port}/v1/models")
    await stream.aclose()
    assert response.status_code == 503
    assert response.headers["retry-after"] == "1"


async def test_expect_100_continue_is_answered_before_the_body(
    synthetic_server: ServerHandle,
) -> None:
    """A client that waits for 100 Continue (curl, large uploads) gets it, then the answer."""
    body = json.dumps({"input": "Hi.", "response_format": "pcm"}).encode()
    stream = await trio.open_tcp_stream("127.0.0.1", synthetic_server.port)
    async with stream:
        await stream.send_all(
            b"POST /v1/audio/speech HTTP/1.1\r\nHost: 127.0.0.1\r\nExpect: 100-continue\r\n"
            + f"Content-Length: {len(body)}\r\n\r\n".encode()
        )
        with trio.fail_after(5):
            interim = await stream.receive_some(4096)
        assert interim.startswith(b"HTTP/1.1 100 ")
        await stream.send_all(body)
        with trio.fail_after(5):
            answer = await stream.receive_some(4096)
    assert answer.startswith(b"HTTP/1.1 200 ")
