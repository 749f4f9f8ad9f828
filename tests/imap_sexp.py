"""A tiny reader for IMAP response data (RFC 3501 section 9): lists, atoms, strings, literals.

Used by the IMAP message tests to check that ENVELOPE/BODYSTRUCTURE strings are
valid IMAP syntax and to compare answers by meaning rather than by quoting
style. Strings (quoted or literal) come back as ``bytes``, NIL as ``None``,
atoms and numbers as ``str``, parenthesized lists as Python lists.
"""

from __future__ import annotations


class SexpError(ValueError):
    pass


_ATOM_END = b' ()"{\r\n'


class _Reader:
    def __init__(self, data: bytes) -> None:
        self.s = data
        self.i = 0

    def value(self):
        s = self.s
        if self.i >= len(s):
            raise SexpError("unexpected end")
        c = s[self.i:self.i + 1]
        if c == b"(":
            self.i += 1
            items = []
            while True:
                if self.i >= len(s):
                    raise SexpError("unclosed list")
                if s[self.i:self.i + 1] == b")":
                    self.i += 1
                    return items
                if items:
                    if s[self.i:self.i + 1] != b" ":
                        # RFC 3501 separates list items by one SP; ENVELOPE address
                        # lists "((...)(...))" are the only exception clients accept.
                        if not (s[self.i:self.i + 1] == b"(" and s[self.i - 1:self.i] == b")"):
                            raise SexpError(f"expected SP at {self.i}: {s[self.i:self.i + 20]!r}")
                    else:
                        self.i += 1
                items.append(self.value())
        if c == b'"':
            return self.quoted()
        if c == b"{":
            return self.literal()
        return self.atom()

    def quoted(self) -> bytes:
        s = self.s
        self.i += 1
        out = bytearray()
        while True:
            if self.i >= len(s):
                raise SexpError("unterminated quoted string")
            ch = s[self.i]
            if ch == 0x22:
                self.i += 1
                return bytes(out)
            if ch in (0x0D, 0x0A, 0x00) or ch >= 0x80:
                raise SexpError(f"{ch:#x} not allowed in a quoted string")
            if ch == 0x5C:
                nxt = s[self.i + 1:self.i + 2]
                if nxt not in (b'"', b"\\"):
                    raise SexpError("bad escape in quoted string")
                out += nxt
                self.i += 2
                continue
            out.append(ch)
            self.i += 1

    def literal(self) -> bytes:
        s = self.s
        end = s.find(b"}", self.i)
        if end < 0:
            raise SexpError("bad literal")
        count = s[self.i + 1:end].rstrip(b"+")
        if not count.isdigit() or s[end + 1:end + 3] != b"\r\n":
            raise SexpError("bad literal header")
        n = int(count)
        start = end + 3
        if start + n > len(s):
            raise SexpError("literal runs past the data")
        self.i = start + n
        return s[start:start + n]

    def atom(self):
        s = self.s
        j = self.i
        depth = 0
        while j < len(s):
            ch = s[j:j + 1]
            if ch == b"[":
                depth += 1
            elif ch == b"]":
                depth -= 1
            elif depth == 0 and ch in (b" ", b"(", b")", b'"', b"{", b"\r", b"\n"):
                break
            j += 1
        tok = s[self.i:j]
        if not tok:
            raise SexpError(f"empty atom at {self.i}: {s[self.i:self.i + 20]!r}")
        self.i = j
        text = tok.decode("ascii")
        return None if text.upper() == "NIL" else text


def read(data: bytes | str):
    """Parse exactly one IMAP value; raise SexpError if it is not valid or not alone."""
    if isinstance(data, str):
        data = data.encode("utf-8")
    r = _Reader(data)
    value = r.value()
    if r.i != len(data):
        raise SexpError(f"trailing data at {r.i}: {data[r.i:r.i + 20]!r}")
    return value


def read_all(data: bytes):
    """Parse a run of SP-separated values (e.g. the inside of a FETCH response)."""
    return read(b"(" + data + b")")
