"""An error reply for every failure: a bug inside a session ends in the protocol's own
answer, is recorded as an event, and never kills the listener (issue 15).

The internal errors are forced by replacing one method of the sans-IO session
with one that raises (the fault rules of ``lab.faults`` inject protocol replies,
not bugs). Everything else is real: real sockets, the real servers.
"""

from __future__ import annotations

import pytest
from wire import IMAPWire, POP3Wire, SMTPWire

from maillab import Lab
from maillab.imap.parser import Parser
from maillab.imap.session import IMAPSession
from maillab.pop3.session import POP3Session
from maillab.smtp.session import SMTPSession


class Forced(RuntimeError):
    pass


def _internal_errors(lab: Lab) -> list[str]:
    return [e.text for e in lab.events.events() if e.kind == "note" and "internal error" in e.text]


# -- IMAP ---------------------------------------------------------------------------------

def test_imap_bug_in_a_command_is_no_serverbug_and_the_session_goes_on(single_lab: Lab, monkeypatch) -> None:
    execute = IMAPSession.execute

    def failing(self, cmd):
        if getattr(cmd, "tag", None) == "boom":
            raise Forced("forced by the test")
        yield from execute(self, cmd)

    monkeypatch.setattr(IMAPSession, "execute", failing)
    c = IMAPWire(*single_lab.address("imap"))
    c.login("bob", "bob-pw")
    assert c.cmd("boom", "NOOP")[-1].startswith(b"boom NO [SERVERBUG]")
    assert c.cmd("n", "NOOP")[-1].startswith(b"n OK")
    c.close()
    assert any("Forced" in t for t in _internal_errors(single_lab))


def test_imap_bug_in_the_parser_is_bad_and_the_session_goes_on(single_lab: Lab, monkeypatch) -> None:
    feed_line = Parser.feed_line

    def failing(self, line: bytes):
        if b"BOOM" in line:
            raise Forced("forced by the test")
        return feed_line(self, line)

    monkeypatch.setattr(Parser, "feed_line", failing)
    c = IMAPWire(*single_lab.address("imap"))
    assert c.cmd("t1", "BOOM")[-1].startswith(b"t1 BAD [SERVERBUG]")
    assert c.cmd("t2", "NOOP")[-1].startswith(b"t2 OK")
    c.close()
    assert _internal_errors(single_lab)


def test_imap_bug_outside_any_command_says_bye_and_the_listener_lives(single_lab: Lab, monkeypatch) -> None:
    def failing(self):
        raise Forced("forced by the test")

    with monkeypatch.context() as m:
        m.setattr(IMAPSession, "greeting", failing)
        raw = _first_line(single_lab.address("imap"))
        assert raw.startswith(b"* BYE [SERVERBUG]"), raw
    c = IMAPWire(*single_lab.address("imap"))  # the listener still serves
    assert c.greeting.startswith(b"* OK")
    c.close()
    closed = [e for e in single_lab.events.events() if e.kind == "closed" and "internal error" in e.text]
    assert closed


def _first_line(address: tuple[str, int]) -> bytes:
    import socket

    with socket.create_connection(address, timeout=5) as s:
        f = s.makefile("rb")
        return f.readline()


# -- POP3 ---------------------------------------------------------------------------------

def test_pop3_bug_in_a_command_is_err_and_the_session_goes_on(single_lab: Lab, monkeypatch) -> None:
    def failing(self, args):
        raise Forced("forced by the test")

    monkeypatch.setattr(POP3Session, "cmd_stat", failing)
    w = POP3Wire(single_lab)
    w.login()
    assert w.cmd(b"STAT").startswith(b"-ERR [SYS/TEMP]")
    assert w.cmd(b"NOOP").startswith(b"+OK")
    assert w.cmd(b"QUIT").startswith(b"+OK")
    w.close()
    assert any("Forced" in t for t in _internal_errors(single_lab))


def test_pop3_bug_outside_any_command_says_err_and_the_listener_lives(single_lab: Lab, monkeypatch) -> None:
    def failing(self):
        raise Forced("forced by the test")

    with monkeypatch.context() as m:
        m.setattr(POP3Session, "greeting", failing)
        assert _first_line(single_lab.address("pop3")).startswith(b"-ERR [SYS/TEMP]")
    w = POP3Wire(single_lab)
    assert w.greeting.startswith(b"+OK")
    w.close()


# -- SMTP ---------------------------------------------------------------------------------

@pytest.mark.parametrize("service", ["smtp", "submission"])
def test_smtp_bug_in_a_command_is_451_and_the_session_goes_on(single_lab: Lab, monkeypatch, service: str) -> None:
    def failing(self, arg):
        raise Forced("forced by the test")

    monkeypatch.setattr(SMTPSession, "cmd_noop", failing)
    w = SMTPWire(single_lab.address(service))
    assert w.reply()[0] == 220
    assert w.cmd("EHLO client.test")[0] == 250
    code, text = w.cmd("NOOP")
    assert (code, text[:5]) == (451, "4.3.0")
    assert w.cmd("RSET")[0] == 250
    assert w.cmd("QUIT")[0] == 221
    w.close()
    assert any("Forced" in t for t in _internal_errors(single_lab))
