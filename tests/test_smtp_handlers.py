"""aiosmtpd handler objects as a lab host's SMTP hooks (lab.set_handler, %mail handler):
a word filter that answers 550 and an auto-responder, sent by smtplib and swaks."""

from __future__ import annotations

import email
import smtplib
import subprocess
from email.message import EmailMessage

import pytest
from aiosmtpd.smtp import Envelope, Session
from conftest import fast_limits, magic_shell

from maillab import Lab

HOST = "mail.alpha.test"


class WordFilter:
    """Refuses mail that contains a word, and one recipient (async hooks, on the lab loop)."""

    def __init__(self, word: bytes) -> None:
        self.word = word
        self.seen: list[tuple[str, list[str]]] = []

    async def handle_RCPT(self, server, session: Session, envelope: Envelope, address, rcpt_options):
        if address.startswith("noreply@"):
            return "550 5.1.1 this mailbox accepts no mail"
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server, session: Session, envelope: Envelope):
        self.seen.append((envelope.mail_from, list(envelope.rcpt_tos)))
        if self.word in envelope.content.lower():
            return f"550 5.7.1 {self.word.decode()} is not welcome here"
        return "250 2.0.0 OK, filtered"


class AutoReply:
    """An RFC 3834 auto-responder: a plain def, so it runs on a worker thread and may
    use smtplib against the lab itself."""

    def __init__(self, mx: tuple[str, int]) -> None:
        self.mx = mx

    def handle_DATA(self, server, session, envelope):
        original = email.message_from_bytes(envelope.content)
        if original["Auto-Submitted"] or not envelope.mail_from:  # never answer an answer
            return "250 OK"
        for rcpt in envelope.rcpt_tos:
            reply = EmailMessage()
            reply["From"], reply["To"] = rcpt, envelope.mail_from
            reply["Subject"] = f"Re: {original['Subject']}"
            reply["Auto-Submitted"] = "auto-replied"
            reply.set_content(f"{rcpt} is away until Monday.\n")
            with smtplib.SMTP(*self.mx, timeout=10) as smtp:
                smtp.send_message(reply, from_addr="", to_addrs=[envelope.mail_from])
        return "250 OK"


@pytest.fixture
def lab(tmp_path):
    lab = Lab(tmp_path / "lab", ports="auto", domains=["alpha.test"],
              services=("smtp", "submission", "smtps"), limits=fast_limits())
    lab.start()
    yield lab
    lab.stop()


def inbox(lab: Lab, user: str) -> list[email.message.Message]:
    mb = lab.store.mailbox(user)
    mb.sync()
    return [email.message_from_bytes(mb.read(m.uid)) for m in mb.messages()]


def message(subject: str, body: str) -> EmailMessage:
    msg = EmailMessage()
    msg["From"], msg["To"], msg["Subject"] = "carol@ext.test", "bob@alpha.test", subject
    msg.set_content(body)
    return msg


def test_word_filter_refuses_with_550_and_passes_the_rest(lab):
    spam = WordFilter(b"viagra")
    lab.set_handler(HOST, spam)
    with smtplib.SMTP(*lab.address("smtp"), timeout=10) as smtp:
        with pytest.raises(smtplib.SMTPDataError) as refused:
            smtp.send_message(message("offer", "cheap VIAGRA here"))
        assert refused.value.smtp_code == 550 and b"viagra is not welcome" in refused.value.smtp_error
        assert smtp.send_message(message("hello", "lunch?")) == {}  # no recipient refused
        with pytest.raises(smtplib.SMTPRecipientsRefused):
            smtp.sendmail("carol@ext.test", ["noreply@alpha.test"], b"Subject: x\r\n\r\nx\r\n")
    assert [m["Subject"] for m in inbox(lab, "bob@alpha.test")] == ["hello"]  # nothing else stored
    assert spam.seen == [("carol@ext.test", ["bob@alpha.test"])] * 2
    # the lab's rules come first: the handler never sees an open-relay attempt
    with smtplib.SMTP(*lab.address("smtp"), timeout=10) as smtp:
        with pytest.raises(smtplib.SMTPRecipientsRefused):
            smtp.sendmail("carol@ext.test", ["dave@elsewhere.test"], b"Subject: x\r\n\r\nx\r\n")
    notes = [e.text for e in lab.events.events(kinds=("note",))]
    assert any("handle_DATA of WordFilter answered '550 5.7.1" in n for n in notes)
    # swaks sees the same 550; removing the handler lets the word through
    host, port = lab.address("smtp")
    swaks = ["swaks", "--timeout", "10", "--server", host, "--port", str(port), "--from",
             "carol@ext.test", "--to", "bob@alpha.test", "--body", "viagra again"]
    r = subprocess.run(swaks, capture_output=True, text=True, timeout=60)
    assert r.returncode != 0 and "550 5.7.1 viagra is not welcome here" in r.stdout
    lab.set_handler(HOST, None)
    r = subprocess.run(swaks, capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stdout + r.stderr


def test_auto_responder_answers_once(lab):
    lab.set_handler(HOST, AutoReply(lab.address("smtp")))
    with smtplib.SMTP(*lab.address("smtp"), timeout=10) as smtp:
        msg = message("meeting", "see you at 10")
        msg.replace_header("From", "alice@alpha.test")
        smtp.send_message(msg)
    assert [m["Subject"] for m in inbox(lab, "bob@alpha.test")] == ["meeting"]
    (answer,) = inbox(lab, "alice@alpha.test")  # one answer, and no answer to the answer
    assert answer["Subject"] == "Re: meeting" and answer["Auto-Submitted"] == "auto-replied"
    assert "bob@alpha.test is away" in answer.get_payload()


def test_mail_handler_magic(tmp_path):
    with magic_shell(tmp_path) as (shell, lab):
        shell.user_ns["spam"] = WordFilter(b"lottery")
        table = shell.run_line_magic("mail", "handler mail.alpha.test spam")
        assert "mail.alpha.test: WordFilter (handle_RCPT, handle_DATA)" in repr(table)
        with smtplib.SMTP(*lab.address("smtp", host=HOST), timeout=10) as smtp:
            with pytest.raises(smtplib.SMTPDataError):
                smtp.send_message(message("win", "you won the lottery"))
        table = shell.run_line_magic("mail", "handler mail.alpha.test --off")
        assert "no SMTP handlers" in repr(table)
        with pytest.raises(Exception, match="no variable"):
            shell.run_line_magic("mail", "handler mail.alpha.test nothing_here")


class Advertise:
    """aiosmtpd's 5-argument handle_EHLO: the reply lines in, the reply lines out."""

    async def handle_EHLO(self, server, session, envelope, hostname, responses):
        session.host_name = hostname
        return [*responses[:-1], "250-XLAB-HOOKED", "250" + responses[-1][3:]]


def test_ehlo_hook_edits_what_is_advertised(lab):
    lab.set_handler(HOST, Advertise())
    with smtplib.SMTP(*lab.address("smtp"), timeout=10) as smtp:
        code, text = smtp.ehlo("client.test")
        assert code == 250 and b"XLAB-HOOKED" in text and smtp.has_extn("starttls")
        assert smtp.sendmail("carol@ext.test", ["bob@alpha.test"], b"Subject: x\r\n\r\nx\r\n") == {}
