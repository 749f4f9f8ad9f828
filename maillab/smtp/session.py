"""The SMTP protocol core (RFC 5321), sans-IO: feed it a line, get the reply.

An SMTP session moves through these states (RFC 5321 3.1-3.3 and 4.1.4)::

    GREETING --(EHLO/HELO)--> READY --(MAIL)--> MAIL --(RCPT ok)--> RCPT --(DATA)--> DATA
                                ^                 |                   |               |
                                +--(RSET, EHLO)---+-------------------+   (end of data: stored,
                                +----------------------------------------- relayed or refused)
    STARTTLS: back to GREETING (RFC 3207 4.2: the client must say EHLO again)
    QUIT, too many errors, idle timeout: the connection closes

MAIL, RCPT and DATA are the three steps of one mail transaction (RFC 5321 3.3);
:data:`COMMANDS` lists, per state, the commands it accepts, and :data:`OUT_OF_ORDER`
what the others get (503 "need MAIL command", ...). Each recipient is decided by
:func:`~maillab.smtp.policy.route_recipient`: a local mailbox, the relay (only for
an authenticated client, RFC 5321 3.6 relaying, 3.9 no open relay), or a refusal.

Nothing here touches a socket. The driver (:mod:`.server`) reads a line, calls
:meth:`SMTPSession.receive`, and acts on what comes back:

* a :class:`~maillab.smtp.policy.Reply`: send it, then act on its flags
  (``starttls``, ``read_data``, ``close``);
* a :class:`Hook`: call the lab host's aiosmtpd handler (``handle_MAIL``,
  ``handle_RCPT``, ``handle_DATA``), then pass its reply string to ``hook.then``;
* a :class:`Deliver`: store the message and/or hand it to the relay, then pass the
  outcome to ``deliver.then``.

Each ``then`` returns the next step, until a Reply. The message text after DATA
is read by the driver (to the real ``<CRLF>.<CRLF>``, RFC 5321 4.1.1.4) and given
to :meth:`SMTPSession.end_of_data`. SASL (AUTH PLAIN and LOGIN) is in :mod:`.auth`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field, replace
from enum import Enum
from typing import Any

from aiosmtpd.smtp import Envelope

from .. import sasl
from ..limits import Limits
from ..masking import mask_line
from . import data as smtpdata
from .auth import AUTH_LINE_LIMIT, Done, SASLExchange, start_auth
from .policy import (
    LOCAL,
    NEED_AUTH,
    NEED_EHLO,
    NEED_MAIL,
    NEED_RCPT,
    NEED_STARTTLS,
    NESTED_MAIL,
    NO_VALID_RCPT,
    MailParams,
    PathError,
    Reply,
    Route,
    check_rcpt_params,
    check_sender,
    hook_reply,
    parse_mail_params,
    parse_path,
    parse_recipient,
    require_utf8_ok,
    route_recipient,
)
from .received import TLSInfo, queue_id, received_header, with_protocol

#: RFC 1870 6 and RFC 6531 3.4 let MAIL grow by SIZE=... (26) and SMTPUTF8 (10),
#: BODY=8BITMIME (14) and AUTH=<...> too; the lab allows that much on MAIL lines.
MAIL_LINE_EXTRA = 26 + 10 + 14 + 64


class State(str, Enum):
    """Where a session is, named after RFC 5321's own words."""

    GREETING = "GREETING"  # 220 sent; the client must introduce itself (4.1.1.1)
    READY = "READY"  # after EHLO/HELO: no mail transaction in progress
    MAIL = "MAIL"  # MAIL accepted: a transaction has begun (3.3)
    RCPT = "RCPT"  # at least one RCPT accepted: DATA may follow
    DATA = "DATA"  # 354 sent: the driver is reading the message text
    CLOSED = "CLOSED"


_ANYTIME = {"EHLO", "HELO", "NOOP", "RSET", "QUIT", "VRFY", "EXPN", "HELP"}
#: Which commands each state accepts (RFC 5321 4.1.4 "Order of Commands", RFC 3207, RFC 4954).
COMMANDS: dict[State, frozenset[str]] = {
    # AUTH is let through before EHLO so that cmd_auth can say why it cannot work
    # here ("not enabled" on an MX port, "send EHLO first" on submission).
    State.GREETING: frozenset(_ANYTIME | {"STARTTLS", "AUTH"}),
    State.READY: frozenset(_ANYTIME | {"STARTTLS", "AUTH", "MAIL"}),
    State.MAIL: frozenset(_ANYTIME | {"RCPT"}),
    State.RCPT: frozenset(_ANYTIME | {"RCPT", "DATA"}),
    State.DATA: frozenset(),
    State.CLOSED: frozenset(),
}
ALL_COMMANDS = frozenset().union(*COMMANDS.values())

_IN_TRANSACTION = Reply(503, "5.5.1", "Error: MAIL transaction in progress")
# The replies of every message (made once: a Reply is immutable).
MAIL_OK = Reply(250, "2.1.0", "Ok")
RCPT_OK = Reply(250, "2.1.5", "Ok")
GO_AHEAD = Reply(354, "2.0.0", "End data with <CR><LF>.<CR><LF>", read_data=True)
#: What a known command gets in a state that does not accept it (texts follow Postfix).
OUT_OF_ORDER: dict[tuple[State, str], Reply] = {
    **{(State.GREETING, verb): NEED_EHLO for verb in ("MAIL", "RCPT", "DATA")},
    (State.READY, "RCPT"): NEED_MAIL,
    (State.READY, "DATA"): NEED_MAIL,
    (State.MAIL, "MAIL"): NESTED_MAIL,
    (State.RCPT, "MAIL"): NESTED_MAIL,
    (State.MAIL, "DATA"): NEED_RCPT,  # or NO_VALID_RCPT, see cmd_data
    **{(state, verb): _IN_TRANSACTION for state in (State.MAIL, State.RCPT)
       for verb in ("STARTTLS", "AUTH")},
}


@dataclass(frozen=True)
class Hook:
    """Call the user's aiosmtpd handler: ``handle_<name>(server, session, envelope, *args)``,
    then ``then(reply_string)`` (None when the hook failed) gives the next step."""

    name: str
    args: tuple[Any, ...]
    envelope: Envelope
    then: Callable[[Any], Step]


@dataclass(frozen=True)
class Deliver:
    """Store ``message`` for ``local`` users, hand it to the relay for ``remote``
    ones (the relay first), then ``then(failure)``: None, or the 451 to send."""

    queue_id: str
    mail_from: str
    local: list[str]
    remote: list[str]
    message: bytes
    then: Callable[[Reply | None], Step]


Step = Reply | Hook | Deliver


@dataclass
class Transaction:
    """One mail transaction (RFC 5321 3.3), with aiosmtpd's Envelope for the user's hooks."""

    mail_from: str | None = None
    params: MailParams = field(default_factory=MailParams)
    rcpts: list[Route] = field(default_factory=list)
    rejected: int = 0  # refused RCPTs: DATA then says "no valid recipients"
    envelope: Envelope = field(default_factory=Envelope)
    held: int = 0  # octets of the lab's DATA budget this transaction holds (smtpdata.Budget)


class SMTPSession:
    """One SMTP session's state machine (one per connection)."""

    def __init__(
        self,
        *,
        hostname: str,
        limits: Limits,
        local_domains: frozenset[str] | set[str] = frozenset(),
        is_user: Callable[[str], bool] = lambda address: False,
        postmaster: Callable[[str], str | None] = lambda domain: None,
        authenticate: Callable[[str, str], str | None] = lambda login, password: None,
        resolve: Callable[[str], str | None] = lambda login: None,
        relay_available: bool = False,
        submission: bool = False,
        tls: TLSInfo | None = None,
        starttls_available: bool = True,
        peer_ip: str = "127.0.0.1",
        hooks: frozenset[str] = frozenset(),
        require_tls: bool = False,
        plaintext_auth: bool = False,
        data_budget: smtpdata.Budget | None = None,
    ) -> None:
        self.hostname = hostname
        self.limits = limits
        self.local_domains = local_domains
        self.is_user = is_user
        self.postmaster = postmaster  # domain -> the user who reads its postmaster mail
        self.authenticate = authenticate
        self.resolve = resolve
        self.relay_available = relay_available
        self.submission = submission  # users log in and may send anywhere (RFC 6409)
        self.tls = tls  # set while TLS protects the session (implicit, or after STARTTLS)
        self.starttls_available = starttls_available
        self.peer_ip = peer_ip
        self.hooks = hooks  # the handle_* names the lab host's aiosmtpd handler has
        self.require_tls = require_tls  # the lab requires TLS before any login (lab.policy)
        #: The teacher's switch (lab.policy.plaintext_auth_demo): AUTH offered and accepted
        #: before STARTTLS, so the eavesdropper lesson can show what it gives away.
        self.plaintext_auth = plaintext_auth
        self.errors = 0  # 5xx replies since the last delivered message; STARTTLS keeps it
        #: the lab's DATA held in flight, shared by all its SMTP sessions (one of its own when alone)
        self.data_budget = data_budget if data_budget is not None else smtpdata.Budget(limits)
        self.transaction = Transaction()
        self._reset_session()

    # -- per-session state -------------------------------------------------------------
    def _reset_session(self) -> None:
        """Forget everything the client said (new connection, or after STARTTLS:
        RFC 3207 4.2 - the client must start over with EHLO)."""
        self.state = State.GREETING
        self.helo: str | None = None
        self.extended = False
        self.user: str | None = None
        self.sasl: SASLExchange | None = None
        self._new_transaction()

    def _reset_transaction(self) -> None:
        """RFC 5321 4.1.1.5 (RSET), 4.1.4 (EHLO mid-transaction) and after DATA."""
        self._new_transaction()
        if self.state is not State.GREETING:
            self.state = State.READY

    def _new_transaction(self) -> None:
        """Forget the transaction, giving back the DATA octets it held (stored or refused)."""
        self.data_budget.release(self.transaction.held)
        self.transaction = Transaction()

    def ended(self) -> None:
        """The connection is gone (maybe in the middle of DATA): nothing stays held."""
        self._new_transaction()

    # -- what the driver asks ----------------------------------------------------------
    @property
    def read_limit(self) -> int:
        """The longest line the next read may return (the AUTH limit covers every command;
        :meth:`receive` applies each command's own)."""
        return AUTH_LINE_LIMIT

    def line_limit(self, line: bytes) -> int:
        """The limit of the command ``line`` turns out to be: MAIL may grow by what its
        extensions add (RFC 1870 6); AUTH with an initial response may be long (RFC 4954 4)."""
        if self.sasl is not None:
            return AUTH_LINE_LIMIT
        verb = line[:5].upper()
        if verb.startswith(b"MAIL"):
            return self.limits.smtp_command_line + MAIL_LINE_EXTRA
        if verb.startswith(b"AUTH"):
            return AUTH_LINE_LIMIT
        return self.limits.smtp_command_line

    def greeting(self) -> Reply:
        return Reply(220, "", f"{self.hostname} ESMTP maillab")

    def busy(self) -> Reply:
        return Reply(421, "4.7.0", f"{self.hostname} Error: too many connections",
                     close="too many connections")

    def masked(self, line: bytes | str) -> str:
        """The client line as it may be recorded: credentials replaced by ****."""
        text = line.decode("utf-8", "replace") if isinstance(line, bytes) else line
        return mask_line("smtp", text.rstrip("\r\n"), sasl=self.sasl is not None)

    def line_too_long(self) -> Reply:
        if self.sasl is not None:
            self.sasl = None
            return self._count(Reply(500, "5.5.2", "Error: AUTH line too long"))
        return self._count(Reply(500, "5.5.2", "Error: command line too long (RFC 5321"
                                 f" 4.5.3.1.4: at most {self.limits.smtp_command_line} octets)"))

    def timed_out(self) -> Reply:
        # RFC 5321 4.5.3.2: a server may close an idle session; it says why first.
        self.state = State.CLOSED
        return Reply(421, "4.4.2", f"{self.hostname} Error: timeout exceeded", close="idle timeout",
                     notes=((f"idle for {self.limits.smtp_timeout} s: session closed", {}),))

    def give_up(self) -> Reply | None:
        """Before the next command: 421 once a client has made too many errors."""
        if self.errors < self.limits.smtp_bad_commands:
            return None
        self.state = State.CLOSED
        return Reply(421, "4.7.0", f"{self.hostname} Error: too many errors", close="too many errors",
                     notes=((f"{self.errors} errors: session closed", {}),))

    def tls_started(self, tls: TLSInfo) -> None:
        self.tls = tls
        self.starttls_available = False
        self._reset_session()

    def _count(self, step: Step) -> Step:
        """Every 5xx counts towards the error limit (Postfix's smtpd_hard_error_limit)."""
        if isinstance(step, Reply):
            if step.code >= 500:
                self.errors += 1
            return step
        then = step.then

        def counted(result: Any) -> Step:
            return self._count(then(result))

        # Built directly: dataclasses.replace() looks the fields up every time.
        if isinstance(step, Deliver):
            return Deliver(step.queue_id, step.mail_from, step.local, step.remote, step.message, counted)
        return Hook(step.name, step.args, step.envelope, counted)

    # -- the commands ------------------------------------------------------------------
    def command(self, line: bytes) -> str | None:
        """The verb of a well-formed command line (what failure injection matches);
        None for a SASL response or a line :meth:`receive` refuses as malformed."""
        if self.sasl is not None or not line.endswith(b"\r\n") or b"\r" in line[:-2]:
            return None
        verb = line[:-2].split(b" ", 1)[0]
        try:
            return verb.decode("ascii").upper() or None
        except UnicodeDecodeError:
            return None

    def injected(self, verb: str, text: str) -> Reply:
        """A reply that failure injection (``lab.faults``) sends instead of running ``verb``."""
        if verb == "RCPT":
            self.transaction.rejected += 1
        return self._count(hook_reply(text) or Reply(451, "4.3.0", text))

    def receive(self, line: bytes) -> Step:
        """Handle one line from the client (with its line ending)."""
        return self._count(self._receive(line))

    def _receive(self, raw: bytes) -> Step:
        if self.sasl is not None:
            return self._sasl_step(self.sasl.respond(raw))
        bare_lf = not raw.endswith(b"\r\n")
        body = raw[:-1] if bare_lf else raw[:-2]
        if bare_lf:
            return Reply(500, "5.5.2", "Error: bare <LF> received: SMTP commands end with"
                         " <CRLF> (RFC 5321 2.3.8); with netcat use nc -C")
        if b"\r" in body:
            return Reply(500, "5.5.2", "Error: bare <CR> received inside a command (RFC 5321 2.3.8)")
        try:
            text = body.decode("utf-8")
        except UnicodeDecodeError:
            return Reply(500, "5.5.2", "Error: command is not valid UTF-8")
        verb, _, arg = text.partition(" ")
        verb = verb.upper()
        if not verb:
            return Reply(500, "5.5.2", "Error: bad syntax")
        if verb not in ALL_COMMANDS:
            # 500, not 502: "If the command is not recognized, code 500 SHOULD be returned"
            # (RFC 5321 4.2.4); 502 is for a command known but not implemented (EXPN here)
            return Reply(500, "5.5.2", f"Error: command not recognized: {verb[:20]}")
        if verb not in COMMANDS[self.state]:
            if (self.state, verb) == (State.MAIL, "DATA") and self.transaction.rejected:
                return NO_VALID_RCPT
            return OUT_OF_ORDER.get((self.state, verb), Reply(503, "5.5.1", "Error: bad sequence of commands"))
        try:
            return getattr(self, f"cmd_{verb.lower()}")(arg.strip())
        except PathError as exc:
            if verb == "RCPT":
                self.transaction.rejected += 1
            return exc.reply

    # Any state ---------------------------------------------------------------------
    def _ehlo_keywords(self) -> list[str]:
        lines = [self.hostname, "PIPELINING", f"SIZE {self.limits.smtp_message_size}"]
        if self.tls is None and self.starttls_available:
            lines.append("STARTTLS")
        if self.submission and (self.tls is not None or self.plaintext_auth) and self.user is None:
            lines.append("AUTH PLAIN LOGIN")  # RFC 4954 4; plain passwords only under TLS
        return lines + ["ENHANCEDSTATUSCODES", "8BITMIME", "SMTPUTF8"]

    def cmd_ehlo(self, arg: str) -> Step:
        if not arg:
            return Reply(501, "5.5.4", "Syntax: EHLO hostname")
        self.state = State.READY
        self._reset_transaction()
        self.helo, self.extended = arg, True
        reply = Reply(250, "", "\n".join(self._ehlo_keywords()))
        if "EHLO" not in self.hooks:
            return reply
        # aiosmtpd's 5-argument handle_EHLO gets the reply lines and returns them,
        # edited or not; what it advertises does not change what the session accepts.
        return Hook("EHLO", (arg, reply.lines()), self.transaction.envelope,
                    lambda lines: ehlo_reply(lines) or reply)

    def cmd_helo(self, arg: str) -> Reply:
        if not arg:
            return Reply(501, "5.5.4", "Syntax: HELO hostname")
        self.state = State.READY
        self._reset_transaction()
        self.helo, self.extended = arg, False
        return Reply(250, "", self.hostname)

    def cmd_rset(self, arg: str) -> Reply:
        if arg:
            return Reply(501, "5.5.4", "Syntax: RSET")
        self._reset_transaction()
        return Reply(250, "2.0.0", "Ok")

    def cmd_noop(self, arg: str) -> Reply:
        return Reply(250, "2.0.0", "Ok")

    def cmd_quit(self, arg: str) -> Reply:
        self.state = State.CLOSED
        return Reply(221, "2.0.0", "Bye", close="QUIT")

    def cmd_vrfy(self, arg: str) -> Reply:
        if not arg:
            return Reply(501, "5.5.4", "Syntax: VRFY address")
        # RFC 5321 3.5.3: 252 says "not verified, but try it" without telling
        # address harvesters which users exist.
        return Reply(252, "2.0.0", "Cannot VRFY user, but will accept message and attempt delivery")

    def cmd_expn(self, arg: str) -> Reply:
        return Reply(502, "5.5.1", "Error: EXPN not available")

    def cmd_help(self, arg: str) -> Reply:
        return Reply(214, "2.0.0", "Commands: EHLO HELO STARTTLS AUTH MAIL RCPT DATA RSET"
                     " NOOP VRFY QUIT; see RFC 5321")

    # GREETING and READY: STARTTLS (RFC 3207), AUTH (RFC 4954) ------------------------
    def cmd_starttls(self, arg: str) -> Reply:
        if arg:
            return Reply(501, "5.5.4", "Syntax: STARTTLS")
        if self.tls is not None:
            # RFC 3207 4.2 leaves it open; Postfix answers exactly this.
            return Reply(554, "5.5.1", "Error: TLS already active")
        if not self.starttls_available:
            return Reply(454, "4.7.0", "TLS not available")
        if self.user is not None:
            # Only reachable with the teacher's switch (a login in the clear): the password
            # is already out, and a session must not start over under a login it keeps.
            return Reply(503, "5.5.1", "Error: already authenticated; STARTTLS comes before AUTH")
        return Reply(220, "2.0.0", "Ready to start TLS", starttls=True)

    def cmd_auth(self, arg: str) -> Step:
        if not self.submission:
            return Reply(503, "5.5.1", "Error: authentication not enabled"
                         " (this is an MX port; users log in on submission)")
        if not self.extended:
            return Reply(503, "5.5.1", "Error: send EHLO first")
        if self.tls is None and not self.plaintext_auth:
            if self.require_tls:  # RFC 3207 4: the server requires TLS for everything
                return NEED_STARTTLS
            return Reply(538, "5.7.11", "Encryption required for requested authentication"
                         " mechanism (RFC 4954 6): STARTTLS first")
        if self.user is not None:
            return Reply(503, "5.5.1", "Error: already authenticated")
        exchange, reply = start_auth(arg)
        self.sasl = exchange
        return self._sasl_step(reply)

    def _sasl_step(self, outcome: Reply | Done) -> Reply:
        """Carry on an AUTH exchange: a challenge or error, or (mechanism, credentials)."""
        if isinstance(outcome, Reply):
            if outcome.code != 334:
                self.sasl = None
            return outcome
        self.sasl = None
        mechanism, credentials = outcome
        login = credentials.authcid
        if not sasl.may_act_as(credentials, self.resolve(login)):
            # Acting as someone else would need an admin right the lab does not have.
            login = f"{login} as {credentials.authzid}"
        address = self.authenticate(login, credentials.password)
        if address is None:
            # A pause makes guessing slow; the same for a wrong user and a wrong password.
            return Reply(535, "5.7.8", "Authentication credentials invalid",
                         delay=self.limits.auth_failure_delay, auth=(login, False, mechanism))
        self.user = address
        return Reply(235, "2.7.0", "Authentication successful", auth=(address, True, mechanism))

    # The mail transaction: MAIL, RCPT, DATA (RFC 5321 3.3) -------------------------------
    def cmd_mail(self, arg: str) -> Step:
        if self.submission:
            if self.tls is None and not self.plaintext_auth:
                return NEED_STARTTLS
            if self.user is None:
                return NEED_AUTH  # RFC 6409 4.3 (and RFC 4954 6)
        if arg[:5].upper() != "FROM:":
            return Reply(501, "5.5.4", "Syntax: MAIL FROM:<address>")
        path, rest = parse_path(arg[5:], what="sender", allow_null=True)
        params = parse_mail_params(rest, extended=self.extended, size_limit=self.limits.smtp_message_size)
        require_utf8_ok(path, params.smtputf8)
        if self.submission:
            check_sender(path, self.user)

        def begin(hook_reply: Reply | None = None) -> Reply:
            if hook_reply is not None and not hook_reply.ok:
                self._new_transaction()
                return hook_reply
            t = self.transaction
            t.mail_from, t.params = path.address, params
            t.envelope.mail_from = t.envelope.mail_from or path.address
            t.envelope.smtp_utf8 = params.smtputf8
            self.state = State.MAIL
            return hook_reply or MAIL_OK

        if "MAIL" not in self.hooks:
            return begin()
        envelope = self.transaction.envelope
        envelope.mail_from, envelope.mail_options = path.address, rest.split()
        return Hook("MAIL", (path.address, rest.split()), envelope,
                    lambda status: begin(hook_reply(status)))

    def cmd_rcpt(self, arg: str) -> Step:
        if arg[:3].upper() != "TO:":
            return Reply(501, "5.5.4", "Syntax: RCPT TO:<address>")
        t = self.transaction
        path, rest = parse_recipient(arg[3:], self.hostname, self.local_domains)
        check_rcpt_params(rest)
        require_utf8_ok(path, t.params.smtputf8)
        if len(t.rcpts) >= self.limits.smtp_recipients:
            # the limit: 4.5.3.1.8 (a teacher may lower it to show this); the code: 4.5.3.1.10
            return Reply(452, "4.5.3", f"Error: too many recipients, at most {self.limits.smtp_recipients} in one"
                                       " transaction: send the rest in another (RFC 5321 4.5.3.1.10; a server"
                                       " must take at least 100, 4.5.3.1.8)")
        route = route_recipient(path, local_domains=self.local_domains, is_user=self.is_user,
                                authenticated=self.user is not None,
                                relay_available=self.relay_available, postmaster=self.postmaster)

        def accept(hook_reply: Reply | None = None) -> Reply:
            if hook_reply is not None and not hook_reply.ok:
                t.rejected += 1
                return hook_reply
            t.rcpts.append(route)
            if route.address not in t.envelope.rcpt_tos:
                t.envelope.rcpt_tos.append(route.address)
            self.state = State.RCPT
            return hook_reply or RCPT_OK

        if "RCPT" not in self.hooks:
            return accept()
        return Hook("RCPT", (route.address, rest.split()), t.envelope,
                    lambda status: accept(hook_reply(status)))

    def cmd_data(self, arg: str) -> Reply:
        if arg:
            return Reply(501, "5.5.4", "Syntax: DATA")
        # The size the client declared (RFC 1870 SIZE=) is held before 354: a message
        # that cannot fit now is refused before its text is sent (RFC 1870 allows the
        # 452 at MAIL too, but the room is only taken here, at DATA).
        if not self.hold_data(self.transaction.params.size or 0):
            self._reset_transaction()  # as after a text refused: the client starts over
            return self._no_storage("declared")
        self.state = State.DATA
        return GO_AHEAD

    def hold_data(self, octets: int) -> bool:
        """The text read so far (or declared) is ``octets`` long: hold that much of the
        lab's DATA budget. False when it does not fit (the driver then reads the rest
        of the text without keeping it, and asks :meth:`no_storage`)."""
        t = self.transaction
        if octets <= t.held:
            return True
        if not self.data_budget.take(octets - t.held):
            return False
        t.held = octets
        return True

    def no_storage(self) -> Reply:
        """The text went past the lab's DATA budget; the driver read it to its end and kept none."""
        self._reset_transaction()
        return self._no_storage("received")

    def _no_storage(self, how: str) -> Reply:
        limit = self.limits.smtp_data_in_flight
        return Reply(452, "4.3.1", "Insufficient system storage: the server holds too much mail in"
                     " flight right now; nothing was stored, try again later (RFC 5321 4.2.5)",
                     notes=((f"DATA refused for now: the {how} text does not fit in the"
                             f" {limit} octets all SMTP sessions may hold at once"
                             " (limits.smtp_data_in_flight)", {"limit": "smtp_data_in_flight"}),))

    # DATA: the message text has been read -------------------------------------------
    def message_too_big(self) -> Reply:
        """The text went past the size limit; the driver read it to its end and kept none."""
        self._reset_transaction()
        return self._count(self._size_refusal())

    def _size_refusal(self) -> Reply:
        return Reply(552, "5.3.4", "Message size exceeds fixed limit of"
                     f" {self.limits.smtp_message_size} octets; nothing was stored")

    def end_of_data(self, text: smtpdata.Text) -> Step:
        """The text after DATA has ended (``smtpdata.scan`` of what was sent).
        The whole message is refused, or handed on (hook, then delivery)."""
        return self._count(self._end_of_data(text))

    def _end_of_data(self, text: smtpdata.Text) -> Step:
        message = text.message
        refusal = smtpdata.check_line_endings(text)
        if refusal is None and len(message) > self.limits.smtp_message_size:
            refusal = self._size_refusal()
        if refusal is None:
            refusal = smtpdata.check_line_length(text, self.limits.smtp_text_line)
        if refusal is None:
            refusal = smtpdata.check_hops(message)
        if refusal is not None:
            self._reset_transaction()
            return replace(refusal, notes=((f"message refused: {refusal.text}", {}),))
        t = self.transaction
        qid = queue_id()
        rcpts = t.rcpts
        header = received_header(
            helo=self.helo or "unknown", peer_ip=self.peer_ip, by=self.hostname,
            protocol=with_protocol(extended=self.extended, tls=self.tls is not None,
                                   authenticated=self.user is not None, smtputf8=t.params.smtputf8),
            id=qid, recipient=rcpts[0].address if len(rcpts) == 1 else None, tls=self.tls)
        message = header + message
        deliver = Deliver(
            qid, t.mail_from or "",
            local=list(dict.fromkeys(r.owner for r in rcpts if r.kind == LOCAL)),
            remote=list(dict.fromkeys(r.address for r in rcpts if r.kind != LOCAL)),
            message=message, then=lambda failure: self._delivered(failure, qid, None))
        if "DATA" not in self.hooks:
            return deliver
        t.envelope.content = t.envelope.original_content = message

        def hooked(status: Any) -> Step:
            reply = hook_reply(status)
            if reply is not None and not reply.ok:
                self._reset_transaction()
                return replace(reply, notes=((f"the host's handler refused the message: {reply}", {}),))
            return replace(deliver, then=lambda failure: self._delivered(failure, qid, reply))

        return Hook("DATA", (), t.envelope, hooked)

    def _delivered(self, failure: Reply | None, qid: str, hook_ok: Reply | None) -> Reply:
        self._reset_transaction()
        if failure is not None:
            return failure
        self.errors = 0  # like Postfix: the error limit is for clients that deliver nothing
        return hook_ok or Reply(250, "2.0.0", f"Ok: queued as {qid}")


def ehlo_reply(lines: Any) -> Reply | None:
    """What a handle_EHLO hook returned (``["250-host", ..., "250 SMTPUTF8"]``) as a Reply."""
    if not isinstance(lines, list) or not lines or not all(isinstance(x, str) for x in lines):
        return None
    return hook_reply("\r\n".join(lines))

