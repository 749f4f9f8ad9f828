"""The lab MTAs' stub resolver: how a mail host asks the lab DNS for MX and A records.

A stub resolver (RFC 1034 5.3.1) does no detective work of its own: it sends the
question to its name server and waits for the response that matches, which means
the same ID and the same question (RFC 5452 9.1), coming from the server it asked.
It answers like dnspython's ``Resolver.resolve`` (an ``Answer``; ``NXDOMAIN``;
``NoNameservers`` carrying the server's REFUSED or SERVFAIL response; ``Timeout``),
so :func:`maillab.relay.mx.find_route` works with either.

It is built for a relay that looks up hundreds of routes a second on the lab thread:

* one UDP socket for every lookup, *connected* to the lab DNS: a connected socket
  also hears the ICMP "port unreachable", so a stopped DNS fails the lookup at once
  instead of after the timeout;
* the query for a name and type is rendered once and sent with a fresh random ID
  each time;
* identical responses (the same bytes but for the ID) are decoded once.

It keeps no answers: every lookup is a query on the wire and a response from the
lab DNS, so each one shows in the DNS transcript. (The relay's route cache,
``lab.limits.relay_dns_cache``, is a separate choice, off by default.)
"""

from __future__ import annotations

import asyncio
import secrets
import struct

import dns.asyncquery
import dns.exception
import dns.flags
import dns.message
import dns.name
import dns.opcode
import dns.rcode
import dns.rdataclass
import dns.rdatatype
import dns.resolver

#: Rendered queries and decoded responses kept (each cache is emptied when full).
MEMO_SIZE = 256
HEADER_SIZE = 12


class _Endpoint(asyncio.DatagramProtocol):
    """The connected UDP socket; hands each datagram to the lookup waiting for its ID."""

    def __init__(self, stub: StubResolver) -> None:
        self.stub = stub

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        self.stub._received(data)  # noqa: SLF001 - the endpoint is the stub's own

    def error_received(self, exc: Exception) -> None:
        self.stub._failed(exc)  # noqa: SLF001

    def connection_lost(self, exc: Exception | None) -> None:
        self.stub._lost()  # noqa: SLF001


class StubResolver:
    """Lookups at one name server (the lab DNS), for coroutines on one event loop."""

    def __init__(self, address: str, port: int, timeout: float, *, source: str | None = None) -> None:
        self.address = address
        self.port = port
        self.timeout = timeout
        self.source = source  # the host's own address to ask from (None: the system's choice)
        self.queries = 0
        self._transport: asyncio.DatagramTransport | None = None
        self._opening = asyncio.Lock()
        # ID -> (the question section we sent, the future its response resolves)
        self._pending: dict[int, tuple[bytes, asyncio.Future[bytes]]] = {}
        self._queries: dict[tuple[str, int], tuple[dns.message.Message, bytes]] = {}
        self._decoded: dict[bytes, dns.message.Message] = {}

    # -- the interface find_route uses (as dnspython's Resolver) ---------------------------
    async def resolve(self, qname: str | dns.name.Name, rdtype: str | int = "A", *,
                      raise_on_no_answer: bool = True, search: bool = False) -> dns.resolver.Answer:
        """One question to the lab DNS. ``search`` is accepted for dnspython's
        signature; names are always taken as absolute (no search list)."""
        name = qname if isinstance(qname, dns.name.Name) else dns.name.from_text(qname)
        rdtype = dns.rdatatype.RdataType.make(rdtype)
        query, wire = self._query(name, rdtype)
        response = await self._ask(query, wire)
        rcode = response.rcode()
        if rcode == dns.rcode.NXDOMAIN:
            raise dns.resolver.NXDOMAIN(qnames=[name], responses={name: response})
        if rcode != dns.rcode.NOERROR:
            # As dnspython reports a server that answered REFUSED or SERVFAIL.
            raise dns.resolver.NoNameservers(request=query, errors=[
                (self.address, False, self.port, dns.rcode.to_text(rcode), response)])
        answer = dns.resolver.Answer(name, rdtype, dns.rdataclass.IN, response, self.address, self.port)
        if raise_on_no_answer and answer.rrset is None:
            raise dns.resolver.NoAnswer(response=response)
        return answer

    def close(self) -> None:
        if self._transport is not None:
            self._transport.close()
        self._transport = None

    # -- the machinery ------------------------------------------------------------------------
    def _query(self, name: dns.name.Name, rdtype: int) -> tuple[dns.message.Message, bytes]:
        key = (name.to_text().lower(), rdtype)
        known = self._queries.get(key)
        if known is None:
            if len(self._queries) >= MEMO_SIZE:
                self._queries.clear()
            query = dns.message.make_query(name, rdtype)  # RD set, no EDNS: as dnspython's Resolver
            known = self._queries[key] = (query, query.to_wire())
        return known

    async def _open(self) -> asyncio.DatagramTransport:
        async with self._opening:  # the first lookups of a burst open one socket, not ten
            if self._transport is None:
                loop = asyncio.get_running_loop()
                transport, _ = await loop.create_datagram_endpoint(
                    lambda: _Endpoint(self), remote_addr=(self.address, self.port),
                    local_addr=(self.source, 0) if self.source else None)
                self._transport = transport  # type: ignore[assignment]
            return self._transport

    async def _ask(self, query: dns.message.Message, wire: bytes) -> dns.message.Message:
        try:
            transport = await self._open()
        except OSError as exc:
            raise dns.exception.DNSException(f"cannot reach the lab DNS at {self.address}:{self.port}: {exc}") from None
        loop = asyncio.get_running_loop()
        qid = secrets.randbelow(65536)
        while qid in self._pending:  # two lookups in flight never share an ID
            qid = secrets.randbelow(65536)
        future: asyncio.Future[bytes] = loop.create_future()
        question = wire[HEADER_SIZE:]  # no EDNS: all after the header is the question
        self._pending[qid] = (question, future)
        try:
            transport.sendto(struct.pack("!H", qid) + wire[2:])
            self.queries += 1
            try:
                raw = await asyncio.wait_for(future, self.timeout)
            except asyncio.TimeoutError:
                raise dns.exception.Timeout(timeout=self.timeout) from None
            except OSError as exc:
                raise dns.exception.DNSException(
                    f"the lab DNS at {self.address}:{self.port} did not take the query: {exc}") from None
        finally:
            self._pending.pop(qid, None)
        response = self._decode(raw)
        if response.flags & dns.flags.TC:
            # Truncated (RFC 1035 4.2.1, RFC 7766): ask again over TCP for the whole answer.
            whole = dns.message.from_wire(wire)  # a copy: the memoised query stays as it is
            whole.id = qid
            return await dns.asyncquery.tcp(whole, self.address, port=self.port, timeout=self.timeout)
        return response

    def _decode(self, raw: bytes) -> dns.message.Message:
        key = raw[2:]
        response = self._decoded.get(key)
        if response is None:
            if len(self._decoded) >= MEMO_SIZE:
                self._decoded.clear()
            response = self._decoded[key] = dns.message.from_wire(raw)
        return response

    def _received(self, data: bytes) -> None:
        if len(data) < HEADER_SIZE:
            return
        qid, flags = struct.unpack("!HH", data[:4])
        waiting = self._pending.get(qid)
        if waiting is None or not flags & dns.flags.QR or dns.opcode.from_flags(flags) != dns.opcode.QUERY:
            return  # late, duplicate, unasked-for or not a QUERY's: ignored, as RFC 5452 9.1 asks
        question, future = waiting
        # The question section must come back as sent (a response may add records after it).
        if not data[HEADER_SIZE:].startswith(question) or future.done():
            return
        future.set_result(data)

    def _failed(self, exc: Exception) -> None:
        # "Port unreachable" and the like concern the socket, so every lookup in flight.
        for _question, future in self._pending.values():
            if not future.done():
                future.set_exception(exc)

    def _lost(self) -> None:
        self._transport = None
        self._failed(ConnectionError("the lab DNS socket was closed"))


__all__ = ["StubResolver"]
