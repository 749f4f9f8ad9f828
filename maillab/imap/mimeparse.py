"""A small, fast MIME splitter over message bytes (RFC 5322 header, RFC 2045/2046 parts).

It never decodes anything: it finds where each header, body and part starts and
ends, in the CRLF bytes the IMAP server sends, so sizes and sections come out
exactly as they go on the wire. Boundaries are found the way Dovecot finds them:
a line that starts with ``--`` and the boundary of an open multipart (the longest
that matches, then the innermost); an outer boundary also closes every part inside
it, so a multipart whose closing delimiter is missing still ends where its parent
does. Where RFC 2046 leaves the edges open (which line break belongs to which part,
what a header cut short by a delimiter holds) the choices are Dovecot's, so that
BODY[section] sizes agree with it byte for byte.

Nothing here raises on malformed input: a message without a header, a multipart
without a boundary or without parts, or a part nested too deep is still a tree,
just a smaller one. The caps below keep a hostile message from building a huge one.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

#: Deepest MIME nesting parsed (multiparts and message/rfc822 inside each other);
#: deeper parts are kept as opaque leaves (Dovecot's limit is 100 too).
MAX_NESTING = 100
#: Most MIME parts parsed in one message; parts past it stay unparsed bytes of their multipart.
MAX_PARTS = 10_000
#: Most parameters kept from one Content-Type or Content-Disposition.
MAX_PARAMETERS = 100
#: Boundaries are compared on at most this many octets (RFC 2046 5.1.1 allows 70).
MAX_BOUNDARY = 70

_WSP = b" \t"


@dataclass
class HeaderField:
    """One header field: its name as written and its raw value (folding kept)."""

    name: bytes
    value: bytes  # after the colon and any whitespace following it; CRLFs of folding kept
    start: int  # offset of the field's first line in the message
    end: int  # offset just past the field's last line (its CRLF included)
    key: str = ""  # the name in lower case, for lookups

    def __post_init__(self) -> None:
        self.key = self.name.decode("latin-1").lower()


@dataclass
class Part:
    """One MIME entity: a header, a body and (for multipart, message/rfc822) what is inside."""

    start: int  # where the entity's header starts
    header_end: int  # end of the header's last line (the empty line that ends it follows)
    body_start: int  # just past the blank line ending the header (== header end if none)
    end: int  # where the body ends (the CRLF before a boundary belongs to the boundary)
    fields: list[HeaderField]
    type: str = "text"  # lower case, for deciding how to parse; the wire uses what the header says
    subtype: str = "plain"
    children: list[Part] = field(default_factory=list)  # parts of a multipart
    message: Part | None = None  # the embedded message of a message/rfc822 part
    is_multipart: bool = False
    # The first Content-Type field parsed (None if absent or not type/subtype).
    content_type: tuple[bytes, bytes, list[tuple[bytes, bytes]]] | None = None
    # A header cut short by a delimiter hands the line break before it to the parent.
    gave_line_break: bool = False
    _index: dict[str, list[HeaderField]] | None = field(default=None, repr=False, compare=False)

    def named(self, name: str) -> list[HeaderField]:
        """Every field called ``name`` (lower case), in message order."""
        index = self._index
        if index is None:
            index = self._index = {}
            for f in self.fields:
                index.setdefault(f.key, []).append(f)
        return index.get(name, [])

    def first(self, name: str) -> bytes | None:
        """The raw value of the first field called ``name`` (lower case), if any."""
        found = self.named(name)
        return found[0].value if found else None

    def last(self, name: str) -> bytes | None:
        found = self.named(name)
        return found[-1].value if found else None


# -- header ------------------------------------------------------------------------

def header_end(data: bytes, start: int, limit: int) -> tuple[int, int]:
    """Where the header starting at ``start`` ends: (end of header lines, start of body).

    The header ends with the first empty line (RFC 5322 2.1); a header that runs
    into ``limit`` without one takes everything and leaves an empty body.
    """
    if start >= limit:
        return limit, limit
    # A part that begins with the empty line has no header at all.
    if data.startswith(b"\r\n", start):
        return start, start + 2
    if data.startswith(b"\n", start):
        return start, start + 1
    crlf = data.find(b"\n\r\n", start, limit)
    lf = data.find(b"\n\n", start, limit)
    if crlf >= 0 and (lf < 0 or crlf < lf):
        return crlf + 1, crlf + 3
    if lf >= 0:
        return lf + 1, lf + 2
    return limit, limit


def parse_fields(data: bytes, start: int, end: int) -> list[HeaderField]:
    """Split the header lines in ``data[start:end]`` into fields (folding kept in values)."""
    fields: list[HeaderField] = []
    block = data[start:end]
    lines = block.split(b"\n")
    if lines[-1] == b"":
        lines.pop()  # the block ended with a line break
    pieces: list[bytes] = []  # value lines of the field being read, joined once (linear)
    pos = start
    for line in lines:
        line_end = min(pos + len(line) + 1, end)
        if line[:1] in (b" ", b"\t") and fields:
            # A continuation line (folding, RFC 5322 2.2.3) belongs to the field above.
            pieces.append(line)
            fields[-1].end = line_end
        else:
            if pieces:
                fields[-1].value = b"\n".join(pieces)
                pieces = []
            colon = line.find(b":")
            if colon < 0:
                name, value = line.rstrip(b"\r"), b""
            else:
                name = line[:colon].rstrip(_WSP)
                value = line[colon + 1:].lstrip(_WSP)
            fields.append(HeaderField(name, value, pos, line_end))
            pieces.append(value)
        pos = line_end
    if pieces:
        fields[-1].value = b"\n".join(pieces)
    for f in fields:
        # The line break that ends the field is not part of its value.
        if f.value.endswith(b"\r"):
            f.value = f.value[:-1]
    return fields


_FOLD = re.compile(rb"\r?\n[ \t]*")


def unfold(value: bytes) -> bytes:
    """A field value on one line (RFC 5322 2.2.3): each fold and the whitespace after it
    become one space, as Dovecot writes ENVELOPE and BODYSTRUCTURE strings."""
    if b"\n" not in value:
        return value
    return _FOLD.sub(b" ", value)


# -- RFC 822 lexical tokens (used by Content-Type and addresses) -----------------------

#: RFC 2045 5.1 tspecials plus space and controls: what ends a MIME token.
_TSPECIALS = frozenset(b'()<>@,;:\\"/[]?= \t\r\n')
_PARAM_JUNK_STOP = frozenset(b"; \t\r\n")


class Lexer:
    """RFC 5322 3.2 lexical scanning over a header value: CFWS, atoms, quoted strings."""

    def __init__(self, text: bytes) -> None:
        self.s = text
        self.i = 0
        self.comments: list[bytes] = []

    def at_end(self) -> bool:
        return self.i >= len(self.s)

    def peek(self) -> int | None:
        return self.s[self.i] if self.i < len(self.s) else None

    def skip_cfws(self) -> None:
        """Skip whitespace and (nested) comments, remembering the comments' text."""
        s, n = self.s, len(self.s)
        while True:
            self.i = _BLANKS.match(s, self.i).end()  # a run at a time, not a byte
            if self.i < n and s[self.i] == 0x28:  # "("
                self.comments.append(self._comment())
            else:
                return

    def _comment(self) -> bytes:
        s, n = self.s, len(self.s)
        depth, out = 0, bytearray()
        while self.i < n:
            c = s[self.i]
            self.i += 1
            if c == 0x5C and self.i < n:  # quoted-pair
                out.append(s[self.i])
                self.i += 1
            elif c == 0x28:
                if depth:
                    out.append(c)
                depth += 1
            elif c == 0x29:
                depth -= 1
                if depth == 0:
                    break
                out.append(c)
            elif c not in b"\r\n":
                out.append(c)
        return bytes(out)

    def quoted_string(self) -> bytes:
        """The content of a quoted string starting at the current DQUOTE, quoted-pairs undone."""
        s, n = self.s, len(self.s)
        self.i += 1
        out = bytearray()
        while self.i < n:
            run = _QUOTED_RUN.match(s, self.i)  # the plain bytes up to the next one to look at
            if run:
                out += run.group()
                self.i = run.end()
                continue
            c = s[self.i]
            self.i += 1
            if c == 0x22:
                break
            if c == 0x5C and self.i < n:
                out.append(s[self.i])
                self.i += 1
            elif c not in b"\r\n":
                out.append(c)
        return bytes(out)

    def token(self, stop: frozenset[int] = _TSPECIALS) -> bytes:
        """A run of bytes up to the next byte in ``stop``."""
        run = _run_until(stop).match(self.s, self.i)
        self.i = run.end()
        return run.group()


_BLANKS = re.compile(rb"[ \t\r\n]*")
#: Inside a quoted string, the bytes taken as they are (not DQUOTE, backslash, CR, LF).
_QUOTED_RUN = re.compile(rb'[^"\\\r\n]+')
_RUNS: dict[frozenset[int], re.Pattern[bytes]] = {}


def _run_until(stop: frozenset[int]) -> re.Pattern[bytes]:
    """A pattern matching the longest run of bytes not in ``stop`` (one per stop set)."""
    pattern = _RUNS.get(stop)
    if pattern is None:
        pattern = re.compile(b"[^" + b"".join(b"\\x%02x" % c for c in sorted(stop)) + b"]*")
        _RUNS[stop] = pattern
    return pattern


# -- Content-Type and its parameters (RFC 2045 5.1, RFC 2231) --------------------------

def parse_params(lex: Lexer) -> list[tuple[bytes, bytes]]:
    """The ``;``-separated ``attribute=value`` list that follows a MIME value, as written."""
    params: list[tuple[bytes, bytes]] = []
    while len(params) < MAX_PARAMETERS:
        lex.skip_cfws()
        if lex.peek() != 0x3B:  # ";"
            # Tolerate junk between parameters by skipping to the next ";".
            nxt = lex.s.find(b";", lex.i)
            if nxt < 0:
                break
            lex.i = nxt
        lex.i += 1
        lex.skip_cfws()
        name = lex.token()
        lex.skip_cfws()
        if not name or lex.peek() != 0x3D:  # "="
            continue
        lex.i += 1
        lex.skip_cfws()
        if lex.peek() == 0x22:
            value = lex.quoted_string()
        elif lex.peek() == 0x3D:
            # name==?utf-8?b?...?= : an RFC 2047 word where a token belongs; keep it whole.
            value = lex.token(_PARAM_JUNK_STOP)
        else:
            value = lex.token()
        params.append((name, value))
    return params


def parse_content_type(value: bytes | None) -> tuple[bytes, bytes, list[tuple[bytes, bytes]]] | None:
    """``(type, subtype, params)`` as written, or None if the value is not a valid media type."""
    if value is None:
        return None
    lex = Lexer(value)
    lex.skip_cfws()
    mtype = lex.token()
    lex.skip_cfws()
    if not mtype or lex.peek() != 0x2F:  # "/"
        return None
    lex.i += 1
    lex.skip_cfws()
    subtype = lex.token()
    if not subtype:
        return None
    return mtype, subtype, parse_params(lex)


def merge_rfc2231(params: list[tuple[bytes, bytes]]) -> list[tuple[bytes, bytes]]:
    """RFC 2231 3: ``name*0``, ``name*1``... become one ``name`` (``name*`` if any part is
    extended); the value keeps its ``charset'lang'`` prefix and %-encoding. Plain
    parameters come first; continuations with a missing index are left as they are."""
    plain: list[tuple[bytes, bytes]] = []
    split: list[tuple[bytes, int, bool, bytes]] = []
    for name, value in params:
        star = name.find(b"*")
        if star < 0:
            plain.append((name, value))
            continue
        # Read as Dovecot reads it: "*" [digits] ["*"]; a bare "name*" is extended.
        rest, idx, extended = name[star + 1:], 0, False
        if rest:
            digits = len(rest) - len(rest.lstrip(b"0123456789"))
            if digits > 9:
                # No real continuation has a billion parts; int() would also raise past
                # its digit limit. Kept as the plain parameter it was written as.
                plain.append((name, value))
                continue
            idx = int(rest[:digits]) if digits else 0
            rest = rest[digits:]
            extended = rest == b"*"
            if rest not in (b"", b"*"):
                plain.append((name, value))
                continue
        else:
            extended = True
        split.append((name[:star], idx, extended, value))
    if not split:
        return plain
    split.sort(key=lambda p: (p[0].lower(), p[1]))
    merged: list[tuple[bytes, bytes]] = []
    i = 0
    while i < len(split):
        j = i
        key = split[i][0].lower()
        while j < len(split) and split[j][0].lower() == key:
            j += 1
        group = split[i:j]
        if any(p[1] != n for n, p in enumerate(group)):
            for base, idx, ext, value in group:
                merged.append((base + b"*%d" % idx + (b"*" if ext else b""), value))
        else:
            any_ext = any(p[2] for p in group)
            out = bytearray(b"''" if any_ext and not group[0][2] else b"")
            for _base, _idx, ext, value in group:
                out += _pct_escape(value) if any_ext and not ext else value
            merged.append((group[0][0] + (b"*" if any_ext else b""), bytes(out)))
        i = j
    return plain + merged


def _pct_escape(value: bytes) -> bytes:
    """An unencoded continuation joined to encoded ones: only "%" needs escaping (as Dovecot)."""
    return value.replace(b"%", b"%25")


def param_value(params: list[tuple[bytes, bytes]], name: bytes) -> bytes | None:
    lname = name.lower()
    for k, v in params:
        if k.lower() == lname:
            return v
    return None


# -- the MIME tree ------------------------------------------------------------------

_DASHES = re.compile(rb"^--", re.MULTILINE)
#: Times each "--" line of a message may be looked at on average (see _Splitter).
DELIMITER_SCANS = 8


class _Splitter:
    """Walks one message once, building the Part tree (RFC 2046 5.1.1 delimiters)."""

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.parts = 0
        # per stack of open boundaries: boundary -> innermost index, lengths longest first
        self.lookups: dict[tuple[bytes, ...], tuple[dict[bytes, int], list[int]]] = {}
        # Each nesting level scans its region again; a hostile message (thousands of
        # "--" lines inside 100 levels) would be scanned 100 times over. Past this many
        # "--" lines looked at, no more delimiters are found: the rest is body text.
        self.scan_budget = DELIMITER_SCANS * (data.count(b"\n--") + 1) + 10_000

    def next_delimiter(self, pos: int, end: int, stack: list[bytes]) -> tuple[int, int, int, bool] | None:
        """The next boundary line at or after ``pos``: (line start, line end, stack index, closes).

        As in Dovecot, the line only has to start with a boundary (RFC 2046 allows
        trailing whitespace, mailers write worse); the longest matching boundary wins,
        then the innermost. Each line starting with "--" is looked up in a table of the
        open boundaries (one regex of them all would be compiled again for every
        multipart: 10,000 nested multiparts took minutes).
        """
        if not stack:
            return None
        key = tuple(stack)
        lookup = self.lookups.get(key)
        if lookup is None:
            index = {b: i for i, b in enumerate(stack)}  # a later (inner) equal one wins
            lookup = self.lookups[key] = (index, sorted({len(b) for b in stack}, reverse=True))
        index, lengths = lookup
        data = self.data
        for m in _DASHES.finditer(data, pos, end):
            self.scan_budget -= 1
            if self.scan_budget < 0:
                return None
            start = m.end()
            for n in lengths:
                if start + n <= end and (best := index.get(data[start:start + n])) is not None:
                    cand = m.start()
                    line_end = data.find(b"\n", cand, end)
                    line_end = end if line_end < 0 else line_end + 1
                    return cand, line_end, best, data.startswith(b"--", start + n)
        return None

    def body_end(self, body_start: int, delim_start: int) -> int:
        """The body ends before the line break that precedes the delimiter line."""
        if delim_start <= body_start:
            return body_start
        end = delim_start - 1  # the LF
        if end > body_start and self.data[end - 1] == 0x0D:
            end -= 1
        return max(end, body_start)

    def entity(self, start: int, end: int, stack: list[bytes], depth: int,
               default: tuple[str, str]) -> tuple[Part, tuple[int, int, int, bool] | None]:
        """Parse the entity at ``start``; return it and the delimiter that ended it (if any)."""
        data = self.data
        self.parts += 1
        hit = self.next_delimiter(start, end, stack)
        limit = hit[0] if hit else end
        hdr_end, body_start = header_end(data, start, limit)
        fields = parse_fields(data, start, hdr_end)
        part = Part(start, hdr_end, body_start, limit, fields, *default)
        ct_value = part.first("content-type")
        ct = parse_content_type(unfold(ct_value)) if ct_value is not None else None
        part.content_type = ct
        if ct is not None:
            part.type = ct[0].decode("latin-1").lower()
            part.subtype = ct[1].decode("latin-1").lower()
        too_deep = depth >= MAX_NESTING or self.parts >= MAX_PARTS
        if part.type == "multipart" and not too_deep:
            part.is_multipart = True
            boundary = param_value(merge_rfc2231(ct[2]), b"boundary") if ct else None
            if boundary:
                boundary = boundary[:MAX_BOUNDARY]
                return self._multipart(part, end, stack, boundary, depth)
        if part.type == "message" and part.subtype == "rfc822" and not too_deep:
            inner, hit = self.entity(body_start, end, stack, depth + 1, ("text", "plain"))
            part.message = inner
            part.end = hit[0] if hit and inner.gave_line_break else inner.end
            return part, hit
        if hit and body_start >= hit[0] > start:
            # The header ran up to the delimiter: the line break before the delimiter
            # belongs to the delimiter, so the header gives it back (as in Dovecot).
            part.body_start = self.body_end(start, hit[0])
            part.header_end = min(part.header_end, part.body_start)
            part.gave_line_break = True
        part.end = self.body_end(part.body_start, hit[0]) if hit else end
        return part, hit

    def _multipart(self, part: Part, end: int, stack: list[bytes], boundary: bytes,
                   depth: int) -> tuple[Part, tuple[int, int, int, bool] | None]:
        inner_stack = stack + [boundary]
        mine = len(stack)
        child_default = ("message", "rfc822") if part.subtype == "digest" else ("text", "plain")
        hit = self.next_delimiter(part.body_start, end, inner_stack)
        # Preamble (RFC 2046 5.1.1) up to the first delimiter; then parts between delimiters.
        while hit is not None and hit[2] == mine and not hit[3]:
            if self.parts >= MAX_PARTS:
                hit = self.next_delimiter(hit[1], end, stack)
                break
            child, hit = self.entity(hit[1], end, inner_stack, depth + 1, child_default)
            part.children.append(child)
        body_floor = part.body_start
        closed = hit is not None and hit[2] == mine and hit[3]
        if closed:
            # The close delimiter; the epilogue runs to the parent's next delimiter.
            body_floor = hit[1]
            hit = self.next_delimiter(hit[1], end, stack)
        if hit is not None and not closed and part.children:
            # An outer delimiter cut this multipart short (no close delimiter). It ends
            # where its last part ends, plus the line break that part's header gave back.
            last = part.children[-1]
            part.end = hit[0] if last.gave_line_break else last.end
        else:
            part.end = self.body_end(body_floor, hit[0]) if hit else end
        return part, hit


def parse(data: bytes) -> Part:
    """The MIME tree of a whole message (CRLF bytes)."""
    part, _ = _Splitter(data).entity(0, len(data), [], 0, ("text", "plain"))
    return part


def find_part(root: Part, path: tuple[int, ...]) -> Part | None:
    """The part an IMAP section number names (RFC 3501 6.4.5), or None if there is none.

    Numbers step into a multipart's parts; a message/rfc822 part is stepped through
    to the message it holds; part 1 of a non-multipart message is the message's body.
    Where the RFC is silent this follows Dovecot: the top level is never stepped
    through (BODY[1] of a message/rfc822 message is the whole message it carries,
    BODY[1.MIME] its own header), and a leaf part N also answers to N.1.
    """
    cur = root
    may_repeat = True  # a leaf answers to one "1" of its own (BODY[2.1] of a text part 2)
    for depth, n in enumerate(path):
        if depth and cur.message is not None:
            cur = cur.message  # below the top, a message/rfc822 part holds a message
            may_repeat = True
        if cur.is_multipart:
            if not 1 <= n <= len(cur.children):
                return None
            cur = cur.children[n - 1]
            may_repeat = True
        elif n == 1 and may_repeat:
            may_repeat = False
        else:
            return None
    return cur
