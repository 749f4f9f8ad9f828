"""Sessions grouped into conversations: the client's and the server's copy of one
TCP connection, told apart by the event stream but one exchange on the wire.

A lab client (smtplib, poplib, imaplib, a raw cell, the relay's SMTP client)
records the session as it saw it, and the lab server records the same session
as it saw it. Shown one after the other they say everything twice; interleaved
by time they become unreadable. :func:`conversations` pairs them so a view can
show one column of ``C:``/``S:`` lines per connection.

Pairing needs no help from the clients: a client session and a server session
are one connection when they have the same protocol, the server's session
opened within a few seconds after the client's, the client's peer port is the
server's listening port (when both are known) and the first server line both
recorded (the greeting) is the same text.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

from ..events import CLOSED, OPENED, SERVER_LINE, Event

#: How long after a client session opened its server session may open (seconds).
PAIR_WINDOW = 5.0


@dataclass
class Conversation:
    """One connection: its server copy, its client copy, or both."""

    key: str
    server: list[Event] = field(default_factory=list)
    client: list[Event] = field(default_factory=list)

    @property
    def sessions(self) -> list[str]:
        return [evs[0].session for evs in (self.client, self.server) if evs]

    def events(self, copy: str = "server") -> list[Event]:
        """The events to show: the server's copy of a pair by default (it has the TLS,
        state and storage events), ``copy="client"`` for what the client saw."""
        if copy == "client":
            return self.client or self.server
        return self.server or self.client

    @property
    def protocol(self) -> str:
        return (self.server or self.client)[0].protocol

    @property
    def first_time(self) -> float:
        return min(evs[0].time for evs in (self.client, self.server) if evs)

    @property
    def closed(self) -> bool:
        return any(e.kind == CLOSED for e in self.events())


def _opened(evs: list[Event]) -> Event | None:
    return next((e for e in evs if e.kind == OPENED), None)


def _greeting(evs: list[Event]) -> str | None:
    return next((e.text for e in evs if e.kind == SERVER_LINE), None)


def _port(text: str) -> int | None:
    tail = text.rpartition(":")[2]
    return int(tail) if tail.isdigit() else None


def _pairs(client: list[Event], server: list[Event]) -> bool:
    c_open, s_open = _opened(client), _opened(server)
    if c_open is None or s_open is None or c_open.protocol != s_open.protocol:
        return False
    if not (c_open.time - 0.5 <= s_open.time <= c_open.time + PAIR_WINDOW):
        return False
    c_port, s_port = _port(c_open.data.get("peer") or ""), s_open.data.get("port")
    if c_port is not None and isinstance(s_port, int) and s_port and c_port != s_port:
        return False
    c_greet, s_greet = _greeting(client), _greeting(server)
    return c_greet is not None and c_greet == s_greet


def conversations(events: Iterable[Event]) -> list[Conversation]:
    """Sessions as conversations, in the order they began (client and server copies
    of one connection paired; everything else, DNS and relay notes included, alone)."""
    by_session: dict[str, list[Event]] = {}
    for e in events:
        by_session.setdefault(e.session, []).append(e)
    servers = [evs for evs in by_session.values() if evs[0].side == "server"]
    taken: set[str] = set()
    out: list[Conversation] = []
    for sid, evs in by_session.items():
        if evs[0].side != "client":
            continue
        conv = Conversation(sid, client=evs)
        for s in servers:
            if s[0].session not in taken and _pairs(evs, s):
                conv.server = s
                taken.add(s[0].session)
                break
        out.append(conv)
    for evs in servers:
        if evs[0].session not in taken:
            out.append(Conversation(evs[0].session, server=evs))
    out.sort(key=lambda c: c.first_time)
    return out
