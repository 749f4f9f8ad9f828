"""The four states of an IMAP session (RFC 3501 section 3)::

    connect --> NOT AUTHENTICATED --(LOGIN, AUTHENTICATE)--> AUTHENTICATED
                                                               |      ^
                                           (SELECT, EXAMINE)   v      |  (CLOSE, UNSELECT,
                                                             SELECTED -+   a failed SELECT)
    any state --(LOGOUT)--> LOGOUT

Which commands each state accepts is written next to their handlers, one
module per state under :mod:`maillab.imap.commands`.
"""

from __future__ import annotations

import enum


class State(enum.Enum):
    """RFC 3501 section 3."""

    NOT_AUTHENTICATED = "NOT AUTHENTICATED"
    AUTHENTICATED = "AUTHENTICATED"
    SELECTED = "SELECTED"
    LOGOUT = "LOGOUT"


#: RFC 3501 6.1: valid in any state.
ANY = (State.NOT_AUTHENTICATED, State.AUTHENTICATED, State.SELECTED)
#: RFC 3501 6.3: valid in the authenticated state, and so in the selected state too.
AUTHED = (State.AUTHENTICATED, State.SELECTED)
#: RFC 3501 6.4: valid only with a mailbox selected.
SELECTED_ONLY = (State.SELECTED,)
