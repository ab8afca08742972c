"""The TUI's one connection to the daemon: kept open, re-opened with backoff, resynced after.

Everything the screens ask goes through ``client``; state changes arrive from the
event subscription and are handed to ``on_event``. Losing the daemon is a state
shown to the user, never an exception that reaches the screen.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable

from runyard.protocol import Client, ConnectionLost, RemoteError
from runyard.protocol.messages import Event, Resync

BACKOFF_FIRST = 0.25
BACKOFF_MAX = 5.0


class NotConnected(ConnectionLost):
    pass


class DaemonLink:
    def __init__(
        self,
        socket_path: str,
        *,
        on_event: Callable[[Event], None],
        on_connected: Callable[[bool], Awaitable[None]],
        on_state: Callable[[str, bool], None],
    ) -> None:
        self.socket_path = socket_path
        self._on_event = on_event
        self._on_connected = on_connected
        self._on_state = on_state
        self._client: Client | None = None
        self.connected = asyncio.Event()
        self.user = ""
        self.uid = -1
        self.attempt = 0

    @property
    def client(self) -> Client:
        if self._client is None or self._client.closed:
            raise NotConnected(f"not connected to the daemon at {self.socket_path}")
        return self._client

    async def run(self) -> None:
        """Connect, load, follow events; on any loss, say so and try again with bounded backoff."""
        delay = BACKOFF_FIRST
        ever_connected = False
        while True:
            try:
                client = await Client.connect(self.socket_path, client_name="runyard-tui")
            except (OSError, ConnectionLost, RemoteError) as exc:
                self.attempt += 1
                reason = str(exc) or type(exc).__name__
                self._on_state(f"{reason} (retry {self.attempt} in {delay:.1f}s)", False)
                await asyncio.sleep(delay)
                delay = min(BACKOFF_MAX, delay * 2)
                continue
            self._client = client
            self.user = client.welcome.user if client.welcome else ""
            self.uid = client.welcome.uid if client.welcome else -1
            delay = BACKOFF_FIRST
            self.attempt = 0
            try:
                events = client.events()
                # Ask to subscribe before loading (the request goes out first); a change that still
                # slips between the two is caught by the app's periodic refresh of active executions.
                first = asyncio.ensure_future(anext(events))
                await asyncio.sleep(0)
                await self._on_connected(ever_connected)
                self._on_state("reconnected and resynced" if ever_connected else "connected", True)
                ever_connected = True
                self.connected.set()
                item = await first
                while True:
                    if isinstance(item, Resync):
                        await self._on_connected(True)
                    else:
                        self._on_event(item)
                    item = await anext(events)
            except (ConnectionLost, ConnectionError, OSError, RemoteError, StopAsyncIteration) as exc:
                self.connected.clear()
                self._client = None
                with contextlib.suppress(Exception):
                    await client.close()
                self._on_state(f"lost the daemon ({exc or 'connection closed'}); reconnecting…", False)
