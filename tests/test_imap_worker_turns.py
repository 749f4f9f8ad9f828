"""IMAP commands stuck behind a held mailbox do not stop other sessions' (issue 15).

A thread holds bob's INBOX lock (as a STORE 1:* renaming 100,000 files, or a first
SELECT indexing them, does). More of bob's FETCHes than there are worker turns
(``WORKERS``) wait for it on worker threads; alice's SELECT, FETCH BODY[] and STATUS
of her own INBOX, also offloaded commands, are answered meanwhile: a command waiting
for a mailbox lock gives its turn back (``maillab/store/locking.py``). With a fixed
pool of two threads they queued behind bob's. A liveness check, not a timing one: the
lock is held until alice is answered, or until a 10 s safety limit (the test fails).
"""

from __future__ import annotations

import imaplib
import threading
import time

from maillab import Lab
from maillab.workers import WORKERS

BOB, ALICE = "bob@alpha.test", "alice@alpha.test"


def test_offloaded_commands_of_other_mailboxes_run_while_more_than_workers_wait(single_lab: Lab) -> None:
    lab = single_lab
    lab.store.deliver(BOB, b"Subject: bob's\r\n\r\nfor bob\r\n")
    lab.store.deliver(ALICE, b"Subject: alice's\r\n\r\nfor alice\r\n")
    inbox = lab.store.mailbox(BOB)
    stuck = [imaplib.IMAP4(*lab.address("imap"), timeout=60) for _ in range(WORKERS + 1)]
    alice = imaplib.IMAP4(*lab.address("imap"), timeout=60)
    held, answered = threading.Event(), threading.Event()
    in_time: list[bool] = []
    results: list[str] = []

    def holder() -> None:
        with inbox.lock:
            held.set()
            in_time.append(answered.wait(10))

    try:
        for c in stuck:
            c.login(BOB, "bob-pw")
            assert c.select("INBOX")[0] == "OK"
        alice.login(ALICE, "alice-pw")
        hold = threading.Thread(target=holder)
        hold.start()
        assert held.wait(10)
        waiters = [threading.Thread(target=lambda c=c: results.append(c.fetch("1", "(BODY[])")[0]))
                   for c in stuck]
        for t in waiters:
            t.start()
        deadline = time.monotonic() + 5  # (a pool of WORKERS threads never gets there)
        while inbox.lock.waiting < len(stuck) and time.monotonic() < deadline:
            time.sleep(0.01)  # until every one of bob's FETCHes waits for the lock
        assert alice.select("INBOX")[0] == "OK"
        typ, data = alice.fetch("1", "(BODY[])")
        assert typ == "OK" and b"for alice" in data[0][1], data
        assert alice.status("INBOX", "(MESSAGES)")[0] == "OK"
        answered.set()
        hold.join(30)
        for t in waiters:
            t.join(30)
        assert in_time == [True], "alice's commands waited for bob's held mailbox"
        assert inbox.lock.waiting == 0
        assert results == ["OK"] * len(stuck)
    finally:
        answered.set()
        for c in (*stuck, alice):
            c.logout()
