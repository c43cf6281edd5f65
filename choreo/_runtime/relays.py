"""The outbox relays a bus runs: one per store it was given or that a started service has."""

from __future__ import annotations

from ..observability.observer import Observer
from ..storage import Relaying, Send, Storage

__all__ = ["Relays"]


class Relays:
    def __init__(self, send: Send, observer: Observer) -> None:
        self._send = send
        self._observer = observer
        self._running: dict[int, tuple[Storage, Relaying]] = {}

    def start(self, store: Storage) -> None:
        """Relay ``store``'s outbox (once, however often it is asked)."""
        if id(store) not in self._running:
            self._running[id(store)] = (store, store.relay(self._send, self._observer))

    async def stop(self) -> None:
        running, self._running = self._running, {}
        for _, relaying in running.values():
            await relaying.stop()
