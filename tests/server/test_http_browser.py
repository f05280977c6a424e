"""Browser pages from elsewhere cannot use the server (CSRF, DNS rebinding), while
clients that are not browsers (no Origin header) and the server's own page can."""

from __future__ import annotations

import io
import json
from collections.abc import Callable
from typing import Any

import pytest
import trio
from trio_websocket import open_websocket_url

from tests.server.http_raw import LOCAL, post, request
from voxtrio._config import ConfigError, Settings, load_settings
from voxtrio.server._listener import ServerHandle
from voxtrio.server._origin import BrowserPolicy

EVIL = b"Origin: http://evil.example"


def prompt_wav() -> bytes:
    import numpy as np
    import soundfile

    buffer = io.BytesIO()
    noise = 0.1 * np.random.default_rng(3).standard_normal(32000)
    soundfile.write(buffer, noise.astype(np.float32), 16000, format="WAV")
    return buffer.getvalue()


def upload_form(name: str) -> bytes:
    """What a browser's <form enctype=multipart/form-data> sends: no preflight needed."""
    return (
        b'--b\r\nContent-Disposition: form-data; name="name"\r\n\r\n'
        + name.encode()
        + b'\r\n--b\r\nContent-Disposition: form-data; name="persist"\r\n\r\nfalse\r\n'
        + b'--b\r\nContent-Disposition: form-data; name="audio_sample"; filename="me.wav"\r\n'
        + b"Content-Type: audio/wav\r\n\r\n"
        + prompt_wav()
        + b"\r\n--b--\r\n"
    )


async def test_a_cross_site_form_post_registers_no_voice(start_server: Callable[..., Any]) -> None:
    """A multipart POST from a foreign page is 403 and the voice does not exist."""
    server: ServerHandle = await start_server(allow_voice_upload=True)
    form = upload_form("stolen")
    kind = b"multipart/form-data; boundary=b"
    reply = await request(server.port, post("/v1/audio/voices", form, EVIL, content_type=kind))
    assert reply.status == 403
    assert "origin" in reply.json()["error"]["message"]
    assert server.server.voices is not None
    assert "stolen" not in server.server.voices.store
    own = f"Origin: http://127.0.0.1:{server.port}".encode()
    page = post("/v1/audio/voices", form, own, content_type=kind)
    page = page.replace(LOCAL, f"Host: 127.0.0.1:{server.port}\r\n".encode())  # as browsers send
    same_site = await request(server.port, page)
    assert same_site.status == 200, same_site.body


async def test_a_text_plain_body_is_not_taken_as_json(synthetic_server: ServerHandle) -> None:
    """text/plain (a form's CORS-simple type) on a JSON route: 415, nothing spoken."""
    body = json.dumps({"input": "Hi."}).encode()
    reply = await request(
        synthetic_server.port, post("/v1/audio/speech", body, content_type=b"text/plain")
    )
    assert reply.status == 415


@pytest.mark.parametrize("path", ["/", "/v1/audio/voices"])
async def test_a_rebound_host_name_is_refused(synthetic_server: ServerHandle, path: str) -> None:
    """Host: evil.example (a rebinding page's own name) is 403; the loopback IP is served."""
    port = synthetic_server.port
    rebound = f"GET {path} HTTP/1.1\r\nHost: evil.example:{port}\r\n\r\n".encode()
    assert (await request(port, rebound)).status == 403
    local = f"GET {path} HTTP/1.1\r\nHost: localhost:{port}\r\n\r\n".encode()
    assert (await request(port, local)).status == 200


async def test_a_websocket_handshake_from_a_foreign_origin_is_403(
    synthetic_server: ServerHandle,
) -> None:
    """A foreign page's WebSocket gets 403; the server's own page's gets through."""
    # A raw handshake: trio-websocket's client leaves its socket open when rejected.
    port = synthetic_server.port
    handshake = (
        f"GET /tts HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUpgrade: websocket\r\n"
        "Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
        "Sec-WebSocket-Version: 13\r\nOrigin: http://evil.example\r\n\r\n"
    ).encode()
    assert (await request(port, handshake)).status == 403
    own = f"http://127.0.0.1:{synthetic_server.port}".encode()
    async with open_websocket_url(synthetic_server.url, extra_headers=[(b"Origin", own)]) as ws:
        await ws.send_message(json.dumps({"type": "ping", "timestamp": 1}))
        with trio.fail_after(5):
            assert json.loads(await ws.get_message())["type"] == "pong"


async def test_allowed_origins_admit_a_named_page(start_server: Callable[..., Any]) -> None:
    """--allowed-origins lets that page in (HTTP with CORS, WebSocket), and only that page."""
    server: ServerHandle = await start_server(allowed_origins=("https://app.example.com",))
    app = b"Origin: https://app.example.com"
    models = b"GET /v1/models HTTP/1.1\r\n" + LOCAL
    allowed = await request(server.port, models + app + b"\r\n\r\n")
    assert allowed.status == 200
    assert allowed.header("access-control-allow-origin") == "https://app.example.com"
    assert (await request(server.port, models + EVIL + b"\r\n\r\n")).status == 403
    preflight = b"OPTIONS /v1/audio/speech HTTP/1.1\r\n" + LOCAL + app + b"\r\n"
    preflight += b"Access-Control-Request-Method: POST\r\n\r\n"
    answer = await request(server.port, preflight)
    assert answer.status == 204
    assert answer.header("access-control-allow-methods") == "POST"
    assert "content-type" in (answer.header("access-control-allow-headers") or "")
    headers = [(b"Origin", b"https://app.example.com")]
    async with open_websocket_url(server.url, extra_headers=headers) as ws:
        await ws.send_message(json.dumps({"type": "ping", "timestamp": 1}))
        with trio.fail_after(5):
            assert json.loads(await ws.get_message())["type"] == "pong"


def test_allowed_origins_come_from_the_environment_or_the_flag() -> None:
    """TTS_ALLOWED_ORIGINS is comma-separated origins or *; anything else names the variable."""
    settings = load_settings(None, {"TTS_ALLOWED_ORIGINS": "https://A.example/, http://b:8080"})
    assert settings.allowed_origins == ("https://a.example", "http://b:8080")
    with pytest.raises(ConfigError, match="TTS_ALLOWED_ORIGINS"):
        load_settings(None, {"TTS_ALLOWED_ORIGINS": "evil.example"})


def test_only_a_keyless_loopback_server_checks_host_but_every_server_checks_origin() -> None:
    """Behind a name (0.0.0.0, or keys) any Host is served; a foreign Origin never is."""
    keyed = BrowserPolicy.from_settings(Settings(), keyed=True)
    assert keyed.refusal([(b"host", b"tts.example.com")]) is None
    assert keyed.refusal([(b"host", b"tts.example.com"), (b"origin", b"https://evil.example")])
    policy = BrowserPolicy.from_settings(Settings(host="0.0.0.0"))
    assert policy.refusal([(b"host", b"tts.example.com")]) is None
    same = [(b"host", b"tts.example.com"), (b"origin", b"https://tts.example.com")]
    assert policy.refusal(same) is None
    assert policy.refusal([(b"host", b"tts.example.com"), (b"origin", b"https://evil.example")])
    assert policy.refusal([(b"host", b"127.0.0.1"), (b"origin", b"null")])
