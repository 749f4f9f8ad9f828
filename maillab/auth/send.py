"""Outgoing mail: the sending MTA's DKIM signature, a forwarder's ARC seal, and
the lesson's tampering host that changes a signed message on its way.

dkimpy signs (``dkim.sign``, relaxed/simple as most signers do: RFC 6376 3.4)
and seals (``dkim.arc_sign``, which reads the sealer's own
``Authentication-Results`` to write ARC-Authentication-Results, RFC 8617 4.1.1).
"""

from __future__ import annotations

import re

import dkim

from .keys import DomainKey

#: Header fields the lab signs (RFC 6376 5.4.1's list; From is required).
SIGNED_HEADERS = [b"from", b"to", b"cc", b"subject", b"date", b"message-id", b"reply-to",
                  b"mime-version", b"content-type", b"content-transfer-encoding", b"in-reply-to",
                  b"references"]


def split(message: bytes) -> tuple[bytes, bytes]:
    head, sep, body = message.partition(b"\r\n\r\n")
    if not sep:
        head, sep, body = message.partition(b"\n\n")
    return head + sep, body


def sign(message: bytes, key: DomainKey) -> bytes:
    """``message`` with a DKIM-Signature by ``key``'s domain on top."""
    present = {m.group(1).lower() for m in re.finditer(rb"(?m)^([A-Za-z0-9-]+):", split(message)[0])}
    include = [h for h in SIGNED_HEADERS if h in present]
    sig = dkim.sign(message, key.selector.encode(), key.domain.encode(), key.private_pem,
                    canonicalize=(b"relaxed", b"simple"), include_headers=include)
    return sig + message


def seal(message: bytes, key: DomainKey, authserv_id: str) -> bytes:
    """``message`` with one more ARC set by ``key``'s domain (needs an
    Authentication-Results by ``authserv_id`` in it); unchanged if dkimpy refuses."""
    present = {m.group(1).lower() for m in re.finditer(rb"(?m)^([A-Za-z0-9-]+):", split(message)[0])}
    include = [h for h in SIGNED_HEADERS if h in present]
    headers = dkim.arc_sign(message, key.selector.encode(), key.domain.encode(), key.private_pem,
                            authserv_id.encode(), include_headers=include)
    return b"".join(headers) + message


def tamper(message: bytes, what: str) -> tuple[bytes, str]:
    """The lesson's man in the middle: one byte of the body, or the Subject, changed.
    Returns the changed message and what was changed, byte by byte."""
    head, body = split(message)
    if what == "subject":
        m = re.search(rb"(?mi)^Subject:[ \t]*", head)
        if m is None:
            return head + body, "no Subject to change"
        return head[:m.end()] + b"[changed] " + head[m.end():] + body, \
            "Subject: 10 octets inserted: '[changed] '"
    i = next((k for k, c in enumerate(body) if chr(c).isalpha()), 0)
    old = body[i:i + 1]
    new = old.swapcase() if old.isalpha() else b"X"
    return head + body[:i] + new + body[i + 1:], f"body octet {i}: {old!r} -> {new!r}"


def add_footer(message: bytes, tag: str, footer: str) -> bytes:
    """What a mailing list does to a post: ``[tag]`` in the Subject, a footer below."""
    head, body = split(message)
    head = re.sub(rb"(?mi)^Subject:[ \t]*", b"Subject: " + tag.encode() + b" ", head, count=1)
    nl = b"\r\n" if b"\r\n" in message else b"\n"
    if body and not body.endswith(nl):
        body += nl
    return head + body + b"-- " + nl + footer.encode() + nl
