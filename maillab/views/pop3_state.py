"""The POP3 state view: the three states of RFC 1939 as a small diagram, the
live session's state highlighted as it moves, the messages marked by DELE, and
after the session what is left on the server.

It reads the event stream only: the server session emits ``state`` events
(AUTHORIZATION, TRANSACTION, UPDATE) and structured notes (``pop3`` =
``maildrop`` with the numbered messages (the first 500 of a large maildrop, and
the count) and the marks, ``marked`` for each DELE, ``update`` with what was
removed, ``aborted`` when the connection ended without QUIT).

:func:`session_state` folds events into a :class:`POP3SessionState`;
:func:`render_text` and :func:`render_html` draw it; :class:`POP3StateView` is
the live widget, refreshed through a :class:`~maillab.views.publish.Throttle` at
most every ``interval`` seconds (never on the lab thread, which only pokes it).
"""

from __future__ import annotations

import html
import threading
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from ..events import CLIENT_LINE, CLOSED, NOTE, OPENED, STATE, Event, EventBus
from .live import Block, LiveBlocks, blocks_html, widget_bundle
from .publish import Throttle
from .theme import BASE_PX, badge, card_row, diagram, diagram_style, page

STATES = ("AUTHORIZATION", "TRANSACTION", "UPDATE")
#: What moves the session from one state to the next (RFC 1939 section 3).
TRANSITIONS = ("USER/PASS, APOP or AUTH", "QUIT")


@dataclass
class POP3SessionState:
    """One server-side POP3 session, as far as the events tell."""

    session: str
    peer: str = ""
    state: str | None = None
    visited: list[str] = field(default_factory=list)
    user: str | None = None
    messages: list[tuple[int, str, int]] = field(default_factory=list)  # number, UIDL, size
    count: int = 0  # messages in the maildrop (``messages`` may list only the first ones)
    marked: list[int] = field(default_factory=list)
    closed: bool = False
    reason: str = ""
    aborted: bool = False  # ended in TRANSACTION without QUIT carried out
    quit_sent: bool = False  # the client did send QUIT (the connection closed before the reply)
    removed: list[int] | None = None  # set in UPDATE (the first ones, of a large maildrop)
    removed_count: int = 0
    left: int | None = None  # messages on the server after UPDATE

    @property
    def outcome(self) -> str:
        if self.removed is not None:
            gone = ", ".join(map(str, self.removed)) or "none"
            if self.removed_count > len(self.removed):
                gone += f" … ({self.removed_count} in all)"
            return (f"QUIT -> UPDATE removed message(s) {gone}; {self.left} message(s) left"
                    " on the server")
        if self.aborted:
            shown = ", ".join(map(str, self.marked[:20])) + (" …" if len(self.marked) > 20 else "")
            marks = f" (marks on {shown} forgotten)" if self.marked else ""
            how = ("connection closed before the QUIT was answered" if self.quit_sent
                   else "connection ended without QUIT")
            return f"{how}: no UPDATE state, nothing deleted{marks}"
        if self.closed:
            return "closed in the AUTHORIZATION state: the maildrop was never opened"
        if self.state == "TRANSACTION":
            return "logged in: DELE only marks; removal happens in UPDATE, after QUIT"
        return "waiting for a login"


def server_sessions(events: Iterable[Event]) -> list[str]:
    """Server-side POP3 sessions, oldest first."""
    return [e.session for e in events
            if e.kind == OPENED and e.protocol == "pop3" and e.side == "server"]


def session_for_client(events: Iterable[Event], client_address: str) -> str | None:
    """The server session whose peer is ``host:port`` (a client's own address)."""
    found = None
    for e in events:
        if e.kind == OPENED and e.protocol == "pop3" and e.side == "server" and e.text == client_address:
            found = e.session
    return found


def session_state(events: Iterable[Event], session: str) -> POP3SessionState:
    st = POP3SessionState(session)
    for e in events:
        if e.session != session:
            continue
        if e.kind == OPENED:
            st.peer = e.text
        elif e.kind == STATE:
            st.state = e.text
            st.visited.append(e.text)
        elif e.kind == NOTE:
            kind = e.data.get("pop3")
            if kind == "maildrop":
                st.messages = [tuple(m) for m in e.data.get("messages", [])]  # type: ignore[misc]
                st.count = e.data.get("count", len(st.messages))
                st.marked = list(e.data.get("marked", []))
            elif kind == "marked":
                st.marked.append(e.data["number"])
            elif kind == "update":
                st.removed = list(e.data.get("removed", []))
                st.removed_count = e.data.get("count", len(st.removed))
                st.left = e.data.get("left")
            elif kind == "aborted":
                st.aborted = True
        elif e.kind == CLOSED:
            st.closed = True
            st.reason = e.text
        elif e.kind == CLIENT_LINE and e.text.strip().upper() == "QUIT":
            st.quit_sent = True
        if e.data.get("user"):
            st.user = e.data["user"]
    return st


# -- renderings ------------------------------------------------------------------------

def render_text(st: POP3SessionState) -> str:
    boxes = [f"[{s}]" if s == st.state and not (st.closed and s != "UPDATE") else s for s in STATES]
    lines = [f"POP3 session {st.session}" + (f" ({st.user})" if st.user else "")
             + (" - closed" if st.closed else ""),
             f"  {boxes[0]} --{TRANSITIONS[0]}--> {boxes[1]} --{TRANSITIONS[1]}--> {boxes[2]}"]
    if st.messages:
        marked, removed = set(st.marked), set(st.removed or ())
        lines.append("  maildrop: " + ", ".join(
            f"{n}{' (marked)' if n in marked else ''}{' (removed)' if n in removed else ''}"
            for n, _uid, _size in st.messages)
            + (f" … ({st.count} messages)" if st.count > len(st.messages) else ""))
    lines.append("  " + st.outcome)
    return "\n".join(lines)


#: State names are monospace (protocol words) at the view's text size, so a box's
#: width follows from the longest label, "▶ AUTHORIZATION" (and a character of
#: slack for a glyph from a fallback font).
_CW = 8.6  # a monospace character's advance at BASE_PX (0.6 em, and some slack)
_BOX_W = (max(len(s) for s in STATES) + 3) * _CW + 8
_BOX_H, _GAP, _DOWN = 40, 64, 46  # box height, gap between boxes across, and down
_WIDE = 3 * _BOX_W + 2 * _GAP + 12


def _transition(i: int) -> str:
    return TRANSITIONS[i].replace(", APOP or AUTH", "")


def _diagram_svg(st: POP3SessionState, *, down: bool = False) -> str:
    """The three states as boxes, across (``down``: one under the other, for a narrow
    output); the current one drawn heavy and marked with a word ("now"), visited
    ones with a tick: never colour alone. Drawn at the view's text size."""
    parts = []
    arrow = "pop3down" if down else "pop3across"  # ids per layout: a hidden layout's markers do not draw
    for i, name in enumerate(STATES):
        x, y = (6, 6 + i * (_BOX_H + _DOWN)) if down else (6 + i * (_BOX_W + _GAP), 6)
        current = name == st.state and not (st.closed and name != "UPDATE")
        seen = name in st.visited
        stroke = "var(--ml-client,#005a9c)" if current else "var(--ml-fg,#1f2328)"
        label = ("▶ " if current else "✓ " if seen else "") + name
        parts.append(f"<rect x='{x}' y='{y}' width='{_BOX_W:.1f}' height='{_BOX_H}' rx='8'"
                     f" style='fill:var(--ml-bg2,#eef1f4);stroke:{stroke};stroke-width:{4 if current else 1.5}'/>"
                     f"<text x='{x + _BOX_W / 2:.1f}' y='{y + _BOX_H / 2 + 5}' text-anchor='middle'"
                     f" style='font-family:var(--ml-mono,monospace);font-weight:{700 if current else 400}'>"
                     f"{label}</text>")
        if current:
            nx, ny, anchor = ((x + _BOX_W + 10, y + _BOX_H / 2 + 5, "start") if down
                              else (x + _BOX_W / 2, y + _BOX_H + 20, "middle"))
            parts.append(f"<text x='{nx:.1f}' y='{ny:.1f}' text-anchor='{anchor}' font-weight='700'>now</text>")
        if i < 2:
            if down:
                cx = x + _BOX_W / 2
                y1, y2 = y + _BOX_H, y + _BOX_H + _DOWN
                line = f"x1='{cx:.1f}' y1='{y1}' x2='{cx:.1f}' y2='{y2 - 6}'"
                where = f"x='{cx + 10:.1f}' y='{(y1 + y2) / 2 + 5:.1f}'"
            else:
                x1, x2 = x + _BOX_W, x + _BOX_W + _GAP
                line = f"x1='{x1:.1f}' y1='{y + _BOX_H / 2}' x2='{x2 - 6:.1f}' y2='{y + _BOX_H / 2}'"
                where = f"x='{(x1 + x2) / 2:.1f}' y='{y + _BOX_H + 20}' text-anchor='middle'"
            parts.append(f"<line {line} style='stroke:var(--ml-fg,#1f2328);stroke-width:1.5'"
                         f" marker-end='url(#{arrow})'/>"
                         f"<text {where} style='font-family:var(--ml-mono,monospace)'>"
                         f"{html.escape(_transition(i))}</text>")
    width, height = ((_BOX_W + 12 + 5 * _CW, 12 + 3 * _BOX_H + 2 * _DOWN) if down else (_WIDE, _BOX_H + 36))
    defs = (f"<defs><marker id='{arrow}' markerWidth='8' markerHeight='8' refX='6' refY='4'"
            " orient='auto'><path d='M0,0 L8,4 L0,8 z' style='fill:var(--ml-fg,#1f2328)'/></marker></defs>")
    return (f"<svg viewBox='0 0 {width:.0f} {height}' style='{diagram_style(width)}' role='img'"
            f" aria-label='POP3 states, now {html.escape(st.state or 'none')}'"
            f" xmlns='http://www.w3.org/2000/svg'>{defs}<g style='font-size:{BASE_PX}px'>{''.join(parts)}</g></svg>")


def _diagram(st: POP3SessionState) -> str:
    return diagram((_diagram_svg(st), _WIDE), (_diagram_svg(st, down=True), _BOX_W + 12 + 5 * _CW))


def render_body(st: POP3SessionState) -> str:
    return "<div>" + blocks_html(render_blocks(st)) + "</div>"


def render_blocks(st: POP3SessionState) -> list[tuple[str, Block]]:
    """The view as keyed blocks (what the live view sends when they change): the
    title and state diagram, the maildrop table (one row per message: a DELE sends
    its row), and the outcome."""
    title = f"POP3 session {html.escape(st.session)}" + (f" ({html.escape(st.user)})" if st.user else "")
    rows, ids = [], []
    marked, removed = set(st.marked), set(st.removed or ())
    for n, uid, size in st.messages:
        if st.removed is not None and n in removed:
            status = badge("err", "removed in UPDATE")
        elif n in marked and st.removed is None and not st.aborted:
            status = badge("temp", "marked for deletion")
        elif st.removed is not None or st.aborted:
            status = badge("ok", "still on the server")
        else:
            status = ""
        rows.append(card_row(str(n), [("UIDL", f"<span class='mono'>{html.escape(uid)}</span>"),
                                      ("octets", str(size)), ("this session", status)], head_label="#"))
        ids.append(n)
    if st.count > len(st.messages):
        rows.append(f"<tr><td class='ml-card-head' colspan='4'>… {st.count - len(st.messages)} more messages"
                    f" ({st.count} in the maildrop)</td></tr>")
        ids.append("more")
    # No maildrop before the login: the table leaves the view (the live view's page
    # keeps it, so the next session's table is sent as what changed). At 150% zoom
    # each message is a card (theme: ml-cards-narrow).
    table = [("maildrop", Block("<table class='ml-cards-narrow'><thead><tr><th>#</th><th>UIDL</th><th>octets</th><th>this session</th>"
                                "</tr></thead><tbody>", rows, "</tbody></table>", ids))] if rows else []
    return [("state", Block(f"<div><b>{title}</b>{_diagram(st)}</div>")), *table,
            ("outcome", Block(f"<div class='ml-note'>{html.escape(st.outcome)}</div>"))]


def render_html(st: POP3SessionState) -> str:
    return page(render_body(st), kind="pop3-state")


# -- the live widget -------------------------------------------------------------------

class POP3StateView:
    """Follows one server-side POP3 session (by default the newest one, switching
    to each new session as it opens) and redraws as its state changes."""

    def __init__(self, bus: EventBus, session: str | None = None, *, interval: float = 0.1) -> None:
        self.bus = bus
        self.follow = session is None
        self.session = session
        self.interval = interval
        self.updates = 0
        self._throttle = Throttle(interval, self.refresh)
        # The followed session's events, kept as they arrive: a refresh reads these,
        # not the bus (a scan of up to 200,000 events per refresh was half of what the
        # views cost the kernel under kernel_load's load). Subscribed before the look
        # back, so nothing falls between the two (state() drops what it sees twice).
        self._lock = threading.Lock()  # the lab thread appends, the publisher reads
        self._seen: list[Event] = []
        self._unsubscribe = bus.subscribe(self._on_event)
        self._look_back()
        # The first rendering goes with the widget's opening state (see LiveBlocks).
        self.html = LiveBlocks(self._blocks(), kind="pop3-state", controls=False, max_height="")
        self.widget = self.html
        self.refresh()

    def _look_back(self) -> None:
        """The session's events already on the bus (once, when the view opens)."""
        if self.session is None:
            sessions = server_sessions(self.bus.events(protocol="pop3", kinds=(OPENED,)))
            if not sessions:
                return
            with self._lock:
                if self.session is None:  # no newer session opened meanwhile
                    self.session = sessions[-1]
        session = self.session
        earlier = self.bus.events(session=session)
        with self._lock:
            if self.session == session:
                self._seen = earlier + self._seen

    def _on_event(self, ev: Event) -> None:  # lab thread: cheap, never raise
        try:
            if ev.protocol != "pop3" or ev.side != "server":
                return
            with self._lock:
                if self.follow and ev.kind == OPENED:
                    self.session, self._seen = ev.session, []
                if ev.session != self.session:
                    return
                self._seen.append(ev)
            self._throttle.poke()
        except Exception:
            pass

    def state(self) -> POP3SessionState | None:
        with self._lock:
            session, seen = self.session, list(self._seen)
        if session is None:
            return None
        # In the order they were recorded, each once (a session's events can come from
        # the loop and a worker thread; the look back and the subscription overlap).
        events = sorted({e.seq: e for e in seen}.values(), key=lambda e: e.seq)
        return session_state(events, session)

    def _blocks(self) -> list[tuple[str, Block]]:
        st = self.state()
        return render_blocks(st) if st else [("none", Block("<i>no POP3 session yet: it appears here</i>"))]

    def refresh(self) -> None:
        if self.html.show(self._blocks()):  # sends the blocks and rows that changed
            self.updates += 1

    def text(self) -> str:
        st = self.state()
        return render_text(st) if st else "(no POP3 session yet)"

    def stop(self) -> None:
        """Stop following the lab; the view keeps showing the last state (what a
        notebook does before ``%mail stop``, so Run All leaves the view readable)."""
        self._unsubscribe()
        self._throttle.close()

    def close(self) -> None:
        self.stop()
        self.widget.close()

    def _repr_mimebundle_(self, **kwargs: Any) -> dict[str, Any]:
        return widget_bundle(self.widget, self.text(), **kwargs)

    def __repr__(self) -> str:
        return self.text()


class POP3StateFigure:
    """A static snapshot of one session (what ``%pop3`` returns beside its table)."""

    def __init__(self, st: POP3SessionState) -> None:
        self.st = st

    def __repr__(self) -> str:
        return render_text(self.st)

    def _repr_html_(self) -> str:
        return render_html(self.st)
