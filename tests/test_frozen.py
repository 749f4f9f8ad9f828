"""The records the lab keeps by the thousand stay untracked by the garbage collector.

Every full collection walks every tracked object with the GIL held (the lab loop
waits): an event or a finished relay message that became a tracked object again (a
new field holding a list, a dataclass instead of a tuple) would cost every collection
of a long-running lab, and only a soak would notice. These tests notice.
"""

from __future__ import annotations

import gc
from collections import deque

import pytest

from maillab.events import EventBus
from maillab.frozen import ChunkedLog, IntRing, pack, unpack
from maillab.relay.message import Attempt, QueuedMessage, Recipient, freeze_finished, thaw_finished


def test_pack_and_unpack_give_back_what_was_kept():
    value = {"mx": ["10 mx1.beta.test.", "20 mx2.beta.test."], "ttl": 300, "pair": (1, None),
             "nested": {"a": [b"x", 1.5, True]}, "": ""}
    kept = pack(value)
    assert type(kept) is bytes and unpack(kept, ()) == value
    assert type(unpack(kept, ())["pair"]) is tuple
    with pytest.raises(ValueError):
        pack([object()])


def test_kept_events_are_untracked_tuples():
    bus = EventBus(maxlen=100)
    rec = bus.session("smtp", "server", "mail.alpha.test", peer="127.0.0.1:1")
    rec.user = "alice@alpha.test"
    rec.client_line("RCPT TO:<bob@alpha.test>")
    rec.note("relay", rcpts=["carol@beta.test"], route={"mx": ["mx1.beta.test"], "ttl": 300})
    for _ in range(2):  # the kept tuple and its data tuple, however nested the data (kept as bytes)
        gc.collect()
    kept = list(bus._events)
    assert len(kept) == 3
    assert [gc.is_tracked(k) for k in kept] == [False] * 3
    assert bus.events()[-1].data["route"] == {"mx": ["mx1.beta.test"], "ttl": 300}


def _finished_message() -> QueuedMessage:
    return QueuedMessage(
        id="0A1B2C3D4E", origin="mail.alpha.test", mail_from="alice@alpha.test",
        recipients=[Recipient("carol@beta.test", "delivered", 250, "2.0.0", "Ok", "mx1.beta.test", "DATA"),
                    Recipient("dave@gamma.test", "bounced", 550, "5.1.1", "no such user", "mail.gamma.test",
                              "RCPT", reported=True)],
        created=1.0, size=120, subject="hello", message_id="<1@alpha.test>", state="bounced",
        attempts=[Attempt(2.0, "beta.test", ["carol@beta.test"], "delivered", "mx1.beta.test", "127.0.0.3", 25,
                          mx=["beta.test. MX 10 mx1.beta.test."], code=250, tls=True, tls_version="TLSv1.3",
                          replies={"carol@beta.test": "250 2.0.0 Ok"}, starttls_offered=True)],
        routes={"beta.test": {"targets": [{"name": "mx1.beta.test", "addresses": ["127.0.0.3"]}], "notes": []}},
        dsn={"delivered_to": "alice@alpha.test", "uid": 7, "host": "mail.alpha.test"},
        events_session="relay-9", finished=3.0, header=b"Subject: hello\r\n")


def test_a_finished_relay_message_is_kept_untracked_and_read_back_whole():
    msg = _finished_message()
    kept = freeze_finished(msg)
    assert type(kept) is bytes and not gc.is_tracked(kept)  # never tracked, however nested
    back = thaw_finished(kept)
    assert back == msg and back is not msg
    assert isinstance(back.attempts[0], Attempt) and isinstance(back.recipients[1], Recipient)
    back.attempts[0].mx.append("changed")  # a reader's copy: the kept record stays as it was
    assert thaw_finished(kept) == msg
    with pytest.raises(ValueError):  # the queue then keeps the live object
        freeze_finished(QueuedMessage("X", "h", "a@b", [], 0.0, 0, dsn={"x": object()}))


@pytest.mark.parametrize("maxlen", [1, 5, 511, 512, 513, 2000])
def test_the_chunked_log_keeps_what_a_deque_of_maxlen_keeps(maxlen):
    log, peer = ChunkedLog(maxlen), deque(maxlen=maxlen)
    for n in range(3 * ChunkedLog.CHUNK + 7):
        log.append((n,))
        peer.append((n,))
        if n % 97 == 0 or n > 3 * ChunkedLog.CHUNK:
            assert len(log) == len(peer) and list(log) == list(peer)
            for start in (0, 1, len(peer) // 2, len(peer) - 1, len(peer), len(peer) + 3):
                assert list(log.since(start)) == list(peer)[start:]
            assert [log[i] for i in (0, -1, len(peer) // 2)] == [peer[0], peer[-1], peer[len(peer) // 2]]
    log.clear()
    assert len(log) == 0 and list(log) == []


def test_sealed_chunks_are_untracked():
    log = ChunkedLog(10_000)
    for n in range(3 * ChunkedLog.CHUNK):
        log.append((n, "smtp-1", "C", "RCPT TO:<bob@alpha.test>"))
    for _ in range(3):
        gc.collect()
    assert [gc.is_tracked(chunk) for chunk in log._chunks] == [False] * 3


def test_auth_verdicts_are_kept_packed_and_read_back_whole():
    from maillab.auth import AuthSettings, Received
    from maillab.auth.lookup import Question
    from maillab.auth.receive import ARCCheck, DKIMCheck, DMARCCheck, SPFCheck, Verdict

    verdict = Verdict("mx1.beta.test", SPFCheck("pass", "mailfrom", "alpha.test", "127.0.0.2"),
                      [DKIMCheck("pass", "alpha.test", "lab", tags={"a": "rsa-sha256"})],
                      ARCCheck("none", sealers=["x"]), DMARCCheck("pass", "alpha.test", "none", spf_aligned=True),
                      trace=[Question("alpha.test", "TXT", ["v=spf1 -all"], cached=12.5)])
    entry = Received("mx1.beta.test", ["carol@beta.test"], "<1@alpha.test>", "hello", verdict,
                     b"Authentication-Results: ...\r\n\r\nbody", queue_id="0A1B")
    s = AuthSettings()
    s.keep(entry)
    [kept] = s.verdicts
    assert [gc.is_tracked(k) for k in kept] == [False] * 5 and type(kept[4]) is bytes
    gc.collect()
    assert not gc.is_tracked(kept)
    assert s.last("hello") == entry and s.last() == entry and s.last("other") is None
    assert s.for_hop("mx1.beta.test", "", "0A1B") == entry
    assert s.last().verdict.header() == verdict.header()


@pytest.mark.parametrize("size", [1, 3, 10])
def test_the_int_ring_keeps_what_a_deque_of_maxlen_keeps(size):
    ring, peer = IntRing(size), deque(maxlen=size)
    for n in range(25):
        ring.append(n << 2 | 1)
        peer.append(n << 2 | 1)
        assert list(ring) == list(peer) and len(ring) == len(peer)
        for k in (0, 1, size, size + 5):
            assert ring.newest(k) == list(peer)[len(peer) - min(k, len(peer)):]
    ring.extend(range(100, 140))
    peer.extend(range(100, 140))
    assert list(IntRing(size, ring)) == list(ring) == list(peer)
    assert not gc.is_tracked(ring.__dict__) or len(gc.get_referents(ring._items)) <= 1  # numbers, not objects
