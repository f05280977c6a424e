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

Built on the sans-IO `voxtrio.protocol` (messages, frames, the strict converter); by
concern: `_client` (connecting, the public calls), `_connection` (the WebSocket, the
reader task, failure), `_streams`, `_request` (one request's checks), `_incoming`
(server messages decoded), `_errors`. It never imports Trio or the server's stack
(import contract `client-light` in pyproject.toml).
"""

from voxtrio.aioclient._client import (
    DEFAULT_URL,
    AsyncVoxtrioClient,
    connect,
    open_client,
)
from voxtrio.aioclient._errors import (
    ConnectError,
    ConnectionLost,
    ProtocolViolation,
    ResponseTimeout,
    SynthesisError,
    VoxtrioClientError,
)
from voxtrio.aioclient._incoming import AudioChunk, Word, WordTimings
from voxtrio.aioclient._streams import SynthesisStream, TextStream
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
