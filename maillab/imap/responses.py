"""What the IMAP session hands its driver, and how a command handler ends.

A handler yields :class:`Response` (bytes for the wire), :class:`Delay` (wait
before the next response: a failed login) and :class:`Notice` (for the
transcript, never on the wire). It ends by returning the tagged OK's text (or
None for "<COMMAND> completed"), or by raising :class:`No` or :class:`Bad`: the
session turns those into the tagged ``NO`` / ``BAD`` of RFC 3501 7.1.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

CRLF = b"\r\n"


class Response:
    """One response as it goes on the wire (CRLF included), in parts.

    Message data inside it (a FETCH literal's bytes) is a part of its own, named
    in ``literals``: written without being copied into the text around it, and
    shown compactly by the recorder instead of line by line.
    """

    __slots__ = ("parts", "literals", "count")

    def __init__(self, data: bytes | tuple[bytes, ...], literals: tuple[int, ...] = (),
                 count: int = 1) -> None:
        self.parts: tuple[bytes, ...] = (data,) if isinstance(data, bytes) else data
        self.literals = literals
        #: How many responses this is: more than one only for a batch of untagged
        #: lines without literals (:func:`lines`), written and recorded as that many.
        self.count = count

    @property
    def data(self) -> bytes:
        return b"".join(self.parts)

    def __len__(self) -> int:
        return sum(map(len, self.parts))

    def __repr__(self) -> str:
        return f"Response({self.data[:60]!r}...)"


@dataclass
class Delay:
    """Wait this long before the next response (a failed login)."""

    seconds: float


@dataclass
class Notice:
    """Something for the transcript that is not on the wire (auth result, state, stored)."""

    kind: str  # "auth", "state", "stored", "note"
    args: tuple[Any, ...] = ()
    data: dict[str, Any] = field(default_factory=dict)


Output = Response | Delay | Notice


def line(text: str) -> Response:
    """One response line (CRLF added)."""
    return Response(text.encode("utf-8") + CRLF)


def lines(texts: list[str]) -> Response:
    """Many response lines as one :class:`Response` (a FETCH FLAGS of 100,000
    messages: one object and one write per batch, not per message)."""
    return Response(("\r\n".join(texts) + "\r\n").encode("utf-8"), count=len(texts))


#: A handler's result meaning "the tagged response has been sent already".
ANSWERED = "<answered>"


class No(Exception):
    """A valid command that failed: tagged NO with this text (RFC 3501 7.1.2)."""


class Bad(Exception):
    """A command that is wrong here: tagged BAD with this text (RFC 3501 7.1.3)."""
