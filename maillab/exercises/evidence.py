"""What the exercise checks read: the lab's own record of what the student did.

Checks look at the *server's* side of each conversation (the events a lab server
recorded) and at the store, never at the notebook's code: whichever client the
student used, smtplib, ``%%smtp``, the step-through client, neomutt or curl, the
servers saw the same thing.
"""

from __future__ import annotations

import email
import re
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass, field
from email.message import Message

from ..events import AUTH, CLIENT_LINE, OPENED, SERVER_LINE, STORED, Event
from ..lab import Lab
from ..store.names import decode_mutf7

#: An IMAP command's words: a quoted string (a mailbox name with spaces) is one.
_IMAP_WORD = re.compile(r'"(?:[^"\\]|\\.)*"|\S+')
#: The mark the event log puts after a payload's head, or after a long line's head.
_MORE = re.compile(r"… \(\d+ more bytes\)$")
#: The reverse-path and forward-path of MAIL and RCPT (RFC 5321 4.1.1.2, 4.1.1.3).
_PATH = re.compile(r"(?i)^(MAIL FROM|RCPT TO):\s*<([^>]*)>")
#: The queue id in the reply to the end of a message's text.
QUEUED_AS = re.compile(r"queued as ([0-9A-Za-z]+)")


@dataclass
class Transaction:
    """One SMTP mail transaction as the server answered it (RFC 5321 3.3)."""

    mail_from: str
    recipients: list[str]  # the forward-paths the server took (250/251)
    accepted: bool = False  # the text was taken: 250 after its end
    queue_id: str | None = None  # from that 250's "queued as"


@dataclass
class Conversation:
    """One server-side session: its events and the commands with their replies."""

    session: str
    protocol: str
    host: str
    service: str
    events: list[Event] = field(default_factory=list)

    def kinds(self, kind: str) -> list[Event]:
        return [e for e in self.events if e.kind == kind]

    def client_lines(self) -> list[str]:
        return [e.text for e in self.events if e.kind == CLIENT_LINE and not e.data.get("payload")]

    def exchanges(self) -> Iterator[tuple[str, list[str]]]:
        """(client line, the server lines that followed it up to the next client line)."""
        current: str | None = None
        replies: list[str] = []
        for e in self.events:
            if e.kind == CLIENT_LINE and not e.data.get("payload"):
                if current is not None:
                    yield current, replies
                current, replies = e.text, []
            elif e.kind == SERVER_LINE and current is not None and not e.data.get("payload"):
                replies.append(e.text)
        if current is not None:
            yield current, replies

    def imap_commands(self) -> Iterator[tuple[str, list[str], bool]]:
        """(verb with UID prefix, arguments, tagged OK?) for each IMAP command."""
        for verb, args, ok, _replies in self.imap_exchanges():
            yield verb, args, ok

    def imap_exchanges(self) -> Iterator[tuple[str, list[str], bool, list[str]]]:
        """(verb with UID prefix, arguments, tagged OK?, the server's lines) for each
        IMAP command; a quoted argument ("My Archive") is one argument, quotes kept."""
        for line, replies in self.exchanges():
            words = _IMAP_WORD.findall(line)
            if len(words) < 2:
                continue
            tag, verb, args = words[0], words[1].upper(), words[2:]
            if verb == "UID" and args:
                verb, args = f"UID {args[0].upper()}", args[1:]
            ok = any(r.startswith(f"{tag} OK") for r in replies)
            yield verb, args, ok, replies

    def payloads(self) -> list[tuple[float, str, int]]:
        """(time, recorded head, size in octets) of each message text the server sent:
        a RETR or TOP body, a FETCH literal."""
        return [(e.time, e.text, int(e.data.get("bytes") or 0)) for e in self.events
                if e.kind == SERVER_LINE and e.data.get("payload")]

    @property
    def user(self) -> str | None:
        for e in self.events:
            if e.data.get("user"):
                return str(e.data["user"])
        return None

    @property
    def login(self) -> str | None:
        """The lab user this session logged in as (its successful AUTH, LOGIN or
        USER/PASS, as the server resolved it), or None."""
        for e in self.events:
            if e.kind == AUTH and e.data.get("ok"):
                return str(e.data.get("user") or e.data.get("login") or "").lower() or None
        return None

    def transactions(self) -> list[Transaction]:
        """The SMTP mail transactions of this session, judged from the server's replies.

        Each command gets exactly one reply, in order, pipelined or not (RFC 2920 3.1),
        so a FIFO of the client's lines pairs them; after a 354 the next reply is the
        one to the end of the text.
        """
        out: list[Transaction] = []
        pending: deque[str] = deque()
        current: Transaction | None = None
        in_text = False
        for e in self.events:
            if e.data.get("payload"):
                continue
            if e.kind == CLIENT_LINE:
                pending.append(e.text)
                continue
            if e.kind != SERVER_LINE or e.text[3:4] == "-":  # a multiline reply ends on "NNN "
                continue
            code = e.text[:3]
            if in_text:
                in_text = False
                if current is not None and code == "250":
                    current.accepted = True
                    found = QUEUED_AS.search(e.text)
                    current.queue_id = found.group(1) if found else None
                current = None
                continue
            if not pending:  # the greeting, or a reply to no command (a 421 on closing)
                continue
            command = pending.popleft()
            verb = command[:4].upper()
            path = _PATH.match(command)
            if verb == "MAIL" and path and code == "250":
                current = Transaction(path.group(2), [])
                out.append(current)
            elif verb == "RCPT" and path and current is not None and code in ("250", "251"):
                current.recipients.append(path.group(2).lower())
            elif verb == "DATA":
                in_text = code == "354" and current is not None
            elif verb in ("RSET", "EHLO", "HELO"):  # each ends a transaction (RFC 5321 4.1.4)
                current = None
        return out


def conversations(lab: Lab, protocol: str, *, service: str | None = None,
                  host: str | None = None) -> list[Conversation]:
    """The lab servers' sessions of ``protocol``, oldest first."""
    events = lab.events.events()
    found: dict[str, Conversation] = {}
    for e in events:
        if e.kind == OPENED and e.protocol == protocol and e.side == "server":
            svc = str(e.data.get("service") or protocol)
            if (service is None or svc == service) and (host is None or e.host == host):
                found[e.session] = Conversation(e.session, protocol, e.host, svc)
    for e in events:
        conv = found.get(e.session)
        if conv is not None:
            conv.events.append(e)
    return list(found.values())


def envelope_senders(lab: Lab) -> dict[tuple[str, int], str]:
    """(user/folder, uid) -> the reverse-path (MAIL FROM) of the SMTP transaction that
    stored the message there, as the delivering server saw it."""
    out: dict[tuple[str, int], str] = {}
    mail_from: dict[str, str] = {}
    for e in lab.events.events():
        if e.protocol != "smtp" or e.side != "server":
            continue
        if e.kind == CLIENT_LINE and not e.data.get("payload"):
            path = _PATH.match(e.text)
            if path and path.group(1).upper() == "MAIL FROM":
                mail_from[e.session] = path.group(2)
        elif e.kind == STORED and e.session in mail_from and e.data.get("uid") is not None:
            out[(str(e.data.get("mailbox")), int(e.data["uid"]))] = mail_from[e.session].lower()
    return out


def parse(data: bytes) -> Message:
    """A stored message read with the compat32 parser; its header fields are read
    with :func:`~maillab.imap.decoding.field_text`. email.policy.default parses
    Content-Type and address fields with a grammar that is quadratic on some values
    anyone may send to an MX (30 KB of ``(a)`` comments: seconds to minutes), and the
    checks run in the kernel (tests/test_linear.py)."""
    return email.message_from_bytes(data)


def messages(lab: Lab) -> Iterator[tuple[str, str, int, bytes]]:
    """(user, folder, uid, bytes) for every message the lab holds."""
    for user in lab.store.users():
        for folder in lab.store.list_mailboxes(user):
            try:
                box = lab.store.mailbox(user, folder)
            except LookupError:
                continue
            for info in box.messages():
                try:
                    yield user, folder, info.uid, box.read(info.uid)
                except OSError:
                    continue


def part_numbers(msg: Message) -> dict[str, Message]:
    """IMAP part numbers (RFC 3501 6.4.5) of a message's body parts: "1", "2", "2.1", ...
    A single-part message's body is part "1"."""
    out: dict[str, Message] = {}

    def walk(part: Message, prefix: str) -> None:
        for i, child in enumerate(part.get_payload(), 1):
            number = f"{prefix}{i}"
            out[number] = child
            if child.is_multipart():
                walk(child, number + ".")

    if msg.is_multipart():
        walk(msg, "")
    else:
        out["1"] = msg
    return out


def mailbox_name(arg: str) -> str:
    """A mailbox argument as the store names it: unquoted, modified UTF-7 decoded."""
    if len(arg) >= 2 and arg[0] == arg[-1] == '"':
        arg = re.sub(r"\\(.)", r"\1", arg[1:-1])
    try:
        name = decode_mutf7(arg)
    except (ValueError, UnicodeError):
        name = arg
    return "INBOX" if name.upper() == "INBOX" else name


def sent_whole(head: str, size: int, data: bytes, lines: int = 6) -> bool:
    """Is a payload the server recorded (its head and size) ``data``, all of it?

    The head is compared line by line (at most ``lines``; a long line by its start)
    and the size must cover ``data``: a TOP n 0 or a partial FETCH sent less.
    """
    if not data or size < len(data):
        return False
    recorded = head.split("\n")
    if len(recorded) > 1 and _MORE.fullmatch(recorded[-1]):
        recorded.pop()
    recorded = recorded[:lines]
    sent = data.split(b"\n", len(recorded))[:len(recorded)]
    for i, line in enumerate(recorded):
        if i >= len(sent):
            if line not in ("", "."):  # POP3's terminator, or the end of a CRLF
                return False
            continue
        want = sent[i].rstrip(b"\r").decode("utf-8", "replace")
        cut = _MORE.search(line)
        if cut is not None:
            if not want.startswith(line[:cut.start()]):
                return False
        elif line != want and line != "." + want:  # POP3 dot-stuffs a leading '.'
            return False
    return bool(recorded)
