"""Outgoing mail: the sending MTA's DKIM signature, a forwarder's ARC seal, and
the lesson's tampering host that changes a signed message on its way.

:func:`sign` follows RFC 6376 5 step by step (relaxed/simple, as most signers do:
3.4): the body hash, the header fields chosen bottom-up, the DKIM-Signature with an
empty ``b=`` hashed last, then RSASSA-PKCS1-v1_5 with SHA-256 (RFC 8017 8.2) by
``cryptography`` (OpenSSL). dkimpy's own ``dkim.sign`` computes the same signature with
pure-Python RSA: about 25 ms per message here against 0.6 ms, and it holds the
interpreter meanwhile, which a 50-domain lab at 100 messages/s cannot afford.
dkimpy verifies every signature the lab makes (the receiving MTA, the tests) and
seals (``dkim.arc_sign``, which reads the sealer's own ``Authentication-Results``
to write ARC-Authentication-Results, RFC 8617 4.1.1).
"""

from __future__ import annotations

import base64
import functools
import hashlib
import re
import time

import dkim
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa

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
    """``message`` with a DKIM-Signature by ``key``'s domain on top (RFC 6376 5)."""
    nl = b"\r\n" if b"\r\n" in message else b"\n"
    lines = re.split(rb"\r?\n", message)
    fields: list[tuple[bytes, bytes]] = []  # (name, value with its folding, CRLF-ended)
    i = 0
    while i < len(lines) and lines[i]:
        if lines[i][:1] in (b" ", b"\t") and fields:
            fields[-1] = (fields[-1][0], fields[-1][1] + lines[i] + b"\r\n")
        else:
            name, colon, value = lines[i].partition(b":")
            if colon:
                fields.append((name, value + b"\r\n"))
        i += 1
    body = b"\r\n".join(lines[i + 1:])
    present = {name.strip().lower() for name, _ in fields}
    include = [h for h in SIGNED_HEADERS if h in present]
    bh = base64.b64encode(hashlib.sha256(_simple_body(body)).digest())
    d, sel = key.domain.encode(), key.selector.encode()
    # b= starts a line of its own, so the folded signature never moves the tags before it.
    head = (b"DKIM-Signature: v=1; a=rsa-sha256; c=relaxed/simple; d=" + d + b"; i=@" + d + b";" + nl
            + b" q=dns/txt; s=" + sel + b"; t=" + str(int(time.time())).encode() + b";" + nl
            + b" h=" + b" : ".join(include) + b";" + nl + b" bh=" + bh + b";" + nl + b" b=")
    hashed = b"".join(_relaxed(n, v) for n, v in _chosen(fields, include))
    hashed += _relaxed(*head.split(b":", 1)).rstrip(b"\r\n")  # 3.7: the signature itself, no CRLF
    sig = base64.b64encode(_private_key(key.private_pem).sign(hashed, padding.PKCS1v15(), hashes.SHA256()))
    folded = (nl + b" ").join(sig[k:k + 70] for k in range(0, len(sig), 70))
    return head + folded + nl + message


def _simple_body(body: bytes) -> bytes:
    """RFC 6376 3.4.3: no empty lines at the end, and a body ends with one CRLF."""
    while body.endswith(b"\r\n"):
        body = body[:-2]
    return body + b"\r\n"


def _relaxed(name: bytes, value: bytes) -> bytes:
    """RFC 6376 3.4.2: lower-case name, value unfolded, runs of WSP one space, no WSP at the ends."""
    value = re.sub(rb"[\t ]+", b" ", re.sub(rb"\r?\n", b"", value)).strip()
    return name.strip().lower() + b":" + value + b"\r\n"


def _chosen(fields: list[tuple[bytes, bytes]], include: list[bytes]) -> list[tuple[bytes, bytes]]:
    """RFC 6376 5.4.2: for each name in h=, the last instance not used yet (bottom-up)."""
    out, used = [], set()
    for h in include:
        for k in range(len(fields) - 1, -1, -1):
            if k not in used and fields[k][0].strip().lower() == h:
                used.add(k)
                out.append(fields[k])
                break
    return out


@functools.lru_cache(maxsize=256)
def _private_key(pem: bytes) -> rsa.RSAPrivateKey:
    key = serialization.load_pem_private_key(pem, None)
    assert isinstance(key, rsa.RSAPrivateKey)
    return key


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
