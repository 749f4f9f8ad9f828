"""Short notes on POP3 lines for the transcript view: what a command asks for,
what a reply means, and where the RFC says so."""

from __future__ import annotations

import re

COMMANDS: dict[str, str] = {
    "USER": "names the mailbox owner; the password follows with PASS (RFC 1939 section 7)",
    "PASS": "the password, sent as is: only safe inside TLS (RFC 1939 section 7, RFC 2595)",
    "APOP": "login with MD5(greeting timestamp + password): the password never crosses the"
            " wire (RFC 1939 section 7)",
    "AUTH": "SASL login; PLAIN carries base64(authzid NUL user NUL password) (RFC 5034, RFC 4616)",
    "STLS": "upgrade this connection to TLS before logging in (RFC 2595 section 4)",
    "CAPA": "asks what the server supports (RFC 2449 section 5)",
    "STAT": "drop listing: number of messages and their total size in octets (RFC 1939 section 5)",
    "LIST": "message numbers and sizes (CRLF octets); with a number, just that one"
            " (RFC 1939 section 5)",
    "UIDL": "unique ids that stay the same across sessions: how clients 'leave mail on the"
            " server' without downloading it twice (RFC 1939 section 7)",
    "RETR": "download a whole message; the body is dot-stuffed and ends with a line '.'"
            " (RFC 1939 section 5)",
    "TOP": "peek: the header plus the first N body lines (RFC 1939 section 7); POP3 has"
           " no read mark, and the lab's store leaves the message unread (RETR marks it)",
    "DELE": "only MARKS the message; it is removed in the UPDATE state after QUIT"
            " (RFC 1939 section 5)",
    "RSET": "unmarks every message marked by DELE in this session (RFC 1939 section 5)",
    "NOOP": "does nothing; keeps the session from the autologout timer (RFC 1939 section 5)",
    "QUIT": "in TRANSACTION: enter UPDATE, remove the marked messages, close; in"
            " AUTHORIZATION: just close (RFC 1939 sections 4 and 6)",
}

CODES: dict[str, str] = {
    "IN-USE": "the maildrop is locked by another session (RFC 2449 section 8.1.2)",
    "LOGIN-DELAY": "logging in again this soon is not allowed (RFC 2449 section 8.1.1)",
    "AUTH": "the credentials are wrong (RFC 3206 section 5)",
    "SYS/TEMP": "a temporary server-side problem: try again later (RFC 3206 section 4)",
    "SYS/PERM": "a permanent server-side problem (RFC 3206 section 4)",
}

_CODE = re.compile(r"^-ERR \[([A-Z/-]+)\]")


def explain(line: str, direction: str) -> str | None:
    """A one-line note on a POP3 transcript line, or None when there is nothing to add.

    ``direction`` is "C" for a client line, "S" for a server line.
    """
    if direction == "C":
        keyword = line.split(" ", 1)[0].upper()
        return COMMANDS.get(keyword)
    if line.startswith("+OK") and "<" in line and "@" in line and "ready" in line:
        return ("greeting: the server is in the AUTHORIZATION state; the <...> timestamp"
                " is the APOP challenge (RFC 1939 sections 4 and 7)")
    if line.startswith("+OK maildrop has"):  # our RSET reply, worded as RFC 1939's example
        return ("RSET done: every DELE mark of this session is removed; the count is the whole"
                " maildrop again (RFC 1939 section 5)")
    if line.startswith("+OK") and "'s maildrop has" in line:
        return "logged in: the maildrop is locked and the session is in the TRANSACTION state"
    if line.startswith("+OK") and "signing off" in line and "deleted" in line:
        return "UPDATE state: messages marked with DELE are removed now, then the connection closes"
    if line.startswith("+OK begin TLS"):
        return ("from here on TLS; the client must forget the capabilities it was told and should"
                " send CAPA again before it logs in (RFC 2595 section 4)")
    if line == ".":
        return "end of the multi-line response (a '.' alone on a line; RFC 1939 section 3)"
    if line.startswith("+ "):
        return "SASL continuation: the server waits for the client's base64 response (RFC 5034)"
    match = _CODE.match(line)
    if match:
        return CODES.get(match.group(1))
    if line.startswith("-ERR"):
        return "negative reply: the command failed, the session goes on"
    if line.startswith("+OK"):
        return None
    if line.startswith(".."):
        return "dot-stuffed: a body line starting with '.' is sent with one more '.'"
    return None
