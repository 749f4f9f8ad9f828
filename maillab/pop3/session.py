"""The POP3 protocol core (RFC 1939), sans-IO: feed it a line, get the reply.

A POP3 session moves through three states, named exactly as in RFC 1939
section 3::

    AUTHORIZATION --(USER/PASS, APOP, AUTH ok)--> TRANSACTION --(QUIT)--> UPDATE
          |                                            |
          +--(QUIT: nothing changes)                   +--(connection lost: nothing changes)

Only the UPDATE state removes messages, and only after QUIT. DELE merely marks
(RSET unmarks); a client that drops the connection deletes nothing. That is the
whole lesson of POP3: download, then (maybe) remove.

Extensions: RFC 2449 (CAPA, response codes [IN-USE] [AUTH] [SYS/TEMP]),
RFC 2595 (STLS), RFC 5034 (AUTH PLAIN with initial response), RFC 1939 APOP.

Nothing here touches a socket: the driver (``server.py``) reads lines, calls
:meth:`POP3Session.receive` (on a worker thread when :meth:`~POP3Session.slow`
says the command may take long), writes ``reply.parts()`` and acts on the flags
(``starttls``, ``close``, ``delay``); :meth:`~POP3Session.settle` writes RETR's
``\\Seen`` marks. Tests can drive the state machine directly.
"""

from __future__ import annotations

import hashlib
import hmac
import itertools
import os
import re
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from enum import Enum
from typing import Any, Protocol

from .. import sasl
from ..masking import mask_line
from .maildrop import Entry, InUse, Maildrop, StoreFailure
from .wire import dot_lines, stuffed_parts


class State(str, Enum):
    """The three states of RFC 1939 section 3."""

    AUTHORIZATION = "AUTHORIZATION"
    TRANSACTION = "TRANSACTION"
    UPDATE = "UPDATE"


#: Which commands each state accepts (RFC 1939 sections 4-6, RFC 2449, 2595, 5034).
COMMANDS: dict[State, frozenset[str]] = {
    State.AUTHORIZATION: frozenset({"USER", "PASS", "APOP", "AUTH", "STLS", "CAPA", "QUIT"}),
    State.TRANSACTION: frozenset({"STAT", "LIST", "RETR", "DELE", "NOOP", "RSET", "TOP", "UIDL",
                                  "CAPA", "QUIT"}),
    State.UPDATE: frozenset(),
}
ALL_COMMANDS = frozenset().union(*COMMANDS.values())

#: SASL continuation lines may be longer than a command (RFC 5034 section 4).
SASL_LINE_LIMIT = 8192
#: Messages the maildrop note lists (the state view's table): a 100,000-message
#: maildrop is told as its count and its first messages, not 100,000 rows.
NOTE_MESSAGES = 500
#: Work a command may do on the lab loop: above these, :meth:`POP3Session.slow` says
#: so and the driver runs it on a worker thread (other sessions are answered meanwhile).
INLINE_OCTETS = 1 << 20  # RETR / TOP of a larger message
INLINE_LISTING = 5_000  # LIST / UIDL of a larger maildrop
#: Messages RETR may have sent before they are marked \Seen in the store (one index
#: transaction for them all; :meth:`POP3Session.settle`).
SEEN_BATCH = 64

_NUMBER = re.compile(r"[0-9]{1,10}")
_timestamps = itertools.count(1)


class Backend(Protocol):
    """What the session needs from the lab: users and maildrops."""

    def authenticate(self, login: str, password: str) -> str | None: ...

    def password(self, login: str) -> str | None: ...

    def open_maildrop(self, address: str) -> Maildrop: ...


@dataclass
class Reply:
    """One server response, plus what the driver must do after sending it."""

    status: str  # "+OK ...", "-ERR ..." or "+ " (a SASL continuation)
    lines: list[str] | None = None  # a multi-line text body (CAPA, LIST, UIDL)
    message: bytes | None = None  # a multi-line message body (RETR, TOP), CRLF, not yet dot-stuffed
    dots: tuple[int, ...] | None = None  # where the message's lines starting with "." start, if known
    starttls: bool = False  # begin the TLS handshake after sending
    close: bool = False  # close the connection after sending
    delay: float = 0.0  # wait this long before sending (after a failed login)
    state: State | None = None  # the state the session moved to, if it changed
    notes: list[tuple[str, dict[str, Any]]] = field(default_factory=list)
    auth: tuple[str, bool, str] | None = None  # (login, ok, mechanism) for the event stream

    @property
    def ok(self) -> bool:
        return self.status.startswith("+")

    @property
    def multiline(self) -> bool:
        return self.lines is not None or self.message is not None

    def body(self) -> bytes:
        """The multi-line part as sent: dot-stuffed, ending in CRLF "." CRLF."""
        if self.lines is not None:
            text = "".join(("." + ln if ln.startswith(".") else ln) + "\r\n" for ln in self.lines)
            return text.encode("utf-8") + b".\r\n"
        if self.message is not None:
            return b"".join(self.parts()[1:])
        return b""

    def parts(self) -> list[bytes | memoryview]:
        """The reply as written, in pieces: the status line, then the multi-line part.
        A message goes as slices of the bytes read with the stuffed "." between them
        (the same octets as :func:`.wire.dot_stuff`, without copying the message)."""
        status = self.status.encode("utf-8") + b"\r\n"
        if self.message is not None:
            # None: not known, or too many to list (then dot_lines stops early and says so)
            dots = self.dots if self.dots is not None else dot_lines(self.message)
            return [status, *stuffed_parts(self.message, dots), b".\r\n"]
        if self.lines is not None:
            return [status, self.body()]
        return [status]

    def wire(self) -> bytes:
        return b"".join(self.parts())


def top_of(message: bytes, lines: int) -> bytes:
    """The header, the blank line and the first ``lines`` body lines (RFC 1939 TOP)."""
    if message.startswith(b"\r\n"):
        end = 0  # no header at all
    else:
        sep = message.find(b"\r\n\r\n")
        if sep < 0:
            return message  # only a header: all of it
        end = sep + 2
    pos = end + 2  # after the blank line
    for _ in range(lines):
        nl = message.find(b"\r\n", pos)
        if nl < 0:
            return message
        pos = nl + 2
    return message[:pos]


def apop_timestamp(hostname: str) -> str:
    """A unique msg-id for the greeting, the APOP challenge (RFC 1939 section 7)."""
    return f"<{os.getpid()}.{next(_timestamps)}.{int(time.time())}@{hostname}>"


class POP3Session:
    """One POP3 session's state machine."""

    def __init__(
        self,
        backend: Backend,
        *,
        hostname: str = "localhost",
        tls_active: bool = False,
        stls_available: bool = True,
        plaintext_auth: bool = True,
        auth_failure_delay: float = 1.0,
        auth_failures: int = 5,
        line_limit: int = 255,
        timestamp: str | None = None,
        implementation: str = "maillab",
    ) -> None:
        self.backend = backend
        self.hostname = hostname
        self.tls_active = tls_active
        self.stls_available = stls_available
        self.plaintext_auth = plaintext_auth
        self.auth_failure_delay = auth_failure_delay
        self.max_auth_failures = auth_failures
        self.auth_failures = 0  # failed logins so far; at max_auth_failures the session ends
        self.command_line_limit = line_limit
        self.timestamp = timestamp or apop_timestamp(hostname)
        self.implementation = implementation
        self.state = State.AUTHORIZATION
        self.maildrop: Maildrop | None = None
        self.address: str | None = None
        self.deleted: set[int] = set()  # message numbers marked by DELE
        self._deleted_octets = 0  # their sizes, so STAT does not add up the whole maildrop
        self._retrieved: list[Entry] = []  # sent by RETR, not yet marked \Seen
        self._user: str | None = None  # the name given with USER, waiting for PASS
        self._sasl: str | None = None  # the mechanism whose response we are waiting for
        self.on_state: Callable[[State], None] | None = None

    # -- what the driver asks ----------------------------------------------------
    @property
    def line_limit(self) -> int:
        """The longest line (CRLF included, RFC 2449 section 4) the next read may return."""
        return SASL_LINE_LIMIT if self._sasl else self.command_line_limit

    def greeting(self) -> Reply:
        # The timestamp in the greeting is what announces APOP (RFC 1939 section 7).
        return Reply(f"+OK maillab POP3 server ready {self.timestamp}")

    def masked(self, line: bytes | str) -> str:
        """The client line as it may be recorded: credentials replaced by ****."""
        return mask_line("pop3", _text(line), sasl=bool(self._sasl))

    def command(self, line: bytes | str) -> str | None:
        """The command keyword ``line`` carries (upper case), or None for a SASL
        response, which is no command (what failure injection matches on)."""
        if self._sasl:
            return None
        return _text(line).split(" ", 1)[0].upper() or None

    def line_too_long(self) -> Reply:
        if self._sasl:
            self._sasl = None
            return Reply("-ERR authentication response too long; authentication cancelled")
        return Reply(f"-ERR command line too long (limit {self.command_line_limit} octets,"
                     " RFC 2449 section 4)")

    def timed_out(self) -> Reply:
        """The autologout timer fired (RFC 1939 section 3): no UPDATE, nothing removed."""
        self.end()
        return Reply("-ERR autologout: idle for too long; no messages were deleted", close=True)

    def tls_started(self) -> None:
        """After STLS: forget everything said in plaintext (RFC 2595 section 4)."""
        self.tls_active = True
        self._user = None
        self._sasl = None

    def end(self) -> None:
        """The connection is going away without QUIT: release the lock, remove nothing."""
        if self.maildrop is not None:
            self.settle()
            self.maildrop.release()
            self.maildrop = None

    def settle(self, follow_moves: bool = True) -> None:
        """Mark what RETR sent \\Seen in the store, all in one go. The driver calls
        this before it sends a reply with no more commands waiting (so a client that
        waited for its RETR finds the message \\Seen over IMAP) and before it lets
        other sessions run; a pipelined download marks a batch at a time."""
        if self._retrieved and self.maildrop is not None:
            retrieved, self._retrieved = self._retrieved, []
            self._retrieved = self.maildrop.mark_seen(retrieved, follow_moves)

    @property
    def unsettled(self) -> bool:
        """Whether RETR sent messages that :meth:`settle` has yet to mark \\Seen."""
        return bool(self._retrieved)

    def slow(self, line: bytes | str) -> bool:
        """Whether handling ``line`` may hold the lab loop up: a login opens the
        maildrop (a 100,000-message mailbox's index), QUIT's UPDATE state removes
        files, LIST/UIDL of a large maildrop and RETR/TOP of a large message read a
        lot. The driver hands those to a worker thread; the session still handles one
        line at a time, and answers exactly as it would inline."""
        if self._sasl:
            return True  # the AUTH PLAIN response: a login
        words = _text(line).split(" ")
        keyword = words[0].upper()
        if keyword in ("PASS", "APOP", "AUTH"):
            return self.state is State.AUTHORIZATION
        if self.state is not State.TRANSACTION or self.maildrop is None:
            return False
        if keyword == "QUIT":
            return True
        if keyword in ("LIST", "UIDL"):
            return len(words) == 1 and len(self.maildrop) > INLINE_LISTING
        if keyword in ("RETR", "TOP") and len(words) > 1 and _NUMBER.fullmatch(words[1]):
            size = self.maildrop.size_of(int(words[1]))  # asked for every RETR: no Entry
            return size is not None and size > INLINE_OCTETS
        return False

    # -- the commands ------------------------------------------------------------
    def receive(self, line: bytes | str) -> Reply:
        """Handle one line from the client (CRLF or LF already allowed at the end)."""
        text = _text(line)
        if self._sasl:
            return self._sasl_response(text)
        if "\0" in text or not text.isprintable():
            return Reply("-ERR command contains control characters or binary data")
        words = text.split(" ")
        keyword = words[0].upper()
        args = words[1:]
        if keyword not in ALL_COMMANDS:
            return Reply(f"-ERR unknown command {_short(words[0])!r}")
        if keyword not in COMMANDS[self.state]:
            hint = "log in first" if self.state is State.AUTHORIZATION else "already logged in"
            return Reply(f"-ERR {keyword} is not valid in the {self.state.value} state ({hint})")
        if keyword == "PASS" and args:
            # RFC 1939 section 7: the password is the rest of the line, spaces included
            args = [text.split(" ", 1)[1]]
        elif any(a == "" for a in args):
            return Reply("-ERR arguments are separated by a single space (RFC 1939 section 3)")
        return getattr(self, f"cmd_{keyword.lower()}")(args)

    # AUTHORIZATION state ---------------------------------------------------------
    def _plaintext_refused(self) -> Reply | None:
        if self.tls_active or self.plaintext_auth:
            return None
        return Reply("-ERR [AUTH] plaintext authentication disallowed on a connection without"
                     " TLS; send STLS first (RFC 2595 section 2.3)")

    def _plaintext_note(self) -> list[tuple[str, dict[str, Any]]]:
        if self.tls_active:
            return []
        return [("password sent without TLS: allowed in the lab because it only listens on"
                 " loopback; real servers refuse this before STLS (RFC 2595 section 2.3)",
                 {"plaintext_auth": True})]

    def cmd_user(self, args: list[str]) -> Reply:
        refused = self._plaintext_refused()
        if refused:
            return refused
        if len(args) != 1:
            return Reply("-ERR usage: USER name")
        self._user = args[0]
        # Same answer for every name, so USER cannot be used to probe who exists.
        return Reply(f"+OK send PASS for {args[0]}")

    def cmd_pass(self, args: list[str]) -> Reply:
        refused = self._plaintext_refused()
        if refused:
            return refused
        if self._user is None:
            return Reply("-ERR give USER first")
        login, self._user = self._user, None
        password = args[0] if args else ""
        reply = self._login(login, self.backend.authenticate(login, password), "USER")
        reply.notes[:0] = self._plaintext_note()
        return reply

    def cmd_apop(self, args: list[str]) -> Reply:
        if len(args) != 2:
            return Reply("-ERR usage: APOP name digest")
        login, digest = args
        password = self.backend.password(login)
        address = None
        if password is not None:
            expected = hashlib.md5((self.timestamp + password).encode("utf-8")).hexdigest()
            # as bytes: compare_digest refuses a str that is not ASCII (a hostile digest)
            if hmac.compare_digest(expected.encode(), digest.lower().encode("utf-8", "replace")):
                address = self.backend.authenticate(login, password)
        return self._login(login, address, "APOP")

    def cmd_auth(self, args: list[str]) -> Reply:
        if not args:
            # Not in RFC 5034, but older clients (and Dovecot) list mechanisms this way.
            return Reply("+OK SASL mechanisms follow", lines=self._sasl_mechanisms())
        mechanism = args[0].upper()
        if mechanism != "PLAIN":
            return Reply(f"-ERR unsupported authentication mechanism {_short(args[0])}")
        refused = self._plaintext_refused()
        if refused:
            return refused
        if len(args) > 2:
            return Reply("-ERR usage: AUTH PLAIN [initial-response]")
        if len(args) == 2:
            return self._sasl_plain(args[1])
        self._sasl = mechanism
        return Reply("+ ")  # RFC 5034 section 4: an empty challenge

    def _sasl_response(self, text: str) -> Reply:
        self._sasl = None
        return self._sasl_plain(text)

    def _sasl_plain(self, response: str) -> Reply:
        """RFC 4616: base64 of ``authzid NUL authcid NUL password`` (see :mod:`maillab.sasl`)."""
        try:
            credentials = sasl.parse_plain(sasl.decode_response(response))
        except sasl.Cancelled:
            return Reply("-ERR authentication cancelled by the client")
        except sasl.SASLError as exc:
            return Reply(f"-ERR malformed AUTH PLAIN response: {exc}")
        address = self.backend.authenticate(credentials.authcid, credentials.password)
        if not sasl.may_act_as(credentials, address):
            address = None  # acting as someone else is not allowed in the lab
        reply = self._login(credentials.authcid, address, "PLAIN")
        reply.notes[:0] = self._plaintext_note()
        return reply

    def _login(self, login: str, address: str | None, mechanism: str) -> Reply:
        if address is None:
            self.auth_failures += 1
            if self.auth_failures >= self.max_auth_failures:  # RFC 1939 4: the server may close
                return Reply("-ERR [AUTH] invalid user name or password; too many failed logins, closing",
                             delay=self.auth_failure_delay, auth=(login, False, mechanism), close=True)
            return Reply("-ERR [AUTH] invalid user name or password", delay=self.auth_failure_delay,
                         auth=(login, False, mechanism))
        try:
            maildrop = self.backend.open_maildrop(address)
        except InUse:
            return Reply("-ERR [IN-USE] maildrop already locked: another POP3 session is using it",
                         auth=(address, True, mechanism),
                         notes=[("maildrop locked by another session (RFC 1939 section 4)",
                                 {"in_use": True})])
        except StoreFailure as exc:
            return Reply(f"-ERR [SYS/TEMP] cannot open the maildrop: {exc}",
                         auth=(address, True, mechanism))
        self.maildrop = maildrop
        self.address = address
        self.deleted.clear()
        self._deleted_octets = 0
        count, octets = self._totals()
        return Reply(f"+OK {address}'s maildrop has {count} messages ({octets} octets)",
                     state=self._enter(State.TRANSACTION), auth=(address, True, mechanism),
                     notes=[self._drop_note("maildrop opened")])

    def cmd_stls(self, args: list[str]) -> Reply:
        if self.tls_active:
            return Reply("-ERR TLS is already active")
        if not self.stls_available:
            return Reply("-ERR STLS is not offered here")
        if args:
            return Reply("-ERR usage: STLS")
        return Reply("+OK begin TLS negotiation", starttls=True)

    def cmd_capa(self, args: list[str]) -> Reply:
        return Reply("+OK capability list follows", lines=self.capabilities())

    def capabilities(self) -> list[str]:
        """RFC 2449 section 6; what is offered depends on the state and on TLS."""
        caps = ["TOP", "UIDL", "RESP-CODES", "AUTH-RESP-CODE", "PIPELINING"]
        if self.state is State.AUTHORIZATION:
            if self.tls_active or self.plaintext_auth:
                caps.append("USER")
                caps.append("SASL " + " ".join(self._sasl_mechanisms()))
            # RFC 2595 section 4: no STLS once TLS is active (nor after login).
            if self.stls_available and not self.tls_active:
                caps.append("STLS")
        caps.append(f"IMPLEMENTATION {self.implementation}")
        return caps

    def _sasl_mechanisms(self) -> list[str]:
        return ["PLAIN"] if self.tls_active or self.plaintext_auth else []

    def cmd_quit(self, args: list[str]) -> Reply:
        if self.state is State.AUTHORIZATION:
            # RFC 1939 section 4: QUIT here closes without entering UPDATE.
            return Reply("+OK maillab POP3 server signing off", close=True)
        # RFC 1939 section 6: the UPDATE state removes what DELE marked.
        state = self._enter(State.UPDATE)
        assert self.maildrop is not None
        self.settle()
        marked = [self.maildrop.entry(n) for n in sorted(self.deleted)]
        try:
            self.maildrop.remove([e for e in marked if e is not None])
        except StoreFailure as exc:
            self.end()
            return Reply(f"-ERR [SYS/TEMP] some deleted messages were not removed: {exc}",
                         close=True, state=state)
        left = len(self.maildrop.mailbox)
        removed = sorted(self.deleted)
        shown = ", ".join(map(str, removed[:NOTE_MESSAGES]))
        if len(removed) > NOTE_MESSAGES:
            shown += f" … ({len(removed)} messages)"
        note = ("UPDATE: removed " + (shown or "nothing"),
                {"pop3": "update", "removed": removed[:NOTE_MESSAGES], "count": len(removed),
                 "left": left})
        self.end()
        return Reply(f"+OK maillab POP3 server signing off ({len(removed)} messages deleted,"
                     f" {left} left)", close=True, state=state, notes=[note])

    # TRANSACTION state -----------------------------------------------------------
    def _totals(self) -> tuple[int, int]:
        assert self.maildrop is not None
        return len(self.maildrop) - len(self.deleted), self.maildrop.octets - self._deleted_octets

    def _live(self) -> Iterator[tuple[int, int, int]]:
        """(number, UID, size) of every message not marked by DELE."""
        assert self.maildrop is not None
        return ((n, uid, size) for n, uid, size in self.maildrop.numbered() if n not in self.deleted)

    def _message(self, arg: str) -> Entry | Reply:
        """The entry an argument names, or the -ERR to send instead."""
        assert self.maildrop is not None
        if not _NUMBER.fullmatch(arg):
            return Reply(f"-ERR {_short(arg)!r} is not a message number")
        entry = self.maildrop.entry(int(arg))
        if entry is None:
            return Reply(f"-ERR no such message, only {len(self.maildrop)} messages in maildrop")
        if entry.number in self.deleted:
            return Reply(f"-ERR message {entry.number} already deleted")
        return entry

    def cmd_stat(self, args: list[str]) -> Reply:
        if args:
            return Reply("-ERR usage: STAT")
        count, octets = self._totals()
        return Reply(f"+OK {count} {octets}")

    def cmd_list(self, args: list[str]) -> Reply:
        if len(args) > 1:
            return Reply("-ERR usage: LIST [msg]")
        if args:
            entry = self._message(args[0])
            if isinstance(entry, Reply):
                return entry
            return Reply(f"+OK {entry.number} {entry.size}")
        count, octets = self._totals()
        return Reply(f"+OK {count} messages ({octets} octets)",
                     lines=[f"{n} {size}" for n, _uid, size in self._live()])

    def cmd_uidl(self, args: list[str]) -> Reply:
        if len(args) > 1:
            return Reply("-ERR usage: UIDL [msg]")
        if args:
            entry = self._message(args[0])
            if isinstance(entry, Reply):
                return entry
            return Reply(f"+OK {entry.number} {entry.unique_id}")
        assert self.maildrop is not None
        unique_id = self.maildrop.unique_id
        return Reply("+OK unique-id listing follows",
                     lines=[f"{n} {unique_id(uid)}" for n, uid, _size in self._live()])

    def _read(self, entry: Entry) -> tuple[bytes, tuple[int, ...] | None] | Reply:
        """The message (CRLF line ends) and where its "." lines start, or the -ERR."""
        assert self.maildrop is not None
        try:
            return self.maildrop.read(entry)
        except StoreFailure as exc:
            return Reply(f"-ERR [SYS/TEMP] {exc}")

    def cmd_retr(self, args: list[str]) -> Reply:
        if len(args) != 1:
            return Reply("-ERR usage: RETR msg")
        entry = self._message(args[0])
        if isinstance(entry, Reply):
            return entry
        read = self._read(entry)
        if isinstance(read, Reply):
            return read
        data, dots = read
        assert self.maildrop is not None
        self._retrieved.append(entry)
        if len(self._retrieved) >= SEEN_BATCH:
            self.settle()
        return Reply(f"+OK {len(data)} octets", message=data, dots=dots)

    def cmd_top(self, args: list[str]) -> Reply:
        if len(args) != 2:
            return Reply("-ERR usage: TOP msg lines")
        entry = self._message(args[0])
        if isinstance(entry, Reply):
            return entry
        if not _NUMBER.fullmatch(args[1]):
            return Reply(f"-ERR {_short(args[1])!r} is not a number of lines")
        read = self._read(entry)
        if isinstance(read, Reply):
            return read
        # TOP is a peek: unlike RETR it does not mark the message \Seen.
        return Reply("+OK top of message follows", message=top_of(read[0], int(args[1])))

    def cmd_dele(self, args: list[str]) -> Reply:
        if len(args) != 1:
            return Reply("-ERR usage: DELE msg")
        entry = self._message(args[0])
        if isinstance(entry, Reply):
            return entry
        self.deleted.add(entry.number)
        self._deleted_octets += entry.size
        # one number, not the whole maildrop again: DELE of every message stays linear
        return Reply(f"+OK message {entry.number} marked for deletion (removed only after QUIT)",
                     notes=[(f"message {entry.number} marked for deletion",
                             {"pop3": "marked", "number": entry.number})])

    def cmd_noop(self, args: list[str]) -> Reply:
        return Reply("+OK") if not args else Reply("-ERR usage: NOOP")

    def cmd_rset(self, args: list[str]) -> Reply:
        if args:
            return Reply("-ERR usage: RSET")
        self.deleted.clear()
        self._deleted_octets = 0
        count, octets = self._totals()
        return Reply(f"+OK maildrop has {count} messages ({octets} octets)",
                     notes=[self._drop_note("deletion marks removed")])

    # -- bookkeeping ---------------------------------------------------------------
    def _enter(self, state: State) -> State:
        self.state = state
        if self.on_state:
            self.on_state(state)
        return state

    def _drop_note(self, text: str) -> tuple[str, dict[str, Any]]:
        """A structured note the state view draws the maildrop from: its first
        NOTE_MESSAGES messages, its size, and the marks (DELE adds "marked" notes)."""
        assert self.maildrop is not None
        unique_id = self.maildrop.unique_id
        return (text, {"pop3": "maildrop",
                       "messages": [[n, unique_id(uid), size] for n, uid, size in
                                    itertools.islice(self.maildrop.numbered(), NOTE_MESSAGES)],
                       "count": len(self.maildrop),
                       "marked": sorted(self.deleted)})


def _text(line: bytes | str) -> str:
    if isinstance(line, bytes):
        line = line.decode("utf-8", "replace")
    if line.endswith("\n"):
        line = line[:-1]
    if line.endswith("\r"):
        line = line[:-1]
    return line


def _short(text: str, n: int = 40) -> str:
    return text if len(text) <= n else text[:n] + "..."
