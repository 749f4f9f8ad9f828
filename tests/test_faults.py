"""Scripted failure injection (``lab.faults``, ``%mail fail``) for the three protocols.

The rules themselves are tested without sockets; each protocol then gets a real
client that must see the injected failure, survive it, and finish the job once the
rule is spent or healed: fetchmail (POP3), mbsync (IMAP), swaks and the lab's own
relay (SMTP). Every firing must show in the transcript as a ``fault`` event.
"""

from __future__ import annotations

import poplib
import re
import smtplib
import subprocess
from pathlib import Path

import pytest
from conftest import magic_shell
from IPython.core.error import UsageError
from real_clients import fetchmailrc, mbsyncrc, run

from maillab import Lab
from maillab.faults import Faults
from maillab.views.faults import FaultsView

HOST = "mail.alpha.test"
BOB = "bob@alpha.test"


def deliver(lab: Lab, n: int) -> list[bytes]:
    out = []
    for i in range(n):
        data = f"From: ann@ext.test\r\nSubject: m{i}\r\n\r\nbody {i}\r\n".encode()
        lab.store.deliver(BOB, data)
        out.append(data)
    return out


def faults_seen(lab: Lab, protocol: str) -> list[str]:
    return [e.data["command"] for e in lab.events.events(protocol=protocol, kinds=("fault",))]


# -- the rules, no sockets ------------------------------------------------------------------

def test_rules_count_after_and_times_deterministically() -> None:
    faults = Faults(lambda: [HOST])
    rule = faults.add(HOST, "pop3", "retr", "-ERR [SYS/TEMP] disk busy", after=2, times=2)
    fired = [faults.fire(HOST, "pop3", "pop3", ("RETR",)) is not None for _ in range(6)]
    assert fired == [False, False, True, True, False, False]
    assert (rule.seen, rule.fired, rule.spent) == (4, 2, True)  # a spent rule stops counting
    # other commands, protocols and hosts are not counted
    assert faults.fire(HOST, "pop3", "pop3", ("LIST",)) is None
    assert faults.fire(HOST, "imap", "imap", ("RETR",)) is None
    assert faults.fire("mx1.beta.test", "pop3", "pop3", ("RETR",)) is None
    # FETCH matches UID FETCH too; "UID FETCH" only that form; "*" anything but the greeting
    faults.add(HOST, "imap", "FETCH", "NO [UNAVAILABLE] try later")
    assert faults.fire(HOST, "imap", "imaps", ("UID FETCH", "FETCH")) is not None
    uid_only = faults.add(HOST, "imap", "UID STORE", "NO no")
    assert faults.fire(HOST, "imap", "imap", ("STORE",)) is None
    assert faults.fire(HOST, "imap", "imap", ("UID STORE", "STORE")) is uid_only
    faults.add(HOST, "smtp", "*", "421 4.3.2 going down", service="submission")
    assert faults.fire(HOST, "smtp", "smtp", ("NOOP",)) is None  # another listener
    assert faults.fire(HOST, "smtp", "submission", ("CONNECT",)) is None
    assert faults.fire(HOST, "smtp", "submission", ("NOOP",)) is not None
    slow = faults.add(HOST, "smtp", "*", delay="500ms")
    assert faults.fire(HOST, "smtp", "smtp", ("CONNECT",)) is slow and slow.delay == 0.5
    assert "fired 2/2, spent" in rule.describe()
    assert len(faults.heal(HOST)) == 5 and faults.rules() == []


@pytest.mark.parametrize(("protocol", "command", "reply", "error"), [
    ("pop3", "RETR", "+OK fine", "not a POP3 error reply"),  # a fault never invents success
    ("pop3", "RETR", "-ERR a\r\n+OK smuggled", "not a POP3 error reply"),  # one line only
    ("imap", "FETCH", "OK done", "not a IMAP error reply"),
    ("smtp", "RCPT", "250 ok", "not a SMTP error reply"),
    ("smtp", "CONNECT", "550 no", "greeting can only refuse"),
    ("imap", "CONNECT", "NO no", "greeting can only refuse"),
    ("nntp", "GROUP", None, "unknown protocol"),
    ("pop3", "RETR", None, "needs a reply, a delay or --drop"),
    ("pop3", "RE TR;", "-ERR x", "not a command name"),
])
def test_replies_a_protocol_cannot_carry_are_refused(protocol, command, reply, error) -> None:
    with pytest.raises(ValueError, match=error):
        Faults(lambda: [HOST]).add(HOST, protocol, command, reply)
    with pytest.raises(ValueError, match="no lab host"):
        Faults(lambda: [HOST]).add("nowhere.test", "pop3", "RETR", "-ERR x")
    with pytest.raises(ValueError, match="the delay 0 to 600 s"):
        Faults(lambda: [HOST]).add(HOST, "pop3", "RETR", delay="1000s")
    with pytest.raises(ValueError, match="not a duration"):
        Faults(lambda: [HOST]).add(HOST, "pop3", "RETR", delay="soon")


# -- POP3: fetchmail ------------------------------------------------------------------------

def test_fetchmail_skips_a_failed_retr_and_gets_it_on_the_next_poll(single_lab: Lab, tmp_path: Path) -> None:
    lab = single_lab
    sent = deliver(lab, 3)
    lab.faults.add(HOST, "pop3", "RETR", "-ERR [SYS/TEMP] disk busy", after=1, times=1)

    def poll(n: int) -> list[bytes]:
        out = tmp_path / f"out{n}"
        out.mkdir()
        rc = fetchmailrc(tmp_path / "fetchmailrc", ca=lab.ca_path, port=lab.address("pop3")[1], user=BOB,
                         password="bob-pw", out=out, protocol="POP3", implicit_tls=False, keep=False,
                         fetchall=True)
        proc = run(["fetchmail", "-f", str(rc), "--nodetach", "--pidfile", str(tmp_path / "pid"), "-v"],
                   env={"HOME": str(tmp_path)})
        assert proc.returncode in (0, 1), proc.stdout.decode() + proc.stderr.decode()
        return [p.read_bytes() for p in out.iterdir()]

    first = poll(1)
    assert len(first) == 2 and len(lab.store.mailbox(BOB).messages()) == 1  # the failed one stays
    assert faults_seen(lab, "pop3") == ["RETR"]
    assert any(e.text == "-ERR [SYS/TEMP] disk busy" for e in lab.events.events(protocol="pop3", kinds=("S",)))
    second = poll(2)  # the rule is spent: the message left behind comes now
    got = sorted(g.replace(b"\n", b"\r\n").split(b"\r\n\r\n", 1)[1] for g in first + second)
    assert got == sorted(s.split(b"\r\n\r\n", 1)[1] for s in sent)
    assert lab.store.mailbox(BOB).messages() == []


def test_pop3_drop_delay_and_refused_greeting(single_lab: Lab) -> None:
    lab = single_lab
    deliver(lab, 1)
    host, port = lab.address("pop3")
    lab.faults.add(HOST, "pop3", "STAT", drop=True, delay=0.05, times=1)
    c = poplib.POP3(host, port, timeout=10)
    c.user(BOB)
    c.pass_("bob-pw")
    with pytest.raises((poplib.error_proto, ConnectionError, EOFError)):
        c.stat()
    c.close()
    closed = lab.events.events(protocol="pop3", kinds=("closed",))[-1]
    assert "injected fault" in closed.text
    # nothing was deleted and the maildrop lock was released: a new session works
    c = poplib.POP3(host, port, timeout=10)
    c.user(BOB)
    c.pass_("bob-pw")
    assert c.stat()[0] == 1
    c.quit()
    lab.faults.add(HOST, "pop3", "CONNECT", "-ERR [SYS/TEMP] maintenance", times=1)
    with pytest.raises(poplib.error_proto, match="maintenance"):
        poplib.POP3(host, port, timeout=10)
    assert faults_seen(lab, "pop3") == ["STAT", "CONNECT"]


# -- IMAP: mbsync ---------------------------------------------------------------------------

def test_mbsync_fails_on_an_injected_no_then_syncs(single_lab: Lab, tmp_path: Path) -> None:
    lab = single_lab
    deliver(lab, 3)
    local = tmp_path / "Mail"
    local.mkdir()
    rc = mbsyncrc(tmp_path / "mbsyncrc", ca=lab.ca_path, port=lab.address("imaps")[1], user=BOB,
                  password="bob-pw", local=local, ssl_type="IMAPS", patterns="INBOX")

    def sync() -> tuple[subprocess.CompletedProcess[bytes], int]:
        proc = run(["mbsync", "-c", str(rc), "lab"], env={"HOME": str(tmp_path)})
        inbox = local / "INBOX"
        return proc, sum(1 for sub in ("new", "cur") if (inbox / sub).exists() for _ in (inbox / sub).iterdir())

    lab.faults.add(HOST, "imap", "FETCH", "NO [UNAVAILABLE] try later", times=1)  # matches UID FETCH
    proc, synced = sync()
    assert proc.returncode == 1 and b"NO [UNAVAILABLE] try later" in proc.stderr and synced == 0
    assert faults_seen(lab, "imap") == ["UID FETCH"]
    proc, synced = sync()
    assert proc.returncode == 0 and synced == 3, proc.stderr.decode()
    # a dropped connection (no BYE): mbsync reports it and the next run is clean again
    lab.faults.add(HOST, "imap", "SELECT", drop=True, times=1)
    proc, _ = sync()
    assert proc.returncode == 1 and b"EOF" in proc.stderr
    proc, synced = sync()
    assert proc.returncode == 0 and synced == 3
    # every reply late (the greeting too): mbsync waits and syncs a new message
    lab.faults.add(HOST, "imap", "*", delay=0.1)
    deliver(lab, 1)
    proc, synced = sync()
    assert proc.returncode == 0 and synced == 4, proc.stderr.decode()
    assert "CONNECT" in faults_seen(lab, "imap")
    assert len(lab.store.mailbox(BOB).messages()) == 4  # nothing on the server was lost


# -- SMTP: swaks and the relay --------------------------------------------------------------

def test_swaks_sees_452_twice_then_the_relay_retries_through(lab: Lab, tmp_path: Path) -> None:
    lab.limits.relay_retry_first = 0.3
    lab.limits.relay_retry_max = 0.5
    mx1 = "mx1.beta.test"
    lab.faults.add(mx1, "smtp", "RCPT", "452 4.2.2 mailbox full", times=2)
    host, port = lab.address("smtp", mx1)
    cmd = ["swaks", "--server", f"{host}:{port}", "--from", "ann@ext.test", "--to", "carol@beta.test",
           "--helo", "ext.test", "--timeout", "10"]
    first = run(cmd)
    assert first.returncode != 0 and b"452 4.2.2 mailbox full" in first.stdout  # swaks reports, exits
    lab.faults.heal(mx1)
    assert run(cmd).returncode == 0
    # the relay: 452 on mx1 twice, a retry, then delivered
    lab.faults.add(mx1, "smtp", "RCPT", "452 4.2.2 mailbox full", times=2)
    with smtplib.SMTP(*lab.address("submission"), timeout=10) as s:
        s.starttls(context=lab.ca.client_context())
        s.login("alice@alpha.test", "alice-pw")
        s.sendmail("alice@alpha.test", ["carol@beta.test"], b"Subject: retried\r\n\r\nhi\r\n")
    msg = lab.relay.wait(lab.relay.last().id, timeout=30)
    assert msg.state == "delivered", msg.last_error
    assert [a.code for a in msg.attempts if a.result == "deferred"] == [452, 452]
    assert faults_seen(lab, "smtp") == ["RCPT"] * 3
    # the connection dropped at DATA (no reply at all): deferred, retried, delivered once
    lab.faults.add(mx1, "smtp", "DATA", drop=True, times=1)
    qid = lab.relay.submit("alice@alpha.test", ["carol@beta.test"], b"Subject: dropped\r\n\r\nhi\r\n",
                           origin=lab.topology.hosts["mail.alpha.test"])
    msg = lab.relay.wait(qid, timeout=30)
    assert msg.state == "delivered" and len(msg.attempts) >= 2, msg.last_error
    carol = lab.store.mailbox("carol@beta.test")
    assert sum(b"Subject: dropped" in carol.read(m.uid) for m in carol.messages()) == 1


# -- %mail fail / %mail heal ----------------------------------------------------------------

def test_mail_fail_lists_adds_and_heals(tmp_path: Path) -> None:
    with magic_shell(tmp_path) as (ip, lab):
        assert "no failures injected" in repr(ip.run_line_magic("mail", "fail"))
        said = ip.run_line_magic("mail", 'fail mail.alpha.test --pop3 RETR "-ERR [SYS/TEMP] disk busy"')
        assert "RETR answers '-ERR [SYS/TEMP] disk busy'" in repr(said)
        ip.run_line_magic("mail", 'fail mail.alpha.test --imap FETCH "NO [UNAVAILABLE] try later" --after 3')
        ip.run_line_magic("mail", 'fail mx1.beta.test --smtp RCPT "452 4.2.2 mailbox full" --times 2')
        ip.run_line_magic("mail", "fail mail.alpha.test --imap * --delay 2s")
        ip.run_line_magic("mail", "fail mail.alpha.test --pop3 STAT --drop")
        ip.run_line_magic("mail", "fail mx2.beta.test down")
        queue = repr(ip.run_line_magic("mail", "queue"))  # why mail may be waiting
        assert "failure injected: mx2.beta.test down" in queue
        assert "failure injected: mx1.beta.test smtp: RCPT answers '452 4.2.2 mailbox full'" in queue
        listing = ip.run_line_magic("mail", "fail")
        assert isinstance(listing, FaultsView)
        text = repr(listing)
        for part in ("mx2.beta.test smtp: down", "(after 3)", "(2 times)", "every command waits 2 s",
                     "STAT closes the connection"):
            assert part in text, text
        with pytest.raises(UsageError, match="not a POP3 error reply"):
            ip.run_line_magic("mail", 'fail mail.alpha.test --pop3 RETR "+OK sure"')
        with pytest.raises(UsageError, match="quote the reply"):
            ip.run_line_magic("mail", "fail mail.alpha.test --smtp RCPT 452 full")
        with pytest.raises(UsageError, match="no lab host"):
            ip.run_line_magic("mail", "fail mx9.beta.test --pop3 RETR --drop")
        healed = repr(ip.run_line_magic("mail", "heal mail.alpha.test"))
        assert "pop3 RETR" in healed and "imap *" in healed
        assert len(lab.faults.rules()) == 1
        assert "mx2.beta.test (down)" in repr(ip.run_line_magic("mail", "heal"))
        assert "no failures injected" in repr(ip.run_line_magic("mail", "fail"))


def test_the_transcript_and_the_sequence_diagram_show_where_a_fault_fired(single_lab: Lab) -> None:
    from maillab.views.sequence import SequenceDiagram
    from maillab.views.transcript import render_html, render_text

    lab = single_lab
    lab.faults.add(HOST, "pop3", "STAT", "-ERR [SYS/TEMP] disk busy", times=1)
    c = poplib.POP3(*lab.address("pop3"), timeout=10)
    c.user(BOB)
    c.pass_("bob-pw")
    with pytest.raises(poplib.error_proto, match="disk busy"):
        c.stat()
    assert c.stat()[0] == 0  # spent: the real answer
    c.quit()
    events = lab.events.events(protocol="pop3")
    text = render_text(events, times=False, explain=False)
    assert "C: STAT\n** fault injected (mail.alpha.test): STAT -> answers '-ERR [SYS/TEMP] disk busy'" in text
    assert re.search(r'<tr class="temp">(<td[^>]*>[^<]*){2}<td class="line">\*\* fault injected', render_html(events))
    diagram = SequenceDiagram([e for e in events if e.side == "server"])
    assert "↯ injected by %mail fail: STAT -> '-ERR [SYS/TEMP] disk busy'" in repr(diagram)
    assert "injected by %mail fail" in diagram.svg()


def test_the_lab_magics_report_injected_failures_and_go_on(tmp_path: Path) -> None:
    with magic_shell(tmp_path) as (ip, lab):
        deliver(lab, 1)
        ip.run_line_magic("mail", 'fail mail.alpha.test --imap FETCH "NO [UNAVAILABLE] try later" --times 1')
        with pytest.raises(UsageError, match=r"NO \[UNAVAILABLE\] try later"):
            ip.run_line_magic("imap", "bob --envelopes")
        assert "m0" in repr(ip.run_line_magic("imap", "bob --envelopes"))  # spent: the real answer
        ip.run_line_magic("mail", 'fail mail.alpha.test --pop3 RETR "-ERR [SYS/TEMP] disk busy" --times 1')
        said = repr(ip.run_line_magic("pop3", "bob --retr 1 --keep"))
        assert "The server said: -ERR [SYS/TEMP] disk busy" in said
        assert "1 message(s) on the server" in said
