"""Commands of the not authenticated state (RFC 3501 6.2): STARTTLS, AUTHENTICATE, LOGIN.

A password is accepted without TLS only when the lab listens on loopback (and
the notebook says so in the transcript); otherwise CAPABILITY says
LOGINDISABLED and both commands answer ``NO [PRIVACYREQUIRED]`` (RFC 3501 6.2.3,
RFC 5530).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING

from ... import sasl
from ..responses import ANSWERED, Bad, Delay, No, Notice, Output, line
from ..states import State
from ..verbs import Authenticate, Login, Starttls

if TYPE_CHECKING:
    from ..session import IMAPSession

NOT_AUTHENTICATED = (State.NOT_AUTHENTICATED,)


def starttls(s: IMAPSession, cmd: Starttls) -> Iterator[Output]:
    """RFC 3501 6.2.1: OK, then the driver starts the TLS handshake."""
    if not s.starttls_available:
        raise Bad("TLS is already active" if s.tls_active else "STARTTLS is not offered here")
    s.action = "starttls"
    return "Begin TLS negotiation now"
    yield


def _plaintext_refused(s: IMAPSession) -> bool:
    return not s.tls_active and not s.plaintext_auth


def login(s: IMAPSession, cmd: Login) -> Iterator[Output]:
    """RFC 3501 6.2.3."""
    if _plaintext_refused(s):
        raise No("[PRIVACYREQUIRED] LOGIN is disabled until STARTTLS")
    user, password = (a.decode("utf-8", "replace") for a in (cmd.user, cmd.password))
    # Named as the command, not "LOGIN": that is also an SASL mechanism (SMTP's AUTH LOGIN),
    # and a transcript line "AUTH LOGIN as bob" read as if IMAP had used it.
    return (yield from _log_in(s, user, password, "LOGIN command"))


def authenticate(s: IMAPSession, cmd: Authenticate) -> Iterator[Output]:
    """RFC 3501 6.2.2 with SASL PLAIN (RFC 4616), the initial response inline (RFC 4959)
    or after an empty ``+`` challenge (then :func:`sasl_response` finishes it)."""
    mech, initial = cmd.mechanism, cmd.initial
    if mech != "PLAIN":
        raise No(f"[CANNOT] unsupported SASL mechanism {mech} (this server offers PLAIN)")
    if _plaintext_refused(s):
        raise No("[PRIVACYREQUIRED] AUTHENTICATE is disabled until STARTTLS")
    if initial is None:
        # RFC 3501 6.2.2: an empty challenge, the response comes on its own line
        s.mode = "authenticate"
        s.pending_tag = cmd.tag
        yield line("+ ")
        return None
    yield from sasl_response(s, cmd.tag, initial)
    return ANSWERED


def sasl_response(s: IMAPSession, tag: str, text: str) -> Iterator[Output]:
    """The client's PLAIN response (base64 of authzid NUL authcid NUL password), answered."""
    try:
        credentials = sasl.parse_plain(sasl.decode_response(text))
    except sasl.SASLError as exc:  # also "*", the client cancelling (RFC 3501 6.2.2)
        yield line(f"{tag} BAD {exc}")
        return
    authc, password = credentials.authcid, credentials.password
    if not sasl.may_act_as(credentials, s.users.resolve(authc)):
        yield Delay(s.limits.auth_failure_delay)
        yield line(f"{tag} NO [AUTHORIZATIONFAILED] acting as another user is not allowed")
        return
    try:
        text_ok = yield from _log_in(s, authc, password, "AUTHENTICATE PLAIN")
    except No as exc:
        yield line(f"{tag} NO {exc}")
        return
    yield line(f"{tag} OK {text_ok}")


def _log_in(s: IMAPSession, login: str, password: str, mechanism: str) -> Iterator[Output]:
    """Check the credentials; on success the session is AUTHENTICATED as the address."""
    address = s.users.authenticate(login, password)
    if address is None:
        s.auth_failures += 1
        yield Notice("auth", (login, False, mechanism))
        yield Delay(s.limits.auth_failure_delay)
        if s.auth_failures >= s.limits.auth_failures:
            yield line("* BYE too many failed logins")
            s.action = "close"
        raise No("[AUTHENTICATIONFAILED] invalid user name or password")
    if s.sessions_per_user.get(address, 0) >= s.limits.imap_connections_per_user:
        raise No(f"[LIMIT] {address} already has {s.limits.imap_connections_per_user}"
                 " IMAP sessions (imap_connections_per_user)")
    s.sessions_per_user[address] = s.sessions_per_user.get(address, 0) + 1
    s.counted = True
    s.user = address
    s.store.ensure_user(address)
    yield Notice("auth", (address, True, mechanism))
    if not s.tls_active:
        yield Notice("note", ("password sent without TLS: accepted because the lab listens on"
                              " loopback; a real server would say LOGINDISABLED before STARTTLS",),
                     {"policy": "imap_plaintext_auth"})
    s.set_state(State.AUTHENTICATED)
    yield Notice("state", (s.state.value,))
    return f"[CAPABILITY {' '.join(s.capabilities())}] logged in as {address}"


#: command -> (handler, the states that accept it)
COMMANDS = {
    Starttls: (starttls, NOT_AUTHENTICATED),
    Authenticate: (authenticate, NOT_AUTHENTICATED),
    Login: (login, NOT_AUTHENTICATED),
}
