"""The class DNS: the teacher's name server, authoritative for the class zone, that
student labs join by signed RFC 2136 UPDATE.

Queries are answered by the lab DNS's own core (:func:`maillab.dns.server.handle_wire`:
authoritative, REFUSED outside the class zone, TC over 512 octets, AXFR over TCP).
UPDATEs are checked here, in the order RFC 8945 and RFC 2136 give:

1. the TSIG signature (RFC 8945 5.2): no signature -> REFUSED; an unknown or revoked
   key -> NOTAUTH/BADKEY; a wrong MAC -> NOTAUTH/BADSIG; a time outside the fudge
   -> NOTAUTH/BADTIME (signed, with our time, so the client can tell its clock is off);
   the same signed message again (a retransmission, or a replay) -> the answer it got the
   first time, and nothing is applied twice;
2. the key's rate (:class:`TokenBucket`, ``limits.class_update_rate``): a flood -> REFUSED;
3. the zone section names our zone (RFC 2136 3.1) -> NOTAUTH otherwise;
4. prerequisites, the update policy, prescan, and the change as one transaction
   (:mod:`.policy`).

Every query and update is kept for the class map (:mod:`.map`): who looked up whom,
which lab registered what, when each was last seen. The server runs on a lab loop of
its own (:class:`maillab.runtime.LabLoop`), in the teacher's kernel or in
``maillab class host``.

::

    host = ClassDNS("/tmp/class", listen="127.0.0.1").start()
    key = host.keys.add("alice")          # key.spec(): alice.class.test:SECRET
    dig @127.0.0.1 -p 5053 alice.class.test MX
    nsupdate -y hmac-sha256:alice.class.test:SECRET
"""

from __future__ import annotations

import asyncio
import json
import struct
import threading
import time
from collections import OrderedDict, deque
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import dns.exception
import dns.flags
import dns.message
import dns.name
import dns.opcode
import dns.rcode
import dns.rdata
import dns.rdataclass
import dns.rdatatype
import dns.tsig
import dns.update
import dns.zone

from ..dns.server import AnswerCache
from ..dns.transport import bind_udp_tcp, serve_stream
from ..limits import Limits
from ..runtime import LabLoop
from . import policy
from .keys import KeyFile

DEFAULT_ZONE = "class.test"
#: The class DNS's port: not 53 (needs root), not the lab DNS's 1053 (the teacher's own
#: lab may hold it), not 5353 (multicast DNS).
DEFAULT_PORT = 5053
#: The port every lab of the class runs its MX ("port 25") on: the lab's own.
DEFAULT_MX_PORT = 2525
CLASS_TTL = 60
#: RFC 8945 5.2.3 recommends 300 s; a client may not ask for a wider window than this.
TSIG_FUDGE = 300
#: How many queries and updates the class map keeps (older ones are counted, not kept).
KEEP_EVENTS = 2000
#: Seconds between writes of class.zone: each accepted UPDATE wrote the whole class
#: zone (73 ms at 1,800 records), so two students at their allowed rate kept the class
#: DNS, and every lab's MX lookups, waiting. A crash loses at most this much, which the
#: labs send again at their next refresh (``class_refresh``).
SAVE_EVERY = 1.0
#: Answers to recent signed UPDATEs by MAC: a client that retransmits gets the same answer,
#: and a captured UPDATE replayed within the fudge changes nothing.
KEEP_MACS = 4096
#: The TXT record at the zone apex that tells a joining lab the class's MX port.
MX_PORT_TXT = "maillab-class mx-port="
#: RFC 8945 TSIG error names (dns.rcode.to_text(16) says BADVERS: the same number, in EDNS).
TSIG_ERRORS = {dns.rcode.BADSIG: "BADSIG", dns.rcode.BADKEY: "BADKEY", dns.rcode.BADTIME: "BADTIME"}


class TokenBucket:
    """``rate`` tokens a second, at most ``burst`` saved: a steady trickle passes, a
    flood is cut to the rate (the same shape as BIND's rate-limit)."""

    def __init__(self, rate: float, burst: int) -> None:
        self.rate, self.burst = rate, burst
        self.tokens = float(burst)
        self.stamp = time.monotonic()

    def take(self) -> bool:
        now = time.monotonic()
        self.tokens = min(self.burst, self.tokens + (now - self.stamp) * self.rate)
        self.stamp = now
        if self.tokens >= 1:
            self.tokens -= 1
            return True
        return False


@dataclass
class Lookup:
    """One query the class DNS answered."""

    time: float
    peer: str
    qname: str
    qtype: str
    rcode: str
    answer: list[str] = field(default_factory=list)


@dataclass
class UpdateRecord:
    """One UPDATE and what became of it."""

    time: float
    peer: str
    key: str | None
    rcode: str
    reason: str
    changes: list[str] = field(default_factory=list)


class _ClassZones:
    """The one zone, shaped as :class:`maillab.dns.zones.LabZones` for the query core."""

    def __init__(self, zone: dns.zone.Zone) -> None:
        self.zone = zone
        self.generation = 0

    def find(self, qname: dns.name.Name) -> dns.zone.Zone | None:
        return self.zone if qname.is_subdomain(self.zone.origin) else None


def _header_reply(wire: bytes, rcode: int) -> bytes:
    """A bare reply with just a header: for a message we could not read (FORMERR)."""
    qid, flags = struct.unpack("!HH", wire[:4])
    return struct.pack("!HHHHHH", qid, dns.flags.QR | (flags & 0x7800) | rcode, 0, 0, 0, 0)


class ClassDNS:
    """The class's name server: zone, keys, UDP and TCP listeners, and what happened."""

    def __init__(self, directory: str | Path, *, listen: str = "127.0.0.1", port: int = DEFAULT_PORT,
                 zone: str = DEFAULT_ZONE, mx_port: int = DEFAULT_MX_PORT, limits: Limits | None = None) -> None:
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        self.listen, self.port = listen, port
        self.origin = dns.name.from_text(zone.lower().rstrip("."))
        self.zone_name = self.origin.to_text(omit_final_dot=True)
        self.mx_port = mx_port
        self.limits = limits or Limits()
        self.keys = KeyFile(self.directory / "keys.json", self.zone_name)
        self.zones = _ClassZones(self._load_zone())
        self.answers = AnswerCache(self.zones)  # type: ignore[arg-type] - duck-typed zones
        self.loop = LabLoop(f"maillab-class-dns-{id(self):x}")
        self.lookups: deque[Lookup] = deque(maxlen=KEEP_EVENTS)
        self.updates: deque[UpdateRecord] = deque(maxlen=KEEP_EVENTS)
        self.queries = 0
        self.joined: dict[str, float] = {}  # key name -> first accepted UPDATE
        self.last_seen: dict[str, float] = {}  # key name -> last accepted UPDATE
        self.listeners: list[Callable[[], None]] = []  # views: called on the DNS thread
        self.on_stop: list[Callable[[], None]] = []  # views: called by stop(), on its thread
        self._buckets: dict[str, TokenBucket] = {}
        self._answered: OrderedDict[bytes, tuple[bytes, int]] = OrderedDict()
        self._lock = threading.Lock()  # views read the deques from another thread
        self._unsaved = False  # the zone changed since class.zone was last written
        self._save_timer: asyncio.TimerHandle | None = None
        self._udp: asyncio.DatagramTransport | None = None
        self._tcp: asyncio.base_events.Server | None = None
        self._tcp_tasks: set[asyncio.Task[None]] = set()
        self.started = False

    # -- the zone -------------------------------------------------------------------------
    @property
    def zone_path(self) -> Path:
        return self.directory / "class.zone"

    def _load_zone(self) -> dns.zone.Zone:
        """The zone as saved by the last run (students stay registered across a restart
        of the class DNS), or a new one; the apex records are (re)written either way."""
        zone: dns.zone.Zone | None = None
        if self.zone_path.exists():
            try:
                zone = dns.zone.from_file(str(self.zone_path), origin=self.origin, relativize=False,
                                          allow_include=False)
            except (dns.exception.DNSException, OSError, ValueError):
                zone = None  # a damaged file: start afresh, students re-register on refresh
        if zone is None:
            zone = dns.zone.Zone(self.origin, relativize=False)
        ns = dns.name.from_text("ns", self.origin)
        serial = int(time.strftime("%Y%m%d")) * 100 + 1
        with zone.writer() as txn:
            old = txn.get(self.origin, dns.rdatatype.SOA)
            if old is not None:
                serial = max(serial, old[0].serial + 1)
            rd = dns.rdata.from_text
            txn.replace(self.origin, CLASS_TTL, rd("IN", "SOA", f"{ns} hostmaster.{self.origin} {serial} 60 60 600 60"))
            txn.replace(self.origin, CLASS_TTL, rd("IN", "NS", ns.to_text()))
            txn.replace(ns, CLASS_TTL, rd("IN", "A", self.listen))
            txn.replace(self.origin, CLASS_TTL, rd("IN", "TXT", f'"{MX_PORT_TXT}{self.mx_port}"'))
        return zone

    def _zone_changed(self) -> None:
        """The zone changed: write class.zone within SAVE_EVERY (now when not on the loop,
        as a direct call of :meth:`handle` is)."""
        self._unsaved = True
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            self._save_pending()
            return
        if self._save_timer is None:
            self._save_timer = loop.call_later(SAVE_EVERY, self._save_pending)

    def _save_pending(self) -> None:
        self._save_timer = None
        if not self._unsaved:
            return
        self._unsaved = False
        try:
            self._save_zone()
        except OSError:
            self._unsaved = True  # the zone still answers; the next change or the stop saves again

    def _save_zone(self) -> None:
        tmp = self.zone_path.with_suffix(".tmp")
        self.zones.zone.to_file(str(tmp), relativize=False)
        tmp.replace(self.zone_path)

    def history(self) -> tuple[list[Lookup], list[UpdateRecord]]:
        """Copies of the queries and UPDATEs kept (safe from any thread)."""
        with self._lock:
            return list(self.lookups), list(self.updates)

    def records(self) -> list[str]:
        """Every record of the class zone, as text (what AXFR would show)."""
        return [line for line in self.zones.zone.to_text(relativize=False).splitlines() if line.strip()]

    # -- life cycle -------------------------------------------------------------------------
    def start(self) -> ClassDNS:
        if self.started:
            return self
        self.loop.start()
        try:
            self.loop.run(self._bind(), timeout=10)
        except BaseException:
            self.loop.stop()
            raise
        self.started = True
        self.write_class_json()
        return self

    def stop(self) -> None:
        if self.loop.running:
            try:
                self.loop.run(self._close(), timeout=5)
            finally:
                self.loop.stop()
        self.started = False
        for finish in list(self.on_stop):
            try:
                finish()
            except Exception:  # noqa: BLE001 - a broken view must not stop the stop
                pass

    async def _bind(self) -> None:
        self._udp, self._tcp, self.port = await bind_udp_tcp(self.listen, self.port, self.handle, self._tcp_client)

    async def _close(self) -> None:
        if self._save_timer is not None:
            self._save_timer.cancel()
        self._save_pending()
        if self._udp is not None:
            self._udp.close()
        if self._tcp is not None:
            self._tcp.close()
        for task in list(self._tcp_tasks):
            task.cancel()
        if self._tcp is not None:
            try:
                await asyncio.wait_for(self._tcp.wait_closed(), 3)
            except (asyncio.TimeoutError, Exception):  # noqa: BLE001 - stopping anyway
                pass

    @property
    def join_address(self) -> str:
        return f"{self.listen}:{self.port}"

    def class_json(self) -> dict[str, Any]:
        return {"dns": {"address": self.listen, "port": self.port}, "join": self.join_address,
                "zone": self.zone_name, "mx_port": self.mx_port, "keys": str(self.keys.path),
                "zone_file": str(self.zone_path)}

    def write_class_json(self) -> Path:
        path = self.directory / "class.json"
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(self.class_json(), indent=2))
        tmp.replace(path)
        return path

    def join_options(self, student: str) -> str:
        """``--join ADDR:PORT --key NAME:SECRET`` for the student's active key."""
        key = self.keys.get(student)
        if key is None or not key.active:
            raise KeyError(f"no active key for {student!r} (make one: %mail class key {student})")
        return f"--join {self.join_address} --key {key.spec()}"

    # -- one message in, one out ---------------------------------------------------------------
    def handle(self, wire: bytes, addr: tuple[str, int], transport: str) -> bytes | None:
        """Any DNS message from ``addr`` -> the response bytes (None: dropped). Never raises."""
        self.queries += 1
        peer = addr[0]
        if len(wire) < 12:
            return None
        flags = struct.unpack("!H", wire[2:4])[0]
        if flags & dns.flags.QR:
            return None  # a response: answering could start a loop between servers
        if (flags >> 11) & 0xF == dns.opcode.UPDATE:
            try:
                out = self._update(wire, peer)
            except Exception as exc:  # noqa: BLE001 - a bug answers SERVFAIL, the server goes on
                self._record(peer, None, dns.rcode.SERVFAIL, f"internal error: {exc.__class__.__name__}: {exc}")
                out = _header_reply(wire, dns.rcode.SERVFAIL)
        else:
            outcome = self.answers.answer(wire, transport)
            out = outcome.wire
            data = outcome.data
            if data.get("qname"):
                with self._lock:
                    self.lookups.append(Lookup(time.time(), peer, data["qname"], data["qtype"],
                                               outcome.rcode, list(data.get("answer", []))[:6]))
        self._changed()
        return out

    def _changed(self) -> None:
        for listener in list(self.listeners):
            try:
                listener()
            except Exception:  # noqa: BLE001 - a broken view must not break the DNS
                pass

    def _keyring(self, _message: dns.message.Message, name: dns.name.Name) -> dns.tsig.Key | None:
        return self.keys.lookup(name)

    def _record(self, peer: str, key: str | None, rcode: int, reason: str,
                changes: list[str] | None = None) -> None:
        with self._lock:
            self.updates.append(UpdateRecord(time.time(), peer, key, dns.rcode.to_text(rcode), reason,
                                             changes or []))

    def _update(self, wire: bytes, peer: str) -> bytes:
        try:
            msg = dns.message.from_wire(wire, keyring=self._keyring)
        except dns.message.UnknownTSIGKey:
            return self._tsig_error(wire, peer, dns.rcode.BADKEY, "unknown or revoked key")
        except (dns.tsig.BadSignature, dns.tsig.BadKey, dns.tsig.BadAlgorithm):
            return self._tsig_error(wire, peer, dns.rcode.BADSIG, "the signature does not verify")
        except dns.tsig.BadTime:
            return self._tsig_error(wire, peer, dns.rcode.BADTIME, "the signature's time is outside the fudge")
        except Exception as exc:  # noqa: BLE001 - every parse failure is the sender's FORMERR
            self._record(peer, None, dns.rcode.FORMERR, f"malformed UPDATE: {exc.__class__.__name__}")
            return _header_reply(wire, dns.rcode.FORMERR)
        assert isinstance(msg, dns.update.UpdateMessage)
        response = dns.message.make_response(msg)
        if not msg.had_tsig:
            return self._refuse(response, peer, None, dns.rcode.REFUSED,
                                "unsigned UPDATE: the class zone takes only updates signed with a class key")
        keyname = msg.keyname.to_text(omit_final_dot=True)
        signed = msg.tsig[0]
        if abs(signed.time_signed - time.time()) > TSIG_FUDGE:
            return self._tsig_error(wire, peer, dns.rcode.BADTIME, f"time more than {TSIG_FUDGE} s off")
        seen = self._answered.get(signed.mac)
        if seen is not None:
            self._record(peer, keyname, seen[1], "the same signed UPDATE again (a retransmission or a replay):"
                                                 " its first answer, nothing applied twice")
            return seen[0]
        out = self._signed_update(msg, response, peer, keyname)
        self._answered[signed.mac] = (out, response.rcode())
        while len(self._answered) > KEEP_MACS:
            self._answered.popitem(last=False)
        return out

    def _signed_update(self, msg: dns.update.UpdateMessage, response: dns.message.Message, peer: str,
                       keyname: str) -> bytes:
        """Rate, zone, then the update itself (:mod:`.policy`), for a verified signed UPDATE."""
        bucket = self._buckets.setdefault(keyname, TokenBucket(self.limits.class_update_rate,
                                                               self.limits.class_update_burst))
        if not bucket.take():
            return self._refuse(response, peer, keyname, dns.rcode.REFUSED,
                                f"too many UPDATEs from {keyname} (more than"
                                f" {self.limits.class_update_rate:g}/s): try again later")
        if msg.zone[0].name != self.origin:
            return self._refuse(response, peer, keyname, dns.rcode.NOTAUTH,
                                f"not authoritative for {msg.zone[0].name} (only {self.origin})")
        outcome = policy.process(self.zones.zone, msg, msg.keyname,
                                 max_records=self.limits.class_records_per_key,
                                 max_changes=self.limits.class_update_records)
        if outcome.ok:
            now = time.time()
            self.joined.setdefault(keyname, now)
            self.last_seen[keyname] = now
            if outcome.changes:
                self.zones.generation += 1
                self._zone_changed()
        self._record(peer, keyname, outcome.rcode, outcome.reason, outcome.changes)
        response.set_rcode(outcome.rcode)
        return response.to_wire()

    def _refuse(self, response: dns.message.Message, peer: str, key: str | None, rcode: int,
                reason: str) -> bytes:
        self._record(peer, key, rcode, reason)
        response.set_rcode(rcode)
        return response.to_wire()

    def _tsig_error(self, wire: bytes, peer: str, error: int, reason: str) -> bytes:
        """NOTAUTH with the TSIG error (RFC 8945 5.2). BADTIME is signed with the key, with
        our clock in Other Data (5.2.3); BADKEY and BADSIG cannot be signed."""
        self._record(peer, None, dns.rcode.NOTAUTH, f"TSIG {TSIG_ERRORS[error]}: {reason}")
        try:
            msg = dns.message.from_wire(wire, keyring=lambda _m, _n: False)  # read, not verified
        except Exception:  # noqa: BLE001
            return _header_reply(wire, dns.rcode.NOTAUTH)
        response = dns.message.make_response(msg)
        response.set_rcode(dns.rcode.NOTAUTH)
        key = self.keys.lookup(msg.keyname) if msg.keyname is not None else None
        if error == dns.rcode.BADTIME and key is not None:
            now = int(time.time())
            response.use_tsig(key, fudge=TSIG_FUDGE, original_id=msg.id, tsig_error=error,
                              other_data=struct.pack("!HI", now >> 32, now & 0xFFFFFFFF))
            response.request_mac = msg.mac
            return response.to_wire()
        return _with_unsigned_tsig(response.to_wire(), msg, error)

    # -- drivers ---------------------------------------------------------------------------------
    async def _tcp_client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        if task is not None:
            self._tcp_tasks.add(task)
        try:
            if len(self._tcp_tasks) > self.limits.dns_tcp_connections:
                return  # too many: close at once (RFC 7766 6.2.2)
            await serve_stream(self.handle, reader, writer, self.limits.dns_tcp_idle_timeout)
        except Exception:  # noqa: BLE001 - a client never takes the server down
            return
        finally:
            if task is not None:
                self._tcp_tasks.discard(task)
            writer.close()

    def __repr__(self) -> str:
        state = "running" if self.started else "stopped"
        return f"<ClassDNS {state} {self.zone_name} at {self.join_address}>"


def _with_unsigned_tsig(wire: bytes, request: dns.message.Message, error: int) -> bytes:
    """``wire`` with the unsigned TSIG record RFC 8945 5.3.2 asks of a BADKEY or BADSIG
    answer: the request's key and algorithm, MAC size 0, the error; no signature, since
    the key is unknown or the request's MAC did not verify (dnspython only writes signed
    TSIG records, so this one is written by hand)."""
    if request.keyname is None or request.keyalgorithm is None:
        return wire
    rdata = (request.keyalgorithm.to_wire() + struct.pack("!HIHHHHH", 0, int(time.time()) & 0xFFFFFFFF,
             TSIG_FUDGE, 0, request.id, error, 0))
    record = (request.keyname.to_wire() + struct.pack("!HHIH", dns.rdatatype.TSIG, dns.rdataclass.ANY, 0, len(rdata))
              + rdata)
    arcount = struct.unpack("!H", wire[10:12])[0] + 1
    return wire[:10] + struct.pack("!H", arcount) + wire[12:] + record
