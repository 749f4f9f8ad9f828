"""The sans-IO SMTP core driven directly: no socket, no loop. A tiny driver plays the
server's part (it answers Hook and Deliver steps the way smtp/server.py does)."""

from __future__ import annotations

from base64 import b64encode

from maillab.limits import Limits
from maillab.smtp import data as smtpdata
from maillab.smtp.policy import Reply
from maillab.smtp.received import TLSInfo
from maillab.smtp.session import COMMANDS, Deliver, Hook, SMTPSession, State

USERS = {"alice@foo.test": "alice-pw", "bob@foo.test": "bob-pw"}


def session(**kw) -> SMTPSession:
    def authenticate(login: str, password: str) -> str | None:
        address = login if "@" in login else f"{login}@foo.test"
        return address if USERS.get(address) == password else None

    return SMTPSession(hostname="foo.test", limits=Limits(), local_domains={"foo.test"},
                       is_user=USERS.__contains__, authenticate=authenticate,
                       resolve=lambda login: login if "@" in login else f"{login}@foo.test", **kw)


class Driver:
    """What the asyncio driver does, without I/O: delivered messages are kept in a list."""

    def __init__(self, s: SMTPSession, hook_answers: dict[str, str] | None = None) -> None:
        self.s, self.hook_answers, self.delivered = s, hook_answers or {}, []

    def run(self, step) -> Reply:
        while not isinstance(step, Reply):
            if isinstance(step, Hook):
                step = step.then(self.hook_answers[step.name])
            else:
                assert isinstance(step, Deliver)
                self.delivered.append(step)
                step = step.then(None)
        return step

    def line(self, text: str) -> str:
        return "\n".join(self.run(self.s.receive(text.encode() + b"\r\n")).lines())

    def data(self, text: bytes) -> str:
        raw = b"\r\n" + text + b"\r\n.\r\n"
        return "\n".join(self.run(self.s.end_of_data(smtpdata.scan(raw))).lines())


def test_rfc5321_appendix_d1_a_typical_transaction():
    d = Driver(session())
    assert str(d.s.greeting()) == "220 foo.test ESMTP maillab"
    assert d.s.state is State.GREETING
    assert d.line("EHLO bar.test").startswith("250-foo.test\n250-PIPELINING")
    assert d.s.state is State.READY
    assert d.line("MAIL FROM:<Smith@bar.test>") == "250 2.1.0 Ok"
    assert d.s.state is State.MAIL
    assert d.line("RCPT TO:<Jones@foo.test>") == "550 5.1.1 <Jones@foo.test>: Recipient address" \
        " rejected: User unknown in local recipient table"
    assert d.line("RCPT TO:<Bob@foo.test>") == "250 2.1.5 Ok"
    assert d.s.state is State.RCPT
    reply = d.s.receive(b"DATA\r\n")
    assert isinstance(reply, Reply) and reply.read_data and str(reply).startswith("354 ")
    assert d.data(b"Subject: hi\r\n\r\nBlah blah blah...\r\n..etc. etc. etc.").startswith(
        "250 2.0.0 Ok: queued as ")
    (job,) = d.delivered
    assert job.local == ["bob@foo.test"] and job.remote == [] and job.mail_from == "Smith@bar.test"
    assert job.message.startswith(b"Received: from bar.test") and job.message.endswith(b"\r\n.etc. etc. etc.\r\n")
    assert d.s.state is State.READY
    assert d.line("QUIT") == "221 2.0.0 Bye" and d.s.state is State.CLOSED


def test_order_of_commands_is_the_state_table():
    d = Driver(session())
    assert "MAIL" not in COMMANDS[State.GREETING] and "DATA" in COMMANDS[State.RCPT]
    assert d.line("MAIL FROM:<a@bar.test>") == "503 5.5.1 Error: send HELO/EHLO first"
    d.line("HELO bar.test")
    assert d.line("RCPT TO:<bob@foo.test>") == "503 5.5.1 Error: need MAIL command"
    d.line("MAIL FROM:<a@bar.test>")
    assert d.line("MAIL FROM:<a@bar.test>") == "503 5.5.1 Error: nested MAIL command"
    assert d.line("DATA") == "503 5.5.1 Error: need RCPT command"
    d.line("RCPT TO:<nobody@foo.test>")
    assert d.line("DATA") == "554 5.5.1 Error: no valid recipients"
    assert d.line("RSET") == "250 2.0.0 Ok" and d.s.state is State.READY
    assert d.line("FROB") == "500 5.5.2 Error: command not recognized: FROB"  # RFC 5321 4.2.4
    assert d.s.receive(b"NOOP\n").code == 500  # bare LF


def test_no_open_relay_and_auth_under_tls_only():
    d = Driver(session(submission=True))
    d.line("EHLO bar.test")
    assert d.line("MAIL FROM:<alice@foo.test>").startswith("530 5.7.0 Must issue a STARTTLS")
    assert d.line("AUTH PLAIN").startswith("538 5.7.11")
    reply = d.s.receive(b"STARTTLS\r\n")
    assert reply.starttls
    d.s.tls_started(TLSInfo("TLSv1.3", "TLS_AES_256_GCM_SHA384", 256))
    assert d.s.state is State.GREETING  # RFC 3207 4.2: EHLO again
    assert "AUTH PLAIN LOGIN" in d.line("EHLO bar.test")
    bad = b64encode(b"\0alice\0wrong").decode()
    reply = d.s.receive(f"AUTH PLAIN {bad}\r\n".encode())
    assert reply.code == 535 and reply.auth == ("alice", False, "PLAIN") and reply.delay > 0
    assert d.line("AUTH LOGIN") == "334 VXNlcm5hbWU6"
    assert d.s.masked(b"YWxpY2U=\r\n") == "****"  # what a transcript shows of the answer
    assert d.line(b64encode(b"alice").decode()) == "334 UGFzc3dvcmQ6"
    assert d.line(b64encode(b"alice-pw").decode()) == "235 2.7.0 Authentication successful"
    assert d.line("MAIL FROM:<bob@foo.test>").startswith("550 5.7.1")  # not her address (RFC 6409 6.1)
    d.line("MAIL FROM:<alice@foo.test>")
    # authenticated, so another domain is relayed (RFC 5321 3.6) - when a relay runs
    assert "no relay is running" in d.line("RCPT TO:<carol@bar.test>")
    mx = Driver(session())
    mx.line("EHLO bar.test")
    mx.line("MAIL FROM:<a@bar.test>")
    assert "Relay access denied" in mx.line("RCPT TO:<carol@bar.test>")  # RFC 5321 3.9


def test_handler_hooks_are_steps():
    d = Driver(session(hooks=frozenset({"RCPT", "DATA"})),
               {"RCPT": "250 OK", "DATA": "550 5.7.1 no thanks"})
    d.line("EHLO bar.test")
    d.line("MAIL FROM:<a@bar.test>")
    step = d.s.receive(b"RCPT TO:<bob@foo.test>\r\n")
    assert isinstance(step, Hook) and step.name == "RCPT" and step.args == ("bob@foo.test", [])
    assert str(step.then("250 OK")) == "250 OK" and step.envelope.rcpt_tos == ["bob@foo.test"]
    d.s.receive(b"DATA\r\n")
    assert d.data(b"Subject: x\r\n\r\nbuy now") == "550 5.7.1 no thanks"
    assert d.delivered == [] and d.s.state is State.READY
