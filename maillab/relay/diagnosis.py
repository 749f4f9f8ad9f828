"""What a failed delivery says, in the words Postfix's bounces use: which host, which
command, which reply, or how far the session got when no reply came.

A DSN's human-readable part (RFC 3464 2.1) and the queue's "last error" are read by
people trying to find out what went wrong on the wire, so each sentence names the
host and address talked to and the command a reply answered::

    host mx1.beta.test[127.0.20.1] said: 550 5.1.1 ... (in reply to RCPT TO command)
    host mx1.beta.test[127.0.20.1] refused to talk to me: 421 4.3.2 busy
    lost connection with mx1.beta.test[127.0.20.1] while sending RCPT TO
    conversation with mx1.beta.test[127.0.20.1] timed out while sending end of data

The machine-readable ``Diagnostic-Code`` stays the reply itself (RFC 3464 2.3.6: "the
actual diagnostic code issued by the mail transport").
"""

from __future__ import annotations

#: A client stage (``Delivery.stage``) as the command its reply answers, in the names
#: Postfix's "(in reply to ... command)" uses.
COMMANDS = {"MAIL": "MAIL FROM", "RCPT": "RCPT TO", "DATA": "DATA", "end of DATA": "end of DATA",
            "EHLO": "EHLO", "HELO": "HELO", "STARTTLS": "STARTTLS", "RSET": "RSET", "QUIT": "QUIT",
            "greeting": "greeting"}

#: What the client was doing at each stage when the connection went or the reply
#: did not come (Postfix's "lost connection with HOST while ...").
_WHILE = {
    "greeting": "receiving the initial server greeting",
    "EHLO": "performing the EHLO handshake",
    "HELO": "performing the HELO handshake",
    "STARTTLS": "sending STARTTLS",
    "TLS": "performing the TLS handshake",
    "RSET": "sending RSET",
    "MAIL": "sending MAIL FROM",
    "RCPT": "sending RCPT TO",
    "DATA": "sending DATA command",
    # the text was sent whole: the receiver may have it already (RFC 1047)
    "end of DATA": "sending end of data -- message may be sent more than once",
    "QUIT": "sending QUIT",
}


def where(host: str, address: str | None) -> str:
    return f"{host}[{address}]" if address else host


def said(host: str, address: str | None, reply: str, command: str | None) -> str:
    """A reply, with who sent it and what it answered."""
    if command == "greeting":  # RFC 5321 3.1: the 220 never came, this did instead
        return f"host {where(host, address)} refused to talk to me: {reply}"
    after = f" (in reply to {command} command)" if command else ""
    return f"host {where(host, address)} said: {reply}{after}"


def lost(host: str, address: str, stage: str) -> str:
    return f"lost connection with {where(host, address)} while {_WHILE.get(stage, 'sending ' + stage)}"


def timed_out(host: str, address: str, stage: str, seconds: float) -> str:
    return (f"conversation with {where(host, address)} timed out after {seconds:g} s while "
            f"{_WHILE.get(stage, 'sending ' + stage)}")
