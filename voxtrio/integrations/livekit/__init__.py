"""LiveKit Agents TTS for voxtrio over the native protocol (`pip install voxtrio[livekit]`).

    from voxtrio.integrations import livekit as voxtrio_livekit

    session = AgentSession(tts=voxtrio_livekit.TTS(url="ws://127.0.0.1:8765/tts"), ...)

See docs/INTEGRATIONS.md for a whole agent.
"""

from voxtrio.integrations.livekit._tts import TTS, ChunkedStream, SynthesizeStream

__all__ = ["TTS", "ChunkedStream", "SynthesizeStream"]
