"""The IMAP ENVELOPE of a message (RFC 3501 7.4.2) from its RFC 5322 header.

    ENVELOPE (date subject from sender reply-to to cc bcc in-reply-to message-id)

Date, subject, in-reply-to and message-id are the header values as written
(unfolded, never decoded: RFC 2047 words stay encoded, the client decodes them).
Each address is ``(name adl mailbox host)``; a group ``name: a, b;`` is written
as ``(NIL NIL "name" NIL)``, its members, then ``(NIL NIL NIL NIL)``. Sender and
Reply-To default to From when absent or empty.

Addresses are parsed as Dovecot parses them (RFC 5322 3.4 with the obsolete
forms of section 4.4): a comment after a bare address becomes its name, a
missing local part or domain is filled in with ``MISSING_MAILBOX`` /
``MISSING_DOMAIN`` so clients never see a NIL host outside group syntax.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from .mimeparse import Lexer, Part, unfold
from .quoting import imap_nstring, wire_text

#: Most addresses kept in one ENVELOPE field (group markers included).
MAX_ADDRESSES = 1000

#: RFC 5322 3.2.3 atext plus 8-bit bytes (UTF-8 names, RFC 6532), as Dovecot accepts them.
_SPECIALS = frozenset(b'()<>[]:;@\\,."' b" \t\r\n")
_ATOM_STOP = _SPECIALS
_ATOM_OR_DOT_STOP = _SPECIALS - {ord(".")}


@dataclass
class Address:
    name: bytes | None = None
    adl: bytes | None = None
    mailbox: bytes | None = None
    host: bytes | None = None

    def imap(self) -> str:
        return "(" + " ".join(imap_nstring(None if v is None else wire_text(v))
                              for v in (self.name, self.adl, self.mailbox, self.host)) + ")"


class _AddressParser:
    """RFC 5322 3.4 address-list, forgiving in the ways real mail needs."""

    def __init__(self, value: bytes, limit: int = MAX_ADDRESSES) -> None:
        self.lex = Lexer(value)
        self.out: list[Address] = []
        self.limit = limit

    # -- lexical pieces --
    def phrase(self) -> bytes | None:
        """phrase = 1*word / obs-phrase; words joined by one space. None if there is none."""
        lex = self.lex
        lex.skip_cfws()
        words: list[bytes] = []
        while not lex.at_end():
            c = lex.peek()
            if c == 0x22:
                words.append(lex.quoted_string())
            elif c == 0x2E and words:  # obs-phrase allows dots between words
                words.append(lex.token(_ATOM_OR_DOT_STOP))
            elif c not in _ATOM_STOP:
                words.append(lex.token(_ATOM_OR_DOT_STOP))
            else:
                break
            lex.skip_cfws()
        if not words:
            return None
        return b" ".join(words)

    def dot_atom(self) -> bytes:
        """dot-atom (obs: CFWS around the dots), returned without the whitespace."""
        lex = self.lex
        out = bytearray()
        while True:
            lex.skip_cfws()
            c = lex.peek()
            if c == 0x22:
                out += lex.quoted_string()
            elif c is not None and c not in _ATOM_OR_DOT_STOP:
                out += lex.token(_ATOM_OR_DOT_STOP)
            else:
                break
        lex.skip_cfws()
        return bytes(out)

    def local_part(self) -> bytes:
        return self.dot_atom()

    def domain(self) -> bytes:
        lex = self.lex
        lex.skip_cfws()
        if lex.peek() == 0x5B:  # "[" domain-literal
            end = lex.s.find(b"]", lex.i)
            end = len(lex.s) - 1 if end < 0 else end
            lit = lex.s[lex.i:end + 1].replace(b"\r\n", b"").replace(b"\n", b"")
            lex.i = end + 1
            lex.skip_cfws()
            return lit
        return self.dot_atom()

    # -- grammar --
    def angle_addr(self, addr: Address) -> bool:
        """angle-addr = "<" [obs-route] addr-spec ">"; False if malformed."""
        lex = self.lex
        lex.i += 1  # "<"
        lex.skip_cfws()
        if lex.peek() == 0x40:  # "@" obs-route = obs-domain-list ":"
            route = []
            while lex.peek() == 0x40:
                lex.i += 1
                route.append(b"@" + self.domain())
                while lex.peek() == 0x2C:
                    lex.i += 1
                    lex.skip_cfws()
            if lex.peek() != 0x3A:
                return False
            lex.i += 1
            addr.adl = b",".join(route)
            lex.skip_cfws()
        if lex.peek() == 0x3E:  # "<>": the null reverse-path
            lex.i += 1
            lex.skip_cfws()
            return True  # no mailbox, no host: both filled in as missing
        addr.mailbox = self.local_part() or None
        if lex.peek() == 0x40:
            lex.i += 1
            addr.host = self.domain()
        if lex.peek() != 0x3E:
            return False
        lex.i += 1
        lex.skip_cfws()
        return True

    def mailbox(self) -> None:
        lex = self.lex
        start = lex.i
        addr = Address()
        name = self.phrase()
        if lex.peek() == 0x3C:  # name-addr
            addr.name = name or None
            if not self.angle_addr(addr):
                addr.host = b"SYNTAX_ERROR"
                # Skip the rest of this address.
                while not lex.at_end() and lex.peek() not in (0x2C, 0x3B):
                    lex.i += 1
        else:
            lex.i = start
            lex.comments.clear()
            addr.mailbox = self.local_part() or None
            if lex.peek() == 0x40:
                lex.i += 1
                addr.host = self.domain()
                if lex.comments:
                    addr.name = lex.comments[-1]
            elif lex.comments:
                addr.name = lex.comments[-1]
            else:
                rest = self.phrase()
                if rest is not None:
                    # "Some Name" with no address: the words are a name, not a mailbox.
                    addr.name = (addr.mailbox or b"") + b" " + rest
                    addr.mailbox = None
        if addr.mailbox is None:
            addr.mailbox = b"MISSING_MAILBOX"
        if not addr.host:
            addr.host = b"MISSING_DOMAIN"
        self.out.append(addr)

    def address(self) -> None:
        lex = self.lex
        start = lex.i
        name = self.phrase()
        if name is not None and lex.peek() == 0x3A:  # group = display-name ":" [list] ";"
            lex.i += 1
            self.out.append(Address(mailbox=name))
            while len(self.out) < self.limit:
                lex.skip_cfws()
                c = lex.peek()
                if c is None:
                    break
                if c == 0x3B:
                    lex.i += 1
                    break
                if c == 0x2C:
                    lex.i += 1
                    continue
                before = lex.i
                self.mailbox()
                if lex.i == before:
                    lex.i += 1
            self.out.append(Address())
        else:
            lex.i = start
            self.mailbox()

    def address_list(self) -> list[Address]:
        lex = self.lex
        while len(self.out) < self.limit:
            lex.skip_cfws()
            if lex.at_end():
                break
            if lex.peek() in (0x2C, 0x3B):
                lex.i += 1
                continue
            before = lex.i
            self.address()
            lex.skip_cfws()
            if lex.i == before:
                lex.i += 1  # never loop on a byte nothing accepts
            elif not lex.at_end() and lex.peek() != 0x2C:
                # Garbage after an address ends the list (as Dovecot does).
                break
        return self.out[:self.limit]


# The shapes nearly all real headers have, read by one regex each instead of byte by
# byte: "user@host", "Some Name <user@host>", '"Some Name" <user@host>'. Anything
# else (comments, groups, routes, escapes, folding) goes to the full parser, which
# gives the same answer for these shapes too (tests/test_imap_message.py checks).
_ATEXT = rb"[A-Za-z0-9!#$%&'*+/=?^_`{|}~\-\x80-\xff]"
_ADDR_SPEC = rb"(" + _ATEXT + rb"+(?:\." + _ATEXT + rb"+)*)@(" + _ATEXT + rb"+(?:\." + _ATEXT + rb"+)*)"
_ADDR = re.compile(_ADDR_SPEC)
# A display name before "<": atext, dots and blanks, starting with atext. One character
# class, so a failing match costs one pass (the earlier "[ \t]*(...)*?[ \t]*<" form
# backtracked quadratically on a long run of spaces: 9 s for 64k spaces on the lab loop).
_NAME = re.compile(_ATEXT + rb"[A-Za-z0-9!#$%&'*+/=?^_`{|}~\-\x80-\xff \t.]*")
_QUOTED = re.compile(rb'"([^"\\\r\n]*)"[ \t]*<' + _ADDR_SPEC + rb">")
_NEEDS_PARSER = re.compile(rb'[\r\n"()\\:;\[\]]')


def _simple_addresses(value: bytes) -> list[Address] | None:
    # Each piece is stripped of its blanks first and matched with patterns that never
    # start or end with a blank, so no two quantifiers compete for the same spaces.
    if b'"' in value and b"," not in value:
        m = _QUOTED.fullmatch(value.strip(b" \t"))
        return [Address(m.group(1) or None, None, m.group(2), m.group(3))] if m else None
    if _NEEDS_PARSER.search(value):
        return None
    out = []
    for piece in value.split(b","):
        piece = piece.strip(b" \t")
        if not piece:
            continue
        m = _ADDR.fullmatch(piece)
        if m:
            out.append(Address(None, None, m.group(1), m.group(2)))
            continue
        lt = piece.find(b"<")
        if lt < 0 or not piece.endswith(b">"):
            return None
        m = _ADDR.fullmatch(piece, lt + 1, len(piece) - 1)
        name = piece[:lt].rstrip(b" \t")
        if not m or (name and not _NAME.fullmatch(name)):
            return None
        out.append(Address(b" ".join(name.split()) or None, None, m.group(1), m.group(2)))
    return out


def parse_addresses(value: bytes, limit: int = MAX_ADDRESSES) -> list[Address]:
    """The addresses in a header value (folding allowed); [] for an empty value."""
    # A fold is whitespace to an address list (RFC 5322 3.2.2): unfolded, the common
    # shapes take the fast path (a folded 20,000-address To: costs 10x less).
    simple = _simple_addresses(unfold(value))
    if simple is not None:
        return simple[:limit]
    return _AddressParser(value, limit).address_list()


_ATEXT_BYTES = frozenset(b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789"
                         b"!#$%&'*+-/=?^_`{|}~") | frozenset(range(0x80, 0x100))


def _phrase_text(text: bytes) -> bytes:
    """A display name as an address list writes it: bare if all atext, else quoted."""
    if b"=?" in text or all(c in _ATEXT_BYTES for c in text):
        return text  # encoded words stay bare so that SEARCH can decode them
    return b'"' + text.replace(b"\\", b"\\\\").replace(b'"', b'\\"') + b'"'


def address_search_text(value: bytes) -> bytes:
    """An address field rewritten in one normal form, the text SEARCH FROM/TO/CC/BCC match.

    Dovecot matches these keys against the parsed addresses written back out:
    ``Name <user@host>`` (the name quoted when it needs it, a comment used as the
    name), a bare address as ``<user@host>``, groups as ``name: a, b;``, so a
    search for ``"Doe, John" <j`` finds every way of writing that address.
    Not capped at MAX_ADDRESSES: the text is no longer than the header it comes from.
    """
    return addresses_text(parse_addresses(value, limit=len(value) + 1))


def addresses_text(addresses: list[Address]) -> bytes:
    """Parsed addresses written back out as :func:`address_search_text` does."""
    out = bytearray()
    first, in_group = True, False
    for a in addresses:
        if not first:
            out += b", "
        first = False
        if a.host is None:  # group syntax: start (name in mailbox) or end marker
            if not in_group:
                out += _phrase_text(a.mailbox) if a.mailbox else b'""'
                out += b": "
                first = True
            else:
                if out.endswith(b", "):
                    del out[-2:]
                elif out.endswith(b": "):
                    del out[-1:]
                out += b";"
            in_group = not in_group
            continue
        if a.name is not None:
            out += _phrase_text(a.name)
            out += b" "
        out += b"<"
        if a.adl:
            out += a.adl + b":"
        out += (a.mailbox or b'""').replace(b"\\", b"\\\\").replace(b'"', b'\\"')
        out += b"@" + a.host + b">"
    return bytes(out)


def address_list(addresses: list[Address]) -> str:
    if not addresses:
        return "NIL"
    return "(" + "".join(a.imap() for a in addresses) + ")"


def _all_addresses(part: Part, name: str) -> list[Address]:
    # A repeated address field adds its addresses (To: a / To: b is To: a, b), as in Dovecot.
    out: list[Address] = []
    for f in part.named(name):
        if len(out) >= MAX_ADDRESSES:
            break
        out += parse_addresses(f.value)
    return out[:MAX_ADDRESSES]


def envelope_text(raw: bytes) -> str:
    """A header value as ENVELOPE sends it: unfolded (RFC 5322 2.2.3), never decoded."""
    return wire_text(unfold(raw))


def envelope(part: Part) -> str:
    """The ENVELOPE of the message whose header is ``part``'s header."""

    def text(name: str) -> str:
        raw = part.last(name)  # a repeated field overrides the earlier one, as in Dovecot
        return imap_nstring(None if raw is None else envelope_text(raw))

    def addrs(name: str) -> list[Address]:
        return _all_addresses(part, name)

    from_ = addrs("from")
    sender = addrs("sender") or from_
    reply_to = addrs("reply-to") or from_
    return "({})".format(" ".join([
        text("date"), text("subject"),
        address_list(from_), address_list(sender), address_list(reply_to),
        address_list(addrs("to")), address_list(addrs("cc")), address_list(addrs("bcc")),
        text("in-reply-to"), text("message-id"),
    ]))
