"""The lab loop never waits for a mailbox lock another thread holds (issue 15), IMAP
side: a thread holds bob's INBOX lock (as an expunge batch, an index commit or a flag
rename does, across disk IO) while imaplib clients send STATUS INBOX and SELECT INBOX
(they wait on worker threads); every command answered inline meanwhile (NOOP, CHECK,
LIST, LSUB, NAMESPACE, IDLE and DONE, UNSELECT, LOGIN, on that INBOX too) is answered
before the lock is released.

A liveness check, not a timing one: the lock is held until those commands are answered
(or, if the loop waited for it, until a 10 s safety limit, and the test fails)."""

from __future__ import annotations

import imaplib
import threading

from wire import IMAPWire

from maillab import Lab

BOB, ALICE = "bob@alpha.test", "alice@alpha.test"


def test_inline_commands_are_answered_while_a_thread_holds_the_mailbox_lock(single_lab: Lab) -> None:
    lab = single_lab
    lab.store.deliver(BOB, b"Subject: one\r\n\r\nfirst\r\n")
    mailbox = lab.store.mailbox(BOB)
    clients = [imaplib.IMAP4(*lab.address("imap"), timeout=60) for _ in range(4)]
    waiting_status, waiting_select, selected, alice = clients
    idler = IMAPWire(*lab.address("imap"), timeout=60)
    held, answered = threading.Event(), threading.Event()
    during: list[bool] = []  # whether the lock was still held when the inline commands were answered

    def holder() -> None:
        with mailbox.lock:
            held.set()
            answered.wait(10)  # safety: a loop that waits for this lock never answers
            during.append(answered.is_set())

    results: dict[str, str] = {}
    try:
        for c in (waiting_status, waiting_select, selected):
            c.login(BOB, "bob-pw")
        alice.login(ALICE, "alice-pw")
        idler.login(BOB, "bob-pw")
        assert selected.select("INBOX")[0] == "OK"
        selected.response("EXISTS")  # SELECT's own, read
        assert idler.cmd("S", "SELECT INBOX")[-1].startswith(b"S OK")
        lab.store.deliver(BOB, b"Subject: two\r\n\r\nsecond\r\n")  # an update the NOOPs would report
        hold = threading.Thread(target=holder)
        hold.start()
        assert held.wait(10)
        waiters = [threading.Thread(target=lambda: results.update(status=waiting_status.status(
                       "INBOX", "(MESSAGES)")[0])),
                   threading.Thread(target=lambda: results.update(select=waiting_select.select(
                       "INBOX")[0]))]
        for t in waiters:
            t.start()
        assert alice.noop()[0] == "OK"
        assert alice.list()[0] == "OK"
        assert alice.lsub()[0] == "OK"
        assert alice.namespace()[0] == "OK"
        assert selected.noop()[0] == "OK"
        assert selected.response("EXISTS")[1] == [None]  # not waited for: reported later
        assert selected.check()[0] == "OK"
        idler.send(b"I IDLE\r\n")
        assert idler.readline().startswith(b"+")
        idler.send(b"DONE\r\n")
        assert idler.until_tagged("I")[-1].startswith(b"I OK")
        assert idler.cmd("U", "UNSELECT")[-1].startswith(b"U OK")
        late = imaplib.IMAP4(*lab.address("imap"), timeout=60)
        clients.append(late)
        assert late.login(BOB, "bob-pw")[0] == "OK"
        answered.set()
        hold.join(30)
        for t in waiters:
            t.join(30)
        assert during == [True]
        assert results == {"status": "OK", "select": "OK"}
        # the updates the inline NOOPs left out come with a later command
        assert selected.noop()[0] == "OK"
        assert selected.response("EXISTS")[1] == [b"2"]
    finally:
        answered.set()
        for c in clients:
            c.logout()
        idler.close()


def test_a_session_owed_many_updates_catches_up_on_a_worker(single_lab: Lab) -> None:
    """After another session expunged 1,500 messages, a NOOP has 1,500 EXPUNGE lines to
    announce: more than a light command computes on the loop (INLINE_UPDATES), so it runs
    on a worker, which may wait for the mailbox lock. Held by a thread, the NOOP waits
    and then announces every removal; answered on the loop it would have said nothing
    (a held lock is never waited for there)."""
    from maillab.imap.server import INLINE_UPDATES

    many = INLINE_UPDATES + 500
    root = single_lab.store.user_root(BOB) / ".Many"
    for sub in ("new", "tmp", "cur"):
        (root / sub).mkdir(parents=True)
    body = b"Subject: s\r\n\r\nx\r\n"
    for i in range(many):
        (root / "cur" / f"{1_700_000_000 + i}.M{i}P1.t,S={len(body)},W={len(body)}:2,").write_bytes(body)
    owed, cleaner = (IMAPWire(*single_lab.address("imap"), timeout=60) for _ in range(2))
    held, release = threading.Event(), threading.Event()
    try:
        for c in (owed, cleaner):
            c.login(BOB, "bob-pw")
            assert c.cmd("S", "SELECT Many")[-1].startswith(b"S OK")
        assert cleaner.cmd("T", "STORE 1:* +FLAGS.SILENT (\\Deleted)")[-1].startswith(b"T OK")
        assert cleaner.cmd("E", "EXPUNGE")[-1].startswith(b"E OK")
        mailbox = single_lab.store.mailbox(BOB, "Many")

        def holder() -> None:
            with mailbox.lock:
                held.set()
                release.wait(30)

        hold = threading.Thread(target=holder)
        hold.start()
        assert held.wait(10)
        owed.send(b"N NOOP\r\n")
        threading.Timer(0.5, release.set).start()
        replies = owed.until_tagged("N")
        hold.join(30)
        assert replies[-1].startswith(b"N OK")
        assert sum(r.endswith(b" EXPUNGE\r\n") for r in replies) == many
    finally:
        release.set()
        owed.close()
        cleaner.close()
