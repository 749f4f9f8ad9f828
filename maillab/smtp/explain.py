"""Short notes on SMTP commands and replies, for transcripts.

``explain("RCPT TO:<bob@alpha.test>", "C")`` says what the command asks for and
where the RFC defines it; ``explain("354 End data with <CR><LF>.<CR><LF>", "S")``
says what the reply code means. The transcript view looks this module up as
``maillab.<protocol>.explain`` (POP3 and IMAP have their own), so the notes stay
next to the protocol they describe.
"""

from __future__ import annotations

import re

#: Commands (RFC 5321 4.1.1 unless noted).
COMMANDS: dict[str, str] = {
    "HELO": "client names itself (old-style greeting, no extensions) (RFC 5321 4.1.1.1)",
    "EHLO": "client names itself and asks which extensions the server offers (RFC 5321 4.1.1.1)",
    "MAIL": "starts a mail transaction; gives the envelope sender (bounces go there) (RFC 5321 4.1.1.2)",
    "RCPT": "adds one envelope recipient; repeat for each (RFC 5321 4.1.1.3)",
    "DATA": "asks to send the message itself: headers, blank line, body (RFC 5321 4.1.1.4)",
    "BDAT": "sends a chunk of the message with its size, no dot-stuffing (RFC 3030 2)",
    "RSET": "aborts the current transaction; envelope and data are discarded (RFC 5321 4.1.1.5)",
    "VRFY": "asks whether a mailbox exists (servers often refuse: harvesting) (RFC 5321 4.1.1.6)",
    "EXPN": "asks to expand a mailing list (usually refused) (RFC 5321 4.1.1.7)",
    "HELP": "asks for help text (RFC 5321 4.1.1.8)",
    "NOOP": "does nothing; keeps the connection alive, gets a 250 (RFC 5321 4.1.1.9)",
    "QUIT": "asks the server to close the connection (RFC 5321 4.1.1.10)",
    "STARTTLS": "asks to switch this connection to TLS; start over with EHLO after (RFC 3207 4)",
    "AUTH": "authenticates the client (SASL); credentials are masked here (RFC 4954 4)",
}

#: Reply codes (RFC 5321 4.2.2 and 4.2.3, plus the extensions the lab uses).
REPLIES: dict[str, str] = {
    "211": "system status (RFC 5321 4.2.3)",
    "214": "help message (RFC 5321 4.2.3)",
    "220": "service ready: the greeting, or 'go ahead' with TLS after STARTTLS (RFC 5321 4.2.3, RFC 3207 4)",
    "221": "service closing the connection (RFC 5321 4.2.3)",
    "235": "authentication succeeded (RFC 4954 6)",
    "250": "requested action okay, completed (RFC 5321 4.2.3)",
    "251": "user not local; will forward (RFC 5321 4.2.3)",
    "252": "cannot verify the user, but will accept the message (RFC 5321 4.2.3)",
    "334": "server challenge: send the next (base64) piece of the login (RFC 4954 4)",
    "354": "start mail input; end with <CRLF>.<CRLF> (RFC 5321 4.2.3)",
    "421": "service not available, closing the connection (RFC 5321 4.2.3)",
    "432": "a password transition is needed (RFC 4954 6)",
    "450": "mailbox unavailable right now (busy, greylisted): try again later (RFC 5321 4.2.3)",
    "451": "local error in processing: try again later (RFC 5321 4.2.3)",
    "452": "insufficient storage, or too many recipients: try again later (RFC 5321 4.2.3, 4.5.3.1.10)",
    "454": "temporary authentication or TLS failure (RFC 4954 6, RFC 3207 4)",
    "455": "server unable to accommodate parameters (RFC 5321 4.2.3)",
    "500": "syntax error, command unrecognized (or line too long) (RFC 5321 4.2.3)",
    "501": "syntax error in parameters or arguments (RFC 5321 4.2.3)",
    "502": "command not implemented (RFC 5321 4.2.3)",
    "503": "bad sequence of commands (e.g. RCPT before MAIL) (RFC 5321 4.2.3)",
    "504": "command parameter not implemented (RFC 5321 4.2.3)",
    "521": "this host does not accept mail (RFC 7504)",
    "523": "message larger than the recipient accepts (RFC 5248)",
    "530": "authentication required (or STARTTLS first) (RFC 4954 6, RFC 3207 4)",
    "534": "authentication mechanism too weak (RFC 4954 6)",
    "535": "authentication credentials invalid (RFC 4954 6)",
    "538": "encryption required for this authentication mechanism (RFC 4954 6)",
    "550": "mailbox unavailable, or policy refusal (e.g. no relaying): do not retry (RFC 5321 4.2.3)",
    "551": "user not local; try the given path (RFC 5321 4.2.3)",
    "552": "exceeded storage allocation (message too big) (RFC 5321 4.2.3, RFC 1870)",
    "553": "mailbox name not allowed (bad address syntax) (RFC 5321 4.2.3)",
    "554": "transaction failed (or no service here) (RFC 5321 4.2.3)",
    "555": "MAIL/RCPT parameters not recognized or not implemented (RFC 5321 4.2.3)",
}

#: The first digit of a reply code (RFC 5321 4.2.1).
REPLY_CLASSES = {
    "2": "positive completion",
    "3": "positive intermediate: send more",
    "4": "transient negative: try again later",
    "5": "permanent negative: do not repeat as is",
}

#: Enhanced status codes, class.subject.detail (RFC 3463, registry RFC 5248).
ENHANCED: dict[str, str] = {
    "5.1.1": "bad destination mailbox address: no such user",
    "5.1.3": "bad destination address syntax",
    "5.1.8": "bad sender's system address",
    "5.3.4": "message too big for system",
    "5.5.1": "invalid command",
    "5.5.2": "syntax error",
    "5.5.4": "invalid command arguments",
    "5.7.0": "security: other or undefined policy status",
    "5.7.1": "delivery not authorized: e.g. relaying denied",
    "5.7.8": "authentication credentials invalid",
    "5.7.9": "authentication mechanism too weak",
    "5.7.11": "encryption required for requested authentication mechanism",
    "4.5.3": "too many recipients",
    "4.7.0": "temporary security failure (e.g. TLS not available)",
    "2.0.0": "success",
    "2.1.0": "sender address valid",
    "2.1.5": "destination address valid",
    "2.6.0": "other or undefined media status (some servers send it with 'queued')",
    "2.7.0": "authentication succeeded",
}

#: EHLO keywords (the lines of a 250 reply to EHLO).
EXTENSIONS: dict[str, str] = {
    "SIZE": "largest message the server accepts, in octets (RFC 1870)",
    "8BITMIME": "8-bit message bodies accepted (RFC 6152)",
    "SMTPUTF8": "UTF-8 addresses and headers accepted (RFC 6531)",
    "PIPELINING": "client may send several commands without waiting (RFC 2920)",
    "ENHANCEDSTATUSCODES": "replies carry x.y.z status codes (RFC 2034, RFC 3463)",
    "STARTTLS": "the connection can be upgraded to TLS (RFC 3207)",
    "AUTH": "SASL login mechanisms on offer (RFC 4954)",
    "CHUNKING": "BDAT accepted (RFC 3030)",
    "DSN": "delivery status notifications can be requested (RFC 3461)",
    "HELP": "HELP command available (RFC 5321 4.1.1.8)",
    "VRFY": "VRFY command available (RFC 5321 4.1.1.6)",
    "REQUIRETLS": "the message may demand TLS on every hop (RFC 8689)",
}

_REPLY = re.compile(r"^(\d{3})([ -])(.*)$")
_ENHANCED = re.compile(r"^([245])\.(\d{1,3})\.(\d{1,3})\b")


def explain_command(line: str) -> str | None:
    words = line.strip().split(None, 1)
    if not words:
        return None
    verb = words[0].upper()
    note = COMMANDS.get(verb)
    if note is None:
        return None
    rest = words[1] if len(words) > 1 else ""
    if verb == "MAIL" and "<>" in rest:
        note += "; the null sender <> marks a bounce"
    elif verb == "AUTH" and rest:
        note = f"authenticates with SASL mechanism {rest.split()[0].upper()}" + note[len("authenticates the client (SASL)"):]
    return note


def explain_reply(line: str) -> str | None:
    m = _REPLY.match(line.strip())
    if not m:
        return None
    code, sep, text = m.groups()
    if code == "250":  # an EHLO reply lists one extension per line, the last one too
        keyword = text.split(None, 1)[0].upper() if text.strip() else ""
        if keyword in EXTENSIONS:
            return f"extension {keyword}: {EXTENSIONS[keyword]}"
    note = REPLIES.get(code)
    if note is None:
        klass = REPLY_CLASSES.get(code[0])
        if klass is None:
            return None
        note = f"{klass} (RFC 5321 4.2.1)"
    enhanced = _ENHANCED.match(text)
    if enhanced:
        status = enhanced.group(0)
        detail = ENHANCED.get(status)
        if detail is None:
            detail = ENHANCED.get(f"5.{enhanced.group(2)}.{enhanced.group(3)}")
        if detail:
            note += f"; {status}: {detail} (RFC 3463)"
    return note


def explain(line: str, direction: str) -> str | None:
    """A short note on one transcript line: ``direction`` is "C" (client sent it)
    or "S" (server sent it). None when there is nothing useful to say (message
    text inside DATA, unknown words)."""
    if direction.upper().startswith("C"):
        return explain_command(line)
    return explain_reply(line)
