"""The event stream: ordering, bounded memory, thread safety, subscribers that fail."""

from __future__ import annotations

import threading

from maillab.events import CLIENT_LINE, SERVER_LINE, EventBus


def test_sessions_record_lines_in_order():
    bus = EventBus()
    rec = bus.session("smtp", "server", "mail.alpha.test", "127.0.0.1:5000")
    rec.client_line("EHLO x")
    rec.server_line("250 ok")
    rec.close("QUIT")
    kinds = [e.kind for e in bus.events(session=rec.session)]
    assert kinds == ["opened", CLIENT_LINE, SERVER_LINE, "closed"]
    assert bus.sessions() == [rec.session]


def test_the_log_is_bounded():
    bus = EventBus(maxlen=100)
    rec = bus.session("smtp", "server", "h")
    for i in range(1000):
        rec.client_line(f"NOOP {i}")
    assert len(bus) == 100
    assert bus.events()[-1].text == "NOOP 999"


def test_a_failing_subscriber_never_breaks_the_emitter():
    bus = EventBus()
    seen = []
    bus.subscribe(lambda e: 1 / 0)
    unsubscribe = bus.subscribe(seen.append)
    rec = bus.session("pop3", "server", "h")
    rec.client_line("STAT")
    unsubscribe()
    rec.client_line("QUIT")
    assert [e.text for e in seen] == ["", "STAT"]


def test_payloads_are_summarised_not_split_into_lines():
    bus = EventBus()
    rec = bus.session("smtp", "server", "h")
    body = b"".join(b"line %d\r\n" % i for i in range(10000))
    rec.payload("C", body)
    (ev,) = bus.events(kinds=(CLIENT_LINE,))
    assert ev.data["bytes"] == len(body)
    assert "more bytes" in ev.text and ev.text.count("\n") <= 13


def test_concurrent_emitters_get_unique_increasing_sequence_numbers():
    bus = EventBus()

    def work():
        rec = bus.session("imap", "server", "h")
        for _ in range(500):
            rec.client_line("a NOOP")

    threads = [threading.Thread(target=work) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    seqs = [e.seq for e in bus.events()]
    assert seqs == sorted(seqs) and len(set(seqs)) == len(seqs) == 4 * 501


def test_events_since_skips_the_older_ones_also_in_a_trimmed_or_recorded_bus():
    bus = EventBus(maxlen=50)
    rec = bus.session("smtp", "server", "h")
    for n in range(120):
        rec.client_line(f"NOOP {n}")
    seqs = [e.seq for e in bus.events()]
    assert len(seqs) == 50
    for since in (0, seqs[0] - 5, seqs[0], seqs[10], seqs[-1], seqs[-1] + 3):
        assert [e.seq for e in bus.events(since=since)] == [s for s in seqs if s > since]
    gaps = EventBus.from_events([e for e in bus.events() if e.seq % 3])  # a recording with gaps
    kept = [e.seq for e in gaps.events()]
    for since in (0, kept[0], kept[7], kept[-1]):
        assert [e.seq for e in gaps.events(since=since)] == [s for s in kept if s > since]


def test_kept_events_cost_the_collector_nothing_and_read_back_whole() -> None:
    import gc

    from maillab.events import Event

    bus = EventBus()
    rec = bus.session("smtp", "server", "mail.alpha.test", peer="127.0.0.1:1")
    rec.user = "bob"
    rec.client_line("MAIL FROM:<a@b>")
    emitted = rec.emit("note", "queued", queue_id="ABC", bytes=12, rcpts=["a@b", "c@d"])
    route = {"targets": [{"name": "mx1", "addresses": ["127.0.0.1"]}], "pair": ("a", 1), "none": None}
    rec.emit("note", "nested", tree=[["x"]], route=route)
    rec.emit("note", "odd", odd={1, 2})
    for _ in range(2):  # the kept tuple and its data tuple, however nested the data (kept as bytes)
        gc.collect()
    # What the bus keeps is plain tuples of atomic values, which the collector untracks.
    assert [gc.is_tracked(kept) for kept in bus._events] == [False] * 5
    opened, line, note, nested, odd = bus.events()
    assert note == emitted and note.kind == "note" and note.text == "queued"
    assert note.data == {"queue_id": "ABC", "bytes": 12, "rcpts": ["a@b", "c@d"], "user": "bob"}
    assert nested.data == {"tree": [["x"]], "route": route, "user": "bob"} and odd.data["odd"] == {1, 2}
    assert type(nested.data["route"]["pair"]) is tuple
    assert line.data == {"user": "bob"}
    assert opened.data == {"peer": "127.0.0.1:1"} and line.is_line and not note.is_line
    note.data["queue_id"] = "changed"  # a fresh dict: the event stays as recorded
    assert bus.events(last=3)[0].data["queue_id"] == "ABC"
    assert [e.seq for e in bus.events(last=4)] == [line.seq, note.seq, nested.seq, odd.seq]
    made = Event(1, 0.0, "smtp-1", "C", "smtp", "server", "h", "NOOP", {"user": "x"})
    assert made.data == {"user": "x"} and Event(1, 0.0, "s", "C", "p", "server", "h").data == {}
    assert "data={'user': 'x'}" in repr(made)
    assert EventBus.from_events(bus.events()).events() == bus.events()
