"""The step-through client (``%mail step``) over real connections: suggestions
follow the protocol state, wrong orders get the server's real error, the state
beside the transcript is the server's own, and the button answers a click."""

from __future__ import annotations

import pytest
from conftest import magic_shell

from maillab.clients.smtp import send
from maillab.compose import compose
from maillab.step import StepClient
from maillab.views.step import StepView, steps_html


def _deliver(lab, n: int = 1) -> None:
    for i in range(n):
        send(lab, compose(sender="alice@alpha.test", to=["bob@alpha.test"], subject=f"m{i}", body="hi"),
             via="submission")


def _texts(steps) -> list[str]:
    return [ln.text for s in steps for ln in s.lines]


def _walk(client: StepClient, limit: int = 15) -> None:
    for _ in range(limit):
        nxt = client.suggestion()
        if not nxt:
            return
        client.send(nxt)


def test_pop3_step_through(single_lab):
    _deliver(single_lab, 2)
    c = StepClient(single_lab, "pop3", "bob", timeout=5)
    try:
        assert c.suggestion() == "STLS"  # TLS before the password (RFC 2595 2.3)
        wrong = c.send("STAT")
        assert _texts(wrong)[-1] == "-ERR STAT is not valid in the AUTHORIZATION state (log in first)"
        assert c.guide.picture().current == "AUTHORIZATION"
        assert "STAT" not in c.guide.picture().valid
        c.send(c.suggestion())
        assert ("TLS", "yes") in c.guide.picture().facts
        assert c.suggestion() == "CAPA"  # asked again over TLS (RFC 2595 4)
        c.send(c.suggestion())
        assert c.suggestion() == "USER bob@alpha.test"
        c.send(c.suggestion())
        assert c.suggestion() == "PASS bob-pw"
        c.send(c.suggestion())
        pic = c.guide.picture()
        assert pic.current == "TRANSACTION" and "DELE" in pic.valid
        assert c.suggestion() == "STAT"  # the refused STAT is still to do
        c.send("DELE 1")
        assert ("marked by DELE", "1") in c.guide.picture().facts
        _walk(c)
        assert c.guide.picture().current == "UPDATE" and c.closed
    finally:
        c.close()
    assert len(single_lab.store.mailbox("bob@alpha.test").messages()) == 1
    shown = "\n".join(_texts(c.steps))
    assert "PASS ****" in shown and "bob-pw" not in shown
    assert "bob-pw" not in "\n".join(e.text for e in single_lab.events.events())


def test_imap_step_through(single_lab):
    _deliver(single_lab)
    c = StepClient(single_lab, "imap", "bob", timeout=5)
    try:
        wrong = c.send("a1 SELECT INBOX")
        assert _texts(wrong)[-1].startswith("a1 BAD")
        assert c.suggestion() == "a2 STARTTLS"  # TLS before the password
        c.send(c.suggestion())
        assert c.suggestion() == "a3 CAPABILITY"  # asked again over TLS (RFC 3501 6.2.1)
        c.send(c.suggestion())
        assert c.suggestion() == "a4 LOGIN bob@alpha.test bob-pw"
        c.send(c.suggestion())
        assert c.guide.picture().current == "AUTHENTICATED" and ("TLS", "yes") in c.guide.picture().facts
        c.send('a5 LIST "" "*"')
        c.send(c.suggestion())  # SELECT INBOX
        pic = c.guide.picture()
        assert pic.current == "SELECTED" and ("selected mailbox", "INBOX") in pic.facts
        assert c.suggestion() == "a7 FETCH 1:* (FLAGS ENVELOPE)"
        _walk(c)
        assert c.closed and c.guide.picture().current == "LOGOUT"
    finally:
        c.close()


def test_smtp_step_through_submission(single_lab):
    c = StepClient(single_lab, "smtp", "alice", recipient="bob@alpha.test", timeout=5)
    try:
        wrong = c.send("MAIL FROM:<alice@alpha.test>")
        assert _texts(wrong)[-1].startswith("503")
        # what "valid now" lists the server takes: AUTH before EHLO gets 503
        assert "AUTH" not in c.guide.picture().valid
        assert _texts(c.send("AUTH PLAIN"))[-1] == "503 5.5.1 Error: send EHLO first"
        c.send("EHLO step.test")
        c.send("MAIL FROM:<alice@alpha.test>")  # submission wants TLS and AUTH first
        assert _texts(c.steps[-1:])[-1].startswith("530")
        assert c.suggestion() == "STARTTLS"
        c.send("STARTTLS")
        assert c.guide.state() == "GREETING"  # RFC 3207: EHLO again after TLS
        c.send(c.suggestion())
        assert c.suggestion().startswith("AUTH PLAIN ")
        c.send(c.suggestion())
        assert "AUTH" not in c.guide.picture().valid  # once only (RFC 4954 4)
        c.send(c.suggestion())
        c.send(c.suggestion())
        pic = c.guide.picture()
        assert ("envelope sender (MAIL FROM)", "alice@alpha.test") in pic.facts
        assert ("recipients (RCPT TO)", "bob@alpha.test") in pic.facts
        c.send("DATA")
        assert c.guide.in_data()
        c.send("Subject: stepped\n\nline one\n")  # the "." is added
        assert _texts(c.steps[-1:])[-1].startswith("250")
        _walk(c)
        assert c.closed
    finally:
        c.close()
    assert any(e.kind == "stored" for e in single_lab.events.events())
    assert "AUTH PLAIN ****" in "\n".join(_texts(c.steps))


def test_step_magic_and_button(tmp_path):
    pytest.importorskip("ipywidgets")
    with magic_shell(tmp_path) as (shell, _lab):
        view = shell.run_line_magic("mail", "step pop3 bob")
        assert isinstance(view, StepView)
        assert view.command.value == "STLS"
        future = view.click()
        future.result(timeout=10)
        assert "S:" in view.log.value and "+OK begin TLS negotiation" in view.log.value
        assert view.command.value == "CAPA"
        assert "AUTHORIZATION" in view.state.value
        view.send("QUIT")
        assert view.button.disabled
        assert "-ERR" not in steps_html(view.client)
        assert "step-through POP3" in repr(view)


def test_step_view_follows_presenter_mode(tmp_path):
    pytest.importorskip("ipywidgets")
    with magic_shell(tmp_path) as (shell, _lab):
        view = shell.run_line_magic("mail", "step imap bob")
        try:
            assert "--ml-scale:1;" in view.log.value or "--ml-scale:1\"" in view.log.value
            shell.run_line_magic("mail", "present on")
            assert "--ml-scale:1.6" in view.log.value and "--ml-scale:1.6" in view.state.value
            # the title too (it stayed at JupyterLab's 13 px at the presenter's scale)
            assert "--ml-scale:1.6" in view.title.value
        finally:
            shell.run_line_magic("mail", "present off")
            view.client.close()
