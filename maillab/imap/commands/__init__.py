"""IMAP command handlers, one module per RFC 3501 state (as icgood/pymap groups them).

=====================  ==============================================================
``any.py``             any state (6.1): CAPABILITY, NOOP, LOGOUT, ID
``nonauth.py``         not authenticated (6.2): STARTTLS, AUTHENTICATE, LOGIN
``auth.py``            authenticated (6.3): SELECT, EXAMINE, CREATE, DELETE, RENAME,
                       SUBSCRIBE, UNSUBSCRIBE, LIST, LSUB, STATUS, APPEND, IDLE, ...
``selected.py``        selected (6.4): CHECK, CLOSE, UNSELECT, EXPUNGE, STORE, COPY, MOVE
``fetch.py``           selected (6.4.5): FETCH
``search.py``          selected (6.4.4): SEARCH
=====================  ==============================================================

A handler is a generator ``handler(session, command)``, ``command`` being the
typed command of :mod:`maillab.imap.verbs` it is registered for: it yields what goes on
the wire before the tagged response and returns that response's text (or
raises :class:`~maillab.imap.responses.No` / :class:`~maillab.imap.responses.Bad`).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

from ..states import State
from ..verbs import Command
from . import any as any_state
from . import auth, fetch, nonauth, search, selected

Handler = Callable[[Any, Any], Iterator[Any]]

#: command type -> (handler, the states that accept it), for every command the server knows.
COMMANDS: dict[type[Command], tuple[Handler, tuple[State, ...]]] = {
    **any_state.COMMANDS, **nonauth.COMMANDS, **auth.COMMANDS, **selected.COMMANDS,
    **fetch.COMMANDS, **search.COMMANDS,
}

#: command name -> the states that accept it (RFC 3501 6.1-6.4, and each extension's RFC).
ALLOWED: dict[str, tuple[State, ...]] = {cls.name: states for cls, (_, states) in COMMANDS.items()}
