"""Operations on the real process: keys at the handshake, /metrics, /health, /ready, systemd."""

from __future__ import annotations

import signal
import socket
from pathlib import Path

import trio
from prometheus_client.parser import text_string_to_metric_families

from ..support import handshake_status, host_port, http_get, serve_process, session, speak

KEY = "k" * 24
OTHER_KEY = "z" * 24


def samples(text: str) -> dict[str, float]:
    """{"name{label=value,...}": value} for every sample in an exposition."""
    values: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            labels = ",".join(f"{k}={v}" for k, v in sorted(sample.labels.items()))
            values[f"{sample.name}{{{labels}}}"] = sample.value
    return values


async def test_handshake_without_key_is_401(tmp_path: Path) -> None:
    """With keys configured, a handshake with no or a wrong key is refused with 401."""
    async with serve_process(tmp_path, env={"TTS_API_KEYS": KEY}) as served:
        host, port = host_port(served.url)
        assert await handshake_status(host, port, "/tts") == 401
        bad = f"Authorization: Bearer {OTHER_KEY}\r\n"
        assert await handshake_status(host, port, "/tts", bad) == 401
        assert await handshake_status(host, port, f"/tts?api_key={OTHER_KEY}") == 401


async def test_bearer_header_or_query_key_is_accepted(tmp_path: Path) -> None:
    """`Authorization: Bearer KEY` and `?api_key=KEY` both open the connection."""
    async with serve_process(tmp_path, env={"TTS_API_KEYS": KEY}) as served:
        host, port = host_port(served.url)
        assert await handshake_status(host, port, "/tts", f"Authorization: Bearer {KEY}\r\n") == 101
        outcome = await speak(f"{served.url}?api_key={KEY}", text="with a key")
        assert outcome.terminal["type"] == "complete"


async def test_key_file_is_reloaded_on_sighup(tmp_path: Path) -> None:
    """SIGHUP re-reads --api-key-file: the new key works, the old one no longer does."""
    key_file = tmp_path / "keys"
    key_file.write_text(f"# operators' keys\n{KEY}\n")
    key_file.chmod(0o600)
    async with serve_process(tmp_path, "--api-key-file", str(key_file)) as served:
        host, port = host_port(served.url)
        assert await handshake_status(host, port, f"/tts?api_key={KEY}") == 101
        key_file.write_text(f"{OTHER_KEY}\n")
        served.process.send_signal(signal.SIGHUP)
        with trio.fail_after(10):
            while await handshake_status(host, port, f"/tts?api_key={KEY}") != 401:
                await trio.sleep(0.05)
        assert await handshake_status(host, port, f"/tts?api_key={OTHER_KEY}") == 101


async def test_metrics_scrape_during_concurrent_requests(tmp_path: Path) -> None:
    """/metrics shows live gauges while requests run, and the totals once they finished."""
    async with serve_process(
        tmp_path, "--synthetic-rtf", "0.2", "--workers", "2", "--max-batch", "1"
    ) as served:
        assert served.metrics_url is not None
        text = "Several chunks of speech to keep the slots busy for a while."
        during: dict[str, float] = {}
        async with trio.open_nursery() as nursery:
            for i in range(3):
                nursery.start_soon(lambda i=i: speak(served.url, request_id=f"r{i}", text=text))
            await trio.sleep(0.3)
            status, body = await http_get(served.metrics_url + "/metrics")
            assert status == 200
            during = samples(body.decode())
        assert during["voxcpm_tts_active_connections{}"] == 3
        assert during["voxcpm_tts_slots_busy{}"] == 2
        assert (during["voxcpm_tts_slots{}"], during["voxcpm_tts_instances{}"]) == (2, 2)
        assert during["voxcpm_tts_queue_length{}"] == 1
        _, body = await http_get(served.metrics_url + "/metrics")
        after = samples(body.decode())
        assert after["voxcpm_tts_requests_total{mode=streaming,status=ok}"] == 3
        assert after["voxcpm_tts_audio_seconds_total{}"] > 0
        assert after["voxcpm_tts_first_audio_seconds_count{mode=streaming}"] == 3
        assert after["voxcpm_tts_slots_busy{}"] == 0


async def test_metrics_need_the_key_when_keys_are_on(tmp_path: Path) -> None:
    """With keys configured /metrics answers 401 without one; /health stays open."""
    async with serve_process(tmp_path, env={"TTS_API_KEYS": KEY}) as served:
        assert served.metrics_url is not None
        assert (await http_get(served.metrics_url + "/metrics"))[0] == 401
        headers = {"Authorization": f"Bearer {KEY}"}
        assert (await http_get(served.metrics_url + "/metrics", headers))[0] == 200
        assert (await http_get(served.metrics_url + "/health"))[0] == 200


async def test_errors_are_counted_by_code(tmp_path: Path) -> None:
    """A bad message and a bad request show up under their error codes."""
    async with serve_process(tmp_path) as served:
        assert served.metrics_url is not None
        async with session(served.url) as s:
            await s.send("{nope")
            await s.next_unrouted()
            await s.request("bad", text="hi", cfg_value=99)
            await s.until_terminal("bad")
        _, body = await http_get(served.metrics_url + "/metrics")
    values = samples(body.decode())
    assert values["voxcpm_tts_errors_total{code=INVALID_JSON}"] == 1
    assert values["voxcpm_tts_errors_total{code=INVALID_PARAMS}"] == 1


async def test_ready_goes_503_when_draining(tmp_path: Path) -> None:
    """/ready is 200 while serving and 503 as soon as SIGTERM starts the drain."""
    async with serve_process(tmp_path, "--synthetic-rtf", "1.0", "--drain-timeout", "5") as served:
        assert served.metrics_url is not None
        assert (await http_get(served.metrics_url + "/ready"))[0] == 200
        async with session(served.url) as s:
            await s.request("slow", text="A long enough text to keep the server busy.")
            await s.until("slow", "frame1")
            served.process.send_signal(signal.SIGTERM)
            with trio.fail_after(5):
                while (await http_get(served.metrics_url + "/ready"))[0] != 503:
                    await trio.sleep(0.02)
            status, body = await http_get(served.metrics_url + "/health")
            assert status == 200
            assert b'"status"' in body


async def test_systemd_notify_ready_status_and_stopping(tmp_path: Path) -> None:
    """Under systemd: STATUS while loading, READY=1 once warm, STOPPING=1 on SIGTERM."""
    path = tmp_path / "notify.sock"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(path))
    sock.settimeout(10)
    try:
        async with serve_process(tmp_path, env={"NOTIFY_SOCKET": str(path)}) as served:
            served.process.send_signal(signal.SIGTERM)
            with trio.fail_after(30):
                await served.process.wait()
        received = []
        sock.setblocking(False)
        while True:
            try:
                received.append(sock.recv(4096).decode())
            except BlockingIOError:
                break
    finally:
        sock.close()
    lines = "\n".join(received).splitlines()
    assert any(line.startswith("STATUS=loading model") for line in lines)
    assert "READY=1" in lines
    assert any(line.startswith("STATUS=serving on ws://") for line in lines)
    assert "STOPPING=1" in lines
    assert lines.index("READY=1") < lines.index("STOPPING=1")


async def test_systemd_watchdog_pings_while_healthy(tmp_path: Path) -> None:
    """With WATCHDOG_USEC set, the process sends WATCHDOG=1 at half the interval."""
    path = tmp_path / "notify.sock"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(path))
    sock.setblocking(False)
    try:
        env = {"NOTIFY_SOCKET": str(path), "WATCHDOG_USEC": "400000"}
        async with serve_process(tmp_path, env=env):
            await trio.sleep(1.0)
        received = []
        while True:
            try:
                received.append(sock.recv(4096).decode())
            except BlockingIOError:
                break
    finally:
        sock.close()
    assert sum("WATCHDOG=1" in datagram for datagram in received) >= 3


async def first_dashscope_event(url: str, voice: str) -> str:
    """The first event a run-task for `voice` gets on the DashScope endpoint."""
    import json

    from trio_websocket import open_websocket_url

    run = {
        "header": {"action": "run-task", "task_id": "t1", "streaming": "duplex"},
        "payload": {"input": {}, "parameters": {"voice": voice, "format": "pcm"}},
    }
    async with open_websocket_url(url.replace("/tts", "/api-ws/v1/inference")) as ws:
        await ws.send_message(json.dumps(run))
        with trio.fail_after(10):
            event: str = json.loads(await ws.get_message())["header"]["event"]
            return event


async def test_cosyvoice_alias_file_is_reloaded_on_sighup(tmp_path: Path) -> None:
    """SIGHUP re-reads <voices-dir>/cosyvoice-aliases.toml: a new alias name resolves."""
    voices = tmp_path / "voices"
    voices.mkdir()
    async with serve_process(tmp_path, "--voices-dir", str(voices)) as served:
        assert await first_dashscope_event(served.url, "narrator") == "task-failed"
        assert await first_dashscope_event(served.url, "longxiaochun_v2") == "task-started"
        (voices / "cosyvoice-aliases.toml").write_text(
            '[voices]\nnarrator = { description = "a calm old man" }\n'
        )
        served.process.send_signal(signal.SIGHUP)
        with trio.fail_after(10):
            while await first_dashscope_event(served.url, "narrator") != "task-started":
                await trio.sleep(0.05)
