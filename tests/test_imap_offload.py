"""Heavy IMAP commands run off the lab loop (issue 15): while one session's FETCH
parses a message of 10,000 MIME parts, another session's NOOPs are still answered.

No timing thresholds: the test only compares the order in which replies arrive."""

from __future__ import annotations

import select

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
