"""One typed command per IMAP verb: what the parser returns, what the session dispatches on.

Grouped by the RFC 3501 state that accepts them, like their handlers in
:mod:`maillab.imap.commands`. Every command has its ``tag``; the ones that have
a UID form (RFC 3501 6.4.8: ``UID FETCH``, ``UID STORE``, ``UID SEARCH``,
``UID COPY``, ``UID MOVE``, ``UID EXPUNGE``) also say whether it was used
(``uid=True``), and then numbers in them are UIDs, not sequence numbers.
Mailbox names and strings stay bytes as sent (modified UTF-7 is the session's
business); a command's verb is its class's ``name``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar

#: "*" in a sequence set; 0 is never a valid message number or UID.
STAR = 0

#: A sequence set (RFC 3501 9): ranges (low, high), either end possibly STAR.
SeqSet = tuple[tuple[int, int], ...]

#: A SEARCH key tree (RFC 3501 6.4.4) as nested tuples: ("FROM", b"bob"), ("NOT", key),
#: ("OR", a, b), ("AND", (keys...)), ("FLAG", "\\Seen", True), ("SEQ", seqset) ...
SearchKey = tuple[Any, ...]


@dataclass(frozen=True)
class Command:
    """A complete, well-formed command."""

    tag: str

    #: The verb as the RFC spells it.
    name: ClassVar[str] = ""
    #: True only for the UID form of a command that has one (see :class:`UIDCommand`).
    uid: ClassVar[bool] = False

    @property
    def display(self) -> str:
        """The verb as the client sent it (``UID FETCH``), for responses and transcripts."""
        return f"UID {self.name}" if self.uid else self.name


@dataclass(frozen=True)
class UIDCommand(Command):
    """A command with a UID form (RFC 3501 6.4.8)."""

    uid: bool = field(default=False, kw_only=True)  # type: ignore[misc]


# -- any state (RFC 3501 6.1) ----------------------------------------------------------

@dataclass(frozen=True)
class Capability(Command):
    name = "CAPABILITY"


@dataclass(frozen=True)
class Noop(Command):
    name = "NOOP"


@dataclass(frozen=True)
class Logout(Command):
    name = "LOGOUT"


@dataclass(frozen=True)
class Id(Command):
    """RFC 2971: the client's name, version... (None for ``ID NIL``)."""

    name = "ID"
    params: dict[str, str | None] | None = None


# -- not authenticated (RFC 3501 6.2) --------------------------------------------------

@dataclass(frozen=True)
class Starttls(Command):
    name = "STARTTLS"


@dataclass(frozen=True)
class Authenticate(Command):
    """RFC 3501 6.2.2; ``initial`` is the RFC 4959 SASL-IR response (base64, "=" empty)."""

    name = "AUTHENTICATE"
    mechanism: str
    initial: str | None = None


@dataclass(frozen=True)
class Login(Command):
    name = "LOGIN"
    user: bytes
    password: bytes


# -- authenticated (RFC 3501 6.3) ------------------------------------------------------

@dataclass(frozen=True)
class Select(Command):
    name = "SELECT"
    mailbox: bytes
    #: EXAMINE is SELECT read-only.
    readonly: ClassVar[bool] = False


@dataclass(frozen=True)
class Examine(Select):
    name = "EXAMINE"
    readonly = True


@dataclass(frozen=True)
class Create(Command):
    """RFC 3501 6.3.3; ``uses`` from RFC 6154 ``(USE (\\Sent))``."""

    name = "CREATE"
    mailbox: bytes
    uses: tuple[str, ...] = ()


@dataclass(frozen=True)
class Delete(Command):
    name = "DELETE"
    mailbox: bytes


@dataclass(frozen=True)
class Rename(Command):
    name = "RENAME"
    old: bytes
    new: bytes


@dataclass(frozen=True)
class Subscribe(Command):
    name = "SUBSCRIBE"
    mailbox: bytes


@dataclass(frozen=True)
class Unsubscribe(Command):
    name = "UNSUBSCRIBE"
    mailbox: bytes


@dataclass(frozen=True)
class List(Command):
    """RFC 3501 6.3.8, with RFC 5258's selection options and RETURN options."""

    name = "LIST"
    reference: bytes
    pattern: bytes
    selection: tuple[str, ...] = ()
    returns: tuple[str, ...] = ()


@dataclass(frozen=True)
class Lsub(Command):
    name = "LSUB"
    reference: bytes
    pattern: bytes


@dataclass(frozen=True)
class Status(Command):
    name = "STATUS"
    mailbox: bytes
    items: tuple[str, ...]


@dataclass(frozen=True)
class Append(Command):
    """RFC 3501 6.3.11; ``when`` is the INTERNALDATE asked for (a timestamp) or None."""

    name = "APPEND"
    mailbox: bytes
    flags: tuple[str, ...]
    when: float | None
    message: bytes


@dataclass(frozen=True)
class Idle(Command):
    name = "IDLE"


@dataclass(frozen=True)
class Namespace(Command):
    name = "NAMESPACE"


@dataclass(frozen=True)
class Enable(Command):
    name = "ENABLE"
    capabilities: tuple[str, ...]


# -- selected (RFC 3501 6.4) -----------------------------------------------------------

@dataclass(frozen=True)
class Check(Command):
    name = "CHECK"


@dataclass(frozen=True)
class Close(Command):
    name = "CLOSE"


@dataclass(frozen=True)
class Unselect(Command):
    name = "UNSELECT"


@dataclass(frozen=True)
class Expunge(UIDCommand):
    """EXPUNGE, or UID EXPUNGE (RFC 4315 2.1) limited to ``sequence_set`` (UIDs)."""

    name = "EXPUNGE"
    sequence_set: SeqSet | None = None


@dataclass(frozen=True)
class Store(UIDCommand):
    """RFC 3501 6.4.6: ``mode`` is "+" (add), "-" (remove) or "" (replace)."""

    name = "STORE"
    sequence_set: SeqSet
    mode: str
    silent: bool
    flags: tuple[str, ...]


@dataclass(frozen=True)
class Copy(UIDCommand):
    name = "COPY"
    sequence_set: SeqSet
    mailbox: bytes


@dataclass(frozen=True)
class Move(Copy):
    """RFC 6851: COPY, then expunge the originals."""

    name = "MOVE"


@dataclass(frozen=True)
class Section:
    """A BODY[...] section (RFC 3501 6.4.5): part path, then what of that part."""

    part: tuple[int, ...] = ()
    kind: str | None = None  # None, HEADER, HEADER.FIELDS, HEADER.FIELDS.NOT, TEXT, MIME
    fields: tuple[str, ...] = ()

    def spec(self) -> str:
        text = ".".join(map(str, self.part))
        if self.kind:
            text = f"{text}.{self.kind}" if text else self.kind
        if self.kind in ("HEADER.FIELDS", "HEADER.FIELDS.NOT"):
            text += " (" + " ".join(self.fields) + ")"
        return text


@dataclass(frozen=True)
class FetchItem:
    """One fetch attribute. ``name`` is ENVELOPE, FLAGS, INTERNALDATE, RFC822,
    RFC822.HEADER, RFC822.SIZE, RFC822.TEXT, BODY, BODYSTRUCTURE, UID or
    BODY[] (a section, in ``section``, possibly with a ``partial``)."""

    name: str
    section: Section | None = None
    partial: tuple[int, int] | None = None  # (origin, octet count)
    peek: bool = False

    @property
    def label(self) -> str:
        """How the item is named in the FETCH response (BODY.PEEK[x] answers as BODY[x])."""
        if self.section is None:
            return self.name
        text = f"BODY[{self.section.spec()}]"
        if self.partial is not None:
            text += f"<{self.partial[0]}>"
        return text


@dataclass(frozen=True)
class Fetch(UIDCommand):
    """RFC 3501 6.4.5 (macros ALL, FAST, FULL already expanded into ``items``)."""

    name = "FETCH"
    sequence_set: SeqSet
    items: tuple[FetchItem, ...]


@dataclass(frozen=True)
class Search(UIDCommand):
    """RFC 3501 6.4.4: one key (several keys arrive as one ("AND", keys))."""

    name = "SEARCH"
    charset: str | None
    key: SearchKey


__all__ = ["STAR", "SeqSet", "SearchKey", "Command", "UIDCommand", "Section", "FetchItem",
           "Capability", "Noop", "Logout", "Id", "Starttls", "Authenticate", "Login",
           "Select", "Examine", "Create", "Delete", "Rename", "Subscribe", "Unsubscribe",
           "List", "Lsub", "Status", "Append", "Idle", "Namespace", "Enable",
           "Check", "Close", "Unselect", "Expunge", "Store", "Copy", "Move", "Fetch", "Search"]
