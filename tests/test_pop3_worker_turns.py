"""POP3 commands stuck behind held maildrops do not stop other sessions (issue 15).

A thread holds the INBOX locks of more users than asyncio's default executor has
threads (as an IMAP STORE 1:* renaming 100,000 files holds one). Each of them has a
POP3 session whose RETR must wait for its lock, on a worker thread. Meanwhile
alice's POP3 login (a slow command: it opens her maildrop on a worker) and an IMAP
LOGIN, SELECT and FETCH of her INBOX are answered: the waiting RETRs run on the
mailbox workers IMAP uses too and give their turn back while they wait
(``maillab/workers.py``, ``maillab/store/locking.py``). When they went to the default
executor, its threads all waited and alice's login queued behind them. A liveness
check, not a timing one: the locks are held until alice is answered, or until a
10 s safety limit (the test fails).
"""

from __future__ import annotations

import imaplib
import os
import poplib
import threading
import time

from maillab import Lab

ALICE = "alice@alpha.test"
#: asyncio's default executor: min(32, CPUs + 4) threads; one more session than that
STUCK = min(32, (os.cpu_count() or 1) + 4) + 1


def test_pop3_sessions_waiting_for_held_maildrops_leave_other_logins_answered(single_lab: Lab) -> None:
    lab = single_lab
    users = [f"stuck{i}@alpha.test" for i in range(STUCK)]
    for user in users:
        lab.add_user(user, "pw")
        lab.store.deliver(user, f"Subject: for {user}\r\n\r\nbody\r\n".encode())
    lab.store.deliver(ALICE, b"Subject: alice's\r\n\r\nfor alice\r\n")
    inboxes = [lab.store.mailbox(user) for user in users]
    host, port = lab.address("pop3")
    stuck = [poplib.POP3(host, port, timeout=60) for _ in users]
    held, answered = threading.Event(), threading.Event()
    in_time: list[bool] = []
    results: list[bytes] = []

    def holder() -> None:
        for inbox in inboxes:
            inbox.lock.acquire()
        try:
            held.set()
            in_time.append(answered.wait(10))
        finally:
            for inbox in inboxes:
                inbox.lock.release()

    def retr(client: poplib.POP3) -> None:
        results.append(client.retr(1)[0])

    hold = threading.Thread(target=holder)
    waiters = [threading.Thread(target=retr, args=(c,)) for c in stuck]
    try:
        for client, user in zip(stuck, users, strict=True):
            client.user(user)
            client.pass_("pw")
        hold.start()
        assert held.wait(10)
        for t in waiters:
            t.start()
        deadline = time.monotonic() + 5
        while sum(i.lock.waiting for i in inboxes) < STUCK - 1 and time.monotonic() < deadline:
            time.sleep(0.01)  # until the RETRs wait for their maildrops' locks (the old
            # default executor's threads all do: one RETR more than it has threads)
        time.sleep(0.2)
        alice = poplib.POP3(host, port, timeout=60)
        alice.user(ALICE)
        assert alice.pass_("alice-pw").startswith(b"+OK")
        assert b"for alice" in b"\r\n".join(alice.retr(1)[1])
        alice.quit()
        imap = imaplib.IMAP4(*lab.address("imap"), timeout=60)
        assert imap.login(ALICE, "alice-pw")[0] == "OK"
        assert imap.select("INBOX")[0] == "OK"
        typ, data = imap.fetch("1", "(BODY[])")
        assert typ == "OK" and b"for alice" in data[0][1], data
        imap.logout()
        answered.set()
        hold.join(30)
        for t in waiters:
            t.join(30)
        assert in_time == [True], "alice's logins waited for the held maildrops"
        assert len(results) == STUCK and all(r.startswith(b"+OK") for r in results), results
    finally:
        answered.set()
        if hold.is_alive():
            hold.join(30)
        for client in stuck:
            try:
                client.quit()
            except (poplib.error_proto, OSError):
                pass
