"""Heavy IMAP commands run off the lab loop (issue 15): while one session's FETCH
parses a message of 10,000 MIME parts, another session's NOOPs are still answered.

No timing thresholds: the test only compares the order in which replies arrive."""

from __future__ import annotations

import select
import time

from wire import IMAPWire

from maillab import Lab

USER, PASSWORD = "bob@alpha.test", "bob-pw"
PARTS = 10_000  # about 0.4 s of parsing on an idle machine


def many_parts(n: int) -> bytes:
    parts = [b"From: ann@beta.test\r\nTo: bob@alpha.test\r\nSubject: many parts\r\n"
             b'MIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary="b"\r\n\r\n']
    parts += [b"--b\r\nContent-Type: text/plain\r\n\r\npart %d\r\n" % i for i in range(n)]
    parts.append(b"--b--\r\n")
    return b"".join(parts)


def test_noop_is_answered_while_another_session_fetches_bodystructure(single_lab: Lab) -> None:
    single_lab.store.deliver(USER, many_parts(PARTS))  # delivered, never parsed: uncached
    heavy = IMAPWire(*single_lab.address("imap"), timeout=30)
    light = IMAPWire(*single_lab.address("imap"), timeout=30)
    try:
        for c in (heavy, light):
            c.login(USER, PASSWORD)
        assert heavy.cmd("S", "SELECT INBOX")[-1].startswith(b"S OK")
        assert light.cmd("N0", "NOOP")[-1].startswith(b"N0 OK")

        heavy.send(b"F FETCH 1 BODYSTRUCTURE\r\n")
        answered = 0  # NOOP round trips completed before the FETCH's first reply arrived
        while not select.select([heavy.sock], [], [], 0)[0]:
            assert light.cmd(f"N{answered + 1}", "NOOP")[-1].endswith(b"OK NOOP completed\r\n")
            answered += 1
        fetched = heavy.until_tagged("F")
        assert fetched[-1].startswith(b"F OK"), fetched[-1]
        assert fetched[0].startswith(b'* 1 FETCH (BODYSTRUCTURE ((') and b' "mixed" ' in fetched[0]
        # Inline, the FETCH held the loop: at most the NOOP already queued got through.
        assert answered >= 3, answered
    finally:
        heavy.close()
        light.close()


BIG = 20_000  # files: a first SELECT, a STORE 1:* and an EXPUNGE of them take a while


def _heavy_while_noops(heavy: IMAPWire, light: IMAPWire, tag: str, command: str,
                       start: int, heard: list[bytes]) -> tuple[list[bytes], int]:
    """Send ``command`` on ``heavy``; until its first reply arrives, NOOP on ``light``
    (its replies go to ``heard``). Returns heavy's replies and how many NOOP round
    trips completed meanwhile."""
    heavy.send(f"{tag} {command}\r\n".encode())
    answered = 0
    while not select.select([heavy.sock], [], [], 0)[0]:
        reply = light.cmd(f"N{start + answered}", "NOOP")
        assert reply[-1].endswith(b"OK NOOP completed\r\n"), reply[-1]
        heard += reply
        answered += 1
    return heavy.until_tagged(tag), answered


def test_a_big_select_store_and_expunge_leave_the_loop_to_other_sessions(single_lab: Lab) -> None:
    """Issue 15: indexing 20,000 files on a first SELECT, then STORE and EXPUNGE of all of
    them, run off the lab loop, a batch of messages per hold of the mailbox lock; another
    session's NOOPs are answered meanwhile, also when that session has the same mailbox
    selected (its updates come later instead of its NOOP waiting), and the loop never
    computes past the lag threshold."""
    from maillab import runtime

    root = single_lab.store.user_root(USER) / ".Big"
    for sub in ("new", "tmp"):
        (root / sub).mkdir(parents=True)
    (root / "cur").mkdir()
    body = b"Subject: s\r\n\r\nx\r\n"
    for i in range(BIG):
        (root / "cur" / f"{1_700_000_000 + i}.M{i}P1.t,S={len(body)},W={len(body)}:2,").write_bytes(body)
    started = time.time()
    heavy = IMAPWire(*single_lab.address("imap"), timeout=60)
    light = IMAPWire(*single_lab.address("imap"), timeout=60)
    try:
        for c in (heavy, light):
            c.login(USER, PASSWORD)
        assert light.cmd("L", "SELECT INBOX")[-1].startswith(b"L OK")

        heard: list[bytes] = []
        replies, during_select = _heavy_while_noops(heavy, light, "S", "SELECT Big", 0, heard)
        assert replies[-1].startswith(b"S OK"), replies[-1]
        assert f"* {BIG} EXISTS\r\n".encode() in replies

        assert light.cmd("L2", "SELECT Big")[-1].startswith(b"L2 OK")
        replies, during_store = _heavy_while_noops(heavy, light, "T", "STORE 1:* +FLAGS.SILENT (\\Deleted)",
                                                  1000, heard)
        assert replies == [b"T OK STORE completed\r\n"], replies[-3:]

        replies, during_expunge = _heavy_while_noops(heavy, light, "E", "EXPUNGE", 2000, heard)
        assert replies[-1].startswith(b"E OK"), replies[-1]
        assert sum(r.endswith(b" EXPUNGE\r\n") for r in replies) == BIG
        # the other session heard of every removal, during the EXPUNGE or after it
        heard += light.cmd("L3", "NOOP")
        assert sum(r.endswith(b" EXPUNGE\r\n") for r in heard) == BIG
    finally:
        heavy.close()
        light.close()
    # Inline, each command would have held the loop: at most one queued NOOP gets through.
    assert min(during_select, during_store, during_expunge) >= 3, (during_select, during_store,
                                                                     during_expunge)
    busy = [lag for lag in runtime.LAG_LOG if lag.when >= started and lag.busy]
    assert not busy, [str(lag) for lag in busy]


def test_a_search_reads_no_file_unless_a_key_needs_sizes_or_bytes(single_lab: Lab) -> None:
    """A mailbox indexed from its names alone: SEARCH UNSEEN and a header search measure
    no file (the CRLF sizes stay unknown); SEARCH LARGER measures them, exactly."""
    root = single_lab.store.user_root(USER) / ".Named"
    for sub in ("new", "cur", "tmp"):
        (root / sub).mkdir(parents=True)
    bodies = [b"Subject: small\n\nx\n", b"Subject: large\n\n" + b"y" * 200 + b"\n"]
    for i, body in enumerate(bodies):
        (root / "cur" / f"{1_700_000_000 + i}.M{i}P1.t,S={len(body)}:2,").write_bytes(body)
    c = IMAPWire(*single_lab.address("imap"), timeout=30)
    try:
        c.login(USER, PASSWORD)
        assert c.cmd("S", "SELECT Named")[-1].startswith(b"S OK")
        assert c.cmd("A", "SEARCH UNSEEN")[0] == b"* SEARCH 1 2\r\n"
        assert c.cmd("B", "SEARCH SUBJECT large")[0] == b"* SEARCH 2\r\n"
        table = single_lab.store.mailbox(USER, "Named").table
        assert list(table.crlf) == [-1, -1]
        assert c.cmd("C", "SEARCH LARGER 200")[0] == b"* SEARCH 2\r\n"
        assert list(table.crlf) == [len(b) + b.count(b"\n") for b in bodies]
    finally:
        c.close()
