"""The DATA phase without I/O: where a message ends, how it is un-stuffed, and
what makes the lab refuse it as a whole.

RFC 5321 4.1.1.4: the message ends with ``<CRLF>.<CRLF>`` and nothing else. The
"SMTP smuggling" attacks of December 2023 hid a second message behind an end
marker that one server saw and the next did not (``<LF>.<LF>``, ``<CR>.<CR>``,
...). The lab reads only the real ``<CRLF>.<CRLF>`` as the end, and a message
that carries a bare CR or a bare LF anywhere is refused as a whole, after the
end of data, like Postfix with ``smtpd_forbid_bare_newline = reject``. So
whatever an attacker hides in the text, it is one message or none, never two.
"""

from __future__ import annotations

import re

from .policy import Reply

#: The end-of-data marker (RFC 5321 4.1.1.4). The driver reads the text with a
#: CRLF in front of it, so even an empty message ends with this sequence.
END_OF_DATA = b"\r\n.\r\n"
#: The hop count past which a message is taken to be looping (RFC 5321 6.3
#: suggests about 100; Postfix's hopcount_limit is 50; the lab's own relay
#: network is small, so it is stricter).
MAX_RECEIVED = 25

_RECEIVED = re.compile(rb"^received:", re.IGNORECASE | re.MULTILINE)


def unstuff(raw: bytes) -> bytes:
    """The message from ``raw`` = ``CRLF + text + CRLF.CRLF``: remove the
    transparency dot of every line that starts with one (RFC 5321 4.5.2)."""
    text = raw[:-3]
    if b"\r\n." in text:
        text = text.replace(b"\r\n.", b"\r\n")
    return text[2:]


def check_line_endings(raw: bytes) -> Reply | None:
    """A bare CR or bare LF anywhere in the text refuses the whole message."""
    crlf = raw.count(b"\r\n")
    if raw.count(b"\n") != crlf:
        return Reply(554, "5.5.2", "Message refused: bare <LF> in the message text; every line"
                     " must end with <CRLF> (RFC 5321 2.3.8). Nothing was stored.")
    if raw.count(b"\r") != crlf:
        return Reply(554, "5.5.2", "Message refused: bare <CR> in the message text; every line"
                     " must end with <CRLF> (RFC 5321 2.3.8). Nothing was stored.")
    return None


def check_line_length(message: bytes, limit: int) -> Reply | None:
    """RFC 5321 4.5.3.1.6: a text line is at most 1000 octets including CRLF.
    ``message`` is un-stuffed and known to use CRLF only."""
    if len(message) <= limit - 2:
        return None
    # Fast path: when every aligned window of limit // 2 octets, and the last such
    # window, holds a LF, no run of octets without one is longer than limit - 2, so
    # every line fits: a few thousand short find() calls instead of splitting a
    # 1 MiB message into 13,000 line objects. Otherwise measure the lines.
    step = max(1, limit // 2)
    find = message.find
    starts = [*range(0, len(message) - step + 1, step), max(0, len(message) - step)]
    if all(find(b"\n", i, i + step) >= 0 for i in starts):
        return None
    longest = max(map(len, message.split(b"\r\n")))
    if longest + 2 > limit:
        return Reply(500, "5.5.2", f"Line too long: {longest + 2} octets, the limit is {limit}"
                     " including CRLF (RFC 5321 4.5.3.1.6). Nothing was stored.")
    return None


def header_block(message: bytes) -> bytes:
    end = message.find(b"\r\n\r\n")
    return message if end < 0 else message[:end + 2]


def check_hops(message: bytes, limit: int = MAX_RECEIVED) -> Reply | None:
    """Too many Received headers means the message is going round in circles."""
    hops = len(_RECEIVED.findall(header_block(message)))
    if hops > limit:
        return Reply(554, "5.4.6", f"Too many hops ({hops} Received headers, limit {limit}):"
                     " mail loop? (RFC 5321 6.3)")
    return None
