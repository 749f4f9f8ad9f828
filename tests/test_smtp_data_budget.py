"""limits.smtp_data_in_flight: the DATA all of a lab's SMTP sessions hold at once.

Each message is held in memory until it is stored, so many clients sending large
messages together could make the lab hold gigabytes. Past the budget a DATA gets
``452 4.3.1`` (RFC 5321 4.2.5, a temporary failure: the client retries later),
at the DATA command when MAIL declared SIZE=, else after the end of data (the
text read to its end and thrown away as it comes). Raw sockets, so that several
sessions are in DATA at the same time.
"""

from __future__ import annotations

import smtplib
import threading
import time

import pytest
from conftest import fast_limits
from security_probes import MB, memory_peak
from wire import SMTPWire as Wire

from maillab import Lab

BUDGET = 4 * MB


@pytest.fixture
def budget_lab(tmp_path):
    lab = Lab(tmp_path / "lab", ports="auto", domains=["alpha.test"], services=("smtp",),
              limits=fast_limits(smtp_message_size=8 * MB, smtp_data_in_flight=BUDGET, smtp_fsync=False))
    lab.start()
    yield lab
    lab.stop()


def in_data(lab: Lab, size: int | None = None) -> tuple[Wire, tuple[int, str]]:
    """A session that has sent DATA (with SIZE= at MAIL when given): the DATA reply."""
    w = Wire(lab.address("smtp"), timeout=30)
    assert w.reply()[0] == 220
    assert w.cmd("EHLO student.test")[0] == 250
    assert w.cmd("MAIL FROM:<a@ext.test>" + (f" SIZE={size}" if size else ""))[0] == 250
    assert w.cmd("RCPT TO:<bob@alpha.test>")[0] == 250
    return w, w.cmd("DATA")


def message(size: int) -> bytes:
    """A text of about ``size`` octets, ended with <CRLF>.<CRLF>."""
    return b"Subject: big\r\n\r\n" + (b"x" * 98 + b"\r\n") * (size // 100) + b".\r\n"


def stored(lab: Lab) -> int:
    mb = lab.store.mailbox("bob@alpha.test")
    mb.sync()
    return len(mb.messages())


def test_declared_size_over_the_budget_gets_452_at_data(budget_lab):
    a, reply = in_data(budget_lab, 3 * MB)  # holds 3 MiB of the 4 until its text ends
    assert reply[0] == 354
    b, reply = in_data(budget_lab, 2 * MB)
    assert (reply[0], reply[1][:5]) == (452, "4.3.1"), reply
    assert b.cmd("NOOP")[0] == 250  # the session goes on
    a.send(message(3 * MB - 1000))
    assert a.reply()[0] == 250
    assert budget_lab.smtp_data.held == 0
    # the client retries, and now there is room
    assert b.cmd("MAIL FROM:<a@ext.test> SIZE=2000000")[0] == 250
    assert b.cmd("RCPT TO:<bob@alpha.test>")[0] == 250
    assert b.cmd("DATA")[0] == 354
    b.send(message(1_900_000))
    assert b.reply()[0] == 250
    assert stored(budget_lab) == 2
    assert budget_lab.smtp_data.held == 0
    notes = [e.text for e in budget_lab.events.events(kinds=("note",))]
    assert any("smtp_data_in_flight" in n for n in notes), notes


def test_concurrent_large_texts_over_the_budget_get_452_after_the_end(budget_lab):
    holder, reply = in_data(budget_lab, 3 * MB)  # 1 MiB of the budget left
    assert reply[0] == 354
    senders = [in_data(budget_lab)[0] for _ in range(4)]  # no SIZE=: known only as the text comes
    replies: list[tuple[int, str]] = []
    text = message(6 * MB)  # one copy for all, made before the measure

    def send(w: Wire) -> None:
        w.send(text)
        replies.append(w.reply())

    with memory_peak() as peak:
        threads = [threading.Thread(target=send, args=(w,)) for w in senders]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
    assert sorted((code, text[:5]) for code, text in replies) == [(452, "4.3.1")] * 4, replies
    # 4 texts of 6 MiB, each held at least twice on the old code (48 MiB and more):
    # now a session holds one piece (DATA_PIECE, 2 MiB) before it is counted, in
    # the connection's buffer and once copied out of it
    assert peak.mb < 4 * 3 * 2, peak.mb
    assert stored(budget_lab) == 0
    holder.send(message(3 * MB - 1000))
    assert holder.reply()[0] == 250
    # the sessions go on: a small message is taken afterwards
    w = senders[0]
    w.send("MAIL FROM:<a@ext.test>\r\nRCPT TO:<bob@alpha.test>\r\nDATA\r\n")
    assert [w.reply()[0] for _ in range(3)] == [250, 250, 354]
    w.send(message(1000))
    assert w.reply()[0] == 250
    assert stored(budget_lab) == 2
    assert budget_lab.smtp_data.held == 0


def test_a_client_gone_in_the_middle_of_data_gives_its_octets_back(budget_lab):
    w, reply = in_data(budget_lab, 3 * MB)
    assert reply[0] == 354
    assert budget_lab.smtp_data.held == 3 * MB
    w.send(b"Subject: half\r\n\r\n" + b"x" * 1000)
    w.sock.close()
    deadline = time.monotonic() + 10  # the lab notices the close on its own loop
    while budget_lab.smtp_data.held and time.monotonic() < deadline:
        time.sleep(0.02)
    assert budget_lab.smtp_data.held == 0
    with smtplib.SMTP(*budget_lab.address("smtp"), timeout=30) as client:  # a real client, afterwards
        client.sendmail("a@ext.test", ["bob@alpha.test"], message(3 * MB - 1000)[:-3])
    assert stored(budget_lab) == 1
    assert budget_lab.smtp_data.held == 0
