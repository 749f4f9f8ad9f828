"""The step-through client: one real connection, one command at a time.

:class:`StepClient` opens a raw session (``clients/raw.py``, the same one the
``%%smtp``/``%%pop3``/``%%imap`` cells use) to a lab service, reads the greeting
and then sends whatever it is given, line by line, reading each reply with the
protocol's own completion rule. It upgrades to TLS when the server agrees to
STARTTLS/STLS, masks credentials in the recorded events, and keeps every
exchange with the notes the protocol's ``explain`` module has for it.

Nothing is corrected on the client side: a command in the wrong order reaches
the server, and the server's real error comes back.

Every socket call has the client's timeout. :meth:`StepClient.send` blocks (for
cells, tests and the text API); :meth:`StepClient.send_async` runs the same on
one worker thread, so a button click never holds the kernel's loop while the
server answers.
"""

from __future__ import annotations

import ssl
import threading
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field

from ..clients.raw import RawSession
from ..events import OPENED
from ..lab import Lab
from ..views.transcript import explainer
from .guides import Guide, IMAPGuide, POP3Guide, SMTPGuide

#: Which lab service each protocol's step-through client talks to by default.
DEFAULT_SERVICE = {"smtp": "submission", "pop3": "pop3", "imap": "imap"}


@dataclass
class StepLine:
    """One line on the wire, as the step-through view shows it."""

    direction: str  # "C" or "S"
    text: str  # masked for client lines
    note: str | None = None


@dataclass
class Step:
    """One thing the student sent and everything that came back."""

    sent: str  # as recorded (masked)
    lines: list[StepLine] = field(default_factory=list)
    problem: str | None = None  # a timeout or a lost connection, said plainly


def _note(protocol: str, text: str, direction: str) -> str | None:
    fn = explainer(protocol)
    try:
        return fn(text, direction) if fn else None
    except Exception:
        return None


class StepClient:
    """A raw connection driven one command at a time, with a :class:`Guide`."""

    def __init__(self, lab: Lab, protocol: str, user: str, *, service: str | None = None,
                 recipient: str | None = None, timeout: float = 10.0) -> None:
        if protocol not in DEFAULT_SERVICE:
            raise ValueError(f"step-through works for smtp, pop3 and imap, not {protocol!r}")
        address = lab.users.resolve(user)
        if address is None:
            raise ValueError(f"no lab user {user!r}; users: {', '.join(u.address for u in lab.users)}")
        self.lab = lab
        self.protocol = protocol
        self.address = address
        self.timeout = timeout
        self.service_name = service or DEFAULT_SERVICE[protocol]
        svc = lab.service(self.service_name, _host_of(lab, address, self.service_name))
        self.target = f"{svc.hostname} {svc.address}:{svc.port} ({svc.name}, standard port {svc.standard_port})"
        password = lab.users.password(address)
        self.guide: Guide
        tls = {"tls_offered": svc.tls == "starttls", "tls": svc.tls == "implicit"}
        if protocol == "pop3":
            self.guide = POP3Guide(address, password, lab.events, **tls)
        elif protocol == "imap":
            self.guide = IMAPGuide(address, password, lab.events, **tls)
        else:
            others = [u.address for u in lab.users if u.address != address]
            self.guide = SMTPGuide(address, password, lab.events,
                                   recipient=recipient or (others[0] if others else address),
                                   tls_offered=svc.tls == "starttls", auth=svc.name != "smtp")
        self.steps: list[Step] = []
        self._lock = threading.Lock()  # one exchange at a time, whoever asks
        self._worker: ThreadPoolExecutor | None = None
        self.listeners: list[Callable[[], None]] = []  # called after every step (the view)
        self.raw = self._connect(svc.address, svc.port, svc.tls == "implicit", svc.hostname)
        greeting = self._exchange(None)
        self.steps.append(greeting)
        # The server opened its session before it greeted: it is in the events now.
        self.guide.server_session = _server_session(lab, protocol, self._local)

    def _connect(self, host: str, port: int, implicit: bool, cert_name: str) -> RawSession:
        from ..magics.targets import lab_ssl_context

        complete = _reply_rule(self.protocol)
        cls: type[RawSession] = RawSession
        kwargs: dict = {"reply_complete": complete}
        if self.protocol == "imap":
            from ..magics.imap import IMAPRawSession

            cls, kwargs = IMAPRawSession, {}
        raw = cls(host, port, protocol=self.protocol, events=self.lab.events, implicit_tls=implicit,
                  ssl_context=lab_ssl_context(self.lab), server_hostname=cert_name,
                  timeout=self.timeout, **kwargs)
        host, port = raw.sock.getsockname()[:2]
        self._local = f"{host}:{port}"
        return raw

    # -- sending -----------------------------------------------------------------------
    @property
    def closed(self) -> bool:
        return self.guide.closed

    def suggestion(self) -> str:
        return self.guide.suggest()

    def send(self, text: str) -> list[Step]:
        """Send ``text``: one command per line (or, inside SMTP DATA, the message
        text, ended by a line holding only "."). Returns the new steps."""
        with self._lock:
            new: list[Step] = []
            if self.guide.in_data():
                new.append(self._send_message(text))
            else:
                for line in text.splitlines():
                    if not line.strip():
                        continue
                    if self.closed:
                        new.append(Step(line, problem="the session is over: start a new one"))
                        break
                    step = self._exchange(line)
                    new.append(step)
                    if step.problem or self.guide.in_data():
                        break
            self.steps.extend(new)
        for listener in list(self.listeners):
            try:
                listener()
            except Exception:  # a broken view must not break the client
                pass
        return new

    def send_async(self, text: str) -> Future:
        """:meth:`send` on the client's worker thread (what the button does)."""
        if self._worker is None:
            self._worker = ThreadPoolExecutor(1, thread_name_prefix="maillab-step")
        return self._worker.submit(self.send, text)

    def _exchange(self, line: str | None) -> Step:
        step = Step(self.raw.masked(line) if line is not None else "(connect)")
        try:
            ex = self.raw.greeting() if line is None else self.raw.command(line)
        except (ConnectionError, OSError) as exc:
            step.problem = f"connection lost: {exc}"
            self.guide.closed = True
            return step
        if line is not None:
            step.lines.append(StepLine("C", step.sent, _note(self.protocol, step.sent, "C")))
        step.lines += [StepLine("S", r, _note(self.protocol, r, "S")) for r in ex.reply]
        if ex.timed_out:
            step.problem = f"no complete reply within {self.timeout} s"
            return step
        # A challenge ("334 ", "+ ") means the next line is a SASL response: masked whole.
        last = ex.reply[-1] if ex.reply else ""
        self.raw.sasl = last.startswith("334") or (last.startswith("+") and not last.startswith("+OK"))
        if line is not None:
            self.guide.record(line, ex.reply)
            self._maybe_starttls(line, ex.reply, step)
        return step

    def _send_message(self, text: str) -> Step:
        lines = text.replace("\r\n", "\n").split("\n")
        if lines and lines[-1] == "":
            lines.pop()
        if not lines or lines[-1] != ".":
            lines.append(".")  # the end of DATA (RFC 5321 4.1.1.4); said in the step
        step = Step(f"(message text, {len(lines) - 1} lines, then '.')")
        try:
            for ln in lines[:-1]:
                self.raw.send_line(ln)
                step.lines.append(StepLine("C", ln))
            ex = self.raw.command(".")
        except (ConnectionError, OSError) as exc:
            step.problem = f"connection lost: {exc}"
            self.guide.closed = True
            return step
        step.lines.append(StepLine("C", ".", "end of the message: a line holding only '.'"
                                                  " (RFC 5321 4.1.1.4)"))
        step.lines += [StepLine("S", r, _note(self.protocol, r, "S")) for r in ex.reply]
        if ex.timed_out:
            step.problem = f"no complete reply within {self.timeout} s"
        else:
            self.guide.record(".", ex.reply)
        return step

    def _maybe_starttls(self, line: str, reply: list[str], step: Step) -> None:
        words = line.upper().split()
        last = reply[-1] if reply else ""
        agreed = ((self.protocol == "smtp" and words[:1] == ["STARTTLS"] and last.startswith("220"))
                  or (self.protocol == "pop3" and words[:1] == ["STLS"] and last.startswith("+OK"))
                  or (self.protocol == "imap" and words[1:2] == ["STARTTLS"]
                      and last.upper().startswith(f"{words[0]} OK")))
        if not agreed:
            return
        try:
            self.raw.starttls()
        except (ssl.SSLError, OSError) as exc:
            step.problem = f"TLS failed: {exc}"
            self.guide.closed = True
            return
        version = getattr(self.raw.sock, "version", lambda: None)()
        step.lines.append(StepLine("S", f"(TLS started: {version}; everything after this is encrypted)"))

    def close(self) -> None:
        """Drop the connection (without QUIT/LOGOUT: send those to end politely)."""
        with self._lock:
            self.guide.closed = True
            try:
                self.raw.close()
            except OSError:
                pass
        if self._worker is not None:
            self._worker.shutdown(wait=False)

    def __repr__(self) -> str:
        from ..views.step import render_text

        return render_text(self)


def _host_of(lab: Lab, address: str, service: str) -> str | None:
    """The lab host that serves ``address``'s domain (None: the primary host)."""
    host = lab.topology.host_for_domain(address.split("@")[1])
    if host is None:
        return None
    try:
        lab.service(service, host.name)
    except KeyError:
        return None
    return host.name


def _server_session(lab: Lab, protocol: str, client_address: str) -> str | None:
    """The server's session id for the connection coming from ``client_address``."""
    found = None
    for e in lab.events.events(kinds=(OPENED,), protocol=protocol):
        if e.side == "server" and (e.text == client_address or e.data.get("peer") == client_address):
            found = e.session
    return found


def _reply_rule(protocol: str) -> Callable[[str | None, list[str]], bool]:
    if protocol == "smtp":
        from ..magics.mail import smtp_reply_complete

        return smtp_reply_complete
    from ..magics.pop3 import pop3_reply_complete

    return pop3_reply_complete
