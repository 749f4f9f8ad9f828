"""Heavy POP3 work runs off the lab loop (issue 15): while one session logs in on a
maildrop of 10,000 messages never indexed before, or removes them all in the UPDATE
state, another session's NOOPs (poplib) are still answered; RETR of a large message
is read and stuffed on a worker thread.

No timing thresholds: the tests compare the order in which replies arrive."""

from __future__ import annotations

import imaplib
import poplib
import select
import threading
import time

from wire import POP3Wire

from maillab import Lab
from maillab.events import CLIENT_LINE

BOB, ALICE = "bob@alpha.test", "alice@alpha.test"
MESSAGES = 10_000  # about 0.5 s of indexing and as much of removing, on an idle machine


def unindexed_maildrop(lab: Lab, count: int) -> None:
    """``count`` messages put into bob's Maildir by hand, as another tool would: names
    without sizes, so the first login reads and indexes every file."""
    new = lab.store.user_root(BOB) / "new"
    for n in range(count):
        (new / f"{1_700_000_000 + n}.M{n}P1.elsewhere").write_bytes(
            b"From: ann@beta.test\r\nSubject: message %d\r\n\r\nbody %d\r\n" % (n, n))


def noops_until_readable(light: poplib.POP3, heavy: POP3Wire) -> int:
    """NOOP round trips of ``light`` completed before ``heavy`` had a reply to read."""
    answered = 0
    while not select.select([heavy.sock], [], [], 0)[0]:
        assert light.noop().startswith(b"+OK")
        answered += 1
    return answered


def test_login_and_update_on_a_large_maildrop_leave_other_sessions_answered(single_lab: Lab) -> None:
    unindexed_maildrop(single_lab, MESSAGES)
    light = poplib.POP3(*single_lab.address("pop3"), timeout=30)
    heavy = POP3Wire(single_lab)
    heavy.sock.settimeout(60)
    try:
        light.user(ALICE)
        light.pass_("alice-pw")
        assert heavy.cmd(b"USER bob").startswith(b"+OK")

        heavy.send(b"PASS bob-pw\r\n")  # opens (indexes) the 10,000-message maildrop
        during_login = noops_until_readable(light, heavy)
        assert heavy.line().startswith(b"+OK bob@alpha.test's maildrop has %d messages" % MESSAGES)

        heavy.send(b"".join(b"DELE %d\r\n" % n for n in range(1, MESSAGES + 1)))
        for _ in range(MESSAGES):
            assert heavy.line().startswith(b"+OK message")
        assert heavy.cmd(b"STAT") == b"+OK 0 0"
        heavy.send(b"QUIT\r\n")  # UPDATE: 10,000 files removed
        during_update = noops_until_readable(light, heavy)
        assert heavy.line() == b"+OK maillab POP3 server signing off (%d messages deleted, 0 left)" % MESSAGES
        assert single_lab.store.mailbox(BOB).messages() == []
        # Inline, each held the loop: at most the NOOP already queued got through.
        assert during_login >= 3 and during_update >= 3, (during_login, during_update)
    finally:
        light.quit()
        heavy.close()


def test_retr_of_a_large_message_is_read_on_a_worker_thread(single_lab: Lab) -> None:
    small = single_lab.store.deliver(BOB, b"Subject: small\r\n\r\n.one dot\r\n")
    body = b"".join(b".line %d with a dot\r\n" % n for n in range(100_000))  # ~2.3 MB, stuffed
    large = single_lab.store.deliver(BOB, b"Subject: large\r\n\r\n" + body)
    mailbox = single_lab.store.mailbox(BOB)
    threads: dict[int, str] = {}
    read = mailbox.read

    def watched_read(uid: int) -> bytes:  # the store's own read, noting who asked
        threads[uid] = threading.current_thread().name
        return read(uid)

    mailbox.read = watched_read  # type: ignore[method-assign]
    client = poplib.POP3(*single_lab.address("pop3"), timeout=30)
    try:
        client.user(BOB)
        client.pass_("bob-pw")
        _, lines, _ = client.retr(2)
        assert lines[2:4] == [b".line 0 with a dot", b".line 1 with a dot"] and len(lines) == 100_002
        _, lines, _ = client.retr(1)
        assert lines == [b"Subject: small", b"", b".one dot"]
    finally:
        client.quit()
        del mailbox.read
    assert threads[small.uid] == single_lab.loop.thread.name
    assert threads[large.uid] != single_lab.loop.thread.name


def test_retr_waiting_for_a_held_mailbox_lock_leaves_the_loop_to_others(single_lab: Lab) -> None:
    """Another thread holds bob's mailbox lock (as an expunge batch, an index commit or
    a flag rename does, across disk IO) while bob's RETR needs it: RETR waits on a worker
    thread, and IMAP NOOPs (alice's; bob's, on the INBOX whose lock is held) are
    answered while the lock is still held. A liveness
    check, not a timing one: the lock is held until the NOOP is answered (or, when the
    loop waits for it, until a 10 s safety limit, and the test fails)."""
    single_lab.store.deliver(BOB, b"Subject: held\r\n\r\nwaited for\r\n")
    mailbox = single_lab.store.mailbox(BOB)
    pop = poplib.POP3(*single_lab.address("pop3"), timeout=60)
    imap = imaplib.IMAP4(*single_lab.address("imap"), timeout=60)
    selected = imaplib.IMAP4(*single_lab.address("imap"), timeout=60)
    held, noop_answered = threading.Event(), threading.Event()
    during: list[bool] = []  # whether the lock was still held when the NOOP was answered

    def holder() -> None:
        with mailbox.lock:
            held.set()
            noop_answered.wait(10)  # safety: the old loop waited for this lock
            during.append(noop_answered.is_set())

    retrieved: list[list[bytes]] = []
    try:
        pop.user(BOB)
        pop.pass_("bob-pw")
        imap.login(ALICE, "alice-pw")
        selected.login(BOB, "bob-pw")
        selected.select("INBOX")
        hold = threading.Thread(target=holder)
        hold.start()
        held.wait(10)
        retr = threading.Thread(target=lambda: retrieved.append(pop.retr(1)[1]))
        retr.start()
        # the RETR line reached the session (the loop reads it, then answers it)
        for _ in range(1000):
            if any(e.text == "RETR 1" for e in single_lab.events.events(protocol="pop3", kinds=(CLIENT_LINE,))):
                break
            time.sleep(0.01)
        assert imap.noop()[0] == "OK"
        assert selected.noop()[0] == "OK"
        noop_answered.set()
        hold.join(30)
        retr.join(30)
        assert during == [True]
        assert retrieved == [[b"Subject: held", b"", b"waited for"]]
        assert "\\Seen" in (mailbox.flags(1) or ())
    finally:
        noop_answered.set()
        imap.logout()
        selected.logout()
        pop.quit()
