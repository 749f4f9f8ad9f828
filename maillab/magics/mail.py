"""``%mail``, ``%%mail`` and ``%%smtp``: the lab from a notebook.

``%mail`` is a verb router: ``%mail start``, ``%mail status``, ``%mail inbox bob``,
... Each verb is a :class:`Subcommand` in :data:`SUBCOMMANDS` with its own
``magic_arguments`` parser, so ``%mail start --help`` works and other modules add
verbs without editing this file::

    from maillab.magics.mail import subcommand
    from IPython.utils.process import arg_split
from IPython.core.magic_arguments import argument, magic_arguments

    @subcommand("queue")
    @magic_arguments("mail queue")
    @argument("--host")
    def queue(magics, args):
        '''Show the relay queue.'''
        return QueueView(magics.lab())

Every verb returns an object with an HTML and a text rendering; nothing prints.
"""

from __future__ import annotations

import argparse
import html
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from IPython.core.error import UsageError
from IPython.core.magic import Magics, line_cell_magic, magics_class
from IPython.core.magic_arguments import (
    MagicArgumentParser,
    argument,
    magic_arguments,
)
from IPython.utils.process import arg_split
from traitlets import Bool, Float, observe

from ..clients.smtp import send as send_message
from ..compose import compose
from ..lab import Lab
from ..services import PortBusy
from ..users import parse_user_spec
from ..views import Inbox, StatusTable, Transcript, TranscriptView, theme
from ..views.status import StartSummary
from ..views.theme import page, text_lines
from ..views.transcript import flush_live_views
from . import state
from .comments import strip_comment
from .rawcell import CellDialect, CellLines, RawResult, command, run_raw

# -- the verb registry ------------------------------------------------------------------

SubcommandFunc = Callable[["MailMagics", argparse.Namespace], Any]


@dataclass
class Subcommand:
    name: str
    func: SubcommandFunc
    parser: MagicArgumentParser
    description: str | None = None

    @property
    def summary(self) -> str:
        if self.description:
            return self.description
        doc = (self.func.__doc__ or "").strip()
        # magic_arguments replaced the docstring with the help text: the description
        # is the paragraph after the usage line.
        paragraphs = [p for p in doc.split("\n\n") if p.strip() and not p.lstrip().startswith("::")]
        for p in paragraphs:
            if not p.lstrip().startswith(("%", "usage")):
                return " ".join(p.split())
        return ""


SUBCOMMANDS: dict[str, Subcommand] = {}


def subcommand(name: str) -> Callable[[SubcommandFunc], SubcommandFunc]:
    """Register ``func(magics, args)`` as ``%mail <name>``.

    Decorate the function with ``@magic_arguments("mail <name>")`` and
    ``@argument(...)`` first (below this decorator) to give it options.
    """

    def deco(func: SubcommandFunc) -> SubcommandFunc:
        parser = getattr(func, "parser", None)
        if parser is None:
            func = magic_arguments(f"mail {name}")(func)
            parser = func.parser  # type: ignore[attr-defined]
        parser.prog = f"mail {name}"  # the help formatter adds the "%"
        SUBCOMMANDS[name] = Subcommand(name, func, parser)
        _update_docstring()
        return func

    return deco


class HelpText:
    """Help shown as a cell result (``%mail start --help``)."""

    def __init__(self, text: str) -> None:
        self.text = text

    def __repr__(self) -> str:
        return self.text

    def _repr_html_(self) -> str:
        return page(self._html_body(), kind="help")

    def _html_body(self) -> str:
        return text_lines(self.text)  # a wrapped line goes on indented (theme)


def help_asked(magic: Any, line: str) -> HelpText | None:
    """The options of a ``magic_arguments`` magic (``%pop3``, ``%imap``) when its line asks
    ``--help`` or ``-h``, as ``%mail VERB --help`` shows a verb's: IPython's own parser
    offers only ``%pop3?``, and the exercises and the README say ``--help``."""
    words = line.split()
    if "--help" in words or "-h" in words:
        return HelpText(magic.parser.format_help())
    return None


def overview() -> str:
    width = max((len(n) for n in SUBCOMMANDS), default=8)
    lines = [f"  %mail {n:<{width}}  {s.summary}" for n, s in SUBCOMMANDS.items()]
    return "\n".join([
        "%mail VERB [options]   (%mail VERB --help for a verb's options)",
        "",
        *lines,
        "",
        "  %%mail --from A --to B --subject S [--cc C] [--attach PATH ...] [--html] [--via host:port]",
        "        compose the cell's text (an optional header block first) and send it",
        "  %%smtp [host:port | smtp | submission | smtps]",
        "        a raw SMTP cell: each line is sent, each reply shown",
    ])


_MAIL_DOC = """Run the mail lab and talk to it.

Line magic: ``%mail VERB [options]``. Cell magic: ``%%mail --from A --to B
--subject S`` sends the cell's text as a message (submission port, STARTTLS and
AUTH as the sender by default). Verbs:

"""


def _update_docstring() -> None:
    cls = globals().get("MailMagics")
    if cls is not None:
        cls.mail.__doc__ = _MAIL_DOC + overview()


# -- helpers -----------------------------------------------------------------------------


def ensure_started(lab: Lab) -> tuple[Lab, str | None]:
    """Start ``lab``; when its fixed ports are taken, fall back to free ports.

    Another kernel's lab (or a real server) often holds 2525 or 1143 already; a
    notebook should still run, and the status table shows the ports it got.
    """
    if lab.started:
        return lab, None
    try:
        lab.start()
        return lab, None
    except PortBusy as exc:
        if lab.ports != "default":
            raise
        lab.ports = "auto"
        lab.start()
        return lab, f"{exc.strerror.split(';')[0]}: using free ports instead (see the table)"


def _parse(parser: MagicArgumentParser, line: str) -> argparse.Namespace | HelpText:
    # posix=True: quotes group words and are removed, as in a shell ("你好, Bob").
    try:
        words = arg_split(line, posix=True)
    except ValueError as exc:  # an unclosed quote
        raise UsageError(f"cannot split the options: {exc}") from None
    if "--help" in words or "-h" in words:
        return HelpText(parser.format_help())
    return parser.parse_args(words)


# -- raw SMTP cells ---------------------------------------------------------------------


def smtp_reply_complete(_command: str | None, lines: list[str]) -> bool:
    """An SMTP reply ends with a line whose fourth character is not "-" (RFC 5321 4.2.1)."""
    return bool(lines) and lines[-1][3:4] != "-"


class SMTPCell(CellDialect):
    """``%%smtp``: lines between DATA's 354 and the lone "." are message text: they get
    no reply, so they are sent without waiting (RFC 5321 4.1.1.4). A STARTTLS that gets
    220 upgrades the connection with the lab CA trusted (RFC 3207 4). Lines that answer
    a 334 AUTH challenge are masked in the events."""

    protocol = "smtp"

    def __init__(self) -> None:
        self.in_data = False

    def reply_complete(self, command: str | None, lines: list[str]) -> bool:
        return smtp_reply_complete(command, lines)

    def step(self, raw: Any, cell: CellLines, result: RawResult) -> bool:
        line = cell.take()
        if self.in_data and line != ".":
            raw.send_line(line)
            return True
        if not self.in_data and not line.strip():
            return True  # blank lines between commands are layout, not protocol
        self.in_data = False
        ex = command(raw, line, result)
        if ex is None:
            return False
        code = ex.reply[-1][:3] if ex.reply else ""
        verb = line.split()[0].upper() if line.split() else ""
        raw.sasl = code == "334"
        if verb == "DATA" and code == "354":
            self.in_data = True
        elif verb == "STARTTLS" and code == "220":
            raw.starttls()
        elif code in ("221", "421"):
            return False
        return True

    def finish(self, result: RawResult) -> None:
        if self.in_data:
            result.problems.append("the cell ended inside DATA: a line with a single '.' ends the message")


def run_raw_smtp(lab: Lab, target: str, text: str, *, timeout: float = 10.0,
                 implicit_tls: bool | None = None) -> RawResult:
    """Send ``text`` line by line like a telnet session (see :class:`SMTPCell`)."""
    return run_raw(lab, target, text, SMTPCell(), timeout=timeout, implicit_tls=implicit_tls)


# -- the magics --------------------------------------------------------------------------


@magic_arguments("%mail")
@argument("--from", dest="sender", help="sender address (or a From: line in the cell)")
@argument("--to", action="append", default=[], help="recipient (repeatable, or comma-separated)")
@argument("--cc", action="append", default=[], help="copy recipient (repeatable)")
@argument("--bcc", action="append", default=[], help="blind copy: in the envelope only")
@argument("--subject", help="subject (non-ASCII is fine: it is RFC 2047-encoded)")
@argument("--attach", action="append", default=[], metavar="PATH", help="attach a file (repeatable)")
@argument("--html", action="store_true", help="the body is HTML (sent as multipart/alternative)")
@argument("--via", default="submission",
          help="submission (default: STARTTLS + AUTH), smtps, smtp (MX, no AUTH) or host:port")
@argument("--user", help="login (default: the sender) for AUTH")
@argument("--password", help="password (default: the lab user's)")
@argument("--no-starttls", action="store_true", help="do not upgrade with STARTTLS")
@argument("--body", help="message text (line magic form; the cell form uses the cell)")
@argument("--transcript", action="store_true", help="show the whole SMTP session, not just the summary")
def _compose_args() -> None:
    """Compose a message and send it (``%mail send`` takes the same options, the text with --body)."""


@magics_class
class MailMagics(Magics):
    timeout = Float(10.0, help="seconds every client call may wait for a server").tag(config=True)
    presenter = Bool(False, help="large text in every view, for the back row of a class").tag(config=True)
    text_scale = Float(1.0, help="text size of every view (1 = normal; presenter mode is 1.6)").tag(config=True)

    @observe("presenter")
    def _presenter_changed(self, change: dict) -> None:
        theme.settings.set_presenter(bool(change["new"]))

    @observe("text_scale")
    def _text_scale_changed(self, change: dict) -> None:
        try:
            theme.settings.set_scale(float(change["new"]))
        except ValueError as exc:
            raise UsageError(str(exc)) from None

    def __init__(self, shell: Any = None, **kwargs: Any) -> None:
        super().__init__(shell, **kwargs)
        # %config set before the extension loaded: apply it now.
        if self.presenter:
            theme.settings.set_presenter(True)
        elif self.text_scale != 1.0:
            theme.settings.set_scale(self.text_scale)
        if shell is not None and flush_live_views not in shell.events.callbacks["post_run_cell"]:
            shell.events.register("post_run_cell", flush_live_views)

    def lab(self) -> Lab:
        """The kernel's lab, started if needed (what verbs from other modules call too)."""
        lab, _note = ensure_started(state.current_lab(start=False))
        return lab

    @line_cell_magic
    def mail(self, line: str = "", cell: str | None = None) -> Any:
        line = strip_comment(line)
        if cell is not None:
            return self._send(line, cell, prog="%%mail")
        words = line.split(None, 1)
        if not words or words[0] in ("help", "--help", "-h"):
            return HelpText(overview())
        verb, rest = words[0], (words[1] if len(words) > 1 else "")
        sub = SUBCOMMANDS.get(verb)
        if sub is None:
            raise UsageError(f"unknown verb {verb!r}; one of: {', '.join(SUBCOMMANDS)} (%mail help)")
        args = _parse(sub.parser, rest)
        if isinstance(args, HelpText):
            return args
        return sub.func(self, args)

    def _send(self, line: str, body: str | None, *, prog: str) -> Any:
        parser = _compose_args.parser  # type: ignore[attr-defined]
        args = _parse(parser, line)
        if isinstance(args, HelpText):
            return args
        return self._send_parsed(args, body)

    def _send_parsed(self, args: argparse.Namespace, body: str | None) -> Any:
        text = body if body is not None else (args.body or "")
        try:
            msg = compose(sender=args.sender, to=args.to, cc=args.cc, bcc=args.bcc,
                          subject=args.subject, body=text, html=args.html or None,
                          attachments=args.attach)
        except (ValueError, OSError) as exc:
            raise UsageError(str(exc)) from None
        try:
            result = send_message(self.lab(), msg, via=args.via, user=args.user, password=args.password,
                                  starttls=not args.no_starttls, timeout=self.timeout, check=False)
        except ValueError as exc:
            raise UsageError(str(exc)) from None
        result.show_transcript = args.transcript
        return result

    @line_cell_magic
    def smtp(self, line: str = "", cell: str | None = None) -> Any:
        """A raw SMTP session: ``%%smtp host:port`` (or smtp, submission, smtps; default smtp).

        Each line of the cell is sent as typed and the server's reply read before the
        next; the text between DATA's 354 and a line holding only "." is sent
        without waiting. STARTTLS upgrades the connection (the lab CA is trusted).
        Add ``--tls`` for implicit TLS on a port the lab does not know.
        """
        line = strip_comment(line)
        words = line.split()
        implicit = True if "--tls" in words else None
        words = [w for w in words if w != "--tls"]
        if cell is None:
            raise UsageError("%%smtp is a cell magic: put the SMTP lines in the cell below it")
        return run_raw_smtp(self.lab(), words[0] if words else "smtp", cell,
                            timeout=self.timeout, implicit_tls=implicit)


_update_docstring()
MAGICS = MailMagics


# -- the verbs ---------------------------------------------------------------------------


@subcommand("start")
@magic_arguments("mail start")
@argument("--dir", help="lab directory (default: a fresh temporary directory)")
@argument("--ports", default="default", choices=["default", "auto"],
          help="default: 2525/2587/2465/...; auto: free ports. Busy default ports fall back to auto")
@argument("--host", default="127.0.0.1", help="address of the lab's main host (loopback)")
@argument("--domain", action="append", default=[], help="mail domain the lab serves (repeatable)")
@argument("--user", action="append", default=[], metavar="ADDR=PW", help="add a user (repeatable)")
def _start(magics: MailMagics, args: argparse.Namespace) -> Any:
    """Start the lab's servers in this kernel (idempotent)."""
    lab = state.existing_lab()
    if lab is not None and lab.started:
        return StartSummary(lab.status(), directory=str(lab.directory),
                            note="already running (%mail stop first to change options)")
    try:
        users = [parse_user_spec(u) for u in args.user]
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    lab = Lab(args.dir, host=args.host, ports=args.ports, domains=args.domain or None)
    for address, password in users:
        lab.add_user(address, password)
    state.replace_lab(lab)
    try:
        lab, note = ensure_started(lab)
    except PortBusy as exc:
        state.replace_lab(None)
        raise UsageError(str(exc)) from None
    return StartSummary(lab.status(), directory=str(lab.directory), note=note)


@subcommand("stop")
@magic_arguments("mail stop")
def _stop(magics: MailMagics, args: argparse.Namespace) -> Any:
    """Stop every server and close every socket of the lab."""
    had = state.existing_lab() is not None
    state.shutdown()
    return HelpText("lab stopped" if had else "no lab was running")


@subcommand("status")
@magic_arguments("mail status")
def _status(magics: MailMagics, args: argparse.Namespace) -> Any:
    """The port/TLS table: service, host, lab port, standard port, TLS mode, state, sessions."""
    lab = state.existing_lab()
    if lab is None or not lab.started:
        return StatusTable([])
    fds = lab.fd_limit.text() if lab.fd_limit is not None and not lab.fd_limit.enough else None
    note = "\n".join(n for n in (fds, lab.loop.lag_summary()) if n) or None
    return StatusTable(lab.status(), ca_path=str(lab.ca_path), directory=str(lab.directory),
                       note=note)


class UsersTable:
    def __init__(self, lab: Lab) -> None:
        # (address, password, bare name, the host where the login exists: her provider's)
        self.rows: list[tuple[str, str, str, str]] = []
        for u in lab.users:
            home = lab.home_host(u.address)
            here = lab.users_at(lab.topology.hosts.get(home))
            self.rows.append((u.address, u.password, u.local if here.resolve(u.local) == u.address else "",
                              home))

    def __repr__(self) -> str:
        from ..views.status import text_table

        rows = [{"address": a, "password": p, "local": loc, "home": h} for a, p, loc, h in self.rows]
        return text_table(rows, [("user", "address"), ("password", "password"),
                                 ("also logs in as", "local"), ("logs in at", "home")])

    def _repr_html_(self) -> str:
        return page(self._html_body(), kind="users")

    def _html_body(self) -> str:
        # where each logs in goes under the address, not in a fourth column: the table
        # must fit a presenter's 150% zoom side by side
        body = "".join(f"<tr><td>{html.escape(a)}<br><span class='ml-muted ml-small'>at {html.escape(h)}"
                       f"</span></td><td><code>{html.escape(p)}</code></td><td>{html.escape(loc)}</td></tr>"
                       for a, p, loc, h in self.rows)
        return ("<table><thead><tr><th>user</th><th>password</th><th>also logs in as</th></tr></thead>"
                f"<tbody>{body}</tbody></table><div style='font-size:90%'>"
                "Lab passwords, shown on purpose; they are never written into transcripts. Each user "
                "logs in only at her own provider's host (its submission, IMAP and POP3 ports).</div>")


@subcommand("users")
@magic_arguments("mail users")
def _users(magics: MailMagics, args: argparse.Namespace) -> Any:
    """The lab's users and their passwords (log in with the full address)."""
    return UsersTable(magics.lab())


@subcommand("adduser")
@magic_arguments("mail adduser")
@argument("spec", metavar="ADDR=PW")
def _adduser(magics: MailMagics, args: argparse.Namespace) -> Any:
    """Add a lab user (ADDR=PASSWORD)."""
    try:
        address, password = parse_user_spec(args.spec)
        magics.lab().add_user(address, password)
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    return UsersTable(magics.lab())


@subcommand("inbox")
@magic_arguments("mail inbox")
@argument("user", help="bob, or bob@alpha.test")
@argument("--folder", default="INBOX")
def _inbox(magics: MailMagics, args: argparse.Namespace) -> Any:
    """What USER's mailbox holds: date, from, subject, size."""
    lab = magics.lab()
    if lab.users.resolve(args.user) is None:
        raise UsageError(f"no lab user {args.user!r} (%mail users lists them)")
    return Inbox(lab, args.user, args.folder)


@subcommand("transcript")
@magic_arguments("mail transcript")
@argument("--session", help="one session id, or 'last'")
@argument("--protocol", help="smtp, pop3, imap, dns, ...")
@argument("--user", help="sessions concerning this user")
@argument("--static", action="store_true", help="a snapshot instead of the live widget")
@argument("--no-explain", action="store_true", help="without the notes on each line")
def _transcript(magics: MailMagics, args: argparse.Namespace) -> Any:
    """Every session's wire lines (C:/S:), timestamped and explained; live-updating."""
    lab = magics.lab()
    session = args.session
    if session == "last":
        sessions = [s for s in lab.events.sessions()
                    if not args.protocol or s.startswith(f"{args.protocol}-")]
        session = sessions[-1] if sessions else None
    if args.static:
        from ..views.transcript import select

        return Transcript(select(lab.events.events(session=session, protocol=args.protocol),
                                 user=args.user), explain=not args.no_explain)
    return TranscriptView(lab.events, session=session, protocol=args.protocol, user=args.user,
                          explain=not args.no_explain)


SUBCOMMANDS["send"] = Subcommand("send", lambda magics, args: magics._send_parsed(args, None),
                                 _compose_args.parser,  # type: ignore[attr-defined]
                                 "Send a message: the options of %%mail, the text with --body.")
_update_docstring()
