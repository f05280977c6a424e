"""Voice-agent framework plugins over the native protocol (docs/INTEGRATIONS.md).

`voxtrio.integrations.pipecat` (`pip install voxtrio[pipecat]`) and
`voxtrio.integrations.livekit` (`pip install voxtrio[livekit]`). Both sit on the
asyncio client (`voxtrio.aioclient`) and never import the server's stack; this
package imports neither framework itself, so each extra stands alone.
"""
