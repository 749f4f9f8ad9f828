"""Transcripts: every session's wire lines, as ``C:``/``S:`` lines in the style of
the RFCs' own examples, timestamped and annotated with what each command and
reply means.

Three renderings of the same events: :func:`render_text` (terminals, ``maillab
tour``, tests), :func:`render_html` (a static table in a cell's output) and
:class:`TranscriptView` (a live ipywidgets view that grows while sessions run).

The live view is fed from the lab thread: its subscriber only appends to a
buffer and pokes a :class:`~maillab.views.publish.Throttle`, whose timer thread
applies the buffered events to the widget (see :mod:`maillab.views.publish`).
"""

from __future__ import annotations

import html
import importlib
import threading
import time
import weakref
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from typing import Any

from ..events import CLIENT_LINE, CLOSED, FAULT, OPENED, SERVER_LINE, Event, EventBus
from .conversations import Conversation, conversations
from .live import Block, LiveBlocks, blocks_html, sync_open_views, widget_bundle
from .publish import Throttle
from .theme import badge, page, protocol_line, reply_kind

Explainer = Callable[[str, str], "str | None"]
_explainers: dict[str, Explainer | None] = {}


def explainer(protocol: str) -> Explainer | None:
    """``maillab.<protocol>.explain.explain``, or None when that module is absent."""
    if protocol not in _explainers:
        fn: Explainer | None = None
        try:
            mod = importlib.import_module(f"maillab.{protocol}.explain")
            fn = getattr(mod, "explain", None)
        except Exception:  # absent or broken: the transcript still shows the lines
            fn = None
        _explainers[protocol] = fn
    return _explainers[protocol]


def explain_event(ev: Event) -> str | None:
    """The note for one line event (none for message bodies: they are data, not commands)."""
    if not ev.is_line or ev.data.get("payload"):
        return None
    fn = explainer(ev.protocol)
    if fn is None:
        return None
    try:
        return fn(ev.text, ev.kind)
    except Exception:
        return None


def clock(t: float) -> str:
    return time.strftime("%H:%M:%S", time.localtime(t)) + f".{int(t * 1000) % 1000:03d}"


# -- filtering ------------------------------------------------------------------------


def _session_users(events: Iterable[Event]) -> dict[str, set[str]]:
    """Which lab users each session concerns: who logged in, whom mail was stored for."""
    users: dict[str, set[str]] = {}
    for e in events:
        found = users.setdefault(e.session, set())
        for key in ("user", "login", "mailbox", "rcpt", "recipient"):
            value = e.data.get(key)
            if isinstance(value, str) and value:
                found.add(value.lower())
    return users


def select(
    events: Sequence[Event],
    *,
    session: str | None = None,
    protocol: str | None = None,
    user: str | None = None,
) -> list[Event]:
    """The events of the sessions that match every filter given."""
    wanted_user = (user or "").strip().lower()
    users = _session_users(events) if wanted_user else {}
    out = []
    for e in events:
        if session and e.session != session:
            continue
        if protocol and e.protocol != protocol:
            continue
        if wanted_user and not any(wanted_user in u for u in users.get(e.session, ())):
            continue
        out.append(e)
    return out


# -- text ----------------------------------------------------------------------------


def _session_title(e: Event) -> str:
    peer = e.data.get("peer") or e.text
    side = "client" if e.side == "client" else "server"
    where = f"{e.host}" + (f" <- {peer}" if side == "server" and peer else "")
    if side == "client":
        # a relay's session is recorded under its own host name; "mx" names the server
        where = f"from {e.host} to {e.data['mx']} [{peer}]" if e.data.get("mx") else f"to {e.host}"
    return f"{e.session} ({e.protocol} {side}, {where})"


def _event_lines(e: Event) -> list[str]:
    if e.is_line:
        tag = "C:" if e.kind == CLIENT_LINE else "S:"
        return [f"{tag} {ln}" for ln in (e.text.split("\n") if e.data.get("payload") else [e.text])]
    if e.kind == OPENED:
        return [f"-- session opened ({e.text})" if e.text else "-- session opened"]
    if e.kind == CLOSED:
        return ["-- session closed" + (f" ({e.text})" if e.text else "")]
    return [f"** {e.text}"]


def render_text(events: Iterable[Event], *, explain: bool = True, times: bool = True) -> str:
    """Sessions one after another, each a block of timestamped ``C:``/``S:`` lines."""
    by_session: dict[str, list[Event]] = {}
    for e in events:
        by_session.setdefault(e.session, []).append(e)
    blocks = []
    for sid, evs in by_session.items():
        opened = next((e for e in evs if e.kind == OPENED), None)
        title = _session_title(opened) if opened else sid
        out = [f"=== {title}"]
        for e in evs:
            note = explain_event(e) if explain else None
            stamp = f"{clock(e.time)} " if times else ""
            for i, line in enumerate(_event_lines(e)):
                text = f"{stamp if i == 0 else ' ' * len(stamp)}{line}"
                if note and i == 0:
                    text = f"{text:<60}  # {note}"
                out.append(text.rstrip())
        blocks.append("\n".join(out))
    return "\n\n".join(blocks)


# -- HTML ----------------------------------------------------------------------------


def _line_kind(e: Event) -> str:
    """The semantic colour of a row (see :mod:`maillab.views.theme`)."""
    if e.kind == CLIENT_LINE:
        return "client"
    if e.kind == SERVER_LINE:
        return "ok" if e.data.get("payload") else reply_kind(e.protocol, e.text)
    if e.kind == FAULT:
        return "temp"  # a failure injected with %mail fail: not the server's own doing
    return "event"


def _conversation_title(conv: Conversation, copy: str) -> str:
    shown = conv.events(copy)
    opened = next((e for e in shown if e.kind == OPENED), None)
    title = _session_title(opened) if opened else shown[0].session
    other = [s for s in conv.sessions if s != shown[0].session]
    if other:
        title += f" = {other[0]}, the {'server' if copy == 'client' else 'client'} copy"
    return title


def _conversation_summary(evs: Sequence[Event]) -> str:
    """One line for a folded session: the commands sent and how it ended."""
    verbs: list[str] = []
    for e in evs:
        if e.kind == CLIENT_LINE and not e.data.get("payload"):
            words = e.text.split()
            # IMAP commands follow a tag: "a1 LOGIN ..." -> LOGIN
            verb = (words[1] if e.protocol == "imap" and len(words) > 1 else words[0] if words else "")
            verb = verb.upper()
            if verb and verb not in verbs and verb.isalpha():
                verbs.append(verb)
    last = next((e for e in reversed(evs) if e.kind == SERVER_LINE and not e.data.get("payload")), None)
    closed = next((e for e in evs if e.kind == CLOSED), None)
    parts = [html.escape(", ".join(verbs))] if verbs else []
    if last is not None:
        parts.append(f"last reply {badge(reply_kind(last.protocol, last.text), last.text)}")
    parts.append("closed" if closed else "open")
    return f'<span class="ml-sum">{" · ".join(parts)}</span>'


def _row(e: Event, explain: bool) -> str:
    note = explain_event(e) if explain else None
    tag = {CLIENT_LINE: "C:", SERVER_LINE: "S:"}.get(e.kind, "")
    body = e.text if e.is_line else " ".join(_event_lines(e))
    kind = _line_kind(e)
    # The row's class colours its tag and line (theme: .ml-wire tr.KIND); the cells'
    # end tags are implied (HTML): a live transcript under load sends thousands of
    # rows a second, and this is a third of their markup.
    # A message's text (payload: its lines in one cell) is marked "pl": only a protocol
    # line hangs its wrapped rest (theme), the text's own lines stay flush.
    payload = bool(e.data.get("payload"))
    line = "line pl" if payload else "line"
    return (f'<tr class="{kind}"><td class="t">{clock(e.time)}<td class="tag">{tag}'
            f'<td class="{line}">{protocol_line(body, mark_long=not payload)}<td class="n">{html.escape(note or "")}</tr>')


def _rows(evs: Sequence[Event], explain: bool) -> list[str]:
    return [_row(e, explain) for e in evs]


class RenderCache:
    """What a live view rendered last time: each row by event, each conversation's block
    by what it holds. Under load a publish then renders only the new lines and the
    blocks they belong to, not every line shown (an event never changes once emitted)."""

    def __init__(self) -> None:
        self.rows: dict[tuple[int, bool], str] = {}
        self.blocks: dict[tuple[Any, ...], Block] = {}

    def row(self, e: Event, explain: bool, used: dict[tuple[int, bool], str]) -> str:
        key = (e.seq, explain)
        text = self.rows.get(key)
        if text is None:
            text = _row(e, explain)
        used[key] = text
        return text


def render_body(events: Iterable[Event], *, explain: bool = True, limit: int | None = None,
                copy: str = "server", folded: bool = False, cache: RenderCache | None = None) -> str:
    """The transcript's HTML without the stylesheet (what the live view shows): one
    ``<details>`` per conversation, the client's and server's copies of one
    connection shown once (``copy`` says whose), at most ``limit`` events.
    ``cache`` (a live view's) keeps what was rendered before."""
    head, blocks = render_blocks(events, explain=explain, limit=limit, copy=copy, folded=folded, cache=cache)
    return head + blocks_html(blocks)


def render_blocks(events: Iterable[Event], *, explain: bool = True, limit: int | None = None,
                  copy: str = "server", folded: bool = False,
                  cache: RenderCache | None = None) -> tuple[str, list[tuple[str, Block]]]:
    """:func:`render_body` in pieces: the note on what is not shown, and each
    conversation's ``<details>`` block keyed by the conversation (what the live
    view sends the browser when it changed)."""
    convs = conversations(events)
    shown = [(c, c.events(copy)) for c in convs]
    hidden = 0
    if limit is not None:
        total = 0
        kept = []
        for conv, evs in reversed(shown):
            if total >= limit:
                hidden += len(evs)
                continue
            if total + len(evs) > limit:
                hidden += total + len(evs) - limit
                evs = evs[-(limit - total):]
            total += len(evs)
            kept.append((conv, evs))
        shown = kept[::-1]
    head = f'<div class="ml-note">… {hidden} earlier events not shown</div>' if hidden else ""
    parts: list[tuple[str, Block]] = []
    rows: dict[tuple[int, bool], str] = {}
    blocks: dict[tuple[Any, ...], Block] = {}
    state = "" if folded else " open"
    for conv, evs in shown:
        key = (conv.key, tuple(conv.sessions), copy, explain, folded, len(evs), evs[0].seq, evs[-1].seq)
        block = cache.blocks.get(key) if cache is not None else None
        if block is None:
            lines = ([cache.row(e, explain, rows) for e in evs] if cache is not None
                     else _rows(evs, explain))
            block = Block(f'<details{state} data-key="{html.escape(conv.key)}"><summary>'
                          f"{html.escape(_conversation_title(conv, copy))} {_conversation_summary(evs)}</summary>"
                          '<table class="ml-tr ml-wire"><tbody>', lines, "</tbody></table></details>",
                          tuple(e.seq for e in evs))
        blocks[key] = block
        parts.append((conv.key, block))
    if cache is not None:
        # Keep what this rendering used (memory stays bounded): the blocks shown, and
        # the rows of the blocks that changed (the ones likely to change again).
        cache.rows, cache.blocks = rows, blocks
    return head, parts


def render_html(events: Iterable[Event], *, explain: bool = True, limit: int | None = None,
                copy: str = "server") -> str:
    """A static transcript: :func:`render_body` in the shared stylesheet."""
    return page(render_body(events, explain=explain, limit=limit, copy=copy), kind="transcript")


class Transcript:
    """A static transcript (what a cell returns): HTML in notebooks, text elsewhere."""

    def __init__(self, events: Sequence[Event], *, explain: bool = True) -> None:
        self.events = list(events)
        self.explain = explain

    def __repr__(self) -> str:
        return render_text(self.events, explain=self.explain) or "(no sessions yet)"

    def _repr_html_(self) -> str:
        if not self.events:
            return page("<i>no sessions yet</i>")
        return render_html(self.events, explain=self.explain)


# -- the live widget -------------------------------------------------------------------

ALL = "(all)"
#: Sessions offered in the session filter (the newest; the one chosen stays).
MAX_SESSION_OPTIONS = 200
#: Events a live view keeps for its filters, in multiples of what it shows.
KEEP = 2
#: Lines a live transcript shows while traffic streams: more than this many new lines
#: at each publish, publishing back to back (hundreds of lines a second, faster than
#: anyone reads, let alone from a projector). It shows the newest of them, says how
#: many it skipped, and shows every line again once the traffic pauses (a burst, such as
#: a FETCH of a whole mailbox, is shown whole: it is not a stream).
STREAM_LINES = 60
#: Seconds between refreshes of the session filter's options while traffic streams.
OPTIONS_EVERY = 2.0

#: Live views, so that the kernel can bring them up to date after every cell.
_LIVE: weakref.WeakSet[TranscriptView] = weakref.WeakSet()


def flush_live_views(*_args: Any) -> None:
    """Apply every live transcript's buffered events now, then save every keyed
    view's state (an IPython ``post_run_cell`` hook: when a cell ends, what it did is
    in the transcripts, whatever the timer's phase).

    Not for a view that is publishing continuously (sustained load): its next publish
    is due within a period anyway, and rendering it once more at the end of every
    cell, on the kernel's thread, is what made each cell wait. A view's whole
    state (:meth:`~maillab.views.live.LiveBlocks.sync`, the size of the view) is
    sent only when it is not changing back to back
    (:func:`~maillab.views.live.sync_open_views`): under sustained load its settle
    timer sends it once the stream ends."""
    for view in list(_LIVE):
        try:
            if not view._throttle.streaming() and not view.streaming():
                view.flush()
        except Exception:
            pass
    sync_open_views()


class TranscriptView:
    """A live transcript of ``bus``: filters by session, protocol and user.

    ``interval`` is the publishing period in seconds; ``max_events`` bounds what
    the widget shows (the newest events), so a long session stays responsive;
    ``stream_lines`` is what it shows while traffic streams (see ``STREAM_LINES``;
    None shows every line however fast they come).
    """

    def __init__(
        self,
        bus: EventBus,
        *,
        session: str | None = None,
        protocol: str | None = None,
        user: str | None = None,
        explain: bool = True,
        interval: float = 0.1,
        max_events: int = 1500,
        stream_lines: int | None = STREAM_LINES,
    ) -> None:
        import ipywidgets as w

        self.bus = bus
        self.interval = interval
        self.max_events = max_events
        self.stream_lines = stream_lines  # None: every line, however fast they come
        self._lock = threading.RLock()  # widget state: publisher vs. the kernel thread
        self._pending: deque[Event] = deque()  # appended on the lab thread
        self._throttle = Throttle(interval, self._publish)
        self._events: list[Event] = []
        self._cache = RenderCache()
        self._trimmed = False  # the widget shows only the newest lines of a stream
        self._applied = time.monotonic()  # when the last publish took the new events
        self._options_at = 0.0  # when the session filter's options were last refreshed
        self.updates = 0  # how many times the publisher refreshed the widget

        narrow = w.Layout(width="auto", min_width="12em")
        self.session_w = w.Dropdown(options=[ALL], value=ALL, description="session", layout=narrow)
        self.protocol_w = w.Dropdown(options=[ALL], value=ALL, description="protocol", layout=narrow)
        self.user_w = w.Text(value=user or "", description="user", placeholder="e.g. bob", layout=narrow)
        self.copy_w = w.Dropdown(options=[("server copy", "server"), ("client copy", "client")],
                                 value="server", description="copy", layout=narrow)
        self.explain_w = w.Checkbox(value=explain, description="explain", indent=False,
                                    layout=w.Layout(width="auto"))
        # Subscribe before the snapshot so nothing falls between the two; the seq
        # check in _apply drops events seen twice.
        self._unsubscribe = bus.subscribe(self._on_event)
        self._events = bus.events(last=KEEP * max_events)
        self._refresh_options()
        if session:
            self._set_option(self.session_w, session)
        if protocol:
            self._set_option(self.protocol_w, protocol)
        # The first rendering goes with the widget's opening state: a patch sent
        # before the browser has loaded the view's module would be missed.
        head, blocks, _note = self._blocks()
        self.html = LiveBlocks(blocks, head, kind="transcript", follow=True)
        self.widget = w.VBox([w.HBox([self.session_w, self.protocol_w, self.user_w, self.copy_w,
                                      self.explain_w], layout=w.Layout(flex_flow="row wrap")),
                              self.html], layout=w.Layout(width="100%"))
        for control in (self.session_w, self.protocol_w, self.user_w, self.copy_w, self.explain_w):
            control.observe(lambda _change: self.refresh(), names="value")
        self.refresh()
        _LIVE.add(self)

    # -- called on the lab thread: must be cheap and must not raise
    def _on_event(self, ev: Event) -> None:
        self._pending.append(ev)
        self._throttle.poke()

    def _publish(self) -> None:
        with self._lock:
            self._apply(stream=True)

    def _apply(self, stream: bool = False) -> None:
        """Take the new events and show them; ``stream`` (the publisher's call): while
        more than ``stream_lines`` arrive at each of back-to-back publishes, show only
        the newest of them and publish once more after this, to show every line once
        the stream pauses."""
        last = self._events[-1].seq if self._events else 0
        new = []
        while self._pending:
            ev = self._pending.popleft()
            if ev.seq > last:
                new.append(ev)
        now, since = time.monotonic(), self._applied
        self._applied = now
        if not new and not self._trimmed:
            return
        self._events.extend(new)
        if len(self._events) > (KEEP + 1) * self.max_events:
            self._events = self._events[-KEEP * self.max_events:]
        # A stream, perhaps: the view decides by the new lines it shows (a filtered view
        # of one quiet session is no stream however busy the lab is).
        streaming = (stream and self.stream_lines is not None and len(new) > self.stream_lines
                     and self._throttle.sustained())
        # The session filter's options: while a stream goes on, every OPTIONS_EVERY s
        # (a list that changes under the pointer is no list to choose from, and each
        # change is a widget update of 200 sessions).
        if (new or self._trimmed) and (not streaming or now - self._options_at >= OPTIONS_EVERY):
            self._refresh_options()
            self._options_at = now
        self._render((last, now - since) if streaming else None)
        if self._trimmed:
            self._throttle.again()

    def streaming(self) -> bool:
        """Does the view show the newest lines of a stream that goes on? Then a cell's
        end leaves it to the publisher (which shows every line once the stream pauses):
        rendering all of it on the kernel's thread is what made each cell wait."""
        return self._trimmed and self._throttle.sustained()

    def flush(self) -> None:
        """Apply buffered events now (tests, and before showing a snapshot)."""
        with self._lock:
            self._apply()

    def _set_option(self, control: Any, value: str) -> None:
        if value not in control.options:
            control.options = [*control.options, value]
        control.value = value

    def _refresh_options(self) -> None:
        # The newest sessions only: under load a list of thousands, sent to the browser
        # with every update, would cost more than the transcript itself.
        recent = list(dict.fromkeys(e.session for e in reversed(self._events)))[:MAX_SESSION_OPTIONS]
        chosen = self.session_w.value
        sessions = [ALL, *([chosen] if chosen != ALL and chosen not in recent else []), *reversed(recent)]
        protocols = [ALL, *sorted({e.protocol for e in self._events})]
        for control, options in ((self.session_w, sessions), (self.protocol_w, protocols)):
            if list(control.options) != options:
                keep = control.value
                control.options = options
                control.value = keep if keep in options else ALL

    def selected(self) -> list[Event]:
        with self._lock:
            return select(
                self._events,
                session=None if self.session_w.value == ALL else self.session_w.value,
                protocol=None if self.protocol_w.value == ALL else self.protocol_w.value,
                user=self.user_w.value or None,
            )

    def _render(self, streaming: tuple[int, float] | None = None) -> None:
        """Show the selected events; ``streaming`` (the last seq shown before, and the
        seconds since): if more than ``stream_lines`` of them came since, show the
        newest ``stream_lines`` and say so."""
        head, blocks, note = self._blocks(streaming)
        self._trimmed = bool(note)
        self.html.show(blocks, head, stream=note)
        self.updates += 1

    def _blocks(self, streaming: tuple[int, float] | None = None) -> tuple[str, list[tuple[str, Block]], str]:
        """The head, the blocks and, when it shows only the newest lines of a stream, the
        note that says what it skipped."""
        events = self.selected()
        if not events:
            return "<i>no sessions yet: they appear here as they happen</i>", [], ""
        lines, fresh = self.stream_lines, 0
        if streaming is not None and lines is not None:
            while fresh < len(events) and events[-1 - fresh].seq > streaming[0]:
                fresh += 1
        if streaming is None or lines is None or fresh <= lines:
            return (*render_blocks(events, explain=self.explain_w.value, limit=self.max_events,
                                   copy=self.copy_w.value, cache=self._cache), "")
        _head, blocks = render_blocks(events, explain=self.explain_w.value, limit=lines,
                                      copy=self.copy_w.value, cache=self._cache)
        window = min(len(events), self.max_events)  # what the view shows when it is not streaming
        note = (f"… {window - lines:,} of the last {window:,} lines skipped while traffic streams"
                f" (~{fresh / max(streaming[1], 1e-3):,.0f} a second): the newest {lines} follow; all show here once it"
                " pauses (every line: %mail transcript --static)")
        return f'<div class="ml-note">{html.escape(note)}</div>', blocks, note

    def refresh(self) -> None:
        with self._lock:
            self._apply()
            self._render()

    def text(self) -> str:
        self.flush()
        return render_text(self.selected(), explain=self.explain_w.value)

    def close(self) -> None:
        """Stop following the bus and close the widgets."""
        self._unsubscribe()
        self._throttle.close()
        _LIVE.discard(self)
        self.widget.close()

    def _repr_mimebundle_(self, **kwargs: Any) -> dict[str, Any]:
        return widget_bundle(self.widget, self.text() or "(no sessions yet)", **kwargs)

    def __repr__(self) -> str:
        return self.text() or "(no sessions yet)"
