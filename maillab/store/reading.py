"""Reading messages out of a Maildir fast, and the caches of what readers derive from them.

IMAP sends messages with CRLF line ends and reads the same files again and
again (FETCH 1:* BODY[], header SEARCH over 2,000 messages). These functions
read a file in as few system calls as its indexed size allows, and keep, per
:class:`~maillab.store.mailbox.Mailbox` object, what is costly to derive and
never changes for a UID: header blocks, the decoded texts SEARCH compares, and
protocol items already encoded for the wire. The caches live as long as the
Mailbox object (a renamed or deleted folder gets a new one) and are bounded.
"""

from __future__ import annotations

import os
import weakref
from typing import Any

from .mailbox import Mailbox, MessageInfo, to_crlf

#: Entries a cache keeps at most (then it stops growing: correctness never depends on it).
HEADERS_MAX = 100_000
TEXTS_MAX = 200_000
WIRE_ITEMS_MAX = 200_000


class ReadCaches:
    """What has been derived from one mailbox's messages, by UID."""

    __slots__ = ("headers", "texts", "wire_items", "__weakref__")

    def __init__(self) -> None:
        #: The header block (CRLF, blank line included) of each message.
        self.headers: dict[int, bytes] = {}
        #: What SEARCH compares for one header field, per (UID, field, exact).
        self.texts: dict[tuple[int, str, bool], tuple[str, ...]] = {}
        #: Protocol items as they go on the wire (``b"ENVELOPE (...)"``), per (UID, item).
        self.wire_items: dict[tuple[int, str], bytes] = {}


_CACHES: weakref.WeakKeyDictionary[Mailbox, ReadCaches] = weakref.WeakKeyDictionary()


def caches(mb: Mailbox) -> ReadCaches:
    """The read caches of this mailbox object."""
    found = _CACHES.get(mb)
    if found is None:
        found = _CACHES.setdefault(mb, ReadCaches())
    return found


def remember(cache: dict[Any, Any], key: Any, value: Any, limit: int) -> None:
    """Keep ``value`` unless the cache is full."""
    if len(cache) < limit:
        cache[key] = value


def read_wire(mb: Mailbox, info: MessageInfo) -> bytes:
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


def read_header(mb: Mailbox, info: MessageInfo) -> bytes:
    """The header block of a message (CRLF, up to and including the blank line),
    read without reading the body, and cached: a warm mailbox answers a header
    search without opening a file."""
    cache = caches(mb).headers
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
        remember(cache, info.uid, header, HEADERS_MAX)
    return header


def header_field(header: bytes, name: str) -> bytes:
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
