"""maillab's own SMTP client: Python's smtplib, recording every line it sends and
receives into the lab's event stream as a client-side session.

The server records its side of the same conversation, so a transcript can show
both ends. What is recorded is what went over the wire (after TLS decryption),
except that credentials are masked before they are recorded (``AUTH PLAIN ****``).

:func:`send` is what ``%%mail`` and ``%mail send`` use: submission with STARTTLS
and AUTH as the sender by default (RFC 6409, RFC 8314), or any ``host:port``.
Every call has a timeout, so a notebook cell never hangs on a silent server.
"""

from __future__ import annotations

import smtplib
import socket
import ssl
from dataclasses import dataclass, field
from email.message import EmailMessage
from typing import TYPE_CHECKING, Any

from ..compose import envelope
from ..events import EventBus, SessionRecorder
from ..masking import mask_line

if TYPE_CHECKING:
    from ..lab import Lab

DEFAULT_TIMEOUT = 10.0


def _peer_name(sock: ssl.SSLSocket) -> str | None:
    """The subject CN of the server's certificate, for the TLS event."""
    try:
        cert = sock.getpeercert()
    except (ValueError, ssl.SSLError):
        return None
    for rdn in (cert or {}).get("subject", ()):
        for key, value in rdn:
            if key == "commonName":
                return value
    alt = [v for k, v in (cert or {}).get("subjectAltName", ()) if k == "DNS"]
    return alt[0] if alt else None


class _RecordingReader:
    """Wraps smtplib's reply file so every reply line is recorded as it is read."""

    def __init__(self, raw: Any, client: RecordingSMTP) -> None:
        self._raw = raw
        self._client = client

    def readline(self, limit: int = -1) -> bytes:
        line = self._raw.readline(limit)
        if line:
            self._client._reply_line(line)
        return line

    def close(self) -> None:
        self._raw.close()


class RecordingSMTP(smtplib.SMTP):
    """``smtplib.SMTP`` that records the session into ``events``."""

    def __init__(
        self,
        host: str = "",
        port: int = 0,
        local_hostname: str | None = None,
        timeout: float = DEFAULT_TIMEOUT,
        *,
        events: EventBus | None = None,
        **kwargs: Any,
    ) -> None:
        self.events = events
        self.recorder: SessionRecorder | None = None
        self._in_auth = False  # between AUTH and its final reply: client lines are secrets
        self._data_next = False  # the next send() is the DATA payload
        self._auth_mechanism = "?"
        # socket.getfqdn() (smtplib's default) can wait on DNS; the host name is enough.
        super().__init__(host, port, local_hostname or socket.gethostname(), timeout, **kwargs)

    # -- connection ----------------------------------------------------------------
    def connect(self, host: str = "localhost", port: int = 0, source_address: Any = None) -> tuple[int, bytes]:
        if not port and ":" in host and host.count(":") == 1:
            host, _, p = host.partition(":")
            port = int(p)
        port = port or self.default_port
        if self.events is not None and self.recorder is None:
            target = f"{host}:{port}"
            self.recorder = self.events.session("smtp", "client", target, target)
        try:
            return super().connect(host, port, source_address)
        except OSError as exc:
            self._note(f"connection to {host}:{port} failed: {exc}")
            self._close_recorder("connection failed")
            raise

    def getreply(self) -> tuple[int, bytes]:
        if self.file is None and self.sock is not None:
            self.file = _RecordingReader(self.sock.makefile("rb"), self)
        try:
            return super().getreply()
        except TimeoutError:
            self._note(f"no reply within {self.timeout} s")
            raise

    def starttls(self, *args: Any, **kwargs: Any) -> tuple[int, bytes]:
        reply = super().starttls(*args, **kwargs)
        self._record_tls()
        return reply

    def close(self) -> None:
        try:
            super().close()
        finally:
            self._close_recorder("")

    # -- recording -------------------------------------------------------------------
    def send(self, s: str | bytes) -> None:
        data = s.encode(self.command_encoding) if isinstance(s, str) else s
        if self.recorder is not None:
            if self._data_next and data.lower() != b"data\r\n":
                self._data_next = False
                # The message, then the end-of-data line on its own (RFC 5321 4.1.1.4).
                if data.endswith(b"\r\n.\r\n"):
                    self.recorder.payload("C", data[:-3])
                    self.recorder.client_line(".")
                else:
                    self.recorder.payload("C", data)
            else:
                self.recorder.client_line(self._masked(data.rstrip(b"\r\n").decode("utf-8", "replace")))
        super().send(s)

    def _masked(self, line: str) -> str:
        """The line as it may be shown: SASL data after AUTH never enters the events."""
        words = line.split()
        if words and words[0].upper() == "AUTH":
            self._in_auth = True
            self._auth_mechanism = words[1].upper() if len(words) > 1 else "?"
            return mask_line("smtp", line)
        return mask_line("smtp", line, sasl=self._in_auth)

    def _reply_line(self, raw: bytes) -> None:
        line = raw.rstrip(b"\r\n").decode("utf-8", "replace")
        if self._in_auth and line[3:4] != "-" and not line.startswith("334"):
            self._in_auth = False
        if self.recorder is not None:
            self.recorder.server_line(line)

    def _record_tls(self) -> None:
        if self.recorder is not None and isinstance(self.sock, ssl.SSLSocket):
            cipher = self.sock.cipher()
            self.recorder.tls(self.sock.version(), cipher[0] if cipher else None, _peer_name(self.sock))

    def _note(self, text: str) -> None:
        if self.recorder is not None:
            self.recorder.note(text)

    def _close_recorder(self, reason: str) -> None:
        if self.recorder is not None and not self.recorder.closed:
            self.recorder.close(reason)

    # -- commands whose recording needs to know the context ----------------------------
    def data(self, msg: bytes | str) -> tuple[int, bytes]:
        self._data_next = True
        try:
            return super().data(msg)
        finally:
            self._data_next = False

    def login(self, user: str, password: str, *, initial_response_ok: bool = True) -> tuple[int, bytes]:
        try:
            reply = super().login(user, password, initial_response_ok=initial_response_ok)
        except smtplib.SMTPAuthenticationError:
            if self.recorder is not None:
                self.recorder.auth(user, False, self._auth_mechanism)
            raise
        if self.recorder is not None:
            self.recorder.auth(user, True, self._auth_mechanism)
        return reply


class RecordingSMTP_SSL(RecordingSMTP):
    """Implicit TLS from the first byte (RFC 8314 3.3: port 465)."""

    default_port = smtplib.SMTP_SSL_PORT

    def __init__(
        self,
        host: str = "",
        port: int = 0,
        local_hostname: str | None = None,
        timeout: float = DEFAULT_TIMEOUT,
        *,
        context: ssl.SSLContext | None = None,
        events: EventBus | None = None,
        **kwargs: Any,
    ) -> None:
        self.context = context or ssl.create_default_context()
        super().__init__(host, port, local_hostname, timeout, events=events, **kwargs)

    def _get_socket(self, host: str, port: int, timeout: float) -> socket.socket:
        sock = socket.create_connection((host, port), timeout, self.source_address)
        self.sock = self.context.wrap_socket(sock, server_hostname=host)
        self._record_tls()
        return self.sock


# -- sending a message ------------------------------------------------------------------


class SendError(smtplib.SMTPException):
    def __init__(self, result: SendResult) -> None:
        super().__init__(result.error)
        self.result = result


@dataclass
class SendResult:
    """What happened when a message was sent: for a cell to show, for a test to check."""

    message_id: str | None
    sender: str
    recipients: list[str]
    host: str
    port: int
    mode: str  # "submission (STARTTLS + AUTH)", ...
    session: str | None = None
    refused: dict[str, tuple[int, str]] = field(default_factory=dict)
    error: str | None = None
    events: EventBus | None = field(default=None, repr=False)
    #: Show the whole session under the summary (``%%mail --transcript``); by default
    #: a cell shows the summary and keeps the transcript one click away.
    show_transcript: bool = field(default=False, repr=False)

    @property
    def ok(self) -> bool:
        return self.error is None and len(self.refused) < len(self.recipients)

    def transcript(self) -> str:
        from ..views.transcript import render_text

        if self.events is None or self.session is None:
            return ""
        return render_text(self.events.events(session=self.session), explain=False)

    def summary(self) -> str:
        accepted = [r for r in self.recipients if r not in self.refused]
        head = (f"sent {self.message_id} from {self.sender} to {', '.join(accepted)}"
                if accepted and self.error is None else "not sent")
        lines = [f"{head} via {self.host}:{self.port} ({self.mode})"]
        for rcpt, (code, text) in self.refused.items():
            lines.append(f"refused {rcpt}: {code} {text}")
        if self.error:
            lines.append(f"error: {self.error}")
        return "\n".join(lines)

    def __repr__(self) -> str:
        t = self.transcript() if self.show_transcript else ""
        return self.summary() + (f"\n\n{t}" if t else "")

    def _repr_html_(self) -> str:
        from ..views.theme import GLYPHS, badge, page, words
        from ..views.transcript import render_body

        lines = self.summary().split("\n")
        # wrapping at spaces, each Message-ID and address whole on a line, broken at
        # its dots only where longer than the line (theme.words): the presenter's
        # scale broke "<...@alpha.test>" as "alpha.tes" / "t>"
        kind = "ok" if self.ok else "err"
        head = [f"<div><span class='ml-badge ml-{kind}'>{GLYPHS[kind]}\u00a0{words(lines[0])}</span></div>"]
        head += [f"<div>{badge('err', line)}</div>" for line in lines[1:]]
        events = self.events.events(session=self.session) if self.events is not None and self.session else []
        if not events:
            return page("".join(head), kind="sent")
        sent = sum(1 for e in events if e.kind == "C")
        body = render_body(events, explain=True, copy="client")
        if self.show_transcript:
            return page("".join(head) + body, kind="sent")
        return page("".join(head) + f"<details><summary>the SMTP session ({sent} commands sent;"
                    f" <code>--transcript</code> shows it open)</summary>{body}</details>", kind="sent")


def _split_target(via: str) -> tuple[str, int] | None:
    host, sep, port = via.rpartition(":")
    if sep and port.isdigit() and host:
        return host.strip("[]"), int(port)
    return None


def _lab_service(lab: Lab, name: str, host: str | None = None) -> tuple[str, int]:
    try:
        return lab.address(name, host)
    except KeyError:
        raise ValueError(f"the lab has no {name} service running (is it started?)") from None


def send(
    lab: Lab,
    message: EmailMessage,
    *,
    via: str = "submission",
    user: str | None = None,
    password: str | None = None,
    starttls: bool = True,
    timeout: float = DEFAULT_TIMEOUT,
    check: bool = True,
    local_hostname: str | None = None,
) -> SendResult:
    """Send ``message`` and record the client side of the session in ``lab.events``.

    ``via``:
      * ``"submission"`` (default): port 587 of the sender's own host (carol@beta.test
        sends through mx1.beta.test: only there does her login exist), STARTTLS
        (verified against the lab CA), then AUTH as the sender (password from ``lab.users``);
      * ``"smtps"``: the same host's port 465, implicit TLS, AUTH;
      * ``"smtp"``: the primary host's MX port 25, no AUTH (it accepts mail for its own
        domains only);
      * ``"host:port"``: any server, lab or real; STARTTLS when offered (trusting
        the system CAs and the lab CA), AUTH only when ``user`` is given.

    With ``check`` a refused message raises :class:`SendError` (whose ``result``
    holds the transcript); without it the result reports the error.
    """
    sender, rcpts = envelope(message)
    if not rcpts:
        raise ValueError("the message has no recipients (To, Cc or Bcc)")
    target = _split_target(via)
    implicit = via == "smtps"
    if target is not None:
        host, port = target
        want_auth = user is not None
        mode = "direct"
    elif via in ("submission", "smtps", "smtp"):
        want_auth = via != "smtp"
        host, port = _lab_service(lab, via, lab.home_host(user or sender) if want_auth else None)
        mode = via
    else:
        raise ValueError(f"via must be submission, smtps, smtp or host:port, not {via!r}")
    if want_auth:
        user = user or sender
        if password is None:
            try:
                password = lab.users.password(user)
            except KeyError:
                raise ValueError(f"{user} is not a lab user; give user= and password= to log in") from None

    ctx = ssl.create_default_context()
    if lab.ca is not None:
        ctx.load_verify_locations(cafile=str(lab.ca_path))
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2

    result = SendResult(str(message["Message-ID"] or "") or None, sender, rcpts, host, port, mode,
                        events=lab.events)
    client: RecordingSMTP | None = None
    try:
        if implicit:
            client = RecordingSMTP_SSL(host, port, local_hostname, timeout, context=ctx, events=lab.events)
        else:
            client = RecordingSMTP(host, port, local_hostname, timeout, events=lab.events)
        result.session = client.recorder.session if client.recorder else None
        client.ehlo()
        steps = ["implicit TLS"] if implicit else []
        if not implicit and starttls and (client.has_extn("starttls") or mode == "submission"):
            client.starttls(context=ctx)
            client.ehlo()
            steps.append("STARTTLS")
        if want_auth:
            assert user is not None and password is not None
            client.login(user, password)
            steps.append(f"AUTH as {user}")
        result.mode = f"{mode}" + (f": {', '.join(steps)}" if steps else "")
        refused = client.send_message(message, from_addr=sender, to_addrs=rcpts)
        result.refused = {r: (code, text.decode("utf-8", "replace")) for r, (code, text) in refused.items()}
        client.quit()
    except smtplib.SMTPRecipientsRefused as exc:
        result.refused = {r: (code, text.decode("utf-8", "replace")) for r, (code, text) in exc.recipients.items()}
        result.error = "every recipient was refused"
    except smtplib.SMTPResponseException as exc:
        text = exc.smtp_error.decode("utf-8", "replace") if isinstance(exc.smtp_error, bytes) else str(exc.smtp_error)
        result.error = f"{exc.smtp_code} {text}"
    except (smtplib.SMTPException, OSError) as exc:
        result.error = f"{type(exc).__name__}: {exc}"
    finally:
        if client is not None:
            try:
                client.close()
            except OSError:
                pass
    if check and not result.ok:
        raise SendError(result)
    return result
