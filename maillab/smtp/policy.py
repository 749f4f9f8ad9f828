"""What an SMTP server decides, without any I/O: the sans-IO core of the lab's MTA.

The asyncio driver (:mod:`maillab.smtp.server`) reads a line, hands the
argument to a function here, and sends back the :class:`Reply` it gets. So every
rule a student may ask about ("why was my RCPT refused?") is a few lines of
plain Python that can be read and tested without sockets:

* :func:`parse_path` — the ``<local@domain>`` syntax of RFC 5321 4.1.2 and its
  length limits (4.5.3.1),
* :func:`parse_mail_params` — ``SIZE=``, ``BODY=``, ``SMTPUTF8`` (RFC 1870, 6152, 6531),
* :func:`route_recipient` — local delivery, relay, or refusal (no open relay),
* :func:`check_sender` — submission servers only let you send as yourself.

Every reply carries an enhanced status code (RFC 3463, advertised as
ENHANCEDSTATUSCODES, RFC 2034).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

# -- replies -----------------------------------------------------------------------


@dataclass(frozen=True)
class Reply:
    """One SMTP reply: a three-digit code, an enhanced status code and text, plus
    what the driver does around sending it (:mod:`.session` sets those)."""

    code: int
    status: str  # RFC 3463 class.subject.detail, e.g. "5.7.1"; "" for none (220, 334, EHLO)
    text: str  # lines separated by "\n" become a multi-line reply
    starttls: bool = False  # begin the TLS handshake after sending (RFC 3207)
    read_data: bool = False  # the message text follows: read it to <CRLF>.<CRLF>
    close: str = ""  # close the connection after sending; the reason the transcript shows
    delay: float = 0.0  # wait this long before sending (after a failed AUTH)
    notes: tuple[tuple[str, dict[str, Any]], ...] = ()  # transcript notes to record first
    auth: tuple[str, bool, str] | None = None  # (login, ok, mechanism) for the event stream

    def lines(self) -> list[str]:
        """The reply as wire lines (RFC 5321 4.2.1: ``250-...`` continues, ``250 ...`` ends)."""
        parts = self.text.split("\n")
        status = f"{self.status} " if self.status else ""
        out = []
        for i, part in enumerate(parts):
            sep = " " if i == len(parts) - 1 else "-"
            out.append(f"{self.code}{sep}{status}{part}")
        return out

    @property
    def wire(self) -> tuple[tuple[str, ...], bytes]:
        """The lines and the octets that go out (worked out once per reply: the
        replies of every message are constants)."""
        wire = self.__dict__.get("_wire")
        if wire is None:
            lines = tuple(self.lines())
            # kept in the instance's dict: the dataclass is frozen, and cached_property
            # takes a lock per first use (most replies are sent once)
            wire = self.__dict__["_wire"] = lines, ("\r\n".join(lines) + "\r\n").encode("utf-8")
        return wire

    def __str__(self) -> str:
        return "\r\n".join(self.lines())

    @property
    def ok(self) -> bool:
        return self.code < 400


# Replies that several commands share (texts follow Postfix, which students will meet).
NEED_EHLO = Reply(503, "5.5.1", "Error: send HELO/EHLO first")
NEED_MAIL = Reply(503, "5.5.1", "Error: need MAIL command")
NEED_RCPT = Reply(503, "5.5.1", "Error: need RCPT command")
NESTED_MAIL = Reply(503, "5.5.1", "Error: nested MAIL command")
NO_VALID_RCPT = Reply(554, "5.5.1", "Error: no valid recipients")
NEED_STARTTLS = Reply(530, "5.7.0", "Must issue a STARTTLS command first")
NEED_AUTH = Reply(530, "5.7.0", "Authentication required")


def hook_reply(status: Any) -> Reply | None:
    """An aiosmtpd hook's return value ("250 OK", "550 5.7.1 no thanks", aiosmtpd's
    MISSING) as a Reply; None means: no reply of its own, the lab's stands."""
    if not isinstance(status, str) or len(status) < 3 or not status[:3].isdigit():
        return None
    lines = [ln for ln in status.replace("\r\n", "\n").split("\n") if ln]
    texts = [ln[4:] for ln in lines]
    first = texts[0].split(" ", 1) if texts else [""]
    enhanced = first[0] if len(first) == 2 and first[0][:1] in "245" and first[0].count(".") == 2 else ""
    if enhanced:
        texts = [t.split(" ", 1)[1] if t.startswith(enhanced + " ") else t for t in texts]
    return Reply(int(status[:3]), enhanced, "\n".join(texts) or "")


# -- paths (RFC 5321 4.1.2) -----------------------------------------------------------

#: RFC 5321 4.5.3.1.1-3: the size limits of an address.
MAX_LOCAL_PART = 64
MAX_DOMAIN = 255
MAX_PATH = 256  # including the angle brackets and any source route

# atext of RFC 5322 3.2.3; with SMTPUTF8 (RFC 6531 3.3) any UTF-8 character too.
_ATOM = r"(?:[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]|[^\x00-\x7f])+"
_DOT_STRING = re.compile(rf"{_ATOM}(?:\.{_ATOM})*\Z")
# qtextSMTP / quoted-pairSMTP of RFC 5321 4.1.2.
_QUOTED_STRING = re.compile(r'"(?:[\x20\x21\x23-\x5b\x5d-\x7e]|\\[\x20-\x7e]|[^\x00-\x7f])*"\Z')
_SUB_DOMAIN = r"(?:[A-Za-z0-9]|[^\x00-\x7f])(?:(?:[A-Za-z0-9-]|[^\x00-\x7f])*(?:[A-Za-z0-9]|[^\x00-\x7f]))?"
_DOMAIN = re.compile(rf"{_SUB_DOMAIN}(?:\.{_SUB_DOMAIN})*\Z")
# dcontent of RFC 5321 4.1.3 minus "<" and ">": inside a path they would end it early,
# so such a literal could not be written back into the Received or relay commands.
_ADDRESS_LITERAL = re.compile(r"\[[\x21-\x3b\x3d\x3f-\x5a\x5e-\x7e]+\]\Z")
_AT_DOMAIN_LIST = re.compile(rf"@{_SUB_DOMAIN}(?:\.{_SUB_DOMAIN})*(?:,@{_SUB_DOMAIN}(?:\.{_SUB_DOMAIN})*)*\Z")


class PathError(ValueError):
    """An address the server refuses; carries the reply to send."""

    def __init__(self, reply: Reply) -> None:
        super().__init__(reply.text)
        self.reply = reply


@dataclass(frozen=True)
class Path:
    """A parsed reverse-path or forward-path."""

    local: str  # the local part as it means (quotes removed where possible)
    domain: str  # lower-cased; "[127.0.0.1]" for an address literal
    route: str = ""  # an RFC 821 source route ("@a,@b"), kept only to be ignored
    quoted: bool = False  # the local part needed quotes (it is not a dot-string)

    @property
    def null(self) -> bool:
        return not self.local and not self.domain

    @property
    def is_literal(self) -> bool:
        return self.domain.startswith("[")

    @property
    def address(self) -> str:
        if self.null:
            return ""
        # Written back as a quoted-string: '"' and '\\' escaped again (RFC 5321 4.1.2
        # quoted-pairSMTP), so "a\"b"@x survives its own round trip.
        local = _quote_local(self.local) if self.quoted else self.local
        return f"{local}@{self.domain}"

    @property
    def ascii(self) -> bool:
        return self.address.isascii()

    def __str__(self) -> str:
        return f"<{self.address}>"


NULL_PATH = Path("", "")


def _quote_local(local: str) -> str:
    return '"' + local.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _syntax(detail: str, what: str, arg: str) -> PathError:
    code = "5.1.7" if what == "sender" else "5.1.3"
    return PathError(Reply(501, code, f"<{arg[:80]}>: bad {what} address syntax ({detail})"))


def _closing_angle(text: str) -> int:
    """The index of the ">" that closes the path opened at text[0], or -1. A ">" inside
    a quoted local part (``<">"@x>``, RFC 5321 4.1.2 qtextSMTP) does not close it; past
    the local part a '"' is an ordinary character (``u@[1"2]``, an address literal)."""
    if '"' not in text:  # nothing quoted: the first ">" (no walk a character at a time)
        return text.find(">", 1)
    quoted, local = False, True
    i = 1
    while i < len(text):
        c = text[i]
        if quoted and c == "\\":
            i += 2
            continue
        if c == '"' and local:
            quoted = not quoted
        elif c == "@" and not quoted:
            local = False
        elif c == ">" and not quoted:
            return i
        i += 1
    return -1


def parse_path(text: str, *, what: str = "recipient", allow_null: bool = False) -> tuple[Path, str]:
    """Split ``<path> params`` (the argument after ``MAIL FROM:`` / ``RCPT TO:``).

    Returns the path and the rest of the line (the ESMTP parameters). Like
    Postfix, a missing pair of angle brackets is tolerated when the address has
    no spaces (students type ``MAIL FROM: alice@alpha.test``).
    """
    text = text.strip()
    if text.startswith("<"):
        end = _closing_angle(text)
        if end < 0:
            raise _syntax("missing '>'", what, text)
        inner, rest = text[1:end], text[end + 1:]
        if rest and not rest.startswith(" "):
            raise _syntax("text after '>'", what, text)
    else:
        inner, _, rest = text.partition(" ")
    rest = rest.strip()
    if inner == "":
        if allow_null:
            return NULL_PATH, rest
        raise _syntax("the null path <> is only a sender", what, text)
    full = inner
    route = ""
    if inner.startswith("@"):
        # RFC 5321 4.1.1.3: source routes must be accepted but SHOULD be ignored;
        # obeying them is how "@lab:u@elsewhere" would turn a server into a relay.
        route, colon, inner = inner.partition(":")
        if not colon or not _AT_DOMAIN_LIST.match(route):
            raise _syntax("bad source route", what, text)
    local, at, domain = inner.rpartition("@")
    if not at or not local or not domain:
        raise _syntax("expected local-part@domain", what, inner)
    quoted = False
    if local.startswith('"'):
        if not _QUOTED_STRING.match(local):
            raise _syntax("bad quoted local part", what, inner)
        local = re.sub(r"\\(.)", r"\1", local[1:-1])
        # "bob"@alpha.test is the same mailbox as bob@alpha.test (RFC 5321 4.1.2)
        quoted = not _DOT_STRING.match(local)
    elif not _DOT_STRING.match(local):
        raise _syntax("bad local part", what, inner)
    if len(local.encode()) > MAX_LOCAL_PART:
        raise PathError(Reply(501, "5.1.3" if what != "sender" else "5.1.7",
                              f"Local part too long (RFC 5321 4.5.3.1.1: at most {MAX_LOCAL_PART} octets)"))
    if len(domain.encode()) > MAX_DOMAIN:
        raise PathError(Reply(501, "5.1.3" if what != "sender" else "5.1.7",
                              f"Domain too long (RFC 5321 4.5.3.1.2: at most {MAX_DOMAIN} octets)"))
    if not (_DOMAIN.match(domain) or _ADDRESS_LITERAL.match(domain)):
        raise _syntax("bad domain", what, inner)
    if len(full.encode()) + 2 > MAX_PATH:
        raise PathError(Reply(501, "5.1.3" if what != "sender" else "5.1.7",
                              f"Path too long (RFC 5321 4.5.3.1.3: at most {MAX_PATH} octets)"))
    return Path(local, domain.lower(), route, quoted), rest


def parse_recipient(text: str, hostname: str, local_domains: Iterable[str]) -> tuple[Path, str]:
    """The argument of ``RCPT TO:``. RFC 5321 4.1.1.3 lets it be ``<Postmaster>`` with no
    domain: the postmaster of this server's own domain (mail.alpha.test: alpha.test)."""
    text = text.strip()
    if text[:12].lower() != "<postmaster>":
        return parse_path(text, what="recipient")
    mine = sorted(d for d in local_domains if hostname == d or hostname.endswith("." + d))
    return Path("postmaster", (mine or sorted(local_domains) or [hostname])[0]), text[12:].strip()


# -- ESMTP parameters -------------------------------------------------------------

_KEYWORD = re.compile(r"[A-Za-z0-9][A-Za-z0-9-]*\Z")
_VALUE = re.compile(r"[\x21-\x3c\x3e-\x7e]+\Z")


@dataclass
class MailParams:
    size: int | None = None
    body: str = "7BIT"
    smtputf8: bool = False


def _split_params(text: str) -> list[tuple[str, str | None]]:
    out: list[tuple[str, str | None]] = []
    for item in text.split():
        key, eq, value = item.partition("=")
        if not _KEYWORD.match(key) or (eq and not _VALUE.match(value)):
            raise PathError(Reply(501, "5.5.4", f"Bad parameter syntax: {item[:40]}"))
        out.append((key.upper(), value if eq else None))
    return out


def parse_mail_params(text: str, *, extended: bool, size_limit: int) -> MailParams:
    """The parameters of MAIL FROM. Only what EHLO advertised is accepted."""
    params = MailParams()
    items = _split_params(text)
    if items and not extended:
        raise PathError(Reply(555, "5.5.4", "MAIL parameters need EHLO, not HELO (RFC 5321 4.1.1.11)"))
    for key, value in items:
        if key == "SIZE":  # RFC 1870
            if value is None or not value.isdigit() or len(value) > 20:
                raise PathError(Reply(501, "5.5.4", "Bad SIZE parameter"))
            params.size = int(value)
            if params.size > size_limit:
                raise PathError(Reply(552, "5.3.4", f"Message size exceeds fixed limit of {size_limit} octets"))
        elif key == "BODY":  # RFC 6152; BINARYMIME (RFC 3030) is not advertised
            if value is None or value.upper() not in ("7BIT", "8BITMIME"):
                raise PathError(Reply(555, "5.5.4", f"Unsupported BODY={value}: this server offers 7BIT and 8BITMIME"))
            params.body = value.upper()
        elif key == "SMTPUTF8":  # RFC 6531 3.4
            if value is not None:
                raise PathError(Reply(501, "5.5.4", "SMTPUTF8 takes no value"))
            params.smtputf8 = True
        elif key == "AUTH":  # RFC 4954 5: the original submitter; informational only
            continue
        else:
            raise PathError(Reply(555, "5.5.4", f"Unsupported MAIL parameter {key} (not advertised in EHLO)"))
    return params


def check_rcpt_params(text: str) -> None:
    """RCPT TO takes no parameters here (DSN, RFC 3461, is not offered)."""
    for key, _value in _split_params(text):
        raise PathError(Reply(555, "5.5.4", f"Unsupported RCPT parameter {key} (not advertised in EHLO)"))


def require_utf8_ok(path: Path, smtputf8: bool) -> None:
    """RFC 6531 3.2: a non-ASCII address only in a transaction that said SMTPUTF8."""
    if not smtputf8 and not path.ascii:
        raise PathError(Reply(553, "5.6.7", f"{path}: non-ASCII address needs MAIL FROM:<...> SMTPUTF8"))


# -- decisions ----------------------------------------------------------------------

LOCAL = "local"
RELAY = "relay"


@dataclass(frozen=True)
class Route:
    """Where a recipient goes: ``local`` (a mailbox here) or ``relay`` (the queue)."""

    kind: str
    address: str  # the forward-path as the client gave it (what Received's "for" names)
    mailbox: str = ""  # for an alias (postmaster): the lab user whose mailbox takes it

    @property
    def owner(self) -> str:
        return self.mailbox or self.address


def route_recipient(
    path: Path,
    *,
    local_domains: set[str] | frozenset[str],
    is_user: Callable[[str], bool],
    authenticated: bool,
    relay_available: bool,
    postmaster: Callable[[str], str | None] = lambda domain: None,
) -> Route:
    """Decide one RCPT: deliver here, hand to the relay, or refuse (raises PathError).

    Relay permission rests on one thing only: a successful AUTH. Never on the
    client's address (127.0.0.1 is where every lab client comes from, and also
    where the classic open relays trusted "local" networks).
    """
    address = path.address
    # Old routing syntaxes hidden in the local part: "%"-hack, UUCP bang paths, and a
    # quoted "@". A server that honoured any of them would forward mail for anyone.
    if any(c in path.local for c in "%!@"):
        raise PathError(Reply(550, "5.7.1", f"{path}: Relay access denied"
                              " (no %-hack, bang path or quoted @ routing here)"))
    if path.is_literal:
        raise PathError(Reply(550, "5.7.1", f"{path}: Relay access denied"
                              " (an address literal is not a local domain here)"))
    if path.domain in local_domains:
        # Lab users are case-insensitive (RFC 5321 2.4 allows a server to choose).
        if is_user(address.lower()):
            return Route(LOCAL, address.lower())
        # RFC 5321 4.5.1: a server that delivers mail MUST take "postmaster" (any case)
        # for its domains; here an alias of ``postmaster(domain)``, a user of the domain.
        owner = postmaster(path.domain) if path.local.lower() == "postmaster" and not path.quoted else None
        if owner:
            return Route(LOCAL, f"postmaster@{path.domain}", owner)
        raise PathError(Reply(550, "5.1.1", f"{path}: Recipient address rejected:"
                              " User unknown in local recipient table"))
    if not authenticated:
        raise PathError(Reply(550, "5.7.1", f"{path}: Relay access denied"
                              " (this server only accepts mail for its own domains;"
                              " log in on the submission port to send elsewhere)"))
    if not relay_available:
        raise PathError(Reply(550, "5.7.1", f"{path}: Relay access denied: no relay is"
                              " running in this lab, so mail for other domains cannot leave"))
    return Route(RELAY, address)


def check_sender(path: Path, user: str | None) -> None:
    """Submission (RFC 6409 6.1, "Enforce Submission Rights", lets the server
    check the sender, with 550 and 5.7.1): an authenticated user may only send
    as themselves, as real providers enforce. The null path ``<>`` stays allowed:
    RFC 6409 3.2 says it MUST NOT in itself be cause for rejecting a message
    (a mail program sends read receipts with it)."""
    if user is None or path.null:
        return
    if path.address.lower() != user.lower():
        raise PathError(Reply(550, "5.7.1", f"{path}: Sender address rejected:"
                              f" not owned by user {user}"))
