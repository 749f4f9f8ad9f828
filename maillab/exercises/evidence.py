"""What the exercise checks read: the lab's own record of what the student did.

Checks look at the *server's* side of each conversation (the events a lab server
recorded) and at the store, never at the notebook's code: whichever client the
student used, smtplib, ``%%smtp``, the step-through client, neomutt or curl, the
servers saw the same thing.
"""

from __future__ import annotations

import email
import email.policy
from collections.abc import Iterator
from dataclasses import dataclass, field
from email.message import EmailMessage

from ..events import CLIENT_LINE, OPENED, SERVER_LINE, Event
from ..lab import Lab


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
        for line, replies in self.exchanges():
            words = line.split()
            if len(words) < 2:
                continue
            tag, verb, args = words[0], words[1].upper(), words[2:]
            if verb == "UID" and args:
                verb, args = f"UID {args[0].upper()}", args[1:]
            ok = any(r.startswith(f"{tag} OK") for r in replies)
            yield verb, args, ok

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
