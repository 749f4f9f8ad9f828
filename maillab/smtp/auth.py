"""SMTP AUTH (RFC 4954): the framing of a SASL exchange, sans-IO.

``AUTH PLAIN [initial-response]`` or ``AUTH LOGIN [initial-response]``; the
server answers ``334 <base64 challenge>`` until it has what it needs. What the
responses mean (base64, ``=``, ``*``, PLAIN's fields, the authzid rule) is
:mod:`maillab.sasl`, shared with POP3 and IMAP; this module only keeps track of
which challenge the client is answering. The session (:mod:`.session`) checks
the password and decides 235 or 535.
"""

from __future__ import annotations

from .. import sasl
from .policy import Reply

#: RFC 4954 4: an AUTH line with an initial response may be up to 12288 octets.
AUTH_LINE_LIMIT = 12288

#: (mechanism, credentials): an exchange that has all it needs.
Done = tuple[str, sasl.Credentials]


class SASLExchange:
    """One AUTH exchange in progress: the next client line answers our 334."""

    def __init__(self, mechanism: str) -> None:
        self.mechanism = mechanism
        self.login: str | None = None  # LOGIN: the user name, once given

    def respond(self, raw: bytes) -> Reply | Done:
        """The client's answer to the last 334 challenge."""
        decoded = _decode(raw.strip())
        if isinstance(decoded, Reply):
            return decoded
        return self.take(decoded)

    def take(self, decoded: bytes) -> Reply | Done:
        try:
            if self.mechanism == "PLAIN":
                return self.mechanism, sasl.parse_plain(decoded)
            if self.login is None:
                self.login = sasl.login_value(decoded)
                return Reply(334, "", sasl.challenge(sasl.LOGIN_PROMPTS[1]))
            return self.mechanism, sasl.Credentials(self.login, sasl.login_value(decoded))
        except sasl.SASLError as exc:
            return Reply(501, "5.5.2", f"Error: {exc}")


def _decode(blob: bytes | str) -> bytes | Reply:
    try:
        return sasl.decode_response(blob)
    except sasl.Cancelled:  # RFC 4954 4: the client cancels
        return Reply(501, "5.7.0", "Authentication aborted")
    except sasl.SASLError:
        return Reply(501, "5.5.2", "Error: cannot decode the base64 response")


def start_auth(arg: str) -> tuple[SASLExchange | None, Reply | Done]:
    """``AUTH mechanism [initial-response]``: the exchange (None when it is over
    already) and the first reply, or the credentials of a complete initial response."""
    parts = arg.split()
    if not parts or len(parts) > 2:
        return None, Reply(501, "5.5.4", "Syntax: AUTH mechanism [initial-response]")
    mechanism = parts[0].upper()
    if mechanism not in sasl.MECHANISMS:
        return None, Reply(504, "5.5.4", f"Unrecognized authentication type {mechanism[:20]}")
    exchange = SASLExchange(mechanism)
    if len(parts) == 1:
        first = "" if mechanism == "PLAIN" else sasl.challenge(sasl.LOGIN_PROMPTS[0])
        return exchange, Reply(334, "", first)
    decoded = _decode(parts[1])
    if isinstance(decoded, Reply):
        return None, decoded
    outcome = exchange.take(decoded)
    return (exchange if isinstance(outcome, Reply) and outcome.code == 334 else None), outcome
