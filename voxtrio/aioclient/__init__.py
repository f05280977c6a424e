"""An asyncio client for voxtrio servers (the wire protocol: docs/PROTOCOL.md).

For asyncio programs and the voice-agent frameworks (Pipecat, LiveKit Agents:
`voxtrio.integrations`); `voxtrio.client` is the Trio one. Needs `websockets`
(`pip install voxtrio[aio]`, or either framework's extra).

    import asyncio
    import voxtrio.aioclient

    async def main() -> None:
        async with voxtrio.aioclient.connect("ws://127.0.0.1:8765/tts") as client:
            async with client.text_stream(sample_rate=24000, word_timestamps=True) as stream:
                for token in ["Hel", "lo ", "there."]:
                    await stream.send_text(token)
                await stream.end()
                async for event in stream:  # AudioChunk or WordTimings, in order
                    print(event)
            print(stream.result)

    asyncio.run(main())

Built on the sans-IO `voxtrio.protocol` (messages, frames, the strict converter) and
its client part, shared with the Trio client: the error classes
(`protocol._client_errors`, re-exported here: the same classes as
`voxtrio.client`'s), decoding (`_client_incoming`), each request's checks
(`_client_requests`), the messages sent (`_client_outgoing`) and one connection's
protocol state (`_client_connection`). By concern: `_client` (connecting, the public
calls), `_connection` (the WebSocket, the reader task, failure), `_streams`,
`_request` (one request's queue), `_incoming` (the names of word timings). It never
imports Trio or the server's stack (import contracts `asyncio-clients` and
`client-light` in pyproject.toml).
"""

from voxtrio.aioclient._client import AsyncVoxtrioClient, connect, open_client
from voxtrio.aioclient._incoming import Word, WordTimings
from voxtrio.aioclient._streams import SynthesisStream, TextStream
from voxtrio.protocol._client_errors import (
    ConnectError,
    ConnectionLost,
    ProtocolViolation,
    ResponseTimeout,
    SynthesisError,
    VoxtrioClientError,
)
from voxtrio.protocol._client_incoming import AudioChunk
from voxtrio.protocol._client_outgoing import DEFAULT_URL
from voxtrio.protocol._errors import ErrorCode
from voxtrio.protocol._messages import SynthesisResult
from voxtrio.protocol._voice_messages import VoiceRegistered, VoiceSummary

__all__ = [
    "DEFAULT_URL",
    "AsyncVoxtrioClient",
    "AudioChunk",
    "ConnectError",
    "ConnectionLost",
    "ErrorCode",
    "ProtocolViolation",
    "ResponseTimeout",
    "SynthesisError",
    "SynthesisResult",
    "SynthesisStream",
    "TextStream",
    "VoiceRegistered",
    "VoiceSummary",
    "VoxtrioClientError",
    "Word",
    "WordTimings",
    "connect",
    "open_client",
]
