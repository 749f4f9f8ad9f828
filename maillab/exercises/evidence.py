"""What the exercise checks read: the lab's own record of what the student did.

Checks look at the *server's* side of each conversation (the events a lab server
recorded) and at the store, never at the notebook's code: whichever client the
student used, smtplib, ``%%smtp``, the step-through client, neomutt or curl, the
servers saw the same thing.
"""

from __future__ import annotations

import email
import email.policy
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from email.message import EmailMessage

from ..events import CLIENT_LINE, OPENED, SERVER_LINE, Event
from ..lab import Lab
from ..store.names import decode_mutf7

#: An IMAP command's words: a quoted string (a mailbox name with spaces) is one.
_IMAP_WORD = re.compile(r'"(?:[^"\\]|\\.)*"|\S+')
#: The mark the event log puts after a payload's head, or after a long line's head.
_MORE = re.compile(r"… \(\d+ more bytes\)$")


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


def parse(data: bytes) -> EmailMessage:
    return email.message_from_bytes(data, policy=email.policy.default)  # type: ignore[return-value]


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


def part_numbers(msg: EmailMessage) -> dict[str, EmailMessage]:
    """IMAP part numbers (RFC 3501 6.4.5) of a message's body parts: "1", "2", "2.1", ...
    A single-part message's body is part "1"."""
    out: dict[str, EmailMessage] = {}

    def walk(part: EmailMessage, prefix: str) -> None:
        for i, child in enumerate(part.iter_parts(), 1):
            number = f"{prefix}{i}"
            out[number] = child  # type: ignore[assignment]
            if child.is_multipart():
                walk(child, number + ".")  # type: ignore[arg-type]

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
