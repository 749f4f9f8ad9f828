"""SECURITY.md, SMTP: the checks tests/test_smtp_security.py leaves open.

Memory under 50 MB of hostile input (measured with tracemalloc over a real
socket), the exact 452 4.5.3 past the recipient cap, nothing queued for relay when
a submission client disconnects inside DATA, and relayed mail carried byte-clean
(CRLF only, dot-stuffed) to a real next hop. docs/security-tests.md maps every
SECURITY.md line to its test.
"""

from __future__ import annotations

import base64
import smtplib
import socket
import ssl

import pytest
from conftest import fast_limits
from security_probes import MB, blast, memory_peak, wait_until
from test_smtp_security import Wire, ehlo, inbox, mx

from maillab import Lab

#: Far below the 50 MB sent: a server that kept the attack in memory cannot pass.
MEMORY_BOUND = 12 * MB


@pytest.fixture
def small_lab(tmp_path):
    """alpha.test with a 20 kB message limit (the sizes a 552 is about)."""
    lab = Lab(tmp_path / "lab", ports="auto", domains=["alpha.test"], services=("smtp", "submission"),
              limits=fast_limits(smtp_message_size=20_000))
    lab.start()
    yield lab
    lab.stop()


def transaction(w: Wire, rcpt: str = "bob@alpha.test") -> None:
    w.send(f"MAIL FROM:<a@ext.test>\r\nRCPT TO:<{rcpt}>\r\nDATA\r\n")
    assert [w.reply()[0] for _ in range(3)] == [250, 250, 354]


# -- "memory stays bounded" (line limits) and "read to the end, nothing stored" (SIZE) ----

def test_memory_stays_bounded_under_50_mb_of_hostile_input(small_lab):
    w = mx(small_lab, timeout=30)
    ehlo(w)
    with memory_peak() as peak:
        # 20 MB command line with no line end (limit: 512 octets)
        blast(w.sock, 20 * MB, b"NOOP " + b"x" * (MB - 5))
        code, text = w.cmd(b"")
        assert (code, text[:5]) == (500, "5.5.2"), text
        # 15 MB DATA in one text line (limit: 1000 octets, message limit 20 kB)
        transaction(w)
        blast(w.sock, 15 * MB, b"y" * MB)
        w.send(b"\r\n.\r\n")
        code, text = w.reply()
        assert code in (500, 552), text
        # 15 MB DATA of short lines, over the size limit: read to the end, 552
        transaction(w)
        blast(w.sock, 15 * MB, b"z" * 98 + b"\r\n")
        w.send(b".\r\n")
        code, text = w.reply()
        assert (code, text[:5]) == (552, "5.3.4"), text
    assert peak.bytes < MEMORY_BOUND, f"peak {peak.mb:.1f} MB while 50 MB of hostile input arrived"
    assert w.cmd("NOOP")[0] == 250  # the session goes on
    other = mx(small_lab)  # and the server serves others
    ehlo(other)
    assert inbox(small_lab) == []


def test_recipient_cap_reply_is_452_4_5_3(small_lab):
    w = mx(small_lab)
    ehlo(w)
    assert w.cmd("MAIL FROM:<a@ext.test>")[0] == 250
    w.send("RCPT TO:<bob@alpha.test>\r\n" * small_lab.limits.smtp_recipients)
    assert {w.reply()[0] for _ in range(small_lab.limits.smtp_recipients)} == {250}
    code, text = w.cmd("RCPT TO:<alice@alpha.test>")
    assert (code, text[:5]) == (452, "4.5.3"), text  # RFC 5321 4.5.3.1.10
    assert f"at most {small_lab.limits.smtp_recipients} in one transaction" in text, text
    assert "RFC 5321 4.5.3.1.10" in text and "at least 100, 4.5.3.1.8" in text, text
    assert w.cmd("RSET")[0] == 250


def test_non_ascii_recipient_without_smtputf8_is_refused(small_lab):
    w = mx(small_lab)
    ehlo(w)
    assert w.cmd("MAIL FROM:<a@ext.test>")[0] == 250
    code, text = w.cmd("RCPT TO:<bjørn@alpha.test>")
    assert 500 <= code < 600, (code, text)  # RFC 6531 3.4: needs SMTPUTF8 on MAIL
    assert w.cmd("RCPT TO:<bob@alpha.test>")[0] == 250


def test_flood_of_invalid_commands_ends_in_a_disconnect(tmp_path):
    with Lab(tmp_path / "lab", ports="auto", domains=["alpha.test"], services=("smtp",),
             limits=fast_limits(smtp_bad_commands=5)) as lab:
        w = mx(lab)
        ehlo(w)
        w.send("MAIL FROM:no-brackets\r\n" * 10)
        codes = []
        while True:
            try:
                codes.append(w.reply()[0])
            except (EOFError, ConnectionResetError):
                break
        assert codes[-1] == 421 and len(codes) <= 6, codes
        assert all(500 <= c < 600 for c in codes[:-1]), codes


# -- "Disconnect during DATA: nothing delivered or queued" (submission, with the relay) --

def submission(lab: Lab) -> Wire:
    w = Wire(lab.address("submission", "mail.alpha.test"))
    assert w.reply()[0] == 220
    ehlo(w)
    w.starttls(lab.ca.client_context())
    ehlo(w)
    token = base64.b64encode(b"\0alice@alpha.test\0alice-pw").decode()
    assert w.cmd(f"AUTH PLAIN {token}")[0] == 235
    return w


def test_disconnect_during_data_queues_nothing_for_relay(lab):
    w = submission(lab)
    w.send("MAIL FROM:<alice@alpha.test>\r\nRCPT TO:<carol@beta.test>\r\nRCPT TO:<bob@alpha.test>\r\nDATA\r\n")
    assert [w.reply()[0] for _ in range(4)] == [250, 250, 250, 354]
    w.send(b"Subject: cut\r\n\r\nhalf of it\r\n.")  # no CRLF after the dot: not the end
    w.sock.close()
    assert wait_until(lambda: lab.service("submission", "mail.alpha.test").active == 0)
    assert lab.relay.messages() == []
    assert inbox(lab) == []


# -- "Relaying never forwards stray CR/LF" (a real next hop: mx1.beta.test) -----------------

def carol(lab: Lab) -> list[bytes]:
    return inbox(lab, "carol@beta.test")


#: Header fields a hop puts on top of a message: its trace (RFC 5321 4.4) and what the
#: MX checked (RFC 8601 Authentication-Results, RFC 8617 ARC, a DKIM signature).
HOP_FIELDS = (b"received:", b"authentication-results:", b"arc-", b"dkim-signature:")


def body_of(stored: bytes) -> bytes:
    """The message as the relay got it: below the header fields the hops added."""
    lines = stored.split(b"\r\n")
    while lines and (lines[0].lower().startswith(HOP_FIELDS) or lines[0][:1] in (b" ", b"\t")):
        lines.pop(0)
    return b"\r\n".join(lines)


def test_relay_normalises_line_ends_and_dot_stuffs_for_the_next_hop(lab):
    # What a notebook cell may hand the queue: bare LF, bare CR, a lone "." line and
    # a smuggling attempt (<LF>.<LF> followed by a second transaction).
    raw = (b"Subject: stray\nX-A: 1\r\n\r\nbare lf\nbare cr\rcrlf\r\n.\r\n..two\n.\n"
           b"MAIL FROM:<evil@ext.test>\r\nRCPT TO:<carol@beta.test>\r\nDATA\r\nSubject: smuggled\r\n"
           b"\r\nx\r\n.\r\nend")
    qid = lab.relay.submit("alice@alpha.test", ["carol@beta.test"], raw, origin="mail.alpha.test")
    msg = lab.relay.wait(qid, timeout=15)
    assert msg.state == "delivered", msg.last_error
    [stored] = carol(lab)  # one message, never two
    assert stored.count(b"\n") == stored.count(b"\r\n") and b"\r" not in stored.replace(b"\r\n", b"")
    assert body_of(stored) == (
        b"Subject: stray\r\nX-A: 1\r\n\r\nbare lf\r\nbare cr\r\ncrlf\r\n.\r\n..two\r\n.\r\n"
        b"MAIL FROM:<evil@ext.test>\r\nRCPT TO:<carol@beta.test>\r\nDATA\r\nSubject: smuggled\r\n"
        b"\r\nx\r\n.\r\nend\r\n")


def test_dot_lines_submitted_by_smtplib_arrive_intact_after_a_hop(lab):
    body = b"Subject: dots\r\n\r\n.\r\n.leading\r\n..two\r\nend\r\n"
    host, port = lab.address("submission", "mail.alpha.test")
    with smtplib.SMTP(host, port, timeout=10) as s:
        s.starttls(context=ssl.create_default_context(cafile=str(lab.ca_path)))
        s.login("alice@alpha.test", "alice-pw")
        s.sendmail("alice@alpha.test", ["carol@beta.test"], body)
    queued = lab.relay.last()
    assert lab.relay.wait(queued.id, timeout=15).state == "delivered"
    [stored] = carol(lab)
    assert body_of(stored) == body  # stuffed by the relay, un-stuffed by mx1.beta.test


def test_sockets_are_closed_after_the_flood(small_lab):
    """A flood client that vanishes leaves no session behind."""
    socks = []
    for _ in range(5):
        s = socket.create_connection(small_lab.address("smtp"), timeout=5)
        s.sendall(b"EHLO x\r\n" + b"A" * 100_000)
        socks.append(s)
    for s in socks:
        s.close()
    assert wait_until(lambda: small_lab.service("smtp").active == 0)
