"""voxtrio.client and `voxtrio say` against real servers (synthetic engine) and scripted fakes."""

from __future__ import annotations

import io
import json
import os
import signal
import socket
import subprocess
import sys
import types
import wave
from collections.abc import Awaitable, Callable
from functools import partial
from pathlib import Path
from typing import Any, cast

import numpy as np
import pytest
import trio
from trio_websocket import (
    ConnectionClosed,
    WebSocketConnection,
    WebSocketRequest,
    open_websocket_url,
    serve_websocket,
)

from voxtrio._cli import build_parser
from voxtrio.client import (
    ConnectError,
    ConnectionLost,
    ErrorCode,
    ProtocolViolation,
    ResponseTimeout,
    SynthesisError,
    SynthesisStream,
    connect,
    write_wav,
)
from voxtrio.protocol._frames import FrameType, encode_frame
from voxtrio.protocol._messages import (
    Complete,
    Error,
    ErrorBody,
    Progress,
    SynthesisResult,
    Timings,
    dump_message,
)
from voxtrio.server._listener import ServerHandle
from voxtrio.speech._synthetic import SyntheticEngine
from voxtrio.tools._say import PLAIN_LINES, ProgressDisplay, run_say

RATE = 48000
CHUNK = 7680  # samples per synthetic chunk; one chunk per 4 characters of text
StartServer = Callable[..., Awaitable[ServerHandle]]


def paced(rtf: float) -> Callable[[], SyntheticEngine]:
    """A synthetic engine that takes `rtf` x real time per chunk (0.16 s of audio)."""
    return partial(SyntheticEngine, rtf=rtf)


def dominant_frequency(pcm: bytes) -> float:
    samples = np.frombuffer(pcm, dtype="<i2").astype(np.float64)
    spectrum = np.abs(np.fft.rfft(samples))
    return float(np.argmax(spectrum) * RATE / len(samples))


def closed_port() -> int:
    """A port on 127.0.0.1 that nothing listens on (bound, then released)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


async def fake_server(nursery: trio.Nursery, script: Callable[[WebSocketConnection], Any]) -> str:
    """A WebSocket server that runs `script(ws)` for each connection; returns its URL."""

    async def handler(request: WebSocketRequest) -> None:
        ws = await request.accept()
        try:
            await script(ws)
            await trio.sleep_forever()
        except ConnectionClosed:
            pass

    server = await nursery.start(partial(serve_websocket, handler, "127.0.0.1", 0, None))
    return f"ws://127.0.0.1:{server.port}/tts"


async def next_request(ws: WebSocketConnection) -> dict[str, Any]:
    """The next client message that is a tts_request (fakes answer nothing else)."""
    while True:
        message = json.loads(await ws.get_message())
        if message["type"] == "tts_request":
            return cast(dict[str, Any], message)


def chunk_frame(request_id: str, sequence: int, pcm: bytes, *, is_final: bool = False) -> bytes:
    metadata = {
        "request_id": request_id,
        "sequence": sequence,
        "sample_rate": RATE,
        "is_final": is_final,
    }
    return encode_frame(FrameType.STREAMING_CHUNK, metadata, pcm)


def complete(request_id: str, samples: int, chunks: int) -> str:
    timings = Timings(queue_ms=0.0, first_audio_ms=1.0, total_ms=2.0, rtf=0.1)
    result = SynthesisResult(samples / RATE, RATE, samples, chunks, 1, timings)
    return dump_message(Complete(request_id, result))


# ---------------------------------------------------------------- streaming and modes


async def test_streaming_chunks_arrive_in_order_and_add_up_to_the_result(
    synthetic_server: ServerHandle,
) -> None:
    """Streaming chunks come with sequences 0..n-1 and their samples sum to result.samples."""
    async with connect(synthetic_server.url) as client, client.synthesize("x" * 40) as stream:
        chunks = [chunk async for chunk in stream]
    assert [c.sequence for c in chunks] == list(range(10))
    assert {c.sample_rate for c in chunks} == {RATE}
    assert stream.result is not None
    assert sum(c.samples or 0 for c in chunks) == stream.result.samples == 10 * CHUNK
    assert stream.result.chunks == 10
    assert stream.progress is not None
    assert not stream.cancelled


async def test_non_streaming_gives_one_whole_audio(synthetic_server: ServerHandle) -> None:
    """A non_streaming request yields exactly one chunk holding all the audio."""
    async with (
        connect(synthetic_server.url) as client,
        client.synthesize("x" * 40, mode="non_streaming") as stream,
    ):
        chunks = [chunk async for chunk in stream]
    assert len(chunks) == 1
    assert chunks[0].sequence == 0
    assert stream.result is not None
    assert chunks[0].samples == stream.result.samples == 10 * CHUNK


@pytest.mark.parametrize("mode", ["streaming", "non_streaming"])
async def test_speak_collects_the_whole_audio(synthetic_server: ServerHandle, mode: str) -> None:
    """speak() returns all the audio and the result, in either mode."""
    async with connect(synthetic_server.url) as client:
        speech = await client.speak("Hello world!", mode=mode, seed=3)  # type: ignore[arg-type]
    assert speech.sample_rate == RATE
    assert len(speech.pcm) == 2 * speech.result.samples == 2 * 3 * CHUNK
    assert speech.result.seed == 3
    assert dominant_frequency(speech.pcm) == pytest.approx(113, abs=2)


async def test_encoded_format_chunks_make_the_whole_file(synthetic_server: ServerHandle) -> None:
    """With format=flac the chunks are a FLAC stream and the result says so."""
    async with connect(synthetic_server.url) as client:
        speech = await client.speak("Hello world!", format="flac", sample_rate=24000)
    assert speech.pcm.startswith(b"fLaC")
    assert (speech.format, speech.sample_rate) == ("flac", 24000)
    assert speech.result.samples == 3 * CHUNK // 2


async def test_text_stream_speaks_text_sent_in_pieces(synthetic_server: ServerHandle) -> None:
    """A text stream fed piece by piece yields audio for all of it, sentence by sentence."""
    async with connect(synthetic_server.url) as client, client.text_stream(seed=1) as stream:
        for piece in ("Hello the", "re. How are", " you today? Fine."):
            await stream.send_text(piece)
        await stream.end()
        chunks = [chunk async for chunk in stream]
    assert stream.result is not None
    assert stream.result.sentences == 3
    assert sum(c.samples or 0 for c in chunks) == stream.result.samples
    assert [c.sequence for c in chunks] == list(range(len(chunks)))


async def test_text_stream_reports_processing_for_each_sentence_regression(
    synthetic_server: ServerHandle,
) -> None:
    """Each sentence of a text stream is announced by its own 'processing' progress."""
    messages: list[str] = []
    async with open_websocket_url(synthetic_server.url) as ws:
        start = {"type": "text_stream_start", "request_id": "t", "params": {}}
        delta = {"type": "text_delta", "request_id": "t", "text": "One. Two. Three."}
        for sent in (start, delta, {"type": "text_stream_end", "request_id": "t"}):
            await ws.send_message(json.dumps(sent))
        while True:
            received = await ws.get_message()
            if isinstance(received, str):
                parsed = json.loads(received)
                if parsed["type"] == "complete":
                    break
                if parsed.get("state") == "processing":
                    messages.append(parsed["message"])
    assert messages == ["sentence 0", "sentence 1", "sentence 2"]


# ---------------------------------------------------------------- concurrency


async def test_concurrent_requests_do_not_mix_audio(start_server: StartServer) -> None:
    """Interleaved requests on one connection each get exactly their own audio."""
    server = await start_server(paced(0.2), workers=3)
    seeds = (1, 200, 500)
    arrivals: list[int] = []
    together: dict[int, bytes] = {}
    async with connect(server.url) as client:
        alone = {seed: (await client.speak("x" * 24, seed=seed)).pcm for seed in seeds}

        async def collect(seed: int) -> None:
            pcm = bytearray()
            async with client.synthesize("x" * 24, seed=seed) as stream:
                async for chunk in stream:
                    arrivals.append(seed)
                    pcm += chunk.pcm
            together[seed] = bytes(pcm)

        async with trio.open_nursery() as nursery:
            for seed in seeds:
                nursery.start_soon(collect, seed)
    assert together == alone
    for seed in seeds:
        assert dominant_frequency(together[seed]) == pytest.approx(110 + seed, abs=2)
    # They really were interleaved on the wire: each started before another ended.
    assert max(arrivals.index(s) for s in seeds) < min(
        len(arrivals) - 1 - arrivals[::-1].index(s) for s in seeds
    )


async def test_requests_beyond_the_connection_limit_are_rate_limited(
    start_server: StartServer,
) -> None:
    """A request over the per-connection limit fails with RATE_LIMITED; the others run."""
    server = await start_server(paced(1.0), max_requests_per_connection=2)
    # Unread streams fill their buffers and then pause the connection: keep this short.
    async with (
        connect(server.url) as client,
        client.synthesize("x" * 400) as first,
        client.synthesize("x" * 400) as second,
        client.synthesize("x") as third,
    ):
        with pytest.raises(SynthesisError) as info:
            await anext(third)
    assert info.value.code == ErrorCode.RATE_LIMITED
    assert info.value.details["scope"] == "connection"
    assert first.cancelled
    assert second.cancelled


# ---------------------------------------------------------------- cancellation


async def test_cancel_mid_stream_ends_with_cancelled(start_server: StartServer) -> None:
    """stream.cancel() makes the iteration end early with stream.cancelled set."""
    server = await start_server(paced(0.5))
    async with connect(server.url) as client, client.synthesize("x" * 400) as stream:
        async for chunk in stream:
            if chunk.sequence == 1:
                await stream.cancel()
    assert stream.cancelled
    assert stream.result is None
    assert 2 <= stream.chunks_received < 100


async def test_leaving_the_context_early_frees_the_id(start_server: StartServer) -> None:
    """Breaking out of synthesize() cancels, waits, and the same id can be used again."""
    server = await start_server(paced(0.5))
    async with connect(server.url) as client:
        async with client.synthesize("x" * 400, request_id="again") as stream:
            async for _ in stream:
                break
        assert stream.cancelled
        assert client.active_requests == frozenset()
        speech = await client.speak("Hello", request_id="again")
    assert speech.result.samples == 2 * CHUNK


async def test_a_cancel_crossing_the_terminal_message_is_harmless(nursery: trio.Nursery) -> None:
    """A cancel answered by UNKNOWN_REQUEST (request already done) leaves the connection usable."""

    async def script(ws: WebSocketConnection) -> None:
        rid = (await next_request(ws))["request_id"]
        pcm = b"\x01\x00" * 100
        await ws.send_message(chunk_frame(rid, 0, pcm))
        await ws.send_message(chunk_frame(rid, 1, b"", is_final=True))
        cancel = json.loads(await ws.get_message())
        assert cancel == {"type": "cancel", "request_id": rid}
        # The request had finished before the cancel arrived: result, then the refusal.
        await ws.send_message(complete(rid, 100, 1))
        error = ErrorBody(ErrorCode.UNKNOWN_REQUEST, f"no active request {rid!r}")
        await ws.send_message(dump_message(Error(rid, error)))
        ping = json.loads(await ws.get_message())
        await ws.send_message(json.dumps({**ping, "type": "pong", "server_time": 1}))

    url = await fake_server(nursery, script)
    async with connect(url) as client:
        async with client.synthesize("Hi") as stream:
            await anext(stream)
            await stream.cancel()
            assert [chunk async for chunk in stream] == []
        assert stream.result is not None
        assert not stream.cancelled
        assert await client.ping() >= 0


# ---------------------------------------------------------------- errors


async def test_server_error_raises_synthesis_error(synthetic_server: ServerHandle) -> None:
    """An invalid parameter comes back as SynthesisError(INVALID_PARAMS) naming the field."""
    async with connect(synthetic_server.url) as client:
        with pytest.raises(SynthesisError) as info:
            await client.speak("Hello", cfg_value=99)
    assert info.value.code == ErrorCode.INVALID_PARAMS
    assert "params.cfg_value" in info.value.details
    assert info.value.request_id is not None


async def test_unknown_parameter_is_refused_before_sending(synthetic_server: ServerHandle) -> None:
    """A misspelt parameter name is a TypeError on the spot, not a round trip."""
    async with connect(synthetic_server.url) as client:
        with pytest.raises(TypeError, match="cfg_valu"):
            await client.speak("Hello", cfg_valu=2.0)


async def test_oversized_message_closes_with_1009(start_server: StartServer) -> None:
    """A message over the server's size limit ends the connection with close code 1009."""
    server = await start_server(max_message_bytes=4096)
    async with connect(server.url) as client:
        with pytest.raises(ConnectionLost) as info:
            await client.speak("x" * 5000)
    assert info.value.code == 1009


async def test_unknown_path_is_a_connect_error(synthetic_server: ServerHandle) -> None:
    """A path other than /tts or / is refused at the handshake with HTTP 404."""
    url = synthetic_server.url.replace("/tts", "/nope")
    with pytest.raises(ConnectError) as info:
        async with connect(url):
            pass
    assert info.value.status_code == 404


async def test_silent_server_hits_the_response_timeout(nursery: trio.Nursery) -> None:
    """No message at all about a request within response_timeout raises ResponseTimeout."""

    async def script(ws: WebSocketConnection) -> None:
        await next_request(ws)

    url = await fake_server(nursery, script)
    async with connect(url, response_timeout=0.2, cancel_timeout=0.2) as client:
        with pytest.raises(ResponseTimeout):
            await client.speak("Hello")


async def test_connection_level_error_is_recorded_not_raised(nursery: trio.Nursery) -> None:
    """An error with a null request_id lands in connection_errors; requests go on."""

    async def script(ws: WebSocketConnection) -> None:
        rid = (await next_request(ws))["request_id"]
        error = ErrorBody(ErrorCode.INVALID_JSON, "not valid JSON")
        await ws.send_message(dump_message(Error(None, error)))
        await ws.send_message(chunk_frame(rid, 0, b"", is_final=True))
        await ws.send_message(complete(rid, 0, 0))

    url = await fake_server(nursery, script)
    async with connect(url) as client:
        speech = await client.speak("Hello")
        assert [e.code for e in client.connection_errors] == [ErrorCode.INVALID_JSON]
    assert speech.pcm == b""


async def test_out_of_sequence_frame_is_a_protocol_violation(nursery: trio.Nursery) -> None:
    """A chunk whose sequence skips a number raises ProtocolViolation and closes the connection."""

    async def script(ws: WebSocketConnection) -> None:
        rid = (await next_request(ws))["request_id"]
        await ws.send_message(chunk_frame(rid, 0, b"\x00\x00" * 10))
        await ws.send_message(chunk_frame(rid, 2, b"\x00\x00" * 10))

    url = await fake_server(nursery, script)
    async with connect(url) as client:
        with pytest.raises(ProtocolViolation, match="sequence 2, expected 1"):
            await client.speak("Hello")
        assert client.closed


async def test_message_for_an_unknown_request_is_a_protocol_violation(
    nursery: trio.Nursery,
) -> None:
    """Progress naming a request this client never sent raises ProtocolViolation."""

    async def script(ws: WebSocketConnection) -> None:
        await next_request(ws)
        await ws.send_message(dump_message(Progress("someone-else", "queued", 0.0)))

    url = await fake_server(nursery, script)
    async with connect(url) as client:
        with pytest.raises(ProtocolViolation, match="someone-else"):
            await client.speak("Hello")


async def test_server_shutdown_ends_active_requests_with_shutting_down(
    start_server: StartServer,
) -> None:
    """A graceful shutdown past its drain deadline ends a running request with SHUTTING_DOWN."""
    server = await start_server(paced(1.0))
    async with connect(server.url) as client, client.synthesize("x" * 400) as stream:
        await anext(stream)
        await server.server.shutdown(drain_timeout=0.1)
        with pytest.raises(SynthesisError) as info:
            async for _ in stream:
                pass
    assert info.value.code == ErrorCode.SHUTTING_DOWN


# ---------------------------------------------------------------- ping, WAV


async def test_ping_measures_a_round_trip(synthetic_server: ServerHandle) -> None:
    """ping() returns the round-trip time of a protocol ping in seconds."""
    async with connect(synthetic_server.url) as client:
        rtt = await client.ping()
    assert 0 < rtt < 5


def test_write_wav_round_trips_through_the_wave_module(tmp_path: Path) -> None:
    """write_wav writes 16-bit mono that the stdlib wave module reads back unchanged."""
    pcm = np.arange(-500, 500, dtype="<i2").tobytes()
    path = tmp_path / "out.wav"
    write_wav(path, pcm, 22050)
    with wave.open(str(path), "rb") as wav:
        assert (wav.getnchannels(), wav.getsampwidth(), wav.getframerate()) == (1, 2, 22050)
        assert wav.readframes(wav.getnframes()) == pcm
    assert os.listdir(tmp_path) == ["out.wav"]  # no temporary file left behind


# ---------------------------------------------------------------- voxtrio say


def say_args(*argv: str) -> Any:
    return build_parser().parse_args(["say", *argv])


async def test_say_writes_the_wav(
    synthetic_server: ServerHandle, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`voxtrio say` writes the whole audio as a WAV and prints a summary line."""
    out = tmp_path / "hello.wav"
    args = say_args("Hello world!", "-o", str(out), "--url", synthetic_server.url, "--seed", "3")
    status = await trio.to_thread.run_sync(run_say, args)
    assert status == 0
    with wave.open(str(out), "rb") as wav:
        assert wav.getframerate() == RATE
        assert wav.getnframes() == 3 * CHUNK
    assert f"{RATE} Hz" in capsys.readouterr().err


async def test_say_exits_1_when_the_connection_is_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`voxtrio say` against a closed port says it cannot connect and exits 1."""
    out = tmp_path / "hello.wav"
    args = say_args("Hello", "-o", str(out), "--url", f"ws://127.0.0.1:{closed_port()}/tts")
    status = await trio.to_thread.run_sync(run_say, args)
    assert status == 1
    assert "cannot connect" in capsys.readouterr().err
    assert not out.exists()


def test_say_exits_2_on_an_out_of_range_parameter(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`voxtrio say --cfg-value 99` is refused locally with exit status 2, naming the flag."""
    args = say_args("Hello", "-o", str(tmp_path / "x.wav"), "--cfg-value", "99")
    assert run_say(args) == 2
    assert "--cfg-value" in capsys.readouterr().err


def _default_sigint() -> None:
    signal.signal(signal.SIGINT, signal.SIG_DFL)


async def test_say_ctrl_c_cancels_the_request(start_server: StartServer, tmp_path: Path) -> None:
    """SIGINT during `voxtrio say` cancels the request, writes nothing and exits 130."""
    server = await start_server(paced(1.0))
    out = tmp_path / "long.wav"
    command = [sys.executable, "-m", "voxtrio", "say", "x" * 400, "-o", str(out)]
    command += ["--url", server.url]
    # A child inherits an ignored SIGINT (some test runners and libraries leave it so):
    # give it the default disposition, as a terminal's Ctrl-C would find it.
    process = await trio.lowlevel.open_process(
        command, stderr=subprocess.PIPE, preexec_fn=_default_sigint
    )
    assert process.stderr is not None
    err = b""
    with trio.fail_after(10):
        # Non-TTY progress lines start after a second, once the request runs.
        while b"elapsed" not in err:
            data = await process.stderr.receive_some()
            assert data, err
            err += data
        process.send_signal(signal.SIGINT)
        while data := await process.stderr.receive_some():
            err += data
        assert await process.wait() == 130
    assert b"interrupted; the request was cancelled" in err
    assert not out.exists()


# ---------------------------------------------------------------- the progress display


def fake_stream(state: str, progress: float, audio_seconds: float = 0.0) -> SynthesisStream:
    message = Progress("r", state, progress)  # type: ignore[arg-type]
    return cast(
        SynthesisStream, types.SimpleNamespace(progress=message, audio_seconds=audio_seconds)
    )


def test_tty_display_redraws_one_line_in_place() -> None:
    """On a terminal the display rewrites a single line with carriage returns."""
    out = io.StringIO()
    display = ProgressDisplay(out, tty=True)
    display.update(fake_stream("generating", 0.25, 1.5), elapsed=2.0)
    display.update(fake_stream("generating", 0.5, 3.0), elapsed=3.0)
    display.clear()
    text = out.getvalue()
    assert "\n" not in text
    assert text.count("\r") == 4
    assert " 50% generating" in text
    assert "3.0 s audio" in text


def test_streamed_audio_is_not_shown_as_zero_percent() -> None:
    """Audio arriving while the server reports "processing": the line says streaming, no 0%."""
    out = io.StringIO()
    display = ProgressDisplay(out, tty=True)
    display.update(fake_stream("processing", 0.0, 2.5), elapsed=3.0)
    text = out.getvalue()
    assert "%" not in text
    assert "streaming" in text
    assert "2.5 s audio" in text


async def test_plain_display_prints_a_few_lines_at_most(autojump_clock: trio.abc.Clock) -> None:
    """Without a terminal a long request prints at most PLAIN_LINES progress lines."""
    out = io.StringIO()
    display = ProgressDisplay(out, tty=False)
    stream = types.SimpleNamespace(progress=None, audio_seconds=0.0)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(display.run, cast(SynthesisStream, stream))
        for step in range(1001):
            stream.progress = Progress("r", "generating", step / 1000)
            await trio.sleep(0.05)
        nursery.cancel_scope.cancel()
    lines = out.getvalue().splitlines()
    assert 3 <= len(lines) <= PLAIN_LINES
    assert all(line.startswith("voxtrio say: ") for line in lines)


async def test_word_times_are_on_the_stream(synthetic_server: ServerHandle) -> None:
    """word_timestamps=True: one Words per sentence on the stream, in order."""
    async with (
        connect(synthetic_server.url) as client,
        client.synthesize("Hello there. Bye now.", word_timestamps=True) as stream,
    ):
        chunks = [chunk async for chunk in stream]
    assert chunks
    assert [w.sentence for w in stream.words] == [0, 1]
    assert [w.text for w in stream.words[1].words] == ["Bye", "now."]
