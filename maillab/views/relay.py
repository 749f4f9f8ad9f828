"""The relay path: which hosts a message crossed, how, and how long each hop took.

One model (:class:`RelayPath`: hosts as nodes, hops as arrows) is built from
either of two sources:

* a raw message's Received chain (:func:`path_from_hops`, via
  :mod:`maillab.relay.hops`): what the servers wrote into the header;
* the lab's relay queue and event stream (:func:`path_from_relay`): what the
  lab's MTAs did, including the attempts that failed (a dead MX, a 4xx) and the
  DNS answers they used, while the message is still moving.

and drawn three ways: text (terminals, tests), wrapping HTML (notebooks, and
the live widget, which needs no matplotlib off the kernel thread) and a
matplotlib :func:`figure` for slides (``fig.savefig("path.svg")``); both
drawings live in :mod:`maillab.views.path_drawing`, the hop table in
:mod:`maillab.views.hop_table`, the queue's table (``%mail queue``) in
:mod:`maillab.views.queue`.

The live view (:class:`LiveRelayView`) subscribes to ``lab.events``. Events
arrive on the lab thread; the callback only notes that something changed and
returns, a publisher thread rebuilds the path at most every 100 ms and sends the
widget the boxes and rows that changed (ipykernel's comms are thread-safe). Nothing here can raise into
a server, and nothing here touches a socket.
"""

from __future__ import annotations

import html
import re
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any

from ..clients.envelopes import decode_words
from ..relay.hops import HopTable, parse_hops
from ..relay.message import NO_STARTTLS
from .hop_table import _delay, hop_table_body, hop_table_text
from .live import LiveBlocks, widget_bundle
from .path_drawing import figure, path_blocks, path_diagram, path_html
from .publish import Throttle

# the queue's table (views/queue.py), also importable from here as before
from .queue import QUEUE_COLUMNS as QUEUE_COLUMNS
from .queue import QueueView as QueueView
from .theme import page

if TYPE_CHECKING:
    from matplotlib.figure import Figure

    from ..lab import Lab


# -- the path model ---------------------------------------------------------------------
@dataclass
class PathNode:
    name: str
    address: str | None = None
    side: bool = False  # True: off the main path (an MX that was tried and failed)


@dataclass
class PathHop:
    source: int  # node index
    target: int
    protocol: str | None = None  # ESMTP, ESMTPS, ESMTPSA, LMTP, ...
    encrypted: bool | None = None
    tls: str | None = None
    seconds: float | None = None  # time taken (relay attempt) or delay since the previous hop (header)
    dns: str | None = None  # the DNS answer this hop was chosen by
    result: str | None = None  # the reply or error
    ok: bool | None = True  # False: failed attempt; None: in progress
    when: datetime | None = None
    policy: str | None = None  # the sender's TLS policy for this hop (none/may/encrypt/verify/dane)
    verified: str | None = None  # how the next hop was authenticated: "lab CA", "DANE", None
    downgraded: bool = False  # plaintext although the next hop offers STARTTLS: it was stripped
    stripped: bool = False  # STARTTLS stripped, but the policy sent nothing in plaintext (no-starttls)
    auth: str | None = None  # what the receiving MX checked: "SPF pass · DKIM pass · DMARC pass"

    def label(self) -> str:
        parts = [self.protocol or ""]
        if self.encrypted is not None:
            parts.append((self.tls or "TLS") if self.encrypted else "no TLS")
        if self.encrypted and self.policy:
            parts.append(f"verified: {self.verified}" if self.verified else "unverified")
        if self.downgraded:
            parts.append("DOWNGRADED (STARTTLS stripped)")
        elif self.stripped:
            parts.append("STARTTLS stripped, so the policy sent nothing")
        if self.policy:
            parts.append(f"policy {self.policy}")
        if self.seconds is not None:
            parts.append(_delay(self.seconds).lstrip("+"))
        if self.auth:
            parts.append(self.auth)
        return ", ".join(p for p in parts if p)


@dataclass
class RelayPath:
    title: str
    nodes: list[PathNode] = field(default_factory=list)
    hops: list[PathHop] = field(default_factory=list)
    state: str | None = None  # queued / retrying / delivered / bounced (lab messages)
    notes: list[str] = field(default_factory=list)

    def node(self, name: str, address: str | None = None, *, side: bool = False) -> int:
        for i, n in enumerate(self.nodes):
            if n.name == name and n.side == side:
                if address and not n.address:
                    n.address = address
                return i
        self.nodes.append(PathNode(name, address, side))
        return len(self.nodes) - 1

    # renderings
    def text(self) -> str:
        return path_text(self)

    def __repr__(self) -> str:
        return path_text(self)

    def _repr_html_(self) -> str:
        return path_html(self)

    def figure(self, **kwargs: Any) -> Figure:
        return figure(self, **kwargs)


def path_from_hops(table: HopTable | bytes | str, title: str | None = None) -> RelayPath:
    """The path a Received chain describes: each hop an arrow into its ``by`` host."""
    if not isinstance(table, HopTable):
        table = parse_hops(table)
    path = RelayPath(title or (f"Received chain of: {table.subject}" if table.subject else "Received chain"))
    last: int | None = None
    for hop in table:
        if not hop.parsed:
            target = path.node(f"? (hop {hop.number})")
            source = last if last is not None else path.node("?")
            path.hops.append(PathHop(source, target, result="unparsed: " + (hop.raw or "(empty)"), ok=False))
            path.notes.append(f"hop {hop.number} unparsed: {hop.raw or '(empty Received field)'}")
            last = target
            continue
        sender = hop.helo or hop.from_host or (f"[{hop.from_ip}]" if hop.from_ip else None)
        if hop.by is None and sender is None:
            # qmail's "(qmail 123 invoked from network)": a step inside one machine
            where = path.nodes[last].name if last is not None else "the first server"
            path.notes.append(f"hop {hop.number}: a local stamp at {where}: " + "; ".join(hop.comments))
            continue
        if last is None:
            source = path.node(sender or "(origin)", hop.from_ip)
        elif sender is None or _same_host(sender, path.nodes[last].name) or _local(sender, hop.from_ip):
            source = last  # the previous server handed it on (or a hand-over inside one machine)
        else:
            source = path.node(sender, hop.from_ip)
            if not path.nodes[last].name.startswith("?"):
                path.notes.append(f"hop {hop.number}: {sender} is not the previous by-host "
                                  f"{path.nodes[last].name} (a gap in the chain, or another name)")
        target = path.node(hop.by or "?")
        path.hops.append(PathHop(source, target, protocol=hop.with_, encrypted=hop.encrypted, tls=hop.tls,
                                 seconds=hop.delay, when=hop.time))
        last = target
    return path


def _same_host(a: str, b: str) -> bool:
    # Exchange names one machine DB1PEPF000509EA.eurprd03.prod.outlook.com as a client
    # and DB1PEPF000509EA.mail.protection.outlook.com as a server: same first label.
    return a.lower() == b.lower() or a.split(".")[0].lower() == b.split(".")[0].lower()


def _local(name: str, ip: str | None) -> bool:
    return name.lower() in ("localhost", "localhost.localdomain") or ip in ("127.0.0.1", "::1")


# -- text -----------------------------------------------------------------------------
def path_text(path: RelayPath) -> str:
    lines = [path.title + (f"   [{path.state}]" if path.state else "")]
    for n, hop in enumerate(path.hops, start=1):
        src, dst = path.nodes[hop.source], path.nodes[hop.target]
        mark = {True: " ", False: "x", None: "…"}[hop.ok]
        label = hop.label()
        arrow = f"--{label}-->" if label else "-->"
        line = f" {mark} {n}. {_node_text(src)} {arrow} {_node_text(dst)}"
        if hop.dns:
            line += f"   DNS: {hop.dns}"
        if hop.result:
            line += f"   {hop.result}"
        lines.append(line)
    if not path.hops:
        lines.append("   (no hops yet)")
    lines.extend(f"   note: {n}" for n in path.notes)
    return "\n".join(lines)


def _node_text(node: PathNode) -> str:
    return f"{node.name} ({node.address})" if node.address and node.address != node.name.strip("[]") else node.name


# -- the lab's own messages ---------------------------------------------------------------
_QUEUED_AS = re.compile(r"queued as ([0-9A-Za-z]+)")


def find_message(lab: Lab, message: Any = None) -> Any:
    """The relay queue entry meant by ``message``: None/"last" for the last one, a
    queue id, a Message-ID (with or without <>), or an entry itself."""
    relay = getattr(lab, "relay", None)
    if relay is None:
        raise LookupError("the lab has no relay queue (is the lab started?)")
    if message is None or message == "last":
        msg = relay.last()
        if msg is None:
            raise LookupError("no message has been relayed yet: send one to another domain first")
        return msg
    if not isinstance(message, str):
        return message
    try:
        return relay.get(message)
    except KeyError:
        pass
    wanted = message.strip().strip("<>")
    for msg in reversed(relay.messages()):
        if msg.message_id.strip().strip("<>") == wanted or msg.id.lower() == wanted.lower():
            return msg
    raise LookupError(f"no relayed message {message!r} (a queue id from %mail queue, or a Message-ID)")


def _stored_for(lab: Lab, host: str | None, smtp_queue_id: str | None) -> list[Any]:
    """The "stored" events the receiving server wrote for one accepted message."""
    if not smtp_queue_id:
        return []
    return [e for e in lab.events.events(protocol="smtp", kinds=("stored",))
            if e.data.get("queue_id") == smtp_queue_id and (host is None or e.host == host)]


def delivered_copy(lab: Lab, message: Any = None) -> bytes | None:
    """The message as it sits in the (first) recipient's mailbox, Received lines and
    all; None while it is not delivered yet."""
    msg = find_message(lab, message)
    for attempt in msg.attempts:
        if attempt.result not in ("delivered", "partial"):
            continue
        m = _QUEUED_AS.search(attempt.text or "")
        for ev in _stored_for(lab, attempt.host, m.group(1) if m else None):
            user, _, folder = str(ev.data.get("mailbox", "")).partition("/")
            uid = ev.data.get("uid")
            if user and uid is not None:
                try:
                    return lab.store.mailbox(user, folder or "INBOX").read(int(uid))
                except (OSError, KeyError, ValueError):
                    continue
        if m:
            try:  # accepted for relaying onwards: follow the next queue
                return delivered_copy(lab, lab.relay.get(m.group(1)))
            except (KeyError, LookupError):
                pass
    return None


def _submission_hop(lab: Lab, path: RelayPath, msg: Any, origin: int) -> None:
    sid = msg.submitted_session
    if not sid:
        path.nodes.insert(0, PathNode("(submitted from Python)"))  # lab.relay.submit() called directly
        _shift(path, 1)
        path.hops.insert(0, PathHop(0, origin + 1, protocol="API", ok=True))
        return
    events = lab.events.events(session=sid)
    opened = next((e for e in events if e.kind == "opened"), None)
    helo = next((e.text.split(None, 1)[1] for e in events if e.kind == "C"
                 and e.text[:4].upper() in ("EHLO", "HELO") and " " in e.text), None)
    tls = next((e for e in events if e.kind == "tls"), None)
    auth = any(e.kind == "auth" and e.data.get("ok") for e in events)
    ehlo = any(e.kind == "C" and e.text[:4].upper() == "EHLO" for e in events)
    queued = next((e for e in events if e.kind == "note" and e.data.get("relay_id") == msg.id), None)
    peer = str(opened.data.get("peer", "")) if opened else ""
    address = peer.rsplit(":", 1)[0] if peer else None
    service = opened.data.get("service") if opened else None
    name = f"client {helo}" if helo else "mail client"
    path.nodes.insert(0, PathNode(name, address))
    _shift(path, 1)
    protocol = ("ESMTP" if ehlo else "SMTP") + ("S" if tls else "") + ("A" if auth else "")
    seconds = (queued.time - opened.time) if (opened and queued) else None
    path.hops.insert(0, PathHop(0, origin + 1, protocol=protocol, encrypted=tls is not None,
                                tls=tls.data.get("version") if tls else None, seconds=seconds,
                                result=f"{service or 'smtp'}: queued as {msg.id}"))


def _shift(path: RelayPath, n: int) -> None:
    for h in path.hops:
        h.source += n
        h.target += n


def _dns_text(msg: Any, attempt: Any) -> str | None:
    route = msg.routes.get(attempt.domain) or {}
    for t in route.get("targets", []):
        if t.get("name") == attempt.host:
            kind = "A (no MX: implicit MX)" if t.get("implicit") else f"MX {t.get('preference')}"
            return f"{attempt.domain} {kind} {attempt.host} -> {attempt.address}"
    if attempt.mx:
        return "; ".join(attempt.mx[:2])
    return None


def _relay_hops(lab: Lab, path: RelayPath, msg: Any, depth: int = 0) -> None:
    origin = path.node(msg.origin, _host_address(lab, msg.origin))
    for attempt in msg.attempts:
        ok = attempt.result in ("delivered", "partial")
        name = attempt.host or f"MX of {attempt.domain}?"
        target = path.node(name, attempt.address, side=not ok)
        result = f"{attempt.result}: {attempt.text}" if attempt.text else attempt.result
        # a downgrade needs a transaction in plaintext; "no-starttls" means the policy refused it
        stripped = bool(getattr(attempt, "downgraded", False)) and attempt.result == NO_STARTTLS
        path.hops.append(PathHop(origin, target, protocol=attempt.protocol, encrypted=attempt.tls if
                                 attempt.protocol else None, tls=attempt.tls_version,
                                 seconds=attempt.duration, dns=_dns_text(msg, attempt), result=result,
                                 ok=ok, when=datetime.fromtimestamp(attempt.time, timezone.utc),
                                 policy=getattr(attempt, "tls_policy", None),
                                 verified=getattr(attempt, "tls_verified", None),
                                 downgraded=bool(getattr(attempt, "downgraded", False)) and not stripped,
                                 stripped=stripped,
                                 auth=hop_checks(lab, attempt.host, getattr(msg, "message_id", ""),
                                                 _QUEUED_AS.search(attempt.text or ""), attempt.text or "")))
        if not ok:
            continue
        m = _QUEUED_AS.search(attempt.text or "")
        stored = _stored_for(lab, attempt.host, m.group(1) if m else None)
        for ev in stored:
            box = path.node(_mailbox_name(str(ev.data.get("mailbox", "?"))))
            path.hops.append(PathHop(target, box, protocol="Maildir", seconds=None,
                                     result=f"stored, uid {ev.data.get('uid')}", ok=True))
        if not stored and m and depth < 8:
            try:
                onward = lab.relay.get(m.group(1))
            except KeyError:
                continue
            _relay_hops(lab, path, onward, depth + 1)
    if not msg.final and msg.next_attempt:
        route = next(iter(msg.routes.values()), {})
        first = (route.get("targets") or [{}])[0].get("name") or "next attempt"
        target = path.node(first, side=True)
        wait = msg.next_attempt - time.time()
        when = datetime.fromtimestamp(msg.next_attempt).strftime("%H:%M:%S")
        path.hops.append(PathHop(origin, target, result=f"retry {msg.retries} at {when}"
                                 f" ({max(0.0, wait):.0f} s from the last update)", ok=None))
    elif not msg.final and msg.running:
        path.notes.append("an attempt is running now")
    if msg.dsn:
        who = msg.dsn.get("delivered_to") or msg.mail_from
        box = path.node(_mailbox_name(f"{who}/INBOX"))
        path.hops.append(PathHop(origin, box, protocol="DSN", result=(
            f"bounce delivered, uid {msg.dsn.get('uid')}" if msg.dsn.get("uid") is not None
            else f"bounce queued as {msg.dsn.get('queue_id')}"), ok=True))


def _mailbox_name(mailbox: str) -> str:
    """"carol@beta.test/INBOX" -> "mailbox carol@beta.test" (other folders keep their name)."""
    user, _, folder = mailbox.partition("/")
    return f"mailbox {user}" + (f" ({folder})" if folder and folder.upper() != "INBOX" else "")


def _host_address(lab: Lab, name: str) -> str | None:
    host = lab.topology.hosts.get(name)
    return host.address if host else None


def path_from_relay(lab: Lab, message: Any = None) -> RelayPath:
    """The path of a lab message, from the relay queue (every attempt, also the
    failed ones, with the DNS answer each used) and the event stream (the
    submission session, the mailbox the last hop stored it in).

    ``message``: a queue id, a Message-ID, a queue entry, or None for the last one.
    """
    msg = find_message(lab, message)
    # the queue keeps the header as sent (RFC 2047 words); a reader wants the text
    subject = f"'{decode_words(msg.subject)}': " if msg.subject else ""
    path = RelayPath(f"{subject}<{msg.mail_from}> -> " + ", ".join(f"<{r}>" for r in msg.rcpts),
                     state=msg.state)
    _relay_hops(lab, path, msg)
    origin = next(i for i, n in enumerate(path.nodes) if n.name == msg.origin)
    _submission_hop(lab, path, msg, origin)
    if msg.last_error and not msg.final:
        path.notes.append(f"last error: {msg.last_error}")
    for r in msg.recipients:
        if r.state == "bounced":
            path.notes.append(f"<{r.address}> bounced: {r.status} {r.text}")
    return path


class RelayView:
    """What ``%mail relay`` returns when widgets are not wanted: a snapshot."""

    def __init__(self, path: RelayPath) -> None:
        self.path = path

    def __repr__(self) -> str:
        return path_text(self.path)

    def _repr_html_(self) -> str:
        return path_html(self.path)

    def figure(self, **kwargs: Any) -> Figure:
        return figure(self.path, **kwargs)


class LiveRelayView:
    """The relay path as a live widget (:class:`~maillab.views.live.LiveBlocks`).

    ``build()`` makes a :class:`RelayPath` from current state; the lab thread only
    pokes a :class:`~maillab.views.publish.Throttle`, which calls it on its timer
    thread at most every ``interval`` s. ``linger`` s after the message reached a
    final state (delivered, bounced) the view stops listening.
    """

    FINAL = ("delivered", "bounced")

    def __init__(self, lab: Lab, build: Callable[[], RelayPath], *, interval: float = 0.1,
                 linger: float = 30.0) -> None:
        self.lab = lab
        self._build = build
        self.interval = interval
        self.linger = linger
        self.path = self._safe_build()
        self.widget = LiveBlocks(*path_blocks(self.path)[::-1], kind="relay", controls=False, max_height="")
        self.updates = 0
        self.listening = True
        self._linger: threading.Timer | None = None
        self._throttle = Throttle(interval, self.refresh)
        self._unsubscribe = lab.events.subscribe(self._on_event)
        self._final_check()

    def _on_event(self, event: Any) -> None:
        # Called on the lab thread: do nothing but poke (never block, never raise). Once
        # the message is final, its SMTP and DNS sessions are over: only the relay's own
        # notes (a DSN) can change the path, and the lab's other traffic must not make
        # the view rebuild it several times a second.
        try:
            if event.protocol == "relay" or (event.protocol in ("dns", "smtp") and self.path.state not in self.FINAL):
                self._throttle.poke()
        except Exception:
            pass

    def _safe_build(self) -> RelayPath:
        try:
            return self._build()
        except Exception as exc:  # a view must never take anything down with it
            return RelayPath("relay path unavailable", notes=[f"{type(exc).__name__}: {exc}"])

    def refresh(self) -> None:
        self.path = self._safe_build()
        head, blocks = path_blocks(self.path)
        if self.widget.show(blocks, head):  # sends the hosts, arrows and rows that changed
            self.updates += 1
        self._final_check()

    def _final_check(self) -> None:
        """Final: stop listening ``linger`` s from now (unless it changes again)."""
        final = self.path.state in self.FINAL
        if final and self._linger is None and self.listening:
            self._linger = threading.Timer(self.linger, self.close)
            self._linger.daemon = True
            self._linger.start()
        elif not final and self._linger is not None:
            self._linger.cancel()
            self._linger = None

    def close(self) -> None:
        self.listening = False
        self._throttle.close()
        if self._linger is not None:
            self._linger.cancel()
        try:
            self._unsubscribe()
        except Exception:
            pass

    def __repr__(self) -> str:
        return path_text(self.path)

    def _repr_mimebundle_(self, **kwargs: Any) -> dict[str, Any]:
        return widget_bundle(self.widget, path_text(self.path), **kwargs)

    def figure(self, **kwargs: Any) -> Figure:
        return figure(self.path, **kwargs)


class FigureView:
    """A matplotlib figure as a cell result: shown as PNG in a notebook (without
    needing ``%matplotlib inline``), as a sentence in a terminal."""

    def __init__(self, fig: Figure, saved: str | None = None) -> None:
        self.figure = fig
        self.saved = saved

    def savefig(self, path: str, **kwargs: Any) -> str:
        self.figure.savefig(path, **kwargs)
        self.saved = path
        return path

    def _repr_png_(self) -> bytes:
        import io

        buf = io.BytesIO()
        self.figure.savefig(buf, format="png", dpi=100)
        return buf.getvalue()

    def __repr__(self) -> str:
        w, h = self.figure.get_size_inches()
        where = f", saved to {self.saved}" if self.saved else ""
        return f"<relay path figure {w:.0f}x{h:.0f} in{where}>"


def hop_checks(lab: Lab, host: str | None, message_id: str, queued: Any = None,
               reply: str = "") -> str | None:
    """What the receiving MX checked for this message (maillab.auth), in a few words:
    only on an attempt that handed the message over (accepted, or refused for what the
    checks found). An attempt that ended before the message text (no STARTTLS under
    policy encrypt, a 4xx at RCPT) was checked by nobody, whatever a later one found."""
    from ..auth import settings

    entry = settings(lab).for_hop(host, message_id, queued.group(1) if queued else "") if host else None
    if entry is None or not (queued or (entry.refused and entry.refused in reply)):
        return None
    return entry.verdict.short()


class HopsView:
    """What ``%mail hops`` returns: the hop table and the path it describes."""

    def __init__(self, table: HopTable, source: str = "", auth: list[Any] | None = None) -> None:
        self.table = table
        self.path = path_from_hops(table)
        self.source = source
        self.auth = auth or []  # maillab.auth.headers.AuthHop: Authentication-Results, ARC sets

    def _auth_lines(self) -> list[str]:
        if not self.auth:
            return []
        return ["Authentication headers (newest first):", *(f"  {a.text()}" for a in self.auth)]

    def __repr__(self) -> str:
        head = f"Received chain of {self.source}\n" if self.source else ""
        tail = "\n\n" + "\n".join(self._auth_lines()) if self.auth else ""
        return head + hop_table_text(self.table) + "\n\n" + path_text(self.path) + tail

    def _repr_html_(self) -> str:
        head = f"<b>Received chain of {html.escape(self.source)}</b>" if self.source else ""
        lines = self._auth_lines()
        auth = (f"<p><b>{html.escape(lines[0])}</b></p><ul>"
                + "".join(f"<li class='mono'>{html.escape(ln.strip())}</li>" for ln in lines[1:]) + "</ul>"
                if lines else "")
        return page(head + hop_table_body(self.table) + path_diagram(self.path) + auth, kind="hops")

    def figure(self, **kwargs: Any) -> Figure:
        return figure(self.path, **kwargs)
