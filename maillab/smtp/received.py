"""The Received header every accepted message gets (RFC 5321 4.4).

It is the message's travel log: each server that takes the message adds one
line on top, so reading them bottom-up retraces its path. The lab writes them
the way Postfix does, so students can compare with real mail::

    Received: from student.test ([127.0.0.1])
            (using TLSv1.3 with cipher TLS_AES_256_GCM_SHA384 (256/256 bits))
            by mail.alpha.test (maillab) with ESMTPSA id 18F3A2B4C0001
            for <bob@alpha.test>; Tue, 14 May 2024 10:00:00 +0000

``with`` names the protocol (RFC 3848): ESMTP, plus S when TLS was on and A when
the client authenticated; SMTP after HELO; UTF8SMTP... with SMTPUTF8 (RFC 6531 3.7.3).
"""

from __future__ import annotations

import itertools
import re
import time
from dataclasses import dataclass
from email.utils import formatdate

_ids = itertools.count(1)
_UNSAFE = re.compile(r"[^\x21-\x27\x2a-\x5b\x5d-\x7e]")  # printable ASCII without ( ) \


def queue_id() -> str:
    """A short id unique within this process (Postfix shows one per message too)."""
    return f"{int(time.time() * 1000):X}{next(_ids) & 0xFFFF:04X}"


def with_protocol(*, extended: bool, tls: bool, authenticated: bool, smtputf8: bool = False) -> str:
    """The ``with`` keyword of RFC 3848 / RFC 6531."""
    if not extended:
        return "SMTP"
    name = "UTF8SMTP" if smtputf8 else "ESMTP"
    return name + ("S" if tls else "") + ("A" if authenticated else "")


@dataclass(frozen=True)
class TLSInfo:
    version: str
    cipher: str
    bits: int | None = None

    def comment(self) -> str:
        bits = f" ({self.bits}/{self.bits} bits)" if self.bits else ""
        return f"(using {self.version} with cipher {self.cipher}{bits})"


_now_text: tuple[int, str] = (-1, "")


def _date(when: float | None) -> str:
    """RFC 5322 date-time of ``when`` (default: now, the same text for a whole second:
    formatting it is a noticeable part of taking in a small message)."""
    global _now_text
    if when is not None:
        return formatdate(when, localtime=True)
    second = int(time.time())
    if _now_text[0] != second:
        _now_text = (second, formatdate(second, localtime=True))
    return _now_text[1]


def _address_literal(ip: str) -> str:
    return f"[IPv6:{ip}]" if ":" in ip else f"[{ip}]"


def received_header(
    *,
    helo: str,
    peer_ip: str,
    by: str,
    protocol: str,
    id: str,
    recipient: str | None = None,
    tls: TLSInfo | None = None,
    when: float | None = None,
) -> bytes:
    """One Received header field, folded, ending in CRLF, ready to prepend."""
    # The HELO name is whatever the client typed: keep it printable and out of comments.
    helo = _UNSAFE.sub("?", helo)[:255] or "unknown"
    lines = [f"Received: from {helo} ({_address_literal(peer_ip)})"]
    if tls is not None:
        lines.append(f"\t{tls.comment()}")
    lines.append(f"\tby {by} (maillab) with {protocol} id {id}")
    date = _date(when)
    if recipient:
        lines.append(f"\tfor <{recipient}>; {date}")
    else:
        lines[-1] += f"; {date}"
    return ("\r\n".join(lines) + "\r\n").encode("utf-8")
