"""SASL as the lab's servers speak it: PLAIN (RFC 4616) and LOGIN, pure functions.

SMTP AUTH (RFC 4954), POP3 AUTH (RFC 5034) and IMAP AUTHENTICATE (RFC 3501 6.2.2)
all carry the same SASL messages in base64; only the framing differs (``334`` /
``+`` challenges, the initial response on the command line). The framing stays in
each protocol's session; what a response *means* is decided here, once:

- :func:`decode_response`: one client response line -> bytes (``=`` is an empty
  initial response, ``*`` cancels, anything else must be strict base64).
- :func:`parse_plain`: ``[authzid] NUL authcid NUL passwd`` (RFC 4616 2).
- :func:`may_act_as`: the authzid rule. RFC 4616 2 lets a client ask to act as
  another identity (authzid); the server decides. The lab grants that right to
  nobody: an authzid is accepted only when it names the same user as the
  authcid (login ``bob`` may say ``bob@beta.test``), otherwise the login fails.
- LOGIN (draft-murchison-sasl-login): two challenges, ``Username:`` and
  ``Password:``, each answered with the base64 of the value.
"""

from __future__ import annotations

import binascii
from base64 import b64decode, b64encode
from dataclasses import dataclass

#: The mechanisms the lab servers offer (plain passwords: only under TLS on real servers).
MECHANISMS = ("PLAIN", "LOGIN")
#: The LOGIN mechanism's two challenges, in the order they are sent.
LOGIN_PROMPTS = ("Username:", "Password:")


class SASLError(ValueError):
    """A response that cannot be decoded; the text says what is wrong with it."""


class Cancelled(SASLError):
    """The client answered ``*``: it gives up this authentication exchange."""

    def __init__(self) -> None:
        super().__init__("authentication cancelled by the client")


@dataclass(frozen=True)
class Credentials:
    """What a PLAIN (or LOGIN) exchange carried."""

    authcid: str  # the identity whose password this is (the login name)
    password: str
    authzid: str = ""  # the identity to act as; "" means the authcid itself


def challenge(text: str) -> str:
    """A server challenge as it goes on the wire (base64, RFC 4422 5)."""
    return b64encode(text.encode("utf-8")).decode("ascii")


def decode_response(response: str | bytes) -> bytes:
    """One client response (a continuation line or an initial response) as bytes."""
    text = response.decode("ascii", "replace") if isinstance(response, bytes) else response
    text = text.strip()
    if text == "*":
        raise Cancelled()
    if text == "=":  # RFC 4954 4 / RFC 4959 3: an empty initial response
        return b""
    try:
        return b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise SASLError("the response is not valid base64") from None


def parse_plain(message: bytes) -> Credentials:
    """RFC 4616 2: ``message = [authzid] UTF8NUL authcid UTF8NUL passwd``."""
    parts = message.split(b"\0")
    if len(parts) != 3:
        raise SASLError("a PLAIN response is authzid NUL authcid NUL password (RFC 4616 2)")
    try:
        authzid, authcid, password = (p.decode("utf-8") for p in parts)
    except UnicodeDecodeError:
        raise SASLError("a PLAIN response is UTF-8 (RFC 4616 2)") from None
    if not authcid:
        raise SASLError("a PLAIN response needs a user name (RFC 4616 2)")
    return Credentials(authcid, password, authzid)


def login_value(message: bytes) -> str:
    """One decoded answer to a LOGIN challenge (the user name or the password)."""
    try:
        return message.decode("utf-8")
    except UnicodeDecodeError:
        raise SASLError("a LOGIN response is UTF-8") from None


def may_act_as(credentials: Credentials, user: str | None) -> bool:
    """The authzid rule (RFC 4616 2, decided by the server): no authzid, or one that
    names the same user as the authcid: the login itself or ``user``, the address
    the authcid belongs to."""
    authzid = credentials.authzid.lower()
    if not authzid or authzid == credentials.authcid.lower():
        return True
    return user is not None and authzid == user.lower()
