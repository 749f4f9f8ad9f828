"""Mailbox names as IMAP writes them: modified UTF-7 (RFC 3501 5.1.3) in and out,
quoted when needed, and the LIST/LSUB patterns of RFC 3501 6.3.8."""

from __future__ import annotations

from collections.abc import Callable

from ..store import InvalidName
from ..store.names import DELIMITER, decode_mutf7, encode_mutf7


def wire_name(name: str) -> str:
    """A mailbox name as the client sees it: modified UTF-7, quoted when needed."""
    encoded = DELIMITER.join(encode_mutf7(p) for p in name.split(DELIMITER)) if name else ""
    if encoded and all(c.isalnum() or c in "-_.+/&,:;!#$'=?@^`|~[" for c in encoded):
        return encoded
    return '"' + encoded.replace("\\", "\\\\").replace('"', '\\"') + '"'


def name_from_wire(raw: bytes) -> str:
    """A mailbox name from the wire (modified UTF-7) as Unicode, not yet canonical."""
    try:
        text = raw.decode("ascii")
    except UnicodeDecodeError:
        raise InvalidName("mailbox names are sent in modified UTF-7 (RFC 3501 5.1.3)") from None
    name = decode_mutf7(text)
    if name.endswith(DELIMITER) and len(name) > 1:
        name = name[:-1]  # RFC 3501 6.3.3: "foo/" names "foo"
    if "\0" in name:
        raise InvalidName("NUL in a mailbox name")
    return name


def list_pattern(ref: bytes, pattern: bytes) -> str | None:
    """LIST's reference name and pattern joined (RFC 3501 6.3.8), decoded; None if invalid."""
    text = (ref + pattern).decode("ascii", "replace") if not ref or ref.endswith(b"/") \
        or pattern.startswith(b"/") else (ref + b"/" + pattern).decode("ascii", "replace")
    try:
        return decode_mutf7(text)
    except InvalidName:
        return None


def compile_pattern(pattern: str) -> Callable[[str], bool]:
    """A LIST pattern (RFC 3501 6.3.8: ``*`` anything, ``%`` anything but "/") as a
    matcher that stays linear in the name's length, whatever the pattern.

    A regular expression would backtrack on ``*%*%*%...x``; here the pattern's
    positions are bits of one integer and each name character advances all of
    them at once (a bit-parallel NFA), after runs of wildcards are collapsed.
    """
    tokens: list[str] = []
    for ch in pattern:
        if ch in "*%" and tokens and tokens[-1] in "*%":
            if ch == "*":
                tokens[-1] = "*"
            continue
        tokens.append(ch)
    literal_count = sum(1 for t in tokens if t not in "*%")
    m = len(tokens)
    lit: dict[str, int] = {}
    star = pct = 0
    for i, t in enumerate(tokens):
        if t == "*":
            star |= 1 << i
        elif t == "%":
            pct |= 1 << i
        else:
            lit[t] = lit.get(t, 0) | (1 << i)
    wild = star | pct
    accept = 1 << m

    def closure(s: int) -> int:
        return s | ((s & wild) << 1)  # a wildcard may match nothing; runs are collapsed

    def match(name: str) -> bool:
        if literal_count > len(name):
            return False
        s = closure(1)
        for ch in name:
            nxt = ((s & lit.get(ch, 0)) << 1) | (s & star)
            if ch != DELIMITER:
                nxt |= s & pct
            s = closure(nxt)
            if not s:
                return False
        return bool(s & accept)

    return match
