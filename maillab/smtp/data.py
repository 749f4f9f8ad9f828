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

import asyncio
import re
import sys
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from .policy import Reply

if TYPE_CHECKING:
    from ..limits import Limits

#: The end-of-data marker (RFC 5321 4.1.1.4). The driver reads the text with a
#: CRLF in front of it, so even an empty message ends with this sequence.
END_OF_DATA = b"\r\n.\r\n"
#: The hop count past which a message is taken to be looping (RFC 5321 6.3
#: suggests about 100; Postfix's hopcount_limit is 50; the lab's own relay
#: network is small, so it is stricter).
MAX_RECEIVED = 25

_RECEIVED = re.compile(rb"^received:", re.IGNORECASE | re.MULTILINE)
CR, LF, DOT = ord("\r"), ord("\n"), ord(".")
#: Octets scan() looks at per numpy pass (see _line_ends).
_BLOCK = 64 * 1024


class Budget:
    """The octets of DATA text that all of a lab's SMTP sessions hold at once
    (``limits.smtp_data_in_flight``): each message is in memory until it is stored
    or refused, so many clients sending large messages together could otherwise
    make the lab hold gigabytes. Past it, the DATA gets 452 4.3.1 (RFC 5321
    4.2.5: insufficient system storage, a temporary failure)."""

    def __init__(self, limits: Limits) -> None:
        self.limits = limits  # read at each take: a teacher may change the limit on a running lab
        self.held = 0

    def take(self, octets: int) -> bool:
        """Hold ``octets`` more, if they fit."""
        if octets > 0 and self.held + octets > self.limits.smtp_data_in_flight:
            return False
        self.held += octets
        return True

    def release(self, octets: int) -> None:
        self.held -= octets


@dataclass(frozen=True)
class Text:
    """The text of one DATA command, and what one look at all of it found."""

    message: bytes  # un-stuffed: what is stored (before the Received header)
    bare_cr: bool  # a CR not followed by LF somewhere
    bare_lf: bool  # a LF not preceded by CR somewhere
    longest_line: int  # octets of the longest un-stuffed line, CRLF included


def import_numpy_soon() -> None:
    """Import numpy on a worker thread now (once): :func:`scan` needs it at the first
    DATA, and importing it there held the lab loop ~100-150 ms, every session waiting
    (benchmarks/lag_stacks.py found it). A DATA that comes sooner waits for the import."""
    global _numpy_asked
    if not _numpy_asked and "numpy" not in sys.modules:
        _numpy_asked = True
        asyncio.get_running_loop().run_in_executor(None, _import_numpy)


_numpy_asked = False


def _import_numpy() -> None:
    try:
        import numpy  # noqa: F401
    except ImportError:  # scan() says so at the first DATA
        pass


def scan(raw: bytes) -> Text:
    """Look at ``raw`` = CRLF + the text as sent + CRLF.CRLF once, for every rule.

    A Python loop over a 1 MiB message's 13,000 lines costs more than the rest of
    its way to the disk, and each ``bytes.count`` is a pass of its own; numpy
    looks at every octet in C, a few times faster than the three passes of
    ``count(b"\r")``, ``count(b"\n")``, ``count(b"\r\n")`` it replaces, and finds
    the lines (for their length and for transparency dots) on the way.
    """
    # Imported here, not at the top: a lab that only serves IMAP or POP3 (the scale
    # benchmark's, a reader's) does not carry numpy's 14 MB until mail arrives.
    import numpy as np

    octets = np.frombuffer(raw, dtype=np.uint8)
    # np.equal/np.less, not == and <: atheris (scripts/fuzz) replaces every comparison
    # operator with a hook that kept each resulting array alive, about 2 KB per input
    # here, until the 2 GB limit ended the run. Same arrays, same result.
    # One octet-sized mask alive at a time, each dropped as soon as it is counted or
    # its positions are taken: three masks of a 1 MiB text alive at once (with the
    # text and its copy) came back from the allocator as fresh pages every time,
    # about 600 page faults, more than the passes themselves cost.
    ends, crs = _line_ends(np, octets)
    pairs = int(np.count_nonzero(np.equal(octets[ends[np.greater(ends, 0)] - 1], CR)))  # LFs after a CR
    bare_cr = crs != pairs
    bare_lf = len(ends) != pairs
    # The text's lines start after the LF of the CRLF put in front and before the
    # end marker's.
    firsts = ends[np.less(ends, len(raw) - 4)] + 1  # where each line of the text starts
    stuffed = np.equal(octets[firsts], DOT)  # sent with a transparency dot (RFC 5321 4.5.2)
    # A line's length, CRLF included, is the distance from the LF before it to its
    # own, less its transparency dot.
    lengths = np.diff(ends)[:len(firsts)] - stuffed[:len(ends) - 1]
    longest = int(lengths.max()) if len(lengths) else 0
    if bare_cr or bare_lf or np.any(stuffed):
        message = unstuff(raw)
    else:
        message = raw[2:-3]
    return Text(message, bare_cr, bare_lf, longest)


def _line_ends(np: Any, octets: Any) -> tuple[Any, int]:
    """Where each LF is, and how many CRs there are, a block at a time: a mask
    the size of a 1 MiB text is 1 MiB of fresh pages from the allocator each
    time (a page fault per 4 KiB), a block's mask is reused memory that stays
    in the cache."""
    if len(octets) <= _BLOCK:
        return np.flatnonzero(np.equal(octets, LF)), int(np.count_nonzero(np.equal(octets, CR)))
    parts = []
    crs = 0
    for start in range(0, len(octets), _BLOCK):
        block = octets[start:start + _BLOCK]
        parts.append(np.flatnonzero(np.equal(block, LF)) + start)
        crs += int(np.count_nonzero(np.equal(block, CR)))
    return np.concatenate(parts), crs


def unstuff(raw: bytes) -> bytes:
    """The message from ``raw`` = ``CRLF + text + CRLF.CRLF``: remove the
    transparency dot of every line that starts with one (RFC 5321 4.5.2)."""
    text = raw[:-3]
    if b"\r\n." in text:
        text = text.replace(b"\r\n.", b"\r\n")
    return text[2:]


def check_line_endings(text: Text) -> Reply | None:
    """A bare CR or bare LF anywhere in the text refuses the whole message."""
    if text.bare_lf:
        return Reply(554, "5.5.2", "Message refused: bare <LF> in the message text; every line"
                     " must end with <CRLF> (RFC 5321 2.3.8). Nothing was stored.")
    if text.bare_cr:
        return Reply(554, "5.5.2", "Message refused: bare <CR> in the message text; every line"
                     " must end with <CRLF> (RFC 5321 2.3.8). Nothing was stored.")
    return None


def check_line_length(text: Text, limit: int) -> Reply | None:
    """RFC 5321 4.5.3.1.6: a text line is at most 1000 octets including CRLF.
    Meaningful once the text is known to use CRLF only."""
    if text.longest_line > limit:
        return Reply(500, "5.5.2", f"Line too long: {text.longest_line} octets, the limit is {limit}"
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
