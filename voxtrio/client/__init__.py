"""A Trio client for voxtrio servers (the wire protocol: docs/PROTOCOL.md).

    import trio
    import voxtrio.client

    async def main() -> None:
        async with voxtrio.client.connect("ws://127.0.0.1:8765/tts") as client:
            # Streaming: audio chunks as they are generated.
            async with client.synthesize("Hello there.", seed=7) as stream:
                async for chunk in stream:  # AudioChunk(pcm, sample_rate, sequence)
                    play(chunk.pcm)
            print(stream.result.duration, stream.result.timings.first_audio_ms)

            # Or everything at once, in either mode.
            speech = await client.speak("Hello again.", mode="non_streaming")
            voxtrio.client.write_wav("hello.wav", speech.pcm, speech.sample_rate)

    trio.run(main)

Audio is mono 16-bit little-endian PCM at the model's sample rate. A server
`error` raises SynthesisError (with `.code`, `.details`); leaving a `synthesize`
block early cancels the request and waits until the server has let it go.

The package, by concern: `_connect` (URL, TCP/TLS, handshake), `_connection` (the
WebSocket, the reader task, failure), `_client` (VoxtrioClient, the public calls),
`_streams` (SynthesisStream, TextStream), `_request` (one request's channel),
`_incoming` (the server messages it handles), `_results`, `_wav`. What does no I/O
is the protocol's, shared with the asyncio client (`voxtrio.aioclient`): the error
classes (`protocol._client_errors`, re-exported here), decoding
(`_client_incoming`), each request's checks (`_client_requests`), the messages sent
(`_client_outgoing`) and one connection's protocol state (`_client_connection`).
It imports only `voxtrio.protocol`, Trio and trio-websocket: never the server's
stack (torch, voxcpm, codecs, numpy), as the import contracts in pyproject.toml check.
"""

from voxtrio.client._client import VoxtrioClient
from voxtrio.client._connect import connect
from voxtrio.client._incoming import parse_server_message
from voxtrio.client._results import Speech
from voxtrio.client._streams import SynthesisStream, TextStream
from voxtrio.client._wav import write_wav
from voxtrio.protocol._client_errors import (
    ConnectError,
    ConnectionLost,
    ProtocolViolation,
    ResponseTimeout,
    SynthesisCancelled,
    SynthesisError,
    VoxtrioClientError,
)
from voxtrio.protocol._client_incoming import AudioChunk
from voxtrio.protocol._client_outgoing import DEFAULT_URL
from voxtrio.protocol._errors import ErrorCode
from voxtrio.protocol._messages import Progress, SynthesisResult, Timings

__all__ = [
    "DEFAULT_URL",
    "AudioChunk",
    "ConnectError",
    "ConnectionLost",
    "ErrorCode",
    "Progress",
    "ProtocolViolation",
    "ResponseTimeout",
    "Speech",
    "SynthesisCancelled",
    "SynthesisError",
    "SynthesisResult",
    "SynthesisStream",
    "TextStream",
    "Timings",
    "VoxtrioClient",
    "VoxtrioClientError",
    "connect",
    "parse_server_message",
    "write_wav",
]
