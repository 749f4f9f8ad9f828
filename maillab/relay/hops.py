"""Read a message's Received chain bottom-up into a hop table.

Every mail server that takes a message adds a ``Received:`` field at the *top*
of its header (RFC 5321 section 4.4, "trace information"), so the chain is read
from the bottom up: the lowest ``Received:`` line is the first hop. RFC 5321
gives each line the same shape::

    Received: from <who connected> (<rDNS> [<IP>])
              by <who received it> via <link> with <protocol>
              id <queue id> for <recipient> ; <date-time>

and RFC 3848 names the ``with`` protocols (ESMTP, ESMTPS = with STARTTLS,
ESMTPA = authenticated, ESMTPSA = both). Real servers bend that shape in
their own ways, which is what this parser is for. It reads, among others:

* Postfix   ``from helo (rdns [ip]) (using TLSv1.3 with cipher ...) by host (Postfix) with ESMTPS id Q``
* Exim      ``from rdns ([ip]:port helo=name) by host with esmtps (TLS1.3) tls CIPHER (Exim 4.96) ... id Q``
* Sendmail  ``... by host (8.17.1/8.17.1) with ESMTPS id Q (version=TLSv1.3 cipher=... bits=256 verify=NOT)``
* qmail     ``from unknown (HELO name) (ip) by host with SMTP`` and ``(qmail 123 invoked from network)``
* Microsoft ``from A (ip) by B (ip) with Microsoft SMTP Server (version=TLS1_2, cipher=...) id 15.20...``
* Gmail     ``... by mx.google.com with ESMTPS id Q for <rcpt> (version=TLS1_3 cipher=... bits=256/256)``

A line that cannot be read is kept as a hop with ``parsed=False`` and its raw
text, never dropped: a header analyzer that silently skips a hop hides
exactly the hop a student should look at.

This module is pure (no sockets, no lab): it is used on the lab's own messages
and on any message pasted into a notebook.
"""

from __future__ import annotations

import email.utils
import functools
import ipaddress
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

#: The clause keywords of RFC 5321 section 4.4 (Stamp).
CLAUSES = ("from", "by", "via", "with", "id", "for")

#: ``with`` protocols that say the hop was encrypted (RFC 3848, RFC 8314).
ENCRYPTED_PROTOCOLS = frozenset({
    "ESMTPS", "ESMTPSA", "UTF8SMTPS", "UTF8SMTPSA", "LMTPS", "LMTPSA", "SMTPS", "HTTPS", "IMAPS",
})
#: ``with`` protocols that, without any TLS remark, mean plaintext.
PLAIN_PROTOCOLS = frozenset({
    "SMTP", "ESMTP", "ESMTPA", "UTF8SMTP", "UTF8SMTPA", "LMTP", "LMTPA", "HTTP", "ASMTP",
    "MICROSOFT SMTP SERVER", "MICROSOFT SMTPSVC",
})


@dataclass
class Hop:
    """One ``Received:`` line: who handed the message to whom, how and when."""

    number: int  # 1 = the bottom line = the first hop
    raw: str  # the unfolded field value, as found
    parsed: bool = True
    from_host: str | None = None  # the name in the from clause (as written)
    from_ip: str | None = None  # the connecting address, as the receiving server saw it
    helo: str | None = None  # what the client called itself in HELO/EHLO
    by: str | None = None  # the server that wrote this line
    with_: str | None = None  # the protocol as written (ESMTPS, esmtpsa, Microsoft SMTP Server, ...)
    encrypted: bool | None = None  # True/False when the line says so; None when it does not tell
    tls: str | None = None  # TLS version as written (TLSv1.3, TLS1_2, TLS1.3), when stated
    cipher: str | None = None
    id: str | None = None
    for_: str | None = None
    via: str | None = None
    time: datetime | None = None
    delay: float | None = None  # seconds since the previous dated hop (negative = clock skew)
    comments: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)

    @property
    def protocol(self) -> str | None:
        """The ``with`` protocol upper-cased (ESMTPS, ESMTPSA, ...) for SMTP-family words."""
        if not self.with_:
            return None
        return self.with_.upper()

    @property
    def tls_summary(self) -> str:
        """What a hop table shows in its TLS column."""
        if self.encrypted is None:
            return "?"
        if not self.encrypted:
            return "no"
        parts = [p for p in (self.tls, self.cipher) if p]
        return " ".join(parts) if parts else "yes"

    def as_dict(self) -> dict[str, Any]:
        """The hop as plain data (the shape of tests/data/received/*.json)."""
        return {
            "parsed": self.parsed,
            "from": self.from_host,
            "from_ip": self.from_ip,
            "helo": self.helo,
            "by": self.by,
            "with": self.with_,
            "encrypted": self.encrypted,
            "tls": self.tls,
            "cipher": self.cipher,
            "id": self.id,
            "for": self.for_,
            "time": self.time.isoformat() if self.time else None,
            "delay": self.delay,
        }


@dataclass
class HopTable:
    """The Received chain of one message, first hop first."""

    hops: list[Hop]
    subject: str | None = None
    message_id: str | None = None

    def __iter__(self) -> Iterator[Hop]:
        return iter(self.hops)

    def __len__(self) -> int:
        return len(self.hops)

    def __getitem__(self, i: int) -> Hop:
        return self.hops[i]

    @property
    def unparsed(self) -> list[Hop]:
        return [h for h in self.hops if not h.parsed]

    @property
    def total_delay(self) -> float | None:
        times = [h.time for h in self.hops if h.time is not None]
        if len(times) < 2:
            return None
        return (times[-1] - times[0]).total_seconds()

    def as_dicts(self) -> list[dict[str, Any]]:
        return [h.as_dict() for h in self.hops]

    def __str__(self) -> str:
        """One line per hop, first hop first (the drawn table is
        :func:`maillab.views.hop_table.hop_table_text`; notebooks show the HTML one)."""
        if not self.hops:
            return "no Received header fields"
        return "\n".join(
            f"hop {h.number}: from {h.from_host or h.from_ip or '?'} by {h.by or '?'}"
            f" with {h.with_ or '?'}, TLS {h.tls_summary}" if h.parsed
            else f"hop {h.number} unparsed: {h.raw or '(empty Received field)'}"
            for h in self.hops)


# -- reading the header -----------------------------------------------------------------
_FIELD = re.compile(r"^([!-9;-~]+)[ \t]*:(.*)$")  # RFC 5322 3.6.8 field-name: printable, no colon


def header_fields(message: bytes | str) -> list[tuple[str, str]]:
    """The header fields of ``message`` (unfolded), in order.

    Accepts a whole message or a pasted header block; stops at the blank line
    that ends the header. An mbox ``From `` line and leading blank lines are
    skipped, since that is how pasted messages often start.
    """
    if isinstance(message, bytes):
        message = message.decode("utf-8", "replace")
    lines = message.replace("\r\n", "\n").replace("\r", "\n").split("\n")
    while lines and not lines[0].strip():
        lines.pop(0)
    if lines and lines[0].startswith("From "):
        lines.pop(0)
    fields: list[tuple[str, str]] = []
    for line in lines:
        if not line.strip():
            break
        if line[0] in " \t" and fields:
            name, value = fields[-1]
            fields[-1] = (name, value + " " + line.strip())
            continue
        m = _FIELD.match(line)
        if m:
            fields.append((m.group(1), m.group(2).strip()))
        elif fields and fields[-1][0] == "":
            fields[-1] = ("", fields[-1][1] + " " + line.strip())
        else:
            # Not a header line: kept (name "") so a garbled paste is visible, not lost.
            fields.append(("", line.strip()))
    return fields


def received_values(message: bytes | str) -> list[str]:
    """The ``Received:`` field values, top (newest) first, unfolded."""
    return [v for n, v in header_fields(message) if n.lower() == "received"]


def parse_hops(message: bytes | str) -> HopTable:
    """Parse the Received chain of ``message`` into a hop table, first hop first."""
    fields = header_fields(message)
    values = [v for n, v in fields if n.lower() == "received"]
    hops = [parse_received(v, i + 1) for i, v in enumerate(reversed(values))]
    previous: datetime | None = None
    for hop in hops:
        if hop.time is not None:
            if previous is not None:
                hop.delay = (hop.time - previous).total_seconds()
            previous = hop.time
    subject = next((v for n, v in fields if n.lower() == "subject"), None)
    message_id = next((v for n, v in fields if n.lower() == "message-id"), None)
    return HopTable(hops, subject=subject, message_id=message_id)


# -- one Received line ---------------------------------------------------------------
@dataclass(slots=True)
class _Token:
    kind: str  # "atom", "comment", "literal" ([...]), "angle" (<...>), "quoted", "semi"
    text: str  # comments without their outer parentheses; others as written
    start: int
    end: int


_LEX = re.compile(r"""
    \s*(?:
    (?P<semi>;)
  | (?P<comment>\((?:[^()\\]|\\.)*\))     # a comment without nested ones (most are)
  | (?P<literal>\[[^\]]*\](?::\d+)?)     # [192.0.2.1], Exim's [192.0.2.1]:port
  | (?P<angle><[^>]*>)
  | (?P<quoted>"[^"]*")
  | (?P<open>\()
  | (?P<bad>[\[<"])                    # a bracket, angle or quote that never closes
  | (?P<close>\))                      # a ")" that closes nothing
  | (?P<atom>[^\s();<"\[][^\s();<"]*)
  | $)
""", re.VERBOSE)
_PARENS = re.compile(r"[()\\]")


def _tokenize(value: str) -> tuple[list[_Token], list[str]]:
    """Split a Received value into RFC 5322 lexical tokens (comments may nest)."""
    tokens: list[_Token] = []
    problems: list[str] = []
    i, n = 0, len(value)
    while i < n:
        m = _LEX.match(value, i)
        assert m is not None  # every character starts one of the alternatives
        kind = m.lastgroup
        if kind is None:  # only whitespace was left
            break
        if kind == "comment":
            tokens.append(_Token("comment", m.group(kind)[1:-1], m.start(kind), m.end()))
            i = m.end()
        elif kind == "open":
            i = m.start(kind)
            end = _comment_end(value, i)
            if end is None:
                problems.append("unbalanced parenthesis")
                tokens.append(_Token("comment", value[i + 1:], i, n))
                i = n
            else:
                tokens.append(_Token("comment", value[i + 1:end], i, end + 1))
                i = end + 1
        elif kind == "close":
            problems.append("unbalanced parenthesis")
            i = m.end()
        elif kind == "bad":
            i = m.start(kind)
            problems.append(f"unclosed {m.group(kind)}")
            tokens.append(_Token("atom", value[i:], i, n))
            i = n
        else:
            tokens.append(_Token(kind, m.group(kind), m.start(kind), m.end()))
            i = m.end()
    return tokens, problems


def _comment_end(value: str, start: int) -> int | None:
    """The index of the ")" closing the comment that opens at ``start``."""
    depth = 0
    pos = start
    while True:
        m = _PARENS.search(value, pos)
        if m is None:
            return None
        c = m.group()
        if c == "\\":
            pos = m.end() + 1  # a quoted-pair: the next character is literal
            continue
        depth += 1 if c == "(" else -1
        if depth == 0:
            return m.start()
        pos = m.end()


_IPV4 = r"(?:\d{1,3}\.){3}\d{1,3}"
_IP_IN_BRACKETS = re.compile(r"\[(?:IPv6:)?([0-9A-Fa-f:.]+?)(?:%\w+)?\]", re.I)
_BARE_IP = re.compile(rf"(?:^|[\s@(])({_IPV4}|[0-9A-Fa-f]*:[0-9A-Fa-f:.]+)(?:%\w+)?(?=$|[\s)\]:])")
_HELO = re.compile(r"\b(?:helo|ehlo)[=\s]\s*\"?\s*([^\s\")]+)", re.I)
_POSTFIX_TLS = re.compile(r"\busing\s+(TLSv?[\d._]+|SSLv\d)(?:\s+with\s+cipher\s+([\w-]+))?", re.I)
_USING_TLS_COLON = re.compile(r"\busing\s+TLS:\s*(TLSv?[\d._]+),\s*([\w-]+)", re.I)
_VERSION_CIPHER = re.compile(r"\bversion=(TLSv?[\d._]+|SSLv\d)\b,?(?:\s+cipher=([\w-]+))?", re.I)
_EXIM_TLS = re.compile(r"^(TLSv?1(?:[._]\d)?|SSLv\d)(?::([\w-]+)(?::\d+)?)?$", re.I)
_QMAIL_TLS = re.compile(r"^([\w-]+)\s+encrypted$", re.I)
_CIPHER_ONLY = re.compile(r"^cipher=([\w-]+)$", re.I)


def _ip_of(text: str) -> str | None:
    """The first IP address in ``text``: [bracketed] first, then a bare one."""
    for m in _IP_IN_BRACKETS.finditer(text):
        if _valid_ip(m.group(1)):
            return m.group(1)
    for m in _BARE_IP.finditer(text):
        if _valid_ip(m.group(1)):
            return m.group(1)
    return None


@functools.lru_cache(maxsize=4096)
def _valid_ip(text: str) -> bool:
    try:
        ipaddress.ip_address(text)
    except ValueError:
        return False
    return True


def _strip_angle(text: str) -> str:
    return text[1:-1] if text.startswith("<") and text.endswith(">") else text


def parse_received(value: str, number: int = 1) -> Hop:
    """Parse one unfolded Received field value."""
    raw = " ".join(value.split())
    hop = Hop(number=number, raw=raw)
    tokens, problems = _tokenize(raw)
    hop.problems.extend(problems)

    # RFC 5322 3.6.7: the date-time follows the last ";".
    semis = [i for i, t in enumerate(tokens) if t.kind == "semi"]
    if semis:
        date_text = raw[tokens[semis[-1]].end:].strip()
        tokens = [t for t in tokens[:semis[-1]] if t.kind != "semi"]
        if date_text:
            hop.time = _parse_date(date_text)
            if hop.time is None:
                hop.problems.append(f"date not readable: {date_text!r}")
        else:
            hop.problems.append("no date after ';'")
    else:
        hop.problems.append("no ';' before a date")

    # Group the tokens into clauses; anything before the first keyword is "lead".
    clauses: dict[str, list[_Token]] = {}
    current = "lead"
    clauses[current] = []
    for t in tokens:
        if t.kind == "atom" and t.text.lower() in CLAUSES and t.text.lower() not in clauses:
            current = t.text.lower()
            clauses[current] = []
            continue
        clauses[current].append(t)
    hop.comments = [t.text for t in tokens if t.kind == "comment"]

    lead_words = [t for t in clauses["lead"] if t.kind != "comment"]
    if lead_words:
        hop.problems.append("unexpected text before the first clause: "
                            + " ".join(t.text for t in lead_words))
    known = [c for c in clauses if c != "lead"]
    if problems:  # a damaged line: show it raw rather than guess where clauses end
        hop.parsed = False
        return hop
    # A line is readable when it names a hop (from/by), or is a local stamp
    # like qmail's "(qmail 123 invoked by uid 89); date" with a date.
    hop.parsed = bool(("from" in known or "by" in known) and not lead_words) or bool(
        not known and not lead_words and clauses["lead"] and hop.time is not None)
    if not hop.parsed:
        return hop

    _read_from(hop, clauses.get("from", []))
    by = clauses.get("by", [])
    by_words = [t.text for t in by if t.kind in ("atom", "literal")]
    if by_words:
        hop.by = by_words[0]
    if "over TLS secured channel" in " ".join(by_words):  # Microsoft SMTPSVC
        hop.encrypted = True
    _read_with(hop, clauses.get("with", []))
    ident = [t for t in clauses.get("id", []) if t.kind != "comment"]
    if ident:
        hop.id = ident[0].text
    rcpt = [t for t in clauses.get("for", []) if t.kind != "comment"]
    if rcpt:
        hop.for_ = _strip_angle(" ".join(t.text for t in rcpt))
    via = [t.text for t in clauses.get("via", []) if t.kind == "atom"]
    if via:
        hop.via = " ".join(via)
    if not hop.helo and hop.from_host and not hop.from_host.startswith("[") \
            and hop.from_host.lower() != "unknown" and not _valid_ip(hop.from_host):
        # RFC 5321 4.4: the from clause carries the name given in EHLO/HELO.
        hop.helo = hop.from_host
    _read_tls(hop)
    return hop


def _read_from(hop: Hop, toks: list[_Token]) -> None:
    if not toks:
        return
    words = [t for t in toks if t.kind in ("atom", "literal", "quoted")]
    comments = " ".join(t.text for t in toks if t.kind == "comment")
    if words:
        hop.from_host = words[0].text
        if words[0].kind == "literal":
            hop.from_ip = _ip_of(words[0].text)
        elif _valid_ip(words[0].text):
            hop.from_ip = words[0].text
    ip = _ip_of(comments)
    if ip:
        hop.from_ip = ip
    elif hop.from_ip is None and len(words) > 1:
        # Exchange: "from host (ip)" is a comment; "from host ip" is not RFC but seen.
        hop.from_ip = _ip_of(" ".join(w.text for w in words[1:]))
    m = _HELO.search(comments)
    if m:
        hop.helo = m.group(1).rstrip(")")


def _read_with(hop: Hop, toks: list[_Token]) -> None:
    atoms = [t.text for t in toks if t.kind == "atom"]
    if not atoms:
        return
    # Exim 4.9x: "with esmtps (TLS1.3) tls TLS_AES_256_GCM_SHA384"
    if "tls" in atoms[1:]:
        i = atoms.index("tls", 1)
        if i + 1 < len(atoms):
            hop.cipher = atoms[i + 1]
            hop.encrypted = True
        atoms = atoms[:i] + atoms[i + 2:]
    # Cisco IronPort: "with ESMTP/TLS/ECDHE-RSA-AES256-GCM-SHA384"
    if "/" in atoms[0]:
        proto, _, rest = atoms[0].partition("/")
        if rest.upper().startswith("TLS"):
            hop.encrypted = True
            cipher = rest.partition("/")[2]
            if cipher:
                hop.cipher = cipher
            atoms = [proto] + atoms[1:]
    hop.with_ = " ".join(atoms)


def _read_tls(hop: Hop) -> None:
    """Find what the line says about TLS, in any of the dialects above."""
    for c in hop.comments:
        text = " ".join(c.split())
        m = (_USING_TLS_COLON.search(text) or _POSTFIX_TLS.search(text) or _VERSION_CIPHER.search(text)
             or _EXIM_TLS.match(text))
        if m:
            _tls_seen(hop, m.group(1), m.group(2))
            continue
        m = _QMAIL_TLS.match(text) or _CIPHER_ONLY.match(text)
        if m:
            _tls_seen(hop, None, m.group(1))
        elif text in ("TLS", "Google Transport Security"):
            _tls_seen(hop, None, None)
    if hop.encrypted is None and hop.with_:
        proto = hop.with_.upper()
        if proto in ENCRYPTED_PROTOCOLS:
            hop.encrypted = True
        elif proto in PLAIN_PROTOCOLS:
            hop.encrypted = False


def _tls_seen(hop: Hop, version: str | None, cipher: str | None) -> None:
    # The first remark that names a version or cipher wins; later ones only confirm.
    hop.encrypted = True
    hop.tls = hop.tls or version
    hop.cipher = hop.cipher or cipher


_DATE_COMMENT = re.compile(r"\([^()]*\)")


def _parse_date(text: str) -> datetime | None:
    """An RFC 5322 date-time, with the comments and slips real servers add."""
    cleaned = " ".join(_DATE_COMMENT.sub(" ", text).split())
    for candidate in (cleaned, cleaned.rstrip(". ")):
        try:
            dt = email.utils.parsedate_to_datetime(candidate)
        except (TypeError, ValueError, IndexError, OverflowError):  # "17:999907:45" overflows
            continue
        if dt is None:
            continue
        if dt.tzinfo is None:
            # "-0000": UTC, local zone not known (RFC 5322 3.3).
            dt = dt.replace(tzinfo=timezone.utc)
        try:
            dt.astimezone(timezone.utc)  # 31 Dec 9999 23:00 -0200 has no UTC time a datetime holds
        except OverflowError:
            return None
        return dt
    return None
