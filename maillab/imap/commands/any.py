"""Commands valid in any state (RFC 3501 6.1): CAPABILITY, NOOP, LOGOUT, and ID (RFC 2971)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING

from ..responses import Notice, Output, line
from ..states import ANY, State
from ..verbs import Capability, Id, Logout, Noop

if TYPE_CHECKING:
    from ..session import IMAPSession


def capability(s: IMAPSession, cmd: Capability) -> Iterator[Output]:
    """RFC 3501 6.1.1."""
    yield line("* CAPABILITY " + " ".join(s.capabilities()))


def noop(s: IMAPSession, cmd: Noop) -> Iterator[Output]:
    """RFC 3501 6.1.2: nothing, but the session reports mailbox updates after it."""
    return
    yield


def logout(s: IMAPSession, cmd: Logout) -> Iterator[Output]:
    """RFC 3501 6.1.3: BYE, then the tagged OK, then the server closes."""
    yield line(f"* BYE {s.hostname} logging out")
    s.set_state(State.LOGOUT)
    s.selected = None
    s.action = "close"
    yield Notice("state", (State.LOGOUT.value,))


def id_(s: IMAPSession, cmd: Id) -> Iterator[Output]:
    """RFC 2971: the server names itself (what the client sent is only logged)."""
    from ... import __version__

    yield line(f'* ID ("name" "maillab" "version" "{__version__}")')


#: command -> (handler, the states that accept it)
COMMANDS = {
    Capability: (capability, ANY),
    Noop: (noop, ANY),
    Logout: (logout, ANY),
    Id: (id_, ANY),
}
