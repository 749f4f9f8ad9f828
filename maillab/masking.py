"""Credential masking: the one rule for what a transcript may show of a login.

Every line a client sends is recorded (servers, recording clients, raw cells),
so every recorder needs the same answer to "where is the secret in this line?".
It lives here once, per protocol, so a fix reaches all of them:

- SMTP ``AUTH mech initial-response`` (RFC 4954 4): the response after the mechanism.
- POP3 ``PASS secret`` (RFC 1939 7), ``APOP name digest`` (the digest allows an
  offline guess), ``AUTH mech initial-response`` (RFC 5034 4).
- IMAP ``tag LOGIN user password`` (RFC 3501 6.2.3, user possibly quoted),
  ``tag AUTHENTICATE mech initial-response`` (RFC 4959).
- Any line that answers a SASL challenge (``334``/``+``): all of it, except the
  lone ``*`` that cancels (RFC 4954 4, RFC 5034 4, RFC 3501 6.2.2), which is no secret.

User names stay visible: the lesson is who logged in, never with what.
"""

from __future__ import annotations

import re

#: What a transcript shows instead of a credential.
MASK = "****"

# "a1 LOGIN user password": the password is the last argument (RFC 3501 6.2.3).
_IMAP_LOGIN = re.compile(r'(?i)^(\S+ +LOGIN +(?:"(?:[^"\\]|\\.)*"|\S+) +)(.+)$')
# "a1 AUTHENTICATE PLAIN <initial response>" (SASL-IR, RFC 4959).
_IMAP_AUTH_IR = re.compile(r"(?i)^(\S+ +AUTHENTICATE +\S+ +)(.+)$")


def mask_line(protocol: str, line: str, *, sasl: bool = False) -> str:
    """``line`` (a client's command line of ``protocol``: "smtp", "pop3" or "imap")
    as a transcript may show it. ``sasl``: the line answers a SASL challenge."""
    if sasl:
        return line if line.strip() == "*" else MASK
    if protocol == "imap":
        m = _IMAP_LOGIN.match(line) or _IMAP_AUTH_IR.match(line)
        return m.group(1) + MASK if m else line
    words = line.split(" ")
    keyword = words[0].upper()
    if protocol == "pop3" and keyword == "PASS" and len(words) > 1:
        # RFC 1939 7: the password is the rest of the line, spaces included
        return f"{words[0]} {MASK}"
    if keyword == "AUTH" or (protocol == "pop3" and keyword == "APOP"):
        shown = [w for w in words if w][:3]
        if len(shown) > 2:
            return f"{shown[0]} {shown[1]} {MASK}"
    return line
