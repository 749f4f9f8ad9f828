"""The event stream every lab session writes to.

Transcripts, live widgets, the relay path and tests all read the same events, so
what a view shows is exactly what went over the wire. Servers run on the lab
thread and views live on the kernel thread: the bus is therefore thread-safe, and
subscribers are called on the emitting thread (a view must hand the update over
to its own thread and must never raise into a server; exceptions are swallowed).

Credentials are masked *when the event is recorded*: the unmasked text never
enters the stream, so no view can leak it by accident.
"""

from __future__ import annotations

import itertools
import marshal
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from itertools import chain
from operator import itemgetter
from typing import Any

from .frozen import ATOMS, ChunkedLog
from .masking import MASK  # noqa: F401 - re-exported: recorders mask with it
from .runtime import collector_paused

#: The kinds of event a session can emit.
OPENED = "opened"
# Lines keep the C:/S: convention of RFC transcripts whichever end records them:
CLIENT_LINE = "C"  # a line the client sent
SERVER_LINE = "S"  # a line the server sent
TLS = "tls"
AUTH = "auth"
STATE = "state"  # a protocol state change, e.g. POP3 AUTHORIZATION -> TRANSACTION
STORED = "stored"  # a message written to a mailbox
NOTE = "note"  # anything else worth showing (discarded bytes, limits hit, relay decisions)
FAULT = "fault"  # a failure injected by a lab.faults rule (%mail fail) answered here
CLOSED = "closed"


#: The longest line text one event keeps. Each protocol caps its lines (IMAP at
#: 64 KB), but the log keeps 200,000 events: without this a client repeating long
#: lines would make the lab keep gigabytes of them (SECURITY.md: memory flat).
MAX_LINE_TEXT = 1000
#: How far into a payload its head lines are looked for in one piece.
_HEAD_WINDOW = 16 * 1024


def clip(text: str) -> str:
    """``text`` as an event keeps it: at most MAX_LINE_TEXT characters and a count of the rest."""
    if len(text) <= MAX_LINE_TEXT:
        return text
    return text[:MAX_LINE_TEXT] + f"… ({len(text) - MAX_LINE_TEXT} more characters)"


class Event(tuple):
    """One thing that happened in one session: ``seq``, ``time``, ``session``, ``kind``,
    ``protocol``, ``side`` ("server" or "client"), ``host``, ``text`` and ``data``.

    Read-only, and the very tuple the bus keeps (see :class:`EventBus`): its last item
    is ``data`` flattened to ``(key, value, key, value, ...)``; :attr:`data` gives a
    fresh dict of it on each access (changing that dict changes no event)."""

    __slots__ = ()
    _fields = ("seq", "time", "session", "kind", "protocol", "side", "host", "text", "data")

    def __new__(cls, seq: int, time: float, session: str, kind: str, protocol: str, side: str,
                host: str, text: str = "", data: dict[str, Any] | None = None) -> Event:
        return tuple.__new__(cls, (seq, time, session, kind, protocol, side, host, text, _flat(data)))

    seq: int = property(itemgetter(0))  # type: ignore[assignment]
    time: float = property(itemgetter(1))  # type: ignore[assignment]
    session: str = property(itemgetter(2))  # type: ignore[assignment]
    kind: str = property(itemgetter(3))  # type: ignore[assignment]
    protocol: str = property(itemgetter(4))  # type: ignore[assignment]
    side: str = property(itemgetter(5))  # type: ignore[assignment]
    host: str = property(itemgetter(6))  # type: ignore[assignment]
    text: str = property(itemgetter(7))  # type: ignore[assignment]

    @property
    def data(self) -> dict[str, Any]:
        pairs = self[8]
        if not pairs:
            return {}
        if len(pairs) == 2:  # the usual one: {"user": ...}
            return {pairs[0]: pairs[1]}
        items = iter(pairs)
        data = dict(zip(items, items, strict=True))
        frozen = data.pop(_FROZEN, None)
        if frozen:
            for key in frozen.split("\x00"):
                data[key] = marshal.loads(data[key])
        return data

    @property
    def is_line(self) -> bool:
        return self[3] in (CLIENT_LINE, SERVER_LINE)

    def __repr__(self) -> str:
        values = (*self[:8], self.data)
        return "Event(" + ", ".join(f"{n}={v!r}" for n, v in zip(self._fields, values, strict=True)) + ")"

    def __getnewargs__(self) -> tuple[Any, ...]:  # copy and pickle rebuild it through __new__
        return (*self[:8], self.data)


# How the bus keeps an event: a plain tuple of atomic fields, the data flattened. The
# collector stops tracking a plain tuple of untracked values the first time it looks
# at it (CPython untracks such tuples; a dict, an Event or any other object it keeps
# tracking), so 200,000 kept events add almost nothing to a full collection instead of
# 400,000 objects to traverse. A reader gets an Event made of the same items.
_NO_DATA: tuple[Any, ...] = ()


#: The last key of kept data; its value names (NUL-separated) the keys whose values are
#: kept packed: lists, dicts, tuples and sets of atoms (DNS answers, relay recipients
#: and routes, a POP3 maildrop) as ``marshal`` bytes, so the kept tuple holds atoms
#: only and is untracked at the first collection that sees it, however nested the value
#: (tagged tuples took a collection per level); a reader gets them back as they were.
_FROZEN = "\x00frozen"


def _flat(data: dict[str, Any] | None) -> tuple[Any, ...]:
    if not data:
        return _NO_DATA
    if ATOMS.issuperset(map(type, data.values())):  # the usual: atoms only
        return tuple(chain.from_iterable(data.items()))
    flat: list[Any] = []
    frozen = []
    for key, value in data.items():
        if type(value) not in ATOMS:
            try:
                value = marshal.dumps(value)
                frozen.append(key)
            except ValueError:  # not made of atoms, lists, dicts, tuples and sets
                pass
        flat += (key, value)
    if frozen:
        flat += (_FROZEN, "\x00".join(frozen))
    return tuple(flat)


_tuple_new = tuple.__new__
#: From this many events on, a read pauses the collector while it makes them.
_MANY = 10_000


class EventBus:
    """A bounded, thread-safe log of events with subscribers.

    The log keeps the newest ``maxlen`` events so a long-running lab (or a
    benchmark) cannot grow memory without bound. It keeps them as plain tuples
    (see :class:`Event`), which the garbage collector leaves alone, and hands out
    :class:`Event` objects made from them when asked (:meth:`events`).
    """

    def __init__(self, maxlen: int = 200_000) -> None:
        # In sealed chunks the collector does not visit one by one (frozen.ChunkedLog).
        self._events = ChunkedLog(maxlen)
        self._lock = threading.Lock()
        self._seq = itertools.count(1)
        self._session_ids = itertools.count(1)
        # A tuple, replaced on (un)subscribe: emit reads it without copying it.
        self._subscribers: tuple[Callable[[Event], None], ...] = ()

    @classmethod
    def from_events(cls, events: Iterable[Event]) -> EventBus:
        """A bus that holds ``events`` as they were (a recorded run, ``recording.py``);
        new events continue after their sequence numbers."""
        evs = list(events)
        bus = cls(maxlen=max(len(evs), 1000))
        for ev in evs:
            bus._events.append(tuple(ev))
        bus._seq = itertools.count(max((e.seq for e in evs), default=0) + 1)
        numbers = [int(n) for e in evs for n in [e.session.rpartition("-")[2]] if n.isdigit()]
        bus._session_ids = itertools.count(max(numbers, default=0) + 1)
        return bus

    # -- writing -----------------------------------------------------------------
    def emit(
        self,
        session: str,
        kind: str,
        protocol: str,
        side: str,
        host: str,
        text: str = "",
        **data: Any,
    ) -> Event:
        return self.record(session, kind, protocol, side, host, text, data)

    def record(self, session: str, kind: str, protocol: str, side: str, host: str, text: str,
               data: dict[str, Any]) -> Event:
        """:meth:`emit` with ``data`` as a dict of its own (the bus keeps it): what a
        recorder calls, without packing the keywords a second time."""
        with self._lock:
            seq, when = next(self._seq), time.time()
            kept = (seq, when, session, kind, protocol, side, host, text, _flat(data))
            self._events.append(kept)
            ev = _tuple_new(Event, kept)
            subscribers = self._subscribers
        for callback in subscribers:
            try:
                callback(ev)
            except Exception:  # a broken view must never break a server
                pass
        return ev

    def session(self, protocol: str, side: str, host: str, peer: str = "", **data: Any) -> SessionRecorder:
        """Open a new session and return the recorder its driver writes through."""
        sid = f"{protocol}-{next(self._session_ids)}"
        rec = SessionRecorder(self, sid, protocol, side, host)
        rec.emit(OPENED, peer, peer=peer, **data)
        return rec

    # -- reading -----------------------------------------------------------------
    def events(
        self,
        *,
        session: str | None = None,
        protocol: str | None = None,
        since: int = 0,
        kinds: tuple[str, ...] | None = None,
        last: int | None = None,
    ) -> list[Event]:
        """The kept events that match every filter given, oldest first: of ``session``,
        of ``protocol``, after sequence number ``since``, of one of ``kinds``; with
        ``last``, only the newest ``last`` of them."""
        with self._lock:
            start = 0
            if since > 0 and self._events:
                # Sequence numbers are consecutive in a live bus: skip what is older than
                # ``since`` without looking at it (a recorded run may have gaps: scan it all).
                start = min(len(self._events), max(0, since - self._events[0][0] + 1))
                if (start < len(self._events) and self._events[start][0] <= since) or \
                        (start > 0 and self._events[start - 1][0] > since):
                    start = 0
            snapshot = list(self._events.since(start))
        # Filtered on the kept tuples; only what is returned becomes an Event.
        if since or session is not None or protocol is not None or kinds is not None:
            snapshot = [r for r in snapshot
                        if r[0] > since
                        and (session is None or r[2] == session)
                        and (protocol is None or r[4] == protocol)
                        and (kinds is None or r[3] in kinds)]
        if last is not None:
            snapshot = snapshot[-last:] if last > 0 else []
        if len(snapshot) < _MANY:
            return [_tuple_new(Event, r) for r in snapshot]
        with collector_paused():  # 200,000 new Events: 3x faster
            return [_tuple_new(Event, r) for r in snapshot]

    def sessions(self) -> list[str]:
        with self._lock:
            return list(dict.fromkeys(r[2] for r in self._events if r[3] == OPENED))

    def last_seq(self) -> int:
        with self._lock:
            return self._events[-1][0] if self._events else 0

    def __iter__(self) -> Iterator[Event]:
        return iter(self.events())

    def __len__(self) -> int:
        with self._lock:
            return len(self._events)

    def clear(self) -> None:
        with self._lock:
            self._events.clear()

    def subscribe(self, callback: Callable[[Event], None]) -> Callable[[], None]:
        """Call ``callback(event)`` for each new event; returns an unsubscribe function."""
        with self._lock:
            self._subscribers = (*self._subscribers, callback)

        def unsubscribe() -> None:
            with self._lock:
                subscribers = list(self._subscribers)
                if callback in subscribers:
                    subscribers.remove(callback)
                    self._subscribers = tuple(subscribers)

        return unsubscribe


class SessionRecorder:
    """What a protocol driver (server or client side) writes its session through."""

    def __init__(self, bus: EventBus, session: str, protocol: str, side: str, host: str) -> None:
        self.bus = bus
        self.session = session
        self.protocol = protocol
        self.side = side
        self.host = host
        self.user: str | None = None
        self.closed = False

    def emit(self, kind: str, text: str = "", **data: Any) -> Event:
        if self.user is not None:
            data.setdefault("user", self.user)
        return self.bus.record(self.session, kind, self.protocol, self.side, self.host, text, data)

    def client_line(self, text: str, **data: Any) -> None:
        """A line the client sent (already masked if it carries a credential)."""
        # Written out rather than through emit(): a busy server records every line.
        if self.user is not None:
            data.setdefault("user", self.user)
        self.bus.record(self.session, CLIENT_LINE, self.protocol, self.side, self.host,
                        text if len(text) <= MAX_LINE_TEXT else clip(text), data)

    def server_line(self, text: str, **data: Any) -> None:
        """A line the server sent."""
        if self.user is not None:
            data.setdefault("user", self.user)
        self.bus.record(self.session, SERVER_LINE, self.protocol, self.side, self.host,
                        text if len(text) <= MAX_LINE_TEXT else clip(text), data)

    def payload(self, direction: str, data: bytes, *, head_lines: int = 12,
                size: int | None = None) -> None:
        """Record a message body (DATA, RETR, FETCH literal) compactly.

        A 5 MB attachment must not become 70,000 events: the first lines are kept
        and the rest is summarised with its size. A sender that writes the body in
        pieces may pass only its head (at least ``head_lines`` whole lines, as sent)
        and the whole body's length as ``size``.
        """
        # Only the head is looked at: a 50 MB body must not be copied to show 12 lines.
        # Usually the head lines are short and near the start: one split of a window.
        window = data[:_HEAD_WINDOW]
        parts = window.split(b"\n", head_lines)
        complete = len(parts) > head_lines  # the head ended at a newline (more may follow)
        lines = parts[:head_lines] if complete else parts
        if (complete or len(window) == len(data)) and max(map(len, lines), default=0) <= MAX_LINE_TEXT:
            pos = len(window) - len(parts[-1]) if complete else len(data)
            text = b"\n".join([line.rstrip(b"\r") for line in lines]).decode("utf-8", "replace")
        else:
            text, pos, complete = self._head(data, head_lines)
        total = len(data) if size is None else size
        rest = total - pos
        if complete and rest > 0:
            text += f"\n… ({rest} more bytes)"
        kind = CLIENT_LINE if direction == "C" else SERVER_LINE
        self.emit(kind, text, payload=True, bytes=total)

    @staticmethod
    def _head(data: bytes, head_lines: int) -> tuple[str, int, bool]:
        """The first ``head_lines`` lines of ``data`` a line at a time, long lines
        cut; the text, where the rest starts, and whether the head ended at a newline."""
        pieces: list[str] = []
        pos = 0
        complete = True  # the head ended at a newline with more data after it
        while len(pieces) < head_lines:
            nl = data.find(b"\n", pos)
            end = len(data) if nl < 0 else nl
            line = data[pos:min(end, pos + MAX_LINE_TEXT)].rstrip(b"\r").decode("utf-8", "replace")
            if end - pos > MAX_LINE_TEXT:  # a long line: its head and its length, never a copy
                line += f"… ({end - pos - MAX_LINE_TEXT} more bytes)"
            pieces.append(line)
            if nl < 0:
                pos = len(data)
                complete = False
                break
            pos = nl + 1
        return "\n".join(pieces), pos, complete

    def tls(self, version: str | None, cipher: str | None, peer_cert: str | None = None, **data: Any) -> None:
        sni = f", SNI {data['sni']}" if data.get("sni") else ""
        self.emit(TLS, f"TLS started: {version} {cipher}{sni}", version=version, cipher=cipher,
                  peer_cert=peer_cert, **data)

    def auth(self, user: str, ok: bool, mechanism: str) -> None:
        if ok:
            self.user = user
        self.emit(AUTH, f"AUTH {mechanism} as {user}: {'ok' if ok else 'failed'}",
                  ok=ok, mechanism=mechanism, login=user)

    def state(self, name: str) -> None:
        self.emit(STATE, name, state=name)

    def note(self, text: str, **data: Any) -> None:
        self.emit(NOTE, text, **data)

    def fault(self, text: str, **data: Any) -> None:
        """A ``lab.faults`` rule answered (or delayed, or dropped) this command."""
        self.emit(FAULT, text, **data)

    def stored(self, mailbox: str, uid: int | None, size: int, **data: Any) -> None:
        self.emit(STORED, f"stored in {mailbox} (uid {uid}, {size} bytes)", mailbox=mailbox,
                  uid=uid, size=size, **data)

    def close(self, reason: str = "") -> None:
        if not self.closed:
            self.closed = True
            self.emit(CLOSED, reason, reason=reason)
