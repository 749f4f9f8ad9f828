"""A light FETCH (a few small messages, nothing parsed or flagged) is answered on the
lab loop when the mailbox lock is free, without a worker thread's turn (issue 12/15:
a reader's FETCH beside a writer handed to a worker and back waited twice for a CPU
and the interpreter; benchmarks/store_lock.py).

The worker turns are all taken (as by two commands computing); a BODY.PEEK[] and a
UID FLAGS FETCH are answered meanwhile, with the same bytes as on a worker, while a
FETCH that sets \\Seen waits for a turn (it flushes to the disk: never on the loop)
and is answered once one is free. A liveness check, not a timing one.
"""

from __future__ import annotations

import imaplib
import threading

from maillab import Lab
from maillab.workers import MAILBOX_TURNS

BOB = "bob@alpha.test"


def test_a_light_fetch_needs_no_worker_turn(single_lab: Lab) -> None:
    lab = single_lab
    for n in range(3):
        lab.store.deliver(BOB, f"Subject: m{n}\r\n\r\nbody {n}\r\n".encode())
    c = imaplib.IMAP4(*lab.address("imap"), timeout=60)
    seen: list[object] = []
    try:
        c.login(BOB, "bob-pw")
        assert c.select("INBOX")[0] == "OK"
        on_worker = c.uid("FETCH", "2", "(BODY.PEEK[] FLAGS)")
        taken = 0
        try:
            for _ in range(MAILBOX_TURNS.count):  # every turn busy
                MAILBOX_TURNS._take()
                taken += 1
            assert c.uid("FETCH", "2", "(BODY.PEEK[] FLAGS)") == on_worker
            typ, data = c.fetch("1:3", "(UID FLAGS RFC822.SIZE BODY.PEEK[HEADER.FIELDS (SUBJECT)])")
            answers = [d for d in data if isinstance(d, tuple)]
            assert typ == "OK" and len(answers) == 3 and b"Subject: m2" in answers[2][1]
            reader = threading.Thread(target=lambda: seen.append(c.fetch("3", "(BODY[])")))
            reader.start()  # sets \Seen: a worker's job, waits for a turn
            reader.join(0.5)
            assert reader.is_alive() and not seen
        finally:
            for _ in range(taken):
                MAILBOX_TURNS._give()
        reader.join(30)
        typ, data = seen[0]  # type: ignore[misc]
        assert typ == "OK" and b"body 2" in data[0][1]
        assert c.fetch("3", "(FLAGS)")[1][0].count(b"\\Seen") == 1
    finally:
        c.logout()
