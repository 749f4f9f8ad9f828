"""The lab DNS: an authoritative name server for the lab's zones, UDP and TCP.

It answers only for the lab's own zones (RFC 1034 4.3.2, the authoritative half
of the algorithm) and refuses everything else: it is not a resolver, so it can
never be used to look up, or be abused against, the real internet.

The protocol core is :func:`answer` (a parsed query in, a response out) and
:func:`handle_wire` (bytes in, bytes or nothing out): no sockets, so the hostile
packets of the tests can be fed to it directly. The asyncio drivers around it are
thin: one datagram endpoint, one stream server (RFC 1035 4.2.2: each message
prefixed by a two-byte length).

::

    lab.dns.resolver().resolve("beta.test", "MX")   # a dnspython Resolver at the lab DNS
    lab.dns.replace_zone("beta.test", text)          # what %%zone does
    dig @127.0.0.1 -p 1053 beta.test MX              # from a terminal
"""

from __future__ import annotations

import asyncio
import socket
import struct
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import dns.asyncresolver
import dns.exception
import dns.flags
import dns.message
import dns.name
import dns.opcode
import dns.query
import dns.rcode
import dns.rdataclass
import dns.rdatatype
import dns.resolver
import dns.rrset
import dns.zone

from ..services import Service, register
from .stub import StubResolver
from .transport import bind_udp_tcp, serve_stream
from .zones import LabZones

if TYPE_CHECKING:
    from ..lab import Lab

#: Without EDNS a UDP answer may be at most 512 octets (RFC 1035 4.2.1); with EDNS
#: we offer 1232, the size the 2020 DNS flag day settled on (no IP fragmentation).
UDP_LIMIT = 512
EDNS_PAYLOAD = 1232
#: How many CNAMEs we follow inside our zones before giving up (a CNAME loop).
CNAME_DEPTH = 8
#: Seconds a lab client (dig magic, cell resolver, the relay) waits for the lab DNS. The
#: server shares the lab thread with every other lab server, so on a busy 2-core machine
#: an answer can take a while; a DNS that is not there at all fails at once instead
#: (the clients use connected sockets, which hear "port unreachable").
LAB_DNS_TIMEOUT = 10.0
#: Responses kept by query bytes (see :class:`AnswerCache`).
ANSWER_CACHE_SIZE = 1024
HEADER = struct.Struct("!HHHHHH")


@dataclass
class Outcome:
    """What one query came to, for the event stream and the tests."""

    wire: bytes | None  # the response; None = dropped (no answer at all)
    question: str = ""
    rcode: str = ""
    summary: str = ""
    data: dict[str, Any] = field(default_factory=dict)


# -- the protocol core -------------------------------------------------------------


def _rrset(name: dns.name.Name, rdataset: Any) -> dns.rrset.RRset:
    return dns.rrset.from_rdata_list(name, rdataset.ttl, list(rdataset))


def _soa_for_negative(zone: dns.zone.Zone) -> dns.rrset.RRset:
    """The zone's SOA for the authority section of a negative answer; its TTL is
    the smaller of the SOA's TTL and its MINIMUM field (RFC 2308 3)."""
    soa = zone.get_rdataset(zone.origin, dns.rdatatype.SOA)
    rrset = _rrset(zone.origin, soa)
    rrset.ttl = min(soa.ttl, soa[0].minimum)
    return rrset


def _has_descendants(zone: dns.zone.Zone, name: dns.name.Name) -> bool:
    """An empty non-terminal (e.g. ``_tcp.alpha.test`` when only
    ``_imap._tcp.alpha.test`` exists) is a name with no data: NODATA, not NXDOMAIN."""
    return any(n != name and n.is_subdomain(name) for n in zone.nodes)


def _wildcard(zone: dns.zone.Zone, qname: dns.name.Name) -> Any:
    """The ``*`` node that covers ``qname`` (RFC 4592: at the closest encloser), or None."""
    name = qname.parent()
    while name.is_subdomain(zone.origin):
        if zone.get_node(name) is not None or _has_descendants(zone, name):
            return zone.get_node(dns.name.Name(("*",) + name.labels))
        if name == zone.origin:
            break
        name = name.parent()
    return None


def _add_additional(zones: LabZones, response: dns.message.Message) -> None:
    """Addresses of the MX, NS and SRV targets we hold, so the asker needs no second query."""
    targets: list[dns.name.Name] = []
    for rrset in response.answer:
        for rd in rrset:
            if rrset.rdtype == dns.rdatatype.MX:
                targets.append(rd.exchange)
            elif rrset.rdtype in (dns.rdatatype.NS, dns.rdatatype.SRV):
                targets.append(rd.target)
    for target in dict.fromkeys(targets):
        if target == dns.name.root:  # null MX
            continue
        zone = zones.find(target)
        node = zone.get_node(target) if zone is not None else None
        if node is None:
            continue
        for rdtype in (dns.rdatatype.A, dns.rdatatype.AAAA):
            rds = node.get_rdataset(dns.rdataclass.IN, rdtype)
            if rds is not None and not any(r.name == target and r.rdtype == rdtype for r in response.additional):
                response.additional.append(_rrset(target, rds))


def _resolve(zones: LabZones, qname: dns.name.Name, qtype: int, response: dns.message.Message) -> None:
    """Fill ``response`` from our zones (RFC 1034 4.3.2 step 3, authoritative data only)."""
    first = True
    for _depth in range(CNAME_DEPTH + 1):
        zone = zones.find(qname)
        if zone is None:
            if first:
                response.set_rcode(dns.rcode.REFUSED)  # not ours: we are not an open resolver
            return  # a CNAME pointing outside our zones: the asker follows it elsewhere
        if first:
            response.flags |= dns.flags.AA
            first = False
        node = zone.get_node(qname)
        if node is None:
            node = _wildcard(zone, qname)
        if node is None:
            if not _has_descendants(zone, qname):
                response.set_rcode(dns.rcode.NXDOMAIN)
            response.authority.append(_soa_for_negative(zone))
            return
        if qtype == dns.rdatatype.ANY:
            for rds in node.rdatasets:
                response.answer.append(_rrset(qname, rds))
            return
        rds = node.get_rdataset(dns.rdataclass.IN, qtype)
        if rds is not None:
            response.answer.append(_rrset(qname, rds))
            return
        cname = node.get_rdataset(dns.rdataclass.IN, dns.rdatatype.CNAME)
        if cname is None:
            response.authority.append(_soa_for_negative(zone))  # NODATA: the name exists
            return
        response.answer.append(_rrset(qname, cname))
        qname = cname[0].target
        if any(r.name == qname for r in response.answer):
            return  # CNAME loop
    # CNAME chain longer than we follow: answer with what we have


def answer(zones: LabZones, query: dns.message.Message) -> dns.message.Message:
    """The authoritative response to a parsed, single-question query."""
    response = dns.message.make_response(query, our_payload=EDNS_PAYLOAD)
    response.flags &= ~dns.flags.RA  # no recursion here (RFC 1035 4.1.1)
    if query.edns > 0:
        response.set_rcode(dns.rcode.BADVERS)  # RFC 6891 6.1.3: we speak EDNS version 0
        return response
    if query.opcode() != dns.opcode.QUERY:
        response.set_rcode(dns.rcode.NOTIMP)
        return response
    q = query.question[0]
    if q.rdclass not in (dns.rdataclass.IN, dns.rdataclass.ANY):
        response.set_rcode(dns.rcode.REFUSED)
        return response
    _resolve(zones, q.name, q.rdtype, response)
    if response.rcode() == dns.rcode.NOERROR:
        _add_additional(zones, response)
    return response


def _axfr(zones: LabZones, query: dns.message.Message) -> dns.message.Message:
    """A zone transfer (RFC 5936) in one message: SOA, every record, SOA again."""
    response = dns.message.make_response(query)
    q = query.question[0]
    zone = zones.find(q.name)
    if zone is None or zone.origin != q.name:
        response.set_rcode(dns.rcode.NOTAUTH if zone is None else dns.rcode.REFUSED)
        return response
    response.flags |= dns.flags.AA
    soa = _rrset(zone.origin, zone.get_rdataset(zone.origin, dns.rdatatype.SOA))
    response.answer.append(soa)
    for name, node in sorted(zone.nodes.items()):
        for rds in node.rdatasets:
            if not (name == zone.origin and rds.rdtype == dns.rdatatype.SOA):
                response.answer.append(_rrset(name, rds))
    response.answer.append(soa.copy())
    return response


def _formerr(wire: bytes) -> bytes:
    """A bare FORMERR for a query we could not parse: its ID and opcode, no sections
    (RFC 1035 4.1.1). We cannot echo a question we could not read."""
    qid, flags = struct.unpack("!HH", wire[:4])
    opcode_bits = flags & 0x7800
    rd = flags & dns.flags.RD
    return HEADER.pack(qid, dns.flags.QR | opcode_bits | rd | dns.rcode.FORMERR, 0, 0, 0, 0)


def _describe_question(msg: dns.message.Message) -> str:
    q = msg.question[0]
    return f"{q.name} {dns.rdataclass.to_text(q.rdclass)} {dns.rdatatype.to_text(q.rdtype)}"


def _section_text(section: list[dns.rrset.RRset]) -> list[str]:
    return [line for rrset in section for line in rrset.to_text().splitlines()]


def handle_wire(zones: LabZones, wire: bytes, transport: str = "udp") -> Outcome:
    """One query datagram (or TCP message body) -> the response bytes, or None to drop.

    Never raises on hostile input: anything we cannot parse is answered FORMERR
    when its header is readable, and dropped otherwise.
    """
    if len(wire) < HEADER.size:
        return Outcome(None, rcode="dropped", summary=f"dropped: {len(wire)} octets is shorter than a DNS header")
    if struct.unpack("!H", wire[2:4])[0] & dns.flags.QR:
        # A response sent to us: answering it could start a packet loop between servers.
        return Outcome(None, rcode="dropped", summary="dropped: a response (QR=1), not a query")
    try:
        query = dns.message.from_wire(wire)
    except Exception as exc:  # noqa: BLE001 - every parse failure is the client's FORMERR
        reason = f"{exc.__class__.__name__}: {exc}".rstrip(": ")
        return Outcome(_formerr(wire), rcode="FORMERR", summary=f"FORMERR: malformed query ({reason})",
                       data={"malformed": reason})
    if len(query.question) != 1:
        return Outcome(_formerr(wire), rcode="FORMERR",
                       summary=f"FORMERR: {len(query.question)} questions (exactly one is allowed)",
                       data={"malformed": f"QDCOUNT={len(query.question)}"})
    question = _describe_question(query)
    qtype = query.question[0].rdtype
    if qtype in (dns.rdatatype.AXFR, dns.rdatatype.IXFR):
        if transport != "tcp":
            response = dns.message.make_response(query)
            response.set_rcode(dns.rcode.REFUSED)  # transfers only over TCP (RFC 5936 4.2)
        else:
            response = _axfr(zones, query)
    else:
        response = answer(zones, query)
    if transport == "udp":
        max_size = UDP_LIMIT if query.edns < 0 else max(UDP_LIMIT, min(query.payload, EDNS_PAYLOAD))
    else:
        max_size = 65535
    try:
        out = response.to_wire(max_size=max_size)
    except dns.exception.TooBig:
        # RFC 2181 9 / RFC 1035 4.2.1: set TC; the client retries over TCP.
        out = response.to_wire(max_size=max_size, prefer_truncation=True)
    rcode = dns.rcode.to_text(response.rcode())
    truncated = bool(struct.unpack("!H", out[2:4])[0] & dns.flags.TC)
    data = {
        "id": query.id,
        "qname": str(query.question[0].name),
        "qtype": dns.rdatatype.to_text(qtype),
        "transport": transport,
        "edns": query.edns >= 0,
        "rcode": rcode,
        "aa": bool(response.flags & dns.flags.AA),
        "tc": truncated,
        "answer": _section_text(response.answer),
        "authority": _section_text(response.authority),
        "additional": _section_text(response.additional),
        "bytes": len(out),
    }
    count = sum(len(r) for r in response.answer)
    summary = f"{rcode}{' aa' if data['aa'] else ''}{' tc' if truncated else ''}: {count} answer(s)"
    if data["answer"]:
        summary += " — " + "; ".join(data["answer"][:4]) + (" …" if len(data["answer"]) > 4 else "")
    elif data["authority"]:
        summary += " — authority " + data["authority"][0]
    return Outcome(out, question=question, rcode=rcode, summary=summary, data=data)


class AnswerCache:
    """The responses already worked out, by query (every byte but the ID) and transport.

    Parsing a query, walking the zone and rendering the response with dnspython
    costs far more than the rest of a lookup, and a relay under load asks the same
    few questions again and again. A query with the same bytes gets the same
    response bytes (only the ID differs) for as long as the zones do not change:
    any zone edit empties the cache. Every query is still received, answered on
    the wire and recorded in the event stream; this is not a resolver's TTL cache.
    """

    def __init__(self, zones: LabZones, size: int = ANSWER_CACHE_SIZE) -> None:
        self.zones = zones
        self.size = size
        self.hits = 0
        self._generation = zones.generation
        self._outcomes: dict[tuple[str, bytes], Outcome] = {}

    def answer(self, wire: bytes, transport: str) -> Outcome:
        """What :func:`handle_wire` would answer, from the cache when it can."""
        generation = self.zones.generation
        if generation != self._generation:
            self._outcomes.clear()
            self._generation = generation
        key = (transport, wire[2:])
        known = self._outcomes.get(key)
        if known is not None and known.wire is not None and len(wire) >= 2:
            self.hits += 1
            data = dict(known.data, id=struct.unpack("!H", wire[:2])[0])
            return Outcome(wire[:2] + known.wire[2:], known.question, known.rcode, known.summary, data)
        outcome = handle_wire(self.zones, wire, transport)
        # FORMERR and dropped queries are cheap and often random bytes: not worth a slot.
        if outcome.wire is not None and outcome.rcode != "FORMERR" and self.zones.generation == generation:
            if len(self._outcomes) >= self.size:
                self._outcomes.clear()
            self._outcomes[key] = Outcome(outcome.wire, outcome.question, outcome.rcode, outcome.summary,
                                          dict(outcome.data))
        return outcome


# -- the asyncio drivers -----------------------------------------------------------


class DNSServer:
    """UDP and TCP listeners on one address and port, answering from ``zones``."""

    def __init__(self, lab: Lab, service: Service, zones: LabZones) -> None:
        self.lab = lab
        self.service = service
        self.zones = zones
        self.queries = 0
        self.answers = AnswerCache(zones)
        self._udp: asyncio.DatagramTransport | None = None
        self._tcp: asyncio.base_events.Server | None = None
        self._tcp_sessions: set[asyncio.Task[None]] = set()

    # What one query looks like in the event stream: a tiny session of its own, so
    # a transcript shows "C: beta.test. IN MX" / "S: NOERROR aa: 2 answer(s) ...".
    def handle(self, wire: bytes, addr: tuple[str, int], transport: str) -> bytes | None:
        started = time.perf_counter()
        outcome = self.answers.answer(wire, transport)
        self.queries += 1
        peer = f"{addr[0]}:{addr[1]}"
        rec = self.lab.events.session("dns", "server", self.service.hostname, peer, transport=transport)
        rec.client_line(outcome.question or f"({len(wire)} octets, unparsed)", transport=transport,
                        bytes=len(wire))
        outcome.data["elapsed_ms"] = round((time.perf_counter() - started) * 1000, 3)
        if outcome.wire is None:
            rec.note(outcome.summary, dropped=True)
        else:
            rec.server_line(outcome.summary, **outcome.data)
        rec.close()
        return outcome.wire

    async def start(self) -> None:
        self._udp, self._tcp, self.service.port = await bind_udp_tcp(
            self.service.address, self.service.port, self.handle, self._tcp_client)

    async def _tcp_client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """RFC 7766: several length-prefixed queries per connection, answered in order;
        idle connections are closed."""
        task = asyncio.current_task()
        if task is not None:
            self._tcp_sessions.add(task)
        limits = self.lab.limits
        self.service.session_opened()
        try:
            if len(self._tcp_sessions) > getattr(limits, "dns_tcp_connections", 64):
                return  # too many: close at once (RFC 7766 6.2.2 lets a server do so)
            await serve_stream(self.handle, reader, writer, getattr(limits, "dns_tcp_idle_timeout", 10.0))
        except Exception:  # noqa: BLE001 - a client must never take the server down
            return
        finally:
            self.service.session_closed()
            if task is not None:
                self._tcp_sessions.discard(task)
            writer.close()

    def close(self) -> None:
        if self._udp is not None:
            self._udp.close()
        if self._tcp is not None:
            self._tcp.close()
        for task in list(self._tcp_sessions):
            task.cancel()

    async def wait_closed(self) -> None:
        if self._tcp is not None:
            await self._tcp.wait_closed()


class LabDNS:
    """``lab.dns``: the lab's name server as seen from Python (cells, the relay, views)."""

    def __init__(self, lab: Lab, server: DNSServer) -> None:
        self.lab = lab
        self.server = server
        self.zones = server.zones

    @property
    def address(self) -> str:
        return self.server.service.address

    @property
    def port(self) -> int:
        return self.server.service.port

    def resolver(self, timeout: float = LAB_DNS_TIMEOUT) -> dns.resolver.Resolver:
        """A dnspython Resolver that asks only the lab DNS (for cells: blocking)."""
        res = dns.resolver.Resolver(configure=False)
        _point_at(res, self.address, self.port, timeout)
        return res

    def async_resolver(self, timeout: float = LAB_DNS_TIMEOUT) -> dns.asyncresolver.Resolver:
        """The same for coroutines on the lab loop."""
        res = dns.asyncresolver.Resolver(configure=False)
        _point_at(res, self.address, self.port, timeout)
        return res

    def stub_resolver(self, timeout: float = LAB_DNS_TIMEOUT) -> StubResolver:
        """The stub resolver the lab's MTAs use on the lab loop (see :mod:`.stub`)."""
        return StubResolver(self.address, self.port, timeout)

    def query(self, name: str, rdtype: str = "A", *, tcp: bool = False,
              timeout: float | None = None) -> dns.message.Message:
        """One query to the lab DNS, as dig sends it; the raw response message
        (``%mail dig`` prints its sections). Blocking: call from a cell, not the lab thread.

        ``timeout`` (default :data:`LAB_DNS_TIMEOUT`) only matters when the lab is busy:
        a lab DNS that is not listening answers "connection refused" at once."""
        timeout = LAB_DNS_TIMEOUT if timeout is None else timeout
        q = dns.message.make_query(name, rdtype, use_edns=0, payload=EDNS_PAYLOAD)
        if tcp:
            return dns.query.tcp(q, self.address, port=self.port, timeout=timeout)
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
            sock.connect((self.address, self.port))  # so "port unreachable" is heard, not waited out
            sock.setblocking(False)
            return dns.query.udp(q, self.address, port=self.port, timeout=timeout, sock=sock)

    def replace_zone(self, name: str, text: str) -> list[str]:
        """Load zone-file ``text`` as zone ``name`` (``%%zone``). A zone that does not
        parse raises :class:`~maillab.dns.zones.ZoneError` and the old one stays.
        Returns the zone's records as text, as the server now holds them."""
        zone = self.zones.replace(name, text)
        return [line for line in zone.to_text(relativize=False).splitlines() if line.strip()]

    def zone_text(self, name: str) -> str:
        return self.zones.text(name)

    def zone_names(self) -> list[str]:
        return self.zones.names()

    def rebuild(self, *, keep_edited: bool = True) -> None:
        """Regenerate the zones from the topology (after hosts or domains were added).
        Zones a user replaced are kept unless ``keep_edited=False``."""
        self.zones.build(self.lab.topology, self.address, _service_ports(self.lab), keep_edited=keep_edited,
                         tlsa=_tlsa(self.lab), extra=_auth_records(self.lab))

    def __repr__(self) -> str:
        return f"<LabDNS {self.address}:{self.port} zones={self.zone_names()}>"


def _point_at(res: Any, address: str, port: int, timeout: float) -> None:
    res.nameservers = [address]
    res.port = port
    res.timeout = timeout
    res.lifetime = timeout
    res.cache = None  # every lookup goes to the server, so students see each one


def _service_ports(lab: Lab) -> dict[tuple[str, str], int]:
    return {(s.hostname, s.name): s.port for s in lab.services if s.host is not None}


def _tlsa(lab: Lab) -> dict[str, str]:
    """Host name -> TLSA 3 1 1 data of its certificate, for every host that runs SMTP."""
    if lab.ca is None:
        return {}
    from ..tls import spki_sha256

    return {h.name: spki_sha256(lab.ca.certificate(h.name, [h.address]))
            for h in lab.topology.hosts.values() if "smtp" in h.services}


def _auth_records(lab: Lab) -> dict[str, list[str]]:
    """Each domain's DKIM key and DMARC records (maillab.auth.keys)."""
    from ..auth.keys import zone_records

    return zone_records(lab)


@register("dns", per_host=False)
async def start_dns(lab: Lab, service: Service) -> DNSServer:
    zones = LabZones()
    # DKIM keys are made on a worker thread (RSA key generation is CPU work).
    extra = await asyncio.get_running_loop().run_in_executor(None, _auth_records, lab)
    zones.build(lab.topology, service.address, _service_ports(lab), tlsa=_tlsa(lab), extra=extra)
    server = DNSServer(lab, service, zones)
    await server.start()
    return server  # the Lab wraps it as lab.dns
