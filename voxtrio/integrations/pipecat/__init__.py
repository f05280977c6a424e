"""Pipecat TTS service for voxtrio over the native protocol (`pip install voxtrio[pipecat]`).

    from voxtrio.integrations.pipecat import VoxtrioTTSService

    tts = VoxtrioTTSService(url="ws://127.0.0.1:8765/tts", voice_id="alice")

See docs/INTEGRATIONS.md for a whole agent.
"""

from voxtrio.integrations.pipecat._service import VoxtrioTTSService

__all__ = ["VoxtrioTTSService"]
