"""Short notes on IMAP lines for the transcript view: what a command asks for, what
a response means, and where the RFC says so.

IMAP lines are tagged: the client invents a tag (``a1``) for each command, the
server may send any number of untagged lines (``* ...``) and ends the command with
a line carrying the same tag and OK, NO or BAD (RFC 3501 section 2.2.2). Lines that
start with ``+`` ask the client to go on: send a literal's octets, the next SASL
step, or (in IDLE) just wait (RFC 3501 section 7.5).

RFC 3501 is IMAP4rev1, RFC 9051 IMAP4rev2; section numbers are RFC 3501's unless
the note says otherwise.
"""

from __future__ import annotations

import re

COMMANDS: dict[str, str] = {
    "CAPABILITY": "asks what this server supports (extensions, AUTH= mechanisms) (RFC 3501 6.1.1)",
    "NOOP": "does nothing, but gives the server a chance to report new mail and flag"
            " changes (RFC 3501 6.1.2)",
    "LOGOUT": "ends the session: the server says BYE, then OK, then closes (RFC 3501 6.1.3)",
    "STARTTLS": "upgrade this connection to TLS before logging in; afterwards the client must"
                " forget the capabilities it was told and should ask for CAPABILITY again"
                " (RFC 3501 6.2.1, RFC 9051 6.2.1)",
    "AUTHENTICATE": "SASL login; PLAIN carries base64(authzid NUL user NUL password)"
                    " (RFC 3501 6.2.2, RFC 4616; an initial response on the same line is"
                    " SASL-IR, RFC 4959)",
    "LOGIN": "user name and password in clear text: only safe inside TLS (RFC 3501 6.2.3)",
    "SELECT": "opens a mailbox read-write; the server answers with its size (EXISTS),"
              " flags, UIDVALIDITY and UIDNEXT (RFC 3501 6.3.1)",
    "EXAMINE": "like SELECT but read-only: nothing (not even \\Seen) changes (RFC 3501 6.3.2)",
    "CREATE": "creates a mailbox (folder); '/' separates levels here (RFC 3501 6.3.3)",
    "DELETE": "deletes a mailbox and the messages in it (RFC 3501 6.3.4)",
    "RENAME": "renames a mailbox, with its children (RFC 3501 6.3.5)",
    "SUBSCRIBE": "adds a mailbox to the list a client shows (LSUB) (RFC 3501 6.3.6)",
    "UNSUBSCRIBE": "removes a mailbox from the subscription list (RFC 3501 6.3.7)",
    "LIST": "lists mailbox names matching a pattern ('*' all levels, '%' one level), with"
            " attributes like \\HasChildren or \\Sent (RFC 3501 6.3.8, RFC 6154)",
    "LSUB": "lists subscribed mailboxes (RFC 3501 6.3.9; IMAP4rev2 uses LIST (SUBSCRIBED))",
    "STATUS": "counts in a mailbox without selecting it: MESSAGES, UNSEEN, UIDNEXT, ..."
              " (RFC 3501 6.3.10)",
    "APPEND": "uploads a message into a mailbox (a literal: {size} then the octets);"
              " how clients save to Sent and Drafts (RFC 3501 6.3.11)",
    "CHECK": "asks the server to checkpoint the mailbox (RFC 3501 6.4.1)",
    "CLOSE": "removes \\Deleted messages silently and leaves the mailbox (RFC 3501 6.4.2)",
    "UNSELECT": "leaves the mailbox WITHOUT expunging (RFC 3691)",
    "EXPUNGE": "removes every message flagged \\Deleted; each removal is reported as"
               " '* n EXPUNGE' (RFC 3501 6.4.3)",
    "SEARCH": "returns the numbers of the messages matching the criteria; the server does"
              " the work, nothing is downloaded (RFC 3501 6.4.4)",
    "FETCH": "asks for parts of messages: FLAGS, ENVELOPE, BODYSTRUCTURE, BODY[section]..."
             " Only what is named crosses the wire (RFC 3501 6.4.5)",
    "STORE": "changes flags: FLAGS replaces, +FLAGS adds, -FLAGS removes; .SILENT skips"
             " the FETCH reply (RFC 3501 6.4.6)",
    "COPY": "copies messages to another mailbox on the server: no download (RFC 3501 6.4.7)",
    "MOVE": "moves messages to another mailbox (copy + expunge in one step) (RFC 6851)",
    "UID": "the same command, but numbers are UIDs (stable across sessions) instead of"
           " sequence numbers (which shift on EXPUNGE) (RFC 3501 6.4.8)",
    "IDLE": "the client waits; the server pushes new mail and flag changes as they happen,"
            " until the client sends DONE (RFC 2177)",
    "DONE": "ends IDLE; the server then completes the IDLE command (RFC 2177)",
    "NAMESPACE": "where personal, other users' and shared mailboxes live (RFC 2342)",
    "ID": "client and server tell each other their name and version (RFC 2971)",
    "ENABLE": "turns on an extension for this session, e.g. UTF8=ACCEPT (RFC 5161)",
}

RESPONSE_CODES: dict[str, str] = {
    "ALERT": "a message the client must show to the user (RFC 3501 7.1)",
    "BADCHARSET": "the SEARCH charset is not supported (RFC 3501 7.1)",
    "CAPABILITY": "the capability list, sent unasked to save a round trip (RFC 3501 7.1)",
    "PARSE": "the server could not parse a message's headers or MIME (RFC 3501 7.1)",
    "PERMANENTFLAGS": "the flags a client may set and keep; \\* means new keywords are"
                      " allowed (RFC 3501 7.1)",
    "READ-ONLY": "the mailbox is open read-only (EXAMINE): flags will not change (RFC 3501 7.1)",
    "READ-WRITE": "the mailbox is open read-write (SELECT) (RFC 3501 7.1)",
    "TRYCREATE": "the target mailbox does not exist; CREATE it first (RFC 3501 7.1)",
    "UIDNEXT": "the UID the next new message will get: a client compares it with what it"
               " saw last time to know whether anything arrived (RFC 3501 7.1)",
    "UIDVALIDITY": "UIDs are valid only together with this number; if it changes, the"
                   " client must forget every cached UID (RFC 3501 2.3.1.1)",
    "UNSEEN": "the sequence number of the first message without \\Seen (RFC 3501 7.1)",
    "APPENDUID": "the UIDVALIDITY and UID the appended message got (UIDPLUS, RFC 4315)",
    "COPYUID": "old and new UIDs of copied/moved messages (UIDPLUS, RFC 4315)",
    "TOOBIG": "the message or literal is larger than the server accepts (RFC 4469, RFC 9051 7.1)",
    "AUTHENTICATIONFAILED": "wrong user name or password (RFC 5530)",
    "PRIVACYREQUIRED": "this needs TLS first (RFC 5530)",
    "NONEXISTENT": "no such mailbox (RFC 5530)",
    "ALREADYEXISTS": "a mailbox with that name exists already (RFC 5530)",
    "CANNOT": "the operation is not possible, e.g. an invalid mailbox name (RFC 5530)",
    "LIMIT": "a server limit was hit (RFC 5530)",
    "INUSE": "someone else holds the mailbox (RFC 5530)",
    "CLIENTBUG": "the command was valid but pointless, e.g. EXPUNGE on nothing (RFC 5530)",
    "SERVERBUG": "the server failed; not the client's fault (RFC 5530)",
    "HIGHESTMODSEQ": "the mailbox's modification sequence (CONDSTORE, RFC 7162)",
    "CLOSED": "the previous mailbox is closed now (RFC 7162, RFC 9051 7.1)",
}

_TAGGED = re.compile(r"^(\S+) (OK|NO|BAD)\b ?(.*)$", re.IGNORECASE)
_CODE = re.compile(r"^\[([A-Za-z0-9.-]+)")
_NUMBERED = re.compile(r"^\* (\d+) (EXISTS|RECENT|EXPUNGE|FETCH)\b", re.IGNORECASE)
_UNTAGGED = re.compile(r"^\* (\w+)\b ?(.*)$")
_LITERAL = re.compile(r"\{(\d+)(\+?)\}$")
_FETCH_ITEMS = (
    ("BODYSTRUCTURE", "BODYSTRUCTURE: the MIME tree (types, encodings, sizes of every part)"
                      " without downloading any of it"),
    ("ENVELOPE", "ENVELOPE: date, subject, from, to, ... parsed by the server"),
    ("BODY.PEEK[", "BODY.PEEK[...]: download without setting \\Seen"),
    ("BODY[", "BODY[...]: download (sets \\Seen unless .PEEK)"),
    ("RFC822.SIZE", "RFC822.SIZE: the size in octets, to decide before downloading"),
)


def _code_note(text: str) -> str | None:
    m = _CODE.match(text)
    if not m:
        return None
    return RESPONSE_CODES.get(m.group(1).upper())


def _client(line: str) -> str | None:
    if line.upper() == "DONE":
        return COMMANDS["DONE"]
    parts = line.split(" ", 3)
    if len(parts) < 2:
        return None  # a SASL response or a literal's contents: data, not a command
    name = parts[1].upper()
    if name == "UID" and len(parts) > 2:
        inner = parts[2].upper()
        inner_note = COMMANDS.get(inner)
        return f"UID {inner}: numbers are UIDs, not sequence numbers (RFC 3501 6.4.8)" + (
            f"; {inner}: {inner_note}" if inner_note else "")
    note = COMMANDS.get(name)
    if note is None:
        return None
    if name == "FETCH":
        extra = [text for key, text in _FETCH_ITEMS if key in line.upper()]
        if extra:
            note += "; " + "; ".join(extra[:2])
    lit = _LITERAL.search(line)
    if lit:
        note += (f"; a literal of {lit.group(1)} octets follows"
                 + (" without waiting for '+' (LITERAL+, RFC 7888)" if lit.group(2) else
                    " once the server answers '+' (RFC 3501 4.3)"))
    return note


def _server(line: str) -> str | None:
    if line.startswith("+"):
        return ("continuation: the server is ready for the rest (a literal, the next SASL"
                " step, or it is IDLE-ing) (RFC 3501 7.5)")
    m = _NUMBERED.match(line)
    if m:
        n, what = m.group(1), m.group(2).upper()
        if what == "EXISTS":
            return f"the mailbox now holds {n} messages: new mail shows up this way (RFC 3501 7.3.1)"
        if what == "RECENT":
            return f"{n} messages arrived since the last session looked (\\Recent) (RFC 3501 7.3.2)"
        if what == "EXPUNGE":
            return (f"message {n} was removed; every later sequence number drops by one"
                    " (RFC 3501 7.4.1)")
        return "data for one message, as asked by FETCH or after a STORE (RFC 3501 7.4.2)"
    if line.startswith("* "):
        m = _UNTAGGED.match(line)
        if not m:
            return None
        word, rest = m.group(1).upper(), m.group(2)
        if word in ("OK", "NO", "BAD"):
            code = _code_note(rest)
            if word == "OK" and "ready" in rest.lower():
                return ("greeting: the server is ready, in the NOT AUTHENTICATED state"
                        " (RFC 3501 7.1.1)")
            if code:
                return code
            return {"OK": "information from the server (RFC 3501 7.1.1)",
                    "NO": "a warning from the server (RFC 3501 7.1.2)",
                    "BAD": "the server could not parse something (RFC 3501 7.1.3)"}[word]
        if word == "PREAUTH":
            return "greeting: already logged in (RFC 3501 7.1.4)"
        if word == "BYE":
            return "the server is closing the connection (RFC 3501 7.1.5)"
        if word == "CAPABILITY":
            return "what the server supports (RFC 3501 7.2.1)"
        if word in ("LIST", "LSUB"):
            return ("one mailbox: its attributes, the hierarchy delimiter and its name"
                    " (RFC 3501 7.2.2, RFC 6154 for \\Sent \\Trash ...)")
        if word == "STATUS":
            return "counts for a mailbox, without selecting it (RFC 3501 7.2.4)"
        if word == "SEARCH":
            return "the messages that matched, as numbers (UIDs after UID SEARCH) (RFC 3501 7.2.5)"
        if word == "FLAGS":
            return "the flags this mailbox uses (RFC 3501 7.2.6)"
        if word == "NAMESPACE":
            return "personal, other users' and shared namespaces (RFC 2342)"
        if word == "ID":
            return "the server's name and version (RFC 2971)"
        if word == "ENABLED":
            return "the extensions now turned on (RFC 5161)"
        return None
    m = _TAGGED.match(line)
    if m:
        status, rest = m.group(2).upper(), m.group(3)
        code = _code_note(rest)
        base = {"OK": "the command with this tag completed successfully",
                "NO": "the command with this tag failed (the session goes on)",
                "BAD": "the command with this tag was not understood: a syntax error or the"
                       " wrong state"}[status]
        return f"{base} (RFC 3501 7.1)" + (f"; {code}" if code else "")
    return None


def explain(line: str, direction: str) -> str | None:
    """A one-line note on an IMAP transcript line, or None when there is nothing to add.

    ``direction`` is "C" for a client line, "S" for a server line.
    """
    line = line.rstrip("\r\n")
    if not line:
        return None
    return _client(line) if direction == "C" else _server(line)
