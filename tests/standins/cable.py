"""A network cable between the booth and one of its servers, that a test can pull out.

:func:`open_cable` listens on a free loopback port and relays every connection, byte for
byte, to ``host:port``. :meth:`Cable.cut` is the cable pulled: every relayed connection is
reset at once and new ones are accepted and dropped, so clients see the real errors
(``ConnectionResetError``, a closed connection) rather than anything our own code fakes.
:meth:`Cable.mend` lets new connections through again; the server never noticed.
:meth:`Cable.blackhole` is the nastier failure of a real network: nothing is reset, bytes just
stop arriving (in both directions; held, not lost, as TCP would), so only timeouts can tell.
"""

from __future__ import annotations

import struct
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from functools import partial
from urllib.parse import urlsplit, urlunsplit

import trio

HOST = "127.0.0.1"


class Cable:
    def __init__(self, target_host: str, target_port: int) -> None:
        self.target = (target_host, target_port)
        self.port = 0
        self.connections = 0  # relayed since opened; a test can see its client reconnect
        self._up = True
        self._clear = trio.Event()  # unset while blackholed
        self._clear.set()
        self._live: set[trio.CancelScope] = set()

    @property
    def up(self) -> bool:
        return self._up

    def via(self, url: str) -> str:
        """``url`` with its host and port replaced by this cable's end."""
        parts = urlsplit(url)
        netloc = f"{HOST}:{self.port}"
        if parts.username or parts.password:
            netloc = parts.netloc.rsplit("@", 1)[0] + "@" + netloc
        return urlunsplit(parts._replace(netloc=netloc))

    def cut(self) -> None:
        self._up = False
        for scope in list(self._live):
            scope.cancel()

    def mend(self) -> None:
        self._up = True
        self._clear.set()

    def blackhole(self) -> None:
        if self._clear.is_set():
            self._clear = trio.Event()

    async def _handle(self, client: trio.SocketStream) -> None:
        if not self._up:
            await _reset(client)
            return
        await self._clear.wait()  # blackholed: accepted, and then nothing, as a lost route looks
        self.connections += 1
        try:
            server = await trio.open_tcp_stream(*self.target)
        except OSError:
            await _reset(client)
            return
        with trio.CancelScope() as scope:
            self._live.add(scope)
            try:
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(self._pump, client, server, nursery.cancel_scope)
                    nursery.start_soon(self._pump, server, client, nursery.cancel_scope)
            finally:
                self._live.discard(scope)
        await _reset(client)
        await _reset(server)

    async def _pump(
        self, src: trio.SocketStream, dst: trio.SocketStream, done: trio.CancelScope
    ) -> None:
        try:
            while data := await src.receive_some(65536):
                await self._clear.wait()  # held, as TCP holds what it cannot deliver yet
                await dst.send_all(data)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass
        done.cancel()  # one side gone: the relay is over for both


async def _reset(stream: trio.SocketStream) -> None:
    """Close with RST rather than FIN, as a pulled cable's peer eventually sees it."""
    try:
        linger = struct.pack("ii", 1, 0)  # on, zero seconds
        stream.socket.setsockopt(trio.socket.SOL_SOCKET, trio.socket.SO_LINGER, linger)
    except OSError:
        pass
    await trio.aclose_forcefully(stream)


@asynccontextmanager
async def open_cable(url: str) -> AsyncIterator[Cable]:
    """A cable to the server ``url`` names (``redis://host:port/…``, ``postgresql://…``)."""
    parts = urlsplit(url)
    if parts.hostname is None or parts.port is None:
        raise ValueError(f"a cable needs a host and port: {url!r}")
    cable = Cable(parts.hostname, parts.port)
    async with trio.open_nursery() as nursery:
        [listener] = await nursery.start(partial(trio.serve_tcp, cable._handle, 0, host=HOST))
        cable.port = listener.socket.getsockname()[1]
        try:
            yield cable
        finally:
            nursery.cancel_scope.cancel()
