"""A message as POP3 sends it (RFC 1939 section 3): every line end a CRLF, and
one more "." in front of every line that starts with "." ("dot-stuffing"), so
that only the final CRLF "." CRLF ends the response.

Finding what to change costs two passes over the message (is every line end
already a CRLF? where do lines start with "."?), and changing it a third that
copies it. Here the passes are made once per message and what they found, a
:class:`Plan`, is remembered: a message never changes once delivered (its UID
names it for as long as the mailbox's UIDVALIDITY lasts; flags only rename the
file), so the next RETR of the same message (another client, a client that
leaves mail on the server and downloads it again) only reads the file. And
nothing is copied: the message goes out as slices of the bytes read, with the
extra "." between them (:func:`stuffed_parts`, written with one gathering
``writev``). A message with more than MAX_DOTS such lines (a hostile one may
have millions) is stuffed the plain way instead, by :func:`dot_stuff`, the
reference the pieces must equal (tests compare them).
"""

from __future__ import annotations

import threading
from dataclasses import dataclass

#: Plans remembered (~200 octets each with its key, up to ~10 KB for one with MAX_DOTS):
#: enough for the messages being downloaded, bounded so a long-running lab stays flat.
PLANS = 50_000
#: Lines starting with "." a message is sent around in pieces; past this many, one
#: ``replace`` costs less than the pieces (and a plan never grows past this).
MAX_DOTS = 128


def crlf_only(data: bytes) -> bytes:
    """Every line end as CRLF, a bare CR included (RFC 1939 3: responses are lines
    ended by CRLF). A bare CR left in would let a client that splits lines on CR
    see a "." line the server never sent, and take what follows for the next
    response; the relay normalises the same way (maillab.relay.client.encode_data).

    LIST counts the stored CRLF size (``MessageInfo.crlf_size``), so a file with a
    bare CR is sent one octet longer per CR than LIST said. SMTP refuses bare CR,
    so only IMAP APPEND, ``store.deliver`` and files put into the Maildir by hand
    bring one.
    """
    return data.replace(b"\r\n", b"\n").replace(b"\r", b"\n").replace(b"\n", b"\r\n")


def dot_stuff(data: bytes) -> bytes:
    """RFC 1939 section 3: a line starting with "." gets one more "." in front,
    so that only the final CRLF "." CRLF ends the response. ``data`` has CRLF
    line ends; the result always ends with CRLF."""
    if data.startswith(b"."):
        data = b"." + data
    data = data.replace(b"\n.", b"\n..")
    if data and not data.endswith(b"\r\n"):
        data += b"\r\n"
    return data


@dataclass(frozen=True, slots=True)
class Plan:
    """What the passes over one message found."""

    crlf: bool  # the file's line ends are all CRLF already: send it as read
    dots: tuple[int, ...] | None  # where (in the CRLF form) lines start with "."; None: many


def plan_for(data: bytes, crlf_size: int) -> Plan:
    """Look at ``data`` (the file as read) once. ``crlf_size`` is the size the index
    counted with every LF as CRLF: equal to the file's size, every LF has its CR
    already, and one more count tells whether every CR has its LF."""
    crlf = len(data) == crlf_size and data.count(b"\r") == data.count(b"\n")
    return Plan(crlf, dot_lines(data if crlf else crlf_only(data)))


def dot_lines(data: bytes) -> tuple[int, ...] | None:
    """Where the lines of ``data`` that start with "." start; None when there are
    more than MAX_DOTS of them."""
    found = [0] if data.startswith(b".") else []
    at = data.find(b"\n.")
    while at >= 0:
        if len(found) == MAX_DOTS:
            return None
        found.append(at + 1)
        at = data.find(b"\n.", at + 2)
    return tuple(found)


def stuffed_parts(data: bytes, dots: tuple[int, ...] | None) -> list[bytes | memoryview]:
    """``dot_stuff(data)`` as pieces to write one after the other: slices of ``data``
    (no copy) with a "." before each line in ``dots``, ending in CRLF (or, when
    ``dots`` is None, the one piece :func:`dot_stuff` makes)."""
    if dots is None:
        return [dot_stuff(data)]
    if not dots:
        parts: list[bytes | memoryview] = [data]
    else:
        view = memoryview(data)
        parts = [view[:dots[0]]] if dots[0] else []
        for start, end in zip(dots, (*dots[1:], len(data)), strict=True):
            parts.append(b".")
            parts.append(view[start:end])
    if data and not data.endswith(b"\r\n"):
        parts.append(b"\r\n")
    return parts


class Plans:
    """Plans by message (mailbox path, UIDVALIDITY, UID, size), bounded (the oldest
    go first); any thread may ask.

    Kept as plain ``(crlf, dots)`` tuples, not Plan objects: 50,000 plans of a long-running
    lab would otherwise be 50,000 more objects for every full garbage collection to
    walk (the collector stops tracking a tuple of ints and bools)."""

    def __init__(self, size: int = PLANS) -> None:
        self.size = size
        self._plans: dict[tuple[str, int, int, int], tuple[bool, tuple[int, ...] | None]] = {}
        self._lock = threading.Lock()

    def get(self, key: tuple[str, int, int, int]) -> Plan | None:
        kept = self._plans.get(key)
        return None if kept is None else Plan(*kept)

    def put(self, key: tuple[str, int, int, int], plan: Plan) -> None:
        with self._lock:
            if len(self._plans) >= self.size:
                for old in list(self._plans)[: self.size // 4]:
                    del self._plans[old]
            self._plans[key] = (plan.crlf, plan.dots)


#: The process's plans: every lab's POP3 servers share them (the key names the message).
PLANS_SEEN = Plans()
