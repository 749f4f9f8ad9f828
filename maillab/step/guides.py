"""What the step-through client knows about each protocol: where the session
stands, what a sensible next command is, and which commands are valid now.

A guide never talks to a socket. It is told what the client sent and what came
back (:meth:`Guide.record`) and reads the *server's* own record of the same
connection from the event stream where the server keeps one: POP3 and IMAP
servers emit ``state`` events from their sans-IO cores (``pop3/session.py``,
``imap/commands/``), and the list of valid commands comes from the same tables
those cores run on, so the picture cannot disagree with the server.

The SMTP server's core (``smtp/session.py``) emits no state events, so the SMTP
guide follows the session from the replies the client saw (RFC 5321 4.1.4: EHLO
makes it READY, MAIL starts a transaction, RCPT adds recipients, the end of DATA
or RSET ends it, STARTTLS goes back to GREETING) and names the states and valid
commands from that core's own table.
"""

from __future__ import annotations

import base64
from dataclasses import dataclass, field

from ..events import STATE, EventBus
from ..imap.commands import ALLOWED as IMAP_ALLOWED
from ..imap.states import State as IMAPState
from ..pop3.session import COMMANDS as POP3_COMMANDS
from ..pop3.session import State as POP3State
from ..smtp.session import COMMANDS as SMTP_COMMANDS
from ..smtp.session import State as SMTPState


@dataclass
class Picture:
    """The state drawn beside the step-through transcript."""

    states: tuple[str, ...]  # every state of the protocol, in order
    current: str | None
    facts: list[tuple[str, str]] = field(default_factory=list)  # (label, value)
    valid: list[str] = field(default_factory=list)  # commands valid in this state


class Guide:
    protocol = ""
    states: tuple[str, ...] = ()

    def __init__(self, user: str, password: str, bus: EventBus) -> None:
        self.user = user
        self.password = password
        self.bus = bus
        self.server_session: str | None = None  # the server's id of this connection
        self.sent: list[str] = []  # command words sent so far (upper case), in order
        self.closed = False
        # TLS before the password, as a careful client does (RFC 8314, RFC 2595 2.3): a
        # STARTTLS port gets the upgrade suggested first, then the capabilities asked again
        # (RFC 2595 4, RFC 3501 6.2.1: what was said in plaintext no longer counts).
        self.tls_offered = False
        self.tls = False
        self.capabilities_after_tls = False

    def tls_first(self, starttls: str, capabilities: str) -> str | None:
        """The TLS step still to do before logging in, if any."""
        if self.tls_offered and not self.tls:
            return starttls
        if self.tls and self.tls_offered and not self.capabilities_after_tls:
            return capabilities
        return None

    # -- told by the client
    def record(self, command: str, reply: list[str]) -> None:
        words = command.split()
        if words and self.succeeded(command, reply):
            self.sent.append(words[0].upper())  # a refused command is still to do
        self.after(command, reply)

    def succeeded(self, command: str, reply: list[str]) -> bool:
        return bool(reply) and reply[-1][:1] in "23+"

    def after(self, command: str, reply: list[str]) -> None:
        """Update what the client side knows from one exchange."""

    def server_state(self) -> str | None:
        if self.server_session is None:
            return None
        states = self.bus.events(session=self.server_session, kinds=(STATE,))
        return states[-1].text if states else None

    # -- asked by the view
    def suggest(self) -> str:
        raise NotImplementedError

    def picture(self) -> Picture:
        raise NotImplementedError

    def in_data(self) -> bool:
        """Is the next input message text rather than a command (SMTP DATA)?"""
        return False


def _first_unsent(plan: list[str], sent: list[str]) -> str | None:
    for line in plan:
        if line.split()[0].upper() not in sent:
            return line
    return None


# -- POP3 (RFC 1939) ---------------------------------------------------------------------


class POP3Guide(Guide):
    protocol = "pop3"
    states = tuple(s.value for s in POP3State)

    def __init__(self, user: str, password: str, bus: EventBus, *, tls_offered: bool = False,
                 tls: bool = False) -> None:
        super().__init__(user, password, bus)
        self.user_accepted = False
        self.tls_offered, self.tls = tls_offered, tls

    def succeeded(self, command: str, reply: list[str]) -> bool:
        return bool(reply) and reply[0].startswith("+OK")  # a multi-line reply ends in "."

    def after(self, command: str, reply: list[str]) -> None:
        verb = command.split()[0].upper() if command.split() else ""
        ok = self.succeeded(command, reply)
        if verb == "USER":
            self.user_accepted = ok
        elif verb == "STLS" and ok:
            self.tls = True
        elif verb == "CAPA" and ok and self.tls:
            self.capabilities_after_tls = True
        if verb == "QUIT" and ok:
            self.closed = True

    def state(self) -> str:
        return self.server_state() or POP3State.AUTHORIZATION.value

    def suggest(self) -> str:
        state = self.state()
        if self.closed or state == POP3State.UPDATE.value:
            return ""
        if state == POP3State.AUTHORIZATION.value:
            if self.user_accepted:
                return f"PASS {self.password}"
            return self.tls_first("STLS", "CAPA") or f"USER {self.user}"
        plan = ["STAT", "LIST", "UIDL"]
        messages, marked = _pop3_maildrop(self.bus, self.server_session)
        unmarked = [m[0] for m in messages if m[0] not in marked]
        if unmarked:
            n = unmarked[0]
            plan += [f"TOP {n} 0", f"RETR {n}", f"DELE {n}"]
        return _first_unsent(plan, self.sent) or "QUIT"

    def picture(self) -> Picture:
        state = self.state()
        valid = sorted(POP3_COMMANDS[POP3State(state)]) if not self.closed else []
        facts = [("user", self.user), ("TLS", "yes" if self.tls else "no")]
        if state == POP3State.TRANSACTION.value:
            marked = _pop3_maildrop(self.bus, self.server_session)[1]
            facts.append(("marked by DELE", ", ".join(map(str, marked)) or "none"))
        return Picture(self.states, state, facts, valid)


def _pop3_maildrop(bus: EventBus, session: str | None) -> tuple[list, list[int]]:
    """The maildrop's messages and the DELE marks, as the server last reported them."""
    messages: list = []
    marks: list[int] = []
    for e in bus.events(session=session, kinds=("note",)) if session else []:
        if e.data.get("pop3") == "maildrop":
            messages = list(e.data.get("messages", []))
            marks = list(e.data.get("marked", []))
        elif e.data.get("pop3") == "marked":
            marks.append(e.data["number"])
    return messages, marks


# -- IMAP (RFC 3501 / 9051) -------------------------------------------------------------


class IMAPGuide(Guide):
    protocol = "imap"
    states = tuple(s.value for s in IMAPState)

    def __init__(self, user: str, password: str, bus: EventBus, *, tls_offered: bool = False,
                 tls: bool = False) -> None:
        super().__init__(user, password, bus)
        self.tls_offered, self.tls = tls_offered, tls
        self.tag = 0
        self.mailbox: str | None = None
        self.exists: int | None = None

    def next_tag(self) -> str:
        return f"a{self.tag + 1}"

    def record(self, command: str, reply: list[str]) -> None:
        words = command.split()
        self.tag += 1
        if len(words) > 1 and self.succeeded(command, reply):
            verb = words[1].upper()
            if verb == "UID" and len(words) > 2:
                verb = f"UID {words[2].upper()}"
            self.sent.append(verb)
        self.after(command, reply)

    def succeeded(self, command: str, reply: list[str]) -> bool:
        tag = command.split()[0] if command.split() else ""
        done = next((r for r in reversed(reply) if r.startswith(tag + " ")), "")
        return done[len(tag) + 1:].upper().startswith("OK")

    def after(self, command: str, reply: list[str]) -> None:
        words = command.split()
        if len(words) < 2 or not reply:
            return
        verb = words[1].upper()
        ok = self.succeeded(command, reply)
        if verb in ("SELECT", "EXAMINE") and len(words) > 2:
            # A failed SELECT leaves no mailbox selected (RFC 3501 6.3.1).
            self.mailbox = words[2].strip('"') if ok else None
            self.exists = next((int(r.split()[1]) for r in reply
                                if r.startswith("* ") and r.endswith(" EXISTS") and r.split()[1].isdigit()),
                               None) if ok else None
        elif verb in ("CLOSE", "UNSELECT") and ok:
            self.mailbox = None
        elif verb == "STARTTLS" and ok:
            self.tls = True
        elif verb == "CAPABILITY" and ok and self.tls:
            self.capabilities_after_tls = True
        elif verb == "LOGOUT":
            self.closed = True

    def state(self) -> str:
        return self.server_state() or IMAPState.NOT_AUTHENTICATED.value

    def suggest(self) -> str:
        state = self.state()
        if self.closed or state == IMAPState.LOGOUT.value:
            return ""
        tag = self.next_tag()
        if state == IMAPState.NOT_AUTHENTICATED.value:
            return f"{tag} {self.tls_first('STARTTLS', 'CAPABILITY') or f'LOGIN {self.user} {self.password}'}"
        if state == IMAPState.AUTHENTICATED.value:
            line = _first_unsent(['LIST "" "*"', "SELECT INBOX"], self.sent) or "LOGOUT"
            return f"{tag} {line}"
        plan = ["FETCH 1:* (FLAGS ENVELOPE)"] if self.exists else []
        plan += ["CLOSE"]
        return f"{tag} {_first_unsent(plan, self.sent) or 'LOGOUT'}"

    def picture(self) -> Picture:
        state = self.state()
        current = IMAPState(state)
        valid = sorted(verb for verb, states in IMAP_ALLOWED.items() if current in states)
        facts = [("user", self.user), ("TLS", "yes" if self.tls else "no"),
                 ("selected mailbox", self.mailbox or "none")]
        if self.mailbox and self.exists is not None:
            facts.append(("messages (EXISTS)", str(self.exists)))
        facts.append(("next tag", self.next_tag()))
        return Picture(self.states, state, facts, [] if self.closed else valid)


# -- SMTP (RFC 5321, 3207, 4954) --------------------------------------------------------

class SMTPGuide(Guide):
    protocol = "smtp"
    states = tuple(s.value for s in SMTPState)

    def __init__(self, user: str, password: str, bus: EventBus, *, recipient: str,
                 tls_offered: bool = True, auth: bool = True) -> None:
        super().__init__(user, password, bus)
        self.recipient = recipient
        self.tls_offered = tls_offered
        self.auth = auth
        self.greeted = False
        self.tls = False
        self.authenticated = False
        self.sender: str | None = None
        self.recipients: list[str] = []
        self.data = False
        self.accepted: list[str] = []  # replies to completed messages ("250 2.0.0 Ok: queued as ...")
        self._sasl = False

    def after(self, command: str, reply: list[str]) -> None:
        code = reply[-1][:3] if reply else ""
        if self.data:
            self.data = False
            if code.startswith("2"):
                self.accepted.append(reply[-1])
            self.sender, self.recipients = None, []  # the transaction ends either way
            return
        verb = command.split()[0].upper() if command.split() else ""
        if self._sasl:
            verb = "AUTH"  # a SASL response line
        self._sasl = code == "334"
        if verb in ("EHLO", "HELO") and code == "250":
            self.greeted = True
            self.sender, self.recipients = None, []  # RFC 5321 4.1.4: EHLO resets
        elif verb == "STARTTLS" and code == "220":
            self.tls, self.greeted = True, False  # RFC 3207 4.2: forget, greet again
            self.sender, self.recipients = None, []
        elif verb == "AUTH" and code == "235":
            self.authenticated = True
        elif verb == "MAIL" and code == "250":
            self.sender = _angle(command)
        elif verb == "RCPT" and code in ("250", "251"):
            self.recipients.append(_angle(command))
        elif verb == "DATA" and code == "354":
            self.data = True
        elif verb == "RSET" and code == "250":
            self.sender, self.recipients = None, []
        elif verb == "QUIT" or code == "421":
            self.closed = True

    def state(self) -> str:
        """The server core's state (``smtp/session.State``), as the replies tell it."""
        if self.closed:
            return SMTPState.CLOSED.value
        if self.data:
            return SMTPState.DATA.value
        if self.recipients:
            return SMTPState.RCPT.value
        if self.sender is not None:
            return SMTPState.MAIL.value
        return SMTPState.READY.value if self.greeted else SMTPState.GREETING.value

    def in_data(self) -> bool:
        return self.data

    def suggest(self) -> str:
        if self.closed:
            return ""
        if self.data:
            return (f"From: {self.user}\r\nTo: {self.recipient}\r\nSubject: one step at a time\r\n\r\n"
                    "Sent line by line from the step-through client.\r\n.").replace("\r\n", "\n")
        if self._sasl:
            return self._plain()
        if not self.greeted:
            return "EHLO step.test"
        if self.tls_offered and not self.tls:
            return "STARTTLS"
        if self.auth and not self.authenticated:
            return f"AUTH PLAIN {self._plain()}"
        if self.accepted and self.sender is None:
            return "QUIT"
        if self.sender is None:
            return f"MAIL FROM:<{self.user}>"
        if not self.recipients:
            return f"RCPT TO:<{self.recipient}>"
        return "DATA"

    def _plain(self) -> str:
        return base64.b64encode(f"\0{self.user}\0{self.password}".encode()).decode("ascii")

    def picture(self) -> Picture:
        facts = [("TLS", "yes" if self.tls else "no"),
                 ("logged in", self.user if self.authenticated else "no"),
                 ("envelope sender (MAIL FROM)", self.sender if self.sender is not None else "none yet"),
                 ("recipients (RCPT TO)", ", ".join(self.recipients) or "none yet")]
        if self.accepted:
            facts.append(("messages accepted", str(len(self.accepted))))
        state = SMTPState(self.state())
        valid = sorted(SMTP_COMMANDS[state])
        if state is SMTPState.DATA:
            valid = ["message text, then a line with a single '.'"]
        elif state is SMTPState.READY and self.tls:
            valid.remove("STARTTLS")  # once only (RFC 3207 4.2)
        if "AUTH" in valid and (state is SMTPState.GREETING or self.authenticated):
            # the server takes AUTH in to say why not ("send EHLO first", "already
            # authenticated"): it is valid after EHLO, once (RFC 4954 4)
            valid.remove("AUTH")
        return Picture(self.states, self.state(), facts, valid)


def _angle(command: str) -> str:
    start, end = command.find("<"), command.find(">")
    if start >= 0 and end > start:
        return command[start + 1:end]
    return command.split(":", 1)[-1].strip()
