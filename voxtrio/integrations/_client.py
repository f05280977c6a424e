"""One long-lived connection for a framework service, reopened after it drops."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from voxtrio.aioclient import AsyncVoxtrioClient, open_client

log = logging.getLogger("voxtrio.integrations")


class SharedConnection:
    """The service's one WebSocket: opened on first use, reopened when it was lost.

    A connection lost mid-turn (the server restarted, the network dropped) fails
    that turn's request; the next turn gets a fresh connection, without the
    framework having to rebuild the service.
    """

    def __init__(self, url: str, **options: Any) -> None:
        self.url = url
        self._options = options
        self._client: AsyncVoxtrioClient | None = None
        self._lock = asyncio.Lock()
        self.connections_opened = 0

    @property
    def client(self) -> AsyncVoxtrioClient | None:
        return self._client

    async def get(self) -> AsyncVoxtrioClient:
        """The open client, (re)connecting first if there is none or it was lost."""
        async with self._lock:
            if self._client is None or self._client.closed:
                if self._client is not None:
                    log.info("voxtrio connection to %s was lost: reconnecting", self.url)
                    await self._client.aclose()
                self._client = None
                self._client = await open_client(self.url, **self._options)
                self.connections_opened += 1
            return self._client

    async def aclose(self) -> None:
        async with self._lock:
            client, self._client = self._client, None
        if client is not None:
            await client.aclose()
