"""DNS over UDP and TCP, for any name server of the lab: bytes in, bytes out.

A server supplies one function, ``handle(wire, addr, transport) -> bytes | None``
(None: send nothing), and these drivers do the rest: one datagram endpoint, one stream
server on the same port (RFC 1035 4.2: a name server answers on both), TCP messages
prefixed by their two-octet length (4.2.2), several per connection answered in order
and idle connections closed (RFC 7766). The lab DNS (:mod:`.server`) and the class DNS
(:mod:`maillab.classnet.server`) use them.
"""

from __future__ import annotations

import asyncio
import errno
import struct
from collections.abc import Awaitable, Callable

Handler = Callable[[bytes, tuple[str, int], str], "bytes | None"]


class DatagramEndpoint(asyncio.DatagramProtocol):
    """UDP: each datagram goes to ``handle``; its answer goes back to the sender."""

    def __init__(self, handle: Handler) -> None:
        self.handle = handle
        self.transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        try:
            out = self.handle(data, addr, "udp")
            if out is not None and self.transport is not None:
                self.transport.sendto(out, addr)
        except Exception:  # noqa: BLE001 - one bad packet must never stop the listener
            pass

    def error_received(self, exc: Exception) -> None:  # ICMP port unreachable etc.
        pass


async def serve_stream(handle: Handler, reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                       idle: float) -> None:
    """One TCP connection: length-prefixed messages answered in order until the client
    closes, stays idle for ``idle`` seconds, or gets no answer (None)."""
    peer = writer.get_extra_info("peername") or ("?", 0)
    while True:
        try:
            head = await asyncio.wait_for(reader.readexactly(2), idle)
            (length,) = struct.unpack("!H", head)
            body = await asyncio.wait_for(reader.readexactly(length), idle)
        except (asyncio.IncompleteReadError, asyncio.TimeoutError, ConnectionError):
            return
        out = handle(body, peer, "tcp")
        if out is None:
            return
        writer.write(struct.pack("!H", len(out)) + out)
        await writer.drain()


async def bind_udp_tcp(address: str, port: int, handle: Handler,
                       client: Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]],
                       ) -> tuple[asyncio.DatagramTransport, asyncio.base_events.Server, int]:
    """UDP and TCP listeners on one address and port (port 0: the same free port for both;
    the kernel picks the UDP one and TCP may find it taken, so try a few times)."""
    loop = asyncio.get_running_loop()
    for attempt in range(20):
        transport, _ = await loop.create_datagram_endpoint(lambda: DatagramEndpoint(handle),
                                                           local_addr=(address, port))
        got = transport.get_extra_info("sockname")[1]
        try:
            server = await asyncio.start_server(client, address, got)
        except OSError as exc:
            transport.close()
            if port == 0 and exc.errno == errno.EADDRINUSE and attempt < 19:
                continue
            raise
        return transport, server, got  # type: ignore[return-value]
    raise OSError(errno.EADDRINUSE, f"no port free for both UDP and TCP on {address}")
