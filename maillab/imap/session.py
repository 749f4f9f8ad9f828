"""The IMAP4rev1 session (RFC 3501), sans-IO: commands in, responses out.

The four states of RFC 3501 section 3 are :class:`State` members with the RFC's
names. :meth:`IMAPSession.execute` takes one parsed :class:`~maillab.imap.parser.Command`
and yields what goes back on the wire, so the driver can write a 50 MB FETCH in
chunks and wait for a slow reader between them.

The selected mailbox is seen through a :class:`MailboxView`: this session's
numbering (message sequence number -> UID) and the flags it last told the client.
Other sessions, SMTP deliveries and tools like mutt change the mailbox under
it; the view catches up only at moments RFC 3501 7.4.1 allows. New messages
(EXISTS) and flag changes (FETCH) may be announced after any command; an
EXPUNGE never during FETCH, STORE or SEARCH, because the client may be using
sequence numbers in a pipelined command. Until then an expunged message
stays in this session's numbering as a "ghost" that FETCH answers with
``NO [EXPUNGEISSUED]``.
"""

from __future__ import annotations

import bisect
import datetime
import enum
import os
import time
import weakref
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .. import sasl
from ..limits import Limits
from ..masking import mask_line
from ..store import (
    SPECIAL_USE,
    InvalidName,
    Mailbox,
    MailboxExists,
    MessageInfo,
    NoSuchMailbox,
    Store,
    to_crlf,
)
from ..store.names import DELIMITER, decode_mutf7, encode_mutf7, is_inbox
from ..users import Users
from . import search as searching
from .parser import STAR, SYSTEM_FLAGS, Command, FetchItem, ParseError, SeqSet


class State(enum.Enum):
    """RFC 3501 section 3."""

    NOT_AUTHENTICATED = "NOT AUTHENTICATED"
    AUTHENTICATED = "AUTHENTICATED"
    SELECTED = "SELECTED"
    LOGOUT = "LOGOUT"


ANY = (State.NOT_AUTHENTICATED, State.AUTHENTICATED, State.SELECTED)
AUTHED = (State.AUTHENTICATED, State.SELECTED)

#: Which command is valid in which state (RFC 3501 6.1-6.4, and each extension's RFC).
ALLOWED: dict[str, tuple[State, ...]] = {
    "CAPABILITY": ANY, "NOOP": ANY, "LOGOUT": ANY, "ID": ANY,
    "STARTTLS": (State.NOT_AUTHENTICATED,), "AUTHENTICATE": (State.NOT_AUTHENTICATED,),
    "LOGIN": (State.NOT_AUTHENTICATED,),
    "SELECT": AUTHED, "EXAMINE": AUTHED, "CREATE": AUTHED, "DELETE": AUTHED, "RENAME": AUTHED,
    "SUBSCRIBE": AUTHED, "UNSUBSCRIBE": AUTHED, "LIST": AUTHED, "LSUB": AUTHED,
    "STATUS": AUTHED, "APPEND": AUTHED, "IDLE": AUTHED, "NAMESPACE": AUTHED,
    "ENABLE": (State.AUTHENTICATED,),
    "CHECK": (State.SELECTED,), "CLOSE": (State.SELECTED,), "EXPUNGE": (State.SELECTED,),
    "SEARCH": (State.SELECTED,), "FETCH": (State.SELECTED,), "STORE": (State.SELECTED,),
    "COPY": (State.SELECTED,), "MOVE": (State.SELECTED,), "UNSELECT": (State.SELECTED,),
}

#: RFC 3501 7.4.1: no EXPUNGE response while answering these (their UID forms may have one).
NO_EXPUNGE_DURING = ("FETCH", "STORE", "SEARCH")

PERMANENT_FLAGS = (*SYSTEM_FLAGS, "\\*")
RECENT_META = "imap-recent-uid"  # Mailbox meta: the highest UID some session has seen as \Recent
SUBSCRIPTIONS_FILE = "maillab-imap-subscriptions"
MAX_AUTH_FAILURES = 5
#: A FETCH that sets \Seen sets it for this many messages at a time.
SEEN_BATCH = 256

CRLF = b"\r\n"


# -- what the session hands the driver --------------------------------------------

class Response:
    """One response as it goes on the wire (CRLF included), in parts.

    Message data inside it (a FETCH literal's bytes) is a part of its own, named
    in ``literals``: written without being copied into the text around it, and
    shown compactly by the recorder instead of line by line.
    """

    __slots__ = ("parts", "literals")

    def __init__(self, data: bytes | tuple[bytes, ...], literals: tuple[int, ...] = ()) -> None:
        self.parts: tuple[bytes, ...] = (data,) if isinstance(data, bytes) else data
        self.literals = literals

    @property
    def data(self) -> bytes:
        return b"".join(self.parts)

    def __len__(self) -> int:
        return sum(map(len, self.parts))

    def __repr__(self) -> str:
        return f"Response({self.data[:60]!r}...)"


@dataclass
class Delay:
    """Wait this long before the next response (a failed login)."""

    seconds: float


@dataclass
class Notice:
    """Something for the transcript that is not on the wire (auth result, state, stored)."""

    kind: str  # "auth", "state", "stored", "note"
    args: tuple[Any, ...] = ()
    data: dict[str, Any] = field(default_factory=dict)


Output = Response | Delay | Notice


def line(text: str) -> Response:
    return Response(text.encode("utf-8") + CRLF)


#: A handler's result meaning "the tagged response has been sent already".
_ANSWERED = "<answered>"


class _No(Exception):
    """A valid command that failed: tagged NO with this text."""


class _Bad(Exception):
    """A command that is wrong here: tagged BAD with this text."""


# -- the selected mailbox ----------------------------------------------------------

class MailboxView:
    """This session's picture of its selected mailbox (RFC 3501 2.3.1)."""

    def __init__(self, mailbox: Mailbox, name: str, readonly: bool) -> None:
        self.mailbox = mailbox
        self.name = name
        self.readonly = readonly
        self.uids: list[int] = []  # index + 1 = message sequence number
        self.flags: dict[int, frozenset[str]] = {}  # as last reported to the client
        self.recent: set[int] = set()
        self.max_uid = 0

    def __len__(self) -> int:
        return len(self.uids)


def internaldate_text(t: float) -> str:
    """RFC 3501 date-time, in the server's local time zone like Dovecot's."""
    lt = time.localtime(t)
    off = lt.tm_gmtoff // 60
    sign = "+" if off >= 0 else "-"
    off = abs(off)
    return (f'"{lt.tm_mday:2d}-{time.strftime("%b", lt)}-{lt.tm_year:04d} '
            f'{lt.tm_hour:02d}:{lt.tm_min:02d}:{lt.tm_sec:02d} {sign}{off // 60:02d}{off % 60:02d}"')


def wire_name(name: str) -> str:
    """A mailbox name as the client sees it: modified UTF-7, quoted when needed."""
    encoded = DELIMITER.join(encode_mutf7(p) for p in name.split(DELIMITER)) if name else ""
    if encoded and all(c.isalnum() or c in "-_.+/&,:;!#$'=?@^`|~[" for c in encoded):
        return encoded
    return '"' + encoded.replace("\\", "\\\\").replace('"', '\\"') + '"'


def compile_pattern(pattern: str) -> Callable[[str], bool]:
    """A LIST pattern (RFC 3501 6.3.8: ``*`` anything, ``%`` anything but "/") as a
    matcher that stays linear in the name's length, whatever the pattern.

    A regular expression would backtrack on ``*%*%*%...x``; here the pattern's
    positions are bits of one integer and each name character advances all of
    them at once (a bit-parallel NFA), after runs of wildcards are collapsed.
    """
    tokens: list[str] = []
    for ch in pattern:
        if ch in "*%" and tokens and tokens[-1] in "*%":
            if ch == "*":
                tokens[-1] = "*"
            continue
        tokens.append(ch)
    literal_count = sum(1 for t in tokens if t not in "*%")
    m = len(tokens)
    lit: dict[str, int] = {}
    star = pct = 0
    for i, t in enumerate(tokens):
        if t == "*":
            star |= 1 << i
        elif t == "%":
            pct |= 1 << i
        else:
            lit[t] = lit.get(t, 0) | (1 << i)
    wild = star | pct
    accept = 1 << m

    def closure(s: int) -> int:
        return s | ((s & wild) << 1)  # a wildcard may match nothing; runs are collapsed

    def match(name: str) -> bool:
        if literal_count > len(name):
            return False
        s = closure(1)
        for ch in name:
            nxt = ((s & lit.get(ch, 0)) << 1) | (s & star)
            if ch != DELIMITER:
                nxt |= s & pct
            s = closure(nxt)
            if not s:
                return False
        return bool(s & accept)

    return match


# -- the session -------------------------------------------------------------------

class IMAPSession:
    """One client's session with the lab's IMAP server."""

    def __init__(
        self,
        store: Store,
        users: Users,
        limits: Limits,
        *,
        hostname: str,
        tls_active: bool = False,
        starttls_available: bool = True,
        plaintext_auth: bool = True,
        on_change: Callable[[str, str], None] | None = None,
        sessions_per_user: dict[str, int] | None = None,
    ) -> None:
        self.store = store
        self.users = users
        self.limits = limits
        self.hostname = hostname
        self.tls_active = tls_active
        self.starttls_available = starttls_available and not tls_active
        self.plaintext_auth = plaintext_auth
        self.on_change = on_change or (lambda user, folder: None)
        self.sessions_per_user = sessions_per_user if sessions_per_user is not None else {}
        self.state = State.NOT_AUTHENTICATED
        self.user: str | None = None
        self.selected: MailboxView | None = None
        self.mode = "command"  # or "authenticate" (a SASL response is due), "idle"
        self.action: str | None = None  # "starttls" or "close", for the driver
        self.auth_failures = 0
        self._pending_tag: str | None = None
        self._counted = False

    # -- capabilities ---------------------------------------------------------------
    def capabilities(self) -> list[str]:
        caps = ["IMAP4rev1", "LITERAL+", "SASL-IR", "ID", "ENABLE", "IDLE"]
        if self.state == State.NOT_AUTHENTICATED:
            if self.starttls_available:
                caps.append("STARTTLS")
            if self.tls_active or self.plaintext_auth:
                caps.append("AUTH=PLAIN")
            else:
                caps.append("LOGINDISABLED")
        else:
            caps += ["NAMESPACE", "UIDPLUS", "MOVE", "UNSELECT", "SPECIAL-USE", "CHILDREN",
                     f"APPENDLIMIT={self.limits.imap_literal}"]
        return caps

    def greeting(self) -> list[Output]:
        return [line(f"* OK [CAPABILITY {' '.join(self.capabilities())}] "
                     f"{self.hostname} maillab IMAP4rev1 ready"),
                Notice("state", (self.state.value,))]

    # -- entry points ----------------------------------------------------------------
    def execute(self, cmd: Command | ParseError) -> Iterator[Output]:
        """Everything the server sends for one command, its tagged response last."""
        if isinstance(cmd, ParseError):
            if cmd.tag is None:
                yield line(f"* BAD {cmd.text}")
            else:
                yield line(f"{cmd.tag} BAD {cmd.text}")
            return
        allowed = ALLOWED.get(cmd.name, ())
        if self.state not in allowed:
            names = " or ".join(s.value for s in allowed) or "no"
            yield line(f"{cmd.tag} BAD {cmd.display} is valid in {names} state,"
                       f" not in {self.state.value}")
            return
        handler = getattr(self, "do_" + cmd.name.lower())
        status, text = "OK", f"{cmd.display} completed"
        try:
            result = yield from handler(cmd)
            if result is _ANSWERED:
                return
            if result:
                text = result
        except _No as exc:
            status, text = "NO", str(exc)
        except _Bad as exc:
            status, text = "BAD", str(exc)
        except InvalidName as exc:
            status, text = "NO", f"[CANNOT] {exc}"
        except NoSuchMailbox as exc:
            status, text = "NO", f"[NONEXISTENT] no mailbox {exc}"
        if self.selected is not None and self.state == State.SELECTED and self.mode == "command":
            allow_expunge = cmd.uid or cmd.name not in NO_EXPUNGE_DURING
            yield from self._updates(allow_expunge)
        if self.mode != "command":
            return  # the tagged response comes after DONE or the SASL response
        yield line(f"{cmd.tag} {status} {text}")

    def continue_line(self, raw: bytes) -> Iterator[Output]:
        """A line that is not a command: the SASL response, or DONE ending IDLE."""
        text = raw.rstrip(b"\r\n").decode("utf-8", "replace")
        tag = self._pending_tag or "*"
        if self.mode == "idle":
            self.mode = "command"
            self._pending_tag = None
            if text.upper() != "DONE":
                yield line(f"{tag} BAD expected DONE to end IDLE")
                return
            if self.selected is not None:
                yield from self._updates(True)
            yield line(f"{tag} OK IDLE terminated")
            return
        if self.mode == "authenticate":
            self.mode = "command"
            self._pending_tag = None
            if text == "*":
                yield line(f"{tag} BAD AUTHENTICATE cancelled")
                return
            yield from self._finish_plain(tag, text)
            return
        raise RuntimeError("no continuation expected")

    def idle_updates(self) -> list[Output]:
        """What an IDLE client should hear now (RFC 2177: any untagged response)."""
        if self.mode != "idle" or self.selected is None:
            return []
        return list(self._updates(True))

    def tls_started(self) -> None:
        """RFC 3501 6.2.1: after STARTTLS the client must forget what it knew."""
        self.tls_active = True
        self.starttls_available = False
        self.action = None

    def masked(self, raw: bytes) -> str:
        """A command line as the transcript may show it (passwords and SASL data masked)."""
        text = raw.rstrip(b"\r\n").decode("utf-8", "replace")
        return mask_line("imap", text, sasl=self.mode == "authenticate")

    def end(self) -> None:
        """The connection is gone: release the per-user connection slot."""
        if self._counted and self.user:
            self.sessions_per_user[self.user] = max(0, self.sessions_per_user.get(self.user, 1) - 1)
            self._counted = False
        self.selected = None

    # -- any state (RFC 3501 6.1) -------------------------------------------------------
    def do_capability(self, cmd: Command) -> Iterator[Output]:
        yield line("* CAPABILITY " + " ".join(self.capabilities()))

    def do_noop(self, cmd: Command) -> Iterator[Output]:
        return
        yield

    def do_logout(self, cmd: Command) -> Iterator[Output]:
        yield line(f"* BYE {self.hostname} logging out")
        self._set_state(State.LOGOUT)
        self.selected = None
        self.action = "close"
        yield Notice("state", (State.LOGOUT.value,))

    def do_id(self, cmd: Command) -> Iterator[Output]:
        from .. import __version__

        yield line(f'* ID ("name" "maillab" "version" "{__version__}")')

    # -- NOT AUTHENTICATED (RFC 3501 6.2) -------------------------------------------------
    def do_starttls(self, cmd: Command) -> Iterator[Output]:
        if not self.starttls_available:
            raise _Bad("TLS is already active" if self.tls_active else "STARTTLS is not offered here")
        self.action = "starttls"
        return "Begin TLS negotiation now"
        yield

    def _plaintext_refused(self) -> bool:
        return not self.tls_active and not self.plaintext_auth

    def do_login(self, cmd: Command) -> Iterator[Output]:
        if self._plaintext_refused():
            raise _No("[PRIVACYREQUIRED] LOGIN is disabled until STARTTLS")
        user, password = (a.decode("utf-8", "replace") for a in cmd.args)
        return (yield from self._login(user, password, "LOGIN"))

    def do_authenticate(self, cmd: Command) -> Iterator[Output]:
        mech, initial = cmd.args
        if mech != "PLAIN":
            raise _No(f"[CANNOT] unsupported SASL mechanism {mech} (this server offers PLAIN)")
        if self._plaintext_refused():
            raise _No("[PRIVACYREQUIRED] AUTHENTICATE is disabled until STARTTLS")
        if initial is None:
            # RFC 3501 6.2.2: an empty challenge, the response comes on its own line
            self.mode = "authenticate"
            self._pending_tag = cmd.tag
            yield line("+ ")
            return None
        yield from self._finish_plain(cmd.tag, initial)
        return _ANSWERED

    def _finish_plain(self, tag: str, text: str) -> Iterator[Output]:
        try:
            credentials = sasl.parse_plain(sasl.decode_response(text))
        except sasl.SASLError as exc:  # also "*", the client cancelling (RFC 3501 6.2.2)
            yield line(f"{tag} BAD {exc}")
            return
        authc, password = credentials.authcid, credentials.password
        if not sasl.may_act_as(credentials, self.users.resolve(authc)):
            yield Delay(self.limits.auth_failure_delay)
            yield line(f"{tag} NO [AUTHORIZATIONFAILED] acting as another user is not allowed")
            return
        try:
            text_ok = yield from self._login(authc, password, "AUTHENTICATE PLAIN")
        except _No as exc:
            yield line(f"{tag} NO {exc}")
            return
        yield line(f"{tag} OK {text_ok}")

    def _login(self, login: str, password: str, mechanism: str) -> Iterator[Output]:
        address = self.users.authenticate(login, password)
        if address is None:
            self.auth_failures += 1
            yield Notice("auth", (login, False, mechanism))
            yield Delay(self.limits.auth_failure_delay)
            if self.auth_failures >= MAX_AUTH_FAILURES:
                yield line("* BYE too many failed logins")
                self.action = "close"
            raise _No("[AUTHENTICATIONFAILED] invalid user name or password")
        if self.sessions_per_user.get(address, 0) >= self.limits.imap_connections_per_user:
            raise _No(f"[LIMIT] {address} already has {self.limits.imap_connections_per_user}"
                      " IMAP sessions (imap_connections_per_user)")
        self.sessions_per_user[address] = self.sessions_per_user.get(address, 0) + 1
        self._counted = True
        self.user = address
        self.store.ensure_user(address)
        yield Notice("auth", (address, True, mechanism))
        if not self.tls_active:
            yield Notice("note", ("password sent without TLS: accepted because the lab listens on"
                                  " loopback; a real server would say LOGINDISABLED before STARTTLS",),
                         {"policy": "imap_plaintext_auth"})
        self._set_state(State.AUTHENTICATED)
        yield Notice("state", (self.state.value,))
        return f"[CAPABILITY {' '.join(self.capabilities())}] logged in as {address}"

    def _set_state(self, state: State) -> None:
        self.state = state

    # -- AUTHENTICATED (RFC 3501 6.3) ---------------------------------------------------
    def _name(self, raw: bytes) -> str:
        """A mailbox name from the wire (modified UTF-7) as the store's Unicode name."""
        try:
            text = raw.decode("ascii")
        except UnicodeDecodeError:
            raise InvalidName("mailbox names are sent in modified UTF-7 (RFC 3501 5.1.3)") from None
        name = decode_mutf7(text)
        if name.endswith(DELIMITER) and len(name) > 1:
            name = name[:-1]  # RFC 3501 6.3.3: "foo/" names "foo"
        if "\0" in name:
            raise InvalidName("NUL in a mailbox name")
        return self.store.canonical_name(name)

    def _mailbox(self, name: str) -> Mailbox:
        assert self.user is not None
        return self.store.mailbox(self.user, name)

    def do_select(self, cmd: Command) -> Iterator[Output]:
        readonly = cmd.name == "EXAMINE"
        if self.selected is not None:
            # RFC 3501 6.3.1: the old mailbox is closed first (no expunge), even if this fails
            self.selected = None
            self._set_state(State.AUTHENTICATED)
            yield line("* OK [CLOSED] previous mailbox closed")
        name = self._name(cmd.args[0])
        if not self.store.exists(self.user or "", name):
            raise _No(f"[NONEXISTENT] no mailbox {name}")
        mb = self._mailbox(name)
        view = MailboxView(mb, mb.name, readonly)
        infos = mb.messages()
        view.uids = [i.uid for i in infos]
        view.flags = {i.uid: i.flags for i in infos}
        view.max_uid = max(view.max_uid, mb.uidnext - 1, view.uids[-1] if view.uids else 0)
        view.recent = self._claim_recent(view, view.uids)
        self.selected = view
        self._set_state(State.SELECTED)
        keywords = sorted({f for i in infos for f in i.flags if not f.startswith("\\")})
        yield line(f"* FLAGS ({' '.join((*SYSTEM_FLAGS, *keywords))})")
        if readonly:
            yield line("* OK [PERMANENTFLAGS ()] read-only mailbox")
        else:
            yield line(f"* OK [PERMANENTFLAGS ({' '.join(PERMANENT_FLAGS)})] flags permitted")
        yield line(f"* {len(view.uids)} EXISTS")
        yield line(f"* {len(view.recent)} RECENT")
        for seq, info in enumerate(infos, 1):
            if "\\Seen" not in info.flags:
                yield line(f"* OK [UNSEEN {seq}] first unseen message")
                break
        yield line(f"* OK [UIDVALIDITY {mb.uidvalidity}] UIDs valid")
        yield line(f"* OK [UIDNEXT {mb.uidnext}] predicted next UID")
        yield Notice("state", (self.state.value,), {"mailbox": mb.name})
        return f"[{'READ-ONLY' if readonly else 'READ-WRITE'}] {cmd.name} completed"

    do_examine = do_select

    def _claim_recent(self, view: MailboxView, uids: list[int]) -> set[int]:
        """\\Recent: a message is recent in exactly one session, the first to see it
        (RFC 3501 2.3.2). EXAMINE looks without claiming."""
        if not uids:
            return set()
        mb = view.mailbox
        with mb.lock:
            mark = int(mb.get_meta(RECENT_META, "0") or 0)
            recent = {u for u in uids if u > mark}
            if recent and not view.readonly:
                mb.set_meta(RECENT_META, max(uids))
        return recent

    def do_create(self, cmd: Command) -> Iterator[Output]:
        name = self._name(cmd.args[0])
        if is_inbox(name):
            raise _No("[ALREADYEXISTS] INBOX always exists")
        uses = cmd.args[1]
        if uses and not all(SPECIAL_USE.get(name) == u for u in uses):
            raise _No("[USEATTR] special-use attributes belong to the lab's fixed folders")
        try:
            self.store.create_mailbox(self.user or "", name)
        except MailboxExists:
            raise _No(f"[ALREADYEXISTS] mailbox {name} already exists") from None
        return None
        yield

    def do_delete(self, cmd: Command) -> Iterator[Output]:
        name = self._name(cmd.args[0])
        if is_inbox(name):
            raise _No("[CANNOT] INBOX cannot be deleted")
        if self.selected is not None and self.selected.name == name:
            self.selected = None
            self._set_state(State.AUTHENTICATED)
        self.store.delete_mailbox(self.user or "", name)
        self.on_change(self.user or "", name)
        return None
        yield

    def do_rename(self, cmd: Command) -> Iterator[Output]:
        old, new = self._name(cmd.args[0]), self._name(cmd.args[1])
        if is_inbox(old):
            raise _No("[CANNOT] renaming INBOX is not supported in the lab")
        if is_inbox(new):
            raise _No("[ALREADYEXISTS] INBOX exists")
        try:
            self.store.rename_mailbox(self.user or "", old, new)
        except MailboxExists:
            raise _No(f"[ALREADYEXISTS] mailbox {new} already exists") from None
        if self.selected is not None and (self.selected.name == old
                                          or self.selected.name.startswith(old + DELIMITER)):
            self.selected = None
            self._set_state(State.AUTHENTICATED)
        self.on_change(self.user or "", old)
        return None
        yield

    # subscriptions: a small per-user file, names one per line
    def _subscriptions_path(self) -> Path:
        return self.store.user_root(self.user or "") / SUBSCRIPTIONS_FILE

    def subscriptions(self) -> list[str]:
        path = self._subscriptions_path()
        if not path.exists():
            return ["INBOX", *SPECIAL_USE]
        return [n for n in path.read_text("utf-8").split("\n") if n]

    def _save_subscriptions(self, names: Iterable[str]) -> None:
        path = self._subscriptions_path()
        tmp = path.with_suffix(".tmp")
        tmp.write_text("".join(n + "\n" for n in dict.fromkeys(names)), "utf-8")
        tmp.replace(path)

    def do_subscribe(self, cmd: Command) -> Iterator[Output]:
        name = self._name(cmd.args[0])
        if not self.store.exists(self.user or "", name):
            raise _No(f"[NONEXISTENT] no mailbox {name}")
        self._save_subscriptions([*self.subscriptions(), name])
        return None
        yield

    def do_unsubscribe(self, cmd: Command) -> Iterator[Output]:
        name = self._name(cmd.args[0])
        subs = self.subscriptions()
        if name not in subs:
            raise _No(f"[NONEXISTENT] {name} is not subscribed")
        self._save_subscriptions(n for n in subs if n != name)
        return None
        yield

    def _pattern(self, ref: bytes, pattern: bytes) -> str | None:
        text = (ref + pattern).decode("ascii", "replace") if not ref or ref.endswith(b"/") \
            or pattern.startswith(b"/") else (ref + b"/" + pattern).decode("ascii", "replace")
        try:
            return decode_mutf7(text)
        except InvalidName:
            return None

    def do_list(self, cmd: Command) -> Iterator[Output]:
        ref, pattern, selection, returns = cmd.args
        if pattern == b"":
            # RFC 3501 6.3.8: the hierarchy delimiter and the root of the reference
            yield line(f'* LIST (\\Noselect) "{DELIMITER}" ""')
            return None
        text = self._pattern(ref, pattern)
        if text is None:
            return None
        subscribed_only = "SUBSCRIBED" in selection
        show_subscribed = subscribed_only or "SUBSCRIBED" in returns
        special_only = "SPECIAL-USE" in selection
        yield from self._list_lines("LIST", text, subscribed_only, show_subscribed, special_only)
        return None

    def do_lsub(self, cmd: Command) -> Iterator[Output]:
        ref, pattern = cmd.args
        text = self._pattern(ref, pattern)
        if text is None:
            return None
        yield from self._list_lines("LSUB", text, True, False, False)
        return None

    def _list_lines(self, verb: str, pattern: str, subscribed_only: bool, show_subscribed: bool,
                    special_only: bool) -> Iterator[Output]:
        existing = self.store.list_mailboxes(self.user or "")
        exists = set(existing)
        subs = set(self.subscriptions()) if (subscribed_only or show_subscribed) else set()
        # Parents that are not folders themselves (Maildir++ allows .a.b without .a)
        parents: set[str] = set()
        for n in existing:
            parts = n.split(DELIMITER)
            for i in range(1, len(parts)):
                parents.add(DELIMITER.join(parts[:i]))
        names = sorted(exists | (parents if pattern.endswith("%") else set()) |
                       (subs if subscribed_only else set()), key=lambda n: (n != "INBOX", n))
        matcher = compile_pattern(pattern)
        inbox_matcher = compile_pattern("INBOX" + pattern[5:]) if pattern[:5].upper() == "INBOX" \
            else matcher
        for name in names:
            ok = (inbox_matcher if name == "INBOX" or name.startswith("INBOX/") else matcher)(name)
            if not ok or (subscribed_only and name not in subs):
                continue
            attrs: list[str] = []
            if name not in exists:
                attrs.append("\\NonExistent" if name not in parents else "\\Noselect")
            attrs.append("\\HasChildren" if name in parents else "\\HasNoChildren")
            if name in SPECIAL_USE:
                attrs.append(SPECIAL_USE[name])
            elif special_only:
                continue
            if show_subscribed and name in subs and verb == "LIST":
                attrs.append("\\Subscribed")
            yield line(f'* {verb} ({" ".join(attrs)}) "{DELIMITER}" {wire_name(name)}')

    def do_namespace(self, cmd: Command) -> Iterator[Output]:
        yield line(f'* NAMESPACE (("" "{DELIMITER}")) NIL NIL')  # RFC 2342: personal only

    def do_enable(self, cmd: Command) -> Iterator[Output]:
        # RFC 5161: only extensions we support and that need enabling; we have none of those.
        yield line("* ENABLED")

    def do_status(self, cmd: Command) -> Iterator[Output]:
        name = self._name(cmd.args[0])
        if not self.store.exists(self.user or "", name):
            raise _No(f"[NONEXISTENT] no mailbox {name}")
        mb = self._mailbox(name)
        infos = mb.messages()
        mark = int(mb.get_meta(RECENT_META, "0") or 0)
        values = {
            "MESSAGES": len(infos),
            "RECENT": sum(1 for i in infos if i.uid > mark),
            "UIDNEXT": mb.uidnext,
            "UIDVALIDITY": mb.uidvalidity,
            "UNSEEN": sum(1 for i in infos if "\\Seen" not in i.flags),
            "SIZE": sum(i.crlf_size for i in infos),
            "DELETED": sum(1 for i in infos if "\\Deleted" in i.flags),
        }
        if self.selected is not None and self.selected.mailbox is mb:
            values["RECENT"] = len(self.selected.recent)
        items = " ".join(f"{k} {values[k]}" for k in cmd.args[1])
        yield line(f"* STATUS {wire_name(name)} ({items})")

    def do_append(self, cmd: Command) -> Iterator[Output]:
        raw_name, flags, when, data = cmd.args
        name = self._name(raw_name)
        if not self.store.exists(self.user or "", name):
            raise _No(f"[TRYCREATE] no mailbox {name}")
        if not data:
            raise _No("an empty message cannot be appended")
        stored_flags = self._check_flags(flags)
        mb = self._mailbox(name)
        info = mb.add(data, stored_flags, when)
        yield Notice("stored", (mb.name, info.uid, info.size))
        self.store.notify(self.user or "", mb.name, info)
        return f"[APPENDUID {mb.uidvalidity} {info.uid}] APPEND completed"

    def _check_flags(self, flags: Iterable[str]) -> frozenset[str]:
        out = set()
        for f in flags:
            if f == "\\Recent":
                continue  # RFC 3501 2.3.2: the server sets \Recent, never the client
            if f.startswith("\\") and f not in SYSTEM_FLAGS:
                raise _Bad(f"{f} is not a system flag (keywords have no backslash)")
            out.add(f)
        return frozenset(out)

    def do_idle(self, cmd: Command) -> Iterator[Output]:
        # RFC 2177: "+" now, then untagged updates as they happen, until DONE.
        self.mode = "idle"
        self._pending_tag = cmd.tag
        yield line("+ idling")
        if self.selected is not None:
            yield from self._updates(True)
        return None

    # -- SELECTED (RFC 3501 6.4) ----------------------------------------------------------
    def _view(self) -> MailboxView:
        assert self.selected is not None
        return self.selected

    def do_check(self, cmd: Command) -> Iterator[Output]:
        return None
        yield

    def _expunge_deleted(self, only: set[int] | None = None) -> list[int]:
        view = self._view()
        if view.readonly:
            raise _No("[READ-ONLY] the mailbox is read-only (EXAMINE)")
        mb = view.mailbox
        with mb.lock:
            doomed = [i.uid for i in mb.messages()
                      if "\\Deleted" in i.flags and (only is None or i.uid in only)]
            removed = mb.remove(doomed)
        if removed:
            self.on_change(self.user or "", view.name)
        return removed

    def do_close(self, cmd: Command) -> Iterator[Output]:
        view = self._view()
        if not view.readonly:
            self._expunge_deleted()  # silently: CLOSE sends no EXPUNGE responses
        self.selected = None
        self._set_state(State.AUTHENTICATED)
        yield Notice("state", (self.state.value,))
        return None

    def do_unselect(self, cmd: Command) -> Iterator[Output]:
        self.selected = None
        self._set_state(State.AUTHENTICATED)
        yield Notice("state", (self.state.value,))
        return None

    def do_expunge(self, cmd: Command) -> Iterator[Output]:
        only = None
        if cmd.uid:
            only = {self._view().uids[i] for i in self._resolve(cmd.args[0], True)}
        self._expunge_deleted(only)
        return None  # the EXPUNGE responses come from _updates right after
        yield

    def _resolve(self, seqs: SeqSet, uid: bool) -> list[int]:
        """Indexes (sequence number - 1) named by a sequence set, ascending, each once.

        Each range becomes an index interval (UIDs by binary search), the intervals
        are merged, and only then expanded: linear in the answer, whatever the
        client wrote (``1:*,1:*,...`` or ``1,2,3,...,2000``).
        """
        view = self._view()
        uids = view.uids
        n = len(uids)
        spans: list[tuple[int, int]] = []  # [lo, hi) index intervals
        if not uid:
            for a, b in seqs:
                if n == 0 and (a == STAR or b == STAR):
                    continue
                a = n if a == STAR else a
                b = n if b == STAR else b
                if a > b:
                    a, b = b, a
                if b > n:
                    raise _Bad(f"message sequence number {b} does not exist (EXISTS is {n})")
                spans.append((a - 1, b))
        elif uids:
            top = uids[-1]
            for a, b in seqs:
                a = top if a == STAR else a
                b = top if b == STAR else b
                if a > b:
                    a, b = b, a
                lo, hi = bisect.bisect_left(uids, a), bisect.bisect_right(uids, b)
                if lo < hi:
                    spans.append((lo, hi))
        if len(spans) == 1:
            return list(range(*spans[0]))
        spans.sort()
        out: list[int] = []
        end = 0
        for lo, hi in spans:
            lo = max(lo, end)
            if lo < hi:
                out.extend(range(lo, hi))
                end = hi
        return out

    def _flags_text(self, view: MailboxView, uid: int, flags: frozenset[str]) -> str:
        key = (flags, uid in view.recent)
        text = _FLAGS_TEXT.get(key)
        if text is None:
            text = " ".join(sorted(flags | {"\\Recent"} if key[1] else flags))
            if len(_FLAGS_TEXT) < 10_000:  # a mailbox has few distinct flag sets
                _FLAGS_TEXT[key] = text
        return text

    def do_store(self, cmd: Command) -> Iterator[Output]:
        seqs, mode, silent, raw_flags = cmd.args
        view = self._view()
        if view.readonly:
            raise _No("[READ-ONLY] the mailbox is read-only (EXAMINE)")
        flags = self._check_flags(raw_flags)
        mb = view.mailbox
        missing = False
        indexes = self._resolve(seqs, cmd.uid)
        with mb.lock:
            wanted: dict[int, frozenset[str]] = {}
            for idx in indexes:
                uid = view.uids[idx]
                info = mb.get(uid)
                if info is None:
                    continue
                new = (info.flags | flags if mode == "+" else info.flags - flags if mode == "-"
                       else flags)
                if new != info.flags:
                    wanted[uid] = new
            changed = mb.set_flags_many(wanted) if wanted else {}
        for idx in indexes:
            uid = view.uids[idx]
            info = changed.get(uid) or mb.get(uid)
            if info is None:
                missing = True
                continue
            view.flags[uid] = info.flags
            if not silent:
                uid_part = f"UID {uid} " if cmd.uid else ""
                yield line(f"* {idx + 1} FETCH ({uid_part}FLAGS ({self._flags_text(view, uid, info.flags)}))")
        if changed:
            self.on_change(self.user or "", view.name)
        if missing:
            raise _No("[EXPUNGEISSUED] some of the messages were expunged by another session")
        return None

    def _target(self, raw: bytes) -> Mailbox:
        name = self._name(raw)
        if not self.store.exists(self.user or "", name):
            raise _No(f"[TRYCREATE] no mailbox {name}")
        return self._mailbox(name)

    def _copy(self, cmd: Command) -> Iterator[Output]:
        """COPY, and the first half of MOVE. Returns the COPYUID data."""
        seqs, raw_name = cmd.args
        view = self._view()
        target = self._target(raw_name)
        src_uids: list[int] = []
        dst_uids: list[int] = []
        for idx in self._resolve(seqs, cmd.uid):
            uid = view.uids[idx]
            info = view.mailbox.get(uid)
            if info is None:
                continue
            try:
                data = view.mailbox.read(uid)
            except FileNotFoundError:
                continue
            new = target.add(data, info.flags, info.internaldate)
            src_uids.append(uid)
            dst_uids.append(new.uid)
            self.store.notify(self.user or "", target.name, new)
            yield Notice("stored", (target.name, new.uid, new.size))
        if not src_uids:
            return ""
        return f"COPYUID {target.uidvalidity} {_uid_set(src_uids)} {_uid_set(dst_uids)}"

    def do_copy(self, cmd: Command) -> Iterator[Output]:
        copyuid = yield from self._copy(cmd)
        return f"[{copyuid}] COPY completed" if copyuid else None

    def do_move(self, cmd: Command) -> Iterator[Output]:
        view = self._view()
        if view.readonly:
            raise _No("[READ-ONLY] the mailbox is read-only (EXAMINE)")
        indexes = self._resolve(cmd.args[0], cmd.uid)
        copyuid = yield from self._copy(cmd)
        if copyuid:
            yield line(f"* OK [{copyuid}] moved")  # RFC 6851 4.3: COPYUID untagged, first
        moved = [view.uids[i] for i in indexes]
        if view.mailbox.remove(moved):
            self.on_change(self.user or "", view.name)
        return None  # the EXPUNGE responses follow from _updates (MOVE allows them)

    def do_search(self, cmd: Command) -> Iterator[Output]:
        charset, key = cmd.args
        view = self._view()
        mb = view.mailbox
        try:
            test = searching.compile_key(key, charset=charset, max_seq=len(view.uids),
                                         max_uid=view.uids[-1] if view.uids else 0)
        except searching.BadCharset:
            raise _No(f"[BADCHARSET ({' '.join(searching.CHARSETS)})] unsupported charset"
                      " or text not in it") from None
        source = _SearchSource(self, mb)
        recent = view.recent
        hits: list[str] = []
        for seq, uid in enumerate(view.uids, 1):
            info = mb.get(uid)
            if info is None:
                continue  # expunged elsewhere: no longer matches anything
            flags = info.flags | {"\\Recent"} if uid in recent else info.flags
            cand = searching.Candidate(seq, uid, flags, info.crlf_size, info.internaldate,
                                       info, source)
            try:
                if test(cand):
                    hits.append(str(uid if cmd.uid else seq))
            except FileNotFoundError:
                continue
        yield line("* SEARCH" + "".join(" " + h for h in hits))
        return None

    # -- FETCH (RFC 3501 6.4.5, 7.4.2) -----------------------------------------------------
    def summary(self, mb: Mailbox, uid: int, data: bytes | None = None) -> dict[str, Any]:
        """ENVELOPE, BODY, BODYSTRUCTURE and the Date of a message: parsed once, then
        kept in the mailbox index (never re-parsed while the index is warm)."""
        cache = mb.get_cache(uid)
        if cache is None or "bodystructure" not in cache:
            from . import message

            if data is None:
                info = mb.get(uid)
                data = _read_wire(mb, info) if info is not None else mb.read_crlf(uid)
            cache = dict(message.summarize(data))
            mb.set_cache(uid, cache)
        return cache

    def _sent_date(self, mb: Mailbox, uid: int) -> datetime.date | None:
        summary = self.summary(mb, uid)
        if summary.get("date") is None:
            return None
        # the sender's calendar day: the Date header's own zone (RFC 3501 6.4.4)
        local = summary["date"] + 60 * (summary.get("date_tz") or 0)
        return datetime.datetime.fromtimestamp(local, datetime.timezone.utc).date()

    def do_fetch(self, cmd: Command) -> Iterator[Output]:
        seqs, items = cmd.args
        view = self._view()
        mb = view.mailbox
        if cmd.uid and not any(i.name == "UID" for i in items):
            items = (FetchItem("UID"), *items)  # RFC 3501 6.4.8: UID FETCH always reports UIDs
        needs_data = any(i.name in ("RFC822", "RFC822.HEADER", "RFC822.TEXT", "BODY[]") for i in items)
        sets_seen = not view.readonly and any(
            i.name in ("RFC822", "RFC822.TEXT") or (i.name == "BODY[]" and not i.peek) for i in items)
        wants_flags = any(i.name == "FLAGS" for i in items)
        missing = False
        seen_changed = False
        wire_items = _WIRE_ITEMS.setdefault(mb, {})
        labelled = [(item, item.label.encode()) for item in items]  # BODY[...] names, once
        if any(i.name in ("ENVELOPE", "BODY", "BODYSTRUCTURE") for i in items) or needs_data:
            from . import message
        else:
            message = None  # type: ignore[assignment]
        indexes = self._resolve(seqs, cmd.uid)
        seen_set: dict[int, MessageInfo] = {}
        for pos, idx in enumerate(indexes):
            if sets_seen and pos % SEEN_BATCH == 0:
                # \Seen for the next messages in one index transaction, just before
                # they are sent (a client gone mid-FETCH leaves the rest unseen)
                seen_set = self._set_seen(view, indexes[pos:pos + SEEN_BATCH])
                seen_changed = seen_changed or bool(seen_set)
            uid = view.uids[idx]
            info = mb.get(uid)
            if info is None:
                missing = True
                continue
            data: bytes | None = None
            if needs_data:
                try:
                    data = _read_wire(mb, info)
                except FileNotFoundError:
                    missing = True
                    continue
            flags_now = info.flags
            extra_flags = uid in seen_set and not wants_flags  # RFC 3501 6.4.5: report the \Seen we set
            buf = bytearray(b"* %d FETCH (" % (idx + 1))
            parts: list[bytes] = []
            literals: list[int] = []
            first = True
            for item, item_label in labelled:
                if not first:
                    buf += b" "
                first = False
                name = item.name
                if name == "UID":
                    buf += b"UID %d" % uid
                elif name == "FLAGS":
                    buf += ("FLAGS (" + self._flags_text(view, uid, flags_now) + ")").encode()
                    view.flags[uid] = flags_now
                elif name == "RFC822.SIZE":
                    buf += b"RFC822.SIZE %d" % info.crlf_size
                elif name == "INTERNALDATE":
                    buf += ("INTERNALDATE " + internaldate_text(info.internaldate)).encode()
                elif name in ("ENVELOPE", "BODY", "BODYSTRUCTURE"):
                    item_bytes = wire_items.get((uid, name))
                    if item_bytes is None:
                        try:
                            summary = self.summary(mb, uid, data)
                        except FileNotFoundError:
                            missing = True
                            break
                        item_bytes = name.encode() + b" " + summary[name.lower()].encode("utf-8")
                        if len(wire_items) < 200_000:
                            wire_items[(uid, name)] = item_bytes
                    buf += item_bytes
                else:
                    assert data is not None and message is not None
                    if name == "RFC822":
                        body = _no_nul(data)
                    elif name == "RFC822.HEADER":
                        body = message.section(data, (), "HEADER")
                    elif name == "RFC822.TEXT":
                        body = message.section(data, (), "TEXT")
                    else:
                        sec = item.section
                        assert sec is not None
                        if not sec.part and sec.kind is None:
                            body = _no_nul(data)
                        else:
                            body = message.section(data, sec.part, sec.kind, sec.fields)
                        if item.partial is not None:
                            origin, count = item.partial
                            body = body[origin:origin + count]
                    buf += b"%s {%d}\r\n" % (item_label, len(body))
                    parts.append(bytes(buf))
                    literals.append(len(parts))
                    parts.append(body)
                    buf = bytearray()
            else:
                if extra_flags:
                    buf += (" FLAGS (" + self._flags_text(view, uid, flags_now) + ")").encode()
                    view.flags[uid] = flags_now
                buf += b")\r\n"
                parts.append(bytes(buf))
                yield Response(tuple(parts), tuple(literals))
        if seen_changed:
            self.on_change(self.user or "", view.name)
        if missing:
            raise _No("[EXPUNGEISSUED] some of the requested messages no longer exist")
        return None

    def _set_seen(self, view: MailboxView, indexes: list[int]) -> dict[int, MessageInfo]:
        """Add \\Seen to those of these messages that lack it; returns the ones changed."""
        mb = view.mailbox
        with mb.lock:
            wanted: dict[int, frozenset[str]] = {}
            for idx in indexes:
                info = mb.get(view.uids[idx])
                if info is not None and "\\Seen" not in info.flags:
                    wanted[info.uid] = info.flags | {"\\Seen"}
            return mb.set_flags_many(wanted) if wanted else {}

    # -- keeping the view current (RFC 3501 5.2, 7.4.1) ----------------------------------
    def _updates(self, allow_expunge: bool) -> Iterator[Output]:
        view = self.selected
        if view is None:
            return
        mb = view.mailbox
        if not (mb.path / "cur").is_dir():
            # deleted or renamed by another session: nothing sensible can follow
            yield line(f"* BYE mailbox {view.name} was deleted or renamed by another session")
            self.selected = None
            self.action = "close"
            return
        with mb.lock:
            current = mb.messages()
        present = {i.uid: i for i in current}
        if allow_expunge and (len(present) != len(view.uids)
                              or view.uids[-1:] != [i.uid for i in current[-1:]]):
            gone = [i for i, u in enumerate(view.uids) if u not in present]
            # Descending, so each number is still right when the client applies it.
            for i in reversed(gone):
                yield line(f"* {i + 1} EXPUNGE")
            if gone:
                for i in gone:
                    view.flags.pop(view.uids[i], None)
                    view.recent.discard(view.uids[i])
                view.uids = [u for u in view.uids if u in present]
        for idx, u in enumerate(view.uids):
            info = present.get(u)
            if info is not None and info.flags != view.flags.get(u):
                view.flags[u] = info.flags
                yield line(f"* {idx + 1} FETCH (UID {u} FLAGS ({self._flags_text(view, u, info.flags)}))")
        arrived = [i for i in current if i.uid > view.max_uid]
        if arrived:
            new = [i.uid for i in arrived]
            view.max_uid = new[-1]
            for i in arrived:
                view.flags[i.uid] = i.flags
            view.uids.extend(new)
            view.recent |= self._claim_recent(view, new)
            yield line(f"* {len(view.uids)} EXISTS")
            yield line(f"* {len(view.recent)} RECENT")



def _uid_set(uids: list[int]) -> str:
    """Compact a UID list for COPYUID: 4,5,6,9 -> 4:6,9 (order kept, as RFC 4315 requires)."""
    out: list[str] = []
    start = prev = uids[0]
    for u in uids[1:]:
        if u == prev + 1:
            prev = u
            continue
        out.append(f"{start}:{prev}" if start != prev else str(start))
        start = prev = u
    out.append(f"{start}:{prev}" if start != prev else str(start))
    return ",".join(out)


def _read_wire(mb: Mailbox, info: MessageInfo) -> bytes:
    """A message as IMAP sends it (CRLF line ends). Files that already are CRLF
    (everything SMTP and APPEND stored) are sent as read, without a scan."""
    try:
        fd = os.open(f"{os.fspath(mb.path)}/{info.subdir}/{info.filename}", os.O_RDONLY)
    except FileNotFoundError:
        return mb.read_crlf(info.uid)  # renamed meanwhile (a flag change): ask the index
    try:
        # One read of the size the index knows (no buffered file object: this runs
        # 2,000 times for FETCH 1:* BODY[]); a file of another size is read to its end.
        data = os.read(fd, info.size + 1)
        if len(data) != info.size:
            parts = [data]
            while more := os.read(fd, 1 << 20):
                parts.append(more)
            data = b"".join(parts)
    finally:
        os.close(fd)
    if info.crlf_size == info.size:
        return data
    if b"\r" not in data:  # a file with bare LF only (Dovecot, mutt): one pass
        return data.replace(b"\n", b"\r\n")
    return to_crlf(data)


#: A flag set (and whether \Recent is added) as FETCH FLAGS writes it.
_FLAGS_TEXT: dict[tuple[frozenset[str], bool], str] = {}

#: ENVELOPE, BODY and BODYSTRUCTURE as they go on the wire (``b"ENVELOPE (...)"``), per
#: mailbox and (UID, item): the summaries cached in the index, already encoded.
_WIRE_ITEMS: weakref.WeakKeyDictionary[Mailbox, dict[tuple[int, str], bytes]] = \
    weakref.WeakKeyDictionary()

#: Header blocks for SEARCH HEADER/FROM/SUBJECT..., per mailbox and UID: a warm
#: mailbox answers a header search without opening a file.
_HEADERS: weakref.WeakKeyDictionary[Mailbox, dict[int, bytes]] = weakref.WeakKeyDictionary()


def _read_header(mb: Mailbox, info: MessageInfo) -> bytes:
    cache = _HEADERS.setdefault(mb, {})
    header = cache.get(info.uid)
    if header is None:
        path = os.path.join(mb.path, info.subdir, info.filename)
        try:
            with open(path, "rb") as fh:
                data = fh.read(16384)
                while b"\n\r\n" not in data and b"\n\n" not in data:
                    more = fh.read(65536)
                    if not more:
                        break
                    data += more
        except FileNotFoundError:
            data = mb.read(info.uid)
        data = to_crlf(data)
        end = data.find(b"\r\n\r\n")
        header = data[:end + 4] if end >= 0 else data
        if len(cache) < 100_000:
            cache[info.uid] = header
    return header


#: What SEARCH compares for one header field (search.header_texts), per mailbox and
#: (UID, field, exact): a warm header search is a substring test per message.
_TEXTS: weakref.WeakKeyDictionary[Mailbox, dict[tuple[int, str, bool], tuple[str, ...]]] = \
    weakref.WeakKeyDictionary()


def _header_field(header: bytes, name: str) -> bytes:
    """The lines of one header field (with their continuation lines) out of a header block."""
    lname = name.lower().encode("ascii", "replace")
    out: list[bytes] = []
    taking = False
    for ln in header.split(b"\r\n"):
        if ln[:1] in (b" ", b"\t"):
            if taking:
                out.append(ln)
            continue
        taking = ln.split(b":", 1)[0].rstrip().lower() == lname
        if taking:
            out.append(ln)
    return b"".join(x + b"\r\n" for x in out) + b"\r\n"


class _SearchSource:
    """What a SEARCH reads beyond the index, through the session's caches."""

    def __init__(self, session: IMAPSession, mb: Mailbox) -> None:
        self.session = session
        self.mb = mb
        self.texts = _TEXTS.setdefault(mb, {})

    def data(self, m: searching.Candidate) -> bytes:
        return _read_wire(self.mb, m.info)

    def header_texts(self, m: searching.Candidate, field: str, exact: bool) -> tuple[str, ...]:
        key = (m.uid, field, exact)
        texts = self.texts.get(key)
        if texts is None:
            block = _header_field(_read_header(self.mb, m.info), field)
            texts = searching.header_texts(block, field, exact)
            if len(self.texts) < 200_000:
                self.texts[key] = texts
        return texts

    def sent(self, m: searching.Candidate) -> datetime.date | None:
        return self.session._sent_date(self.mb, m.uid)  # noqa: SLF001 - the session's summary cache


def _no_nul(data: bytes) -> bytes:
    """NUL is not a CHAR8 (RFC 3501 9): sent as 0x80, as Dovecot and message.section() do."""
    return data.replace(b"\0", b"\x80") if b"\0" in data else data
