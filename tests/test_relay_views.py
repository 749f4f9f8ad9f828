"""The relay path views, built from real relayed messages in a real lab.

Every message here crosses real sockets: alice's client submits over STARTTLS +
AUTH to mail.alpha.test, whose relay looks up beta.test's MX in the lab DNS and
hands the message over SMTP to mx1.beta.test (or mx2), which stores it.
"""

from __future__ import annotations

import re
import threading
import time
from collections.abc import Iterator

import pytest
from conftest import fast_limits

from maillab import Lab
from maillab.clients.smtp import send
from maillab.compose import compose
from maillab.relay.hops import parse_hops
from maillab.views.relay import (
    FigureView,
    HopsView,
    LiveRelayView,
    QueueView,
    RelayPath,
    delivered_copy,
    figure,
    path_from_relay,
    path_text,
)


@pytest.fixture
def rlab(tmp_path) -> Iterator[Lab]:
    lab = Lab(tmp_path / "lab", ports="auto",
              limits=fast_limits(relay_retry_first=0.3, relay_retry_max=1.0))
    lab.start()
    try:
        yield lab
    finally:
        lab.stop()


def _send(lab: Lab, subject: str, to: str = "carol@beta.test") -> str:
    send(lab, compose(sender="alice@alpha.test", to=[to], subject=subject, body="hello\n"))
    msg = lab.relay.last()
    assert msg is not None and msg.subject == subject
    return msg.id


def _wait_until(predicate, timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.02)
    return predicate()


def test_path_of_a_message_across_three_hosts(rlab: Lab) -> None:
    qid = _send(rlab, "three hosts")
    rlab.relay.wait(qid, timeout=10)
    path = path_from_relay(rlab, qid)
    assert path.state == "delivered"
    names = [n.name for n in path.nodes]
    assert names[1:] == ["mail.alpha.test", "mx1.beta.test", "mailbox carol@beta.test"]
    assert names[0].startswith("client ")
    sub, relay, store = path.hops
    assert (sub.protocol, sub.encrypted, sub.tls) == ("ESMTPSA", True, "TLSv1.3")
    assert (relay.protocol, relay.encrypted, relay.tls, relay.ok) == ("ESMTPS", True, "TLSv1.3", True)
    assert relay.dns == f"beta.test MX 10 mx1.beta.test -> {rlab.topology.hosts['mx1.beta.test'].address}"
    assert relay.seconds is not None and 0 < relay.seconds < 10
    assert store.result.startswith("stored, uid ")
    text = path_text(path)
    assert "mail.alpha.test" in text and "ESMTPS, TLSv1.3" in text and "[delivered]" in text
    # break points after dots (theme.breakable), names that wrap whole (theme.words)
    html = re.sub(r"<wbr>|<span class='ml-word'>|</span>", "", path._repr_html_())
    assert "class='ml-path'" in html and "mx1.beta.test" in html
    # the lab DNS is a node on the relay hop, with the MX question and the answer used
    assert "◆ lab DNS" in html and "? beta.test MX" in html and "→ MX 10 mx1.beta.test<br>" in html
    assert "…" not in html and "..." not in html  # nothing truncated


def test_received_chain_of_the_delivered_copy_matches_the_path(rlab: Lab) -> None:
    qid = _send(rlab, "read me bottom-up")
    rlab.relay.wait(qid, timeout=10)
    data = delivered_copy(rlab, qid)
    assert data is not None
    table = parse_hops(data)
    assert [h.by for h in table] == ["mail.alpha.test", "mx1.beta.test"]
    assert [h.with_ for h in table] == ["ESMTPSA", "ESMTPS"]
    assert all(h.encrypted and h.tls == "TLSv1.3" for h in table)
    # the relay binds its outgoing socket to its own address: the next hop names it
    assert table[1].helo == "mail.alpha.test"
    assert table[1].from_ip == rlab.topology.hosts["mail.alpha.test"].address
    assert all(h.for_ == "carol@beta.test" for h in table)
    assert table[1].delay is not None and table[1].delay >= 0
    view = HopsView(table, "carol's copy")
    assert "mx1.beta.test" in repr(view) and "<table" in view._repr_html_()


def test_figure_from_a_relayed_message_saves_png_and_svg(rlab: Lab, tmp_path) -> None:
    qid = _send(rlab, "for the slides")
    rlab.relay.wait(qid, timeout=10)
    fig = figure(path_from_relay(rlab, qid))
    texts = [t.get_text() for t in fig.axes[0].texts]
    assert "mx1.beta.test" in texts and "mail.alpha.test" in texts
    assert any("ESMTPS" in t for t in texts)
    assert any(t.startswith("? beta.test MX\n→ MX 10 mx1.beta.test") for t in texts)  # question, then answer
    png, svg = tmp_path / "path.png", tmp_path / "path.svg"
    fig.savefig(png)
    fig.savefig(svg)
    assert png.read_bytes().startswith(b"\x89PNG")
    assert b"<svg" in svg.read_bytes()[:400]
    view = FigureView(fig)
    assert view._repr_png_().startswith(b"\x89PNG")


def test_dead_mx_shows_the_failed_attempt_and_the_fallback(rlab: Lab) -> None:
    rlab.relay.fail("mx1.beta.test", "down")
    qid = _send(rlab, "fallback")
    rlab.relay.wait(qid, timeout=15)
    path = path_from_relay(rlab, qid)
    failed = [h for h in path.hops if h.ok is False]
    good = [h for h in path.hops if h.ok and h.protocol == "ESMTPS"]
    assert len(failed) == 1 and path.nodes[failed[0].target].name == "mx1.beta.test"
    assert path.nodes[failed[0].target].side
    assert "MX 10 mx1.beta.test" in failed[0].dns
    assert len(good) == 1 and path.nodes[good[0].target].name == "mx2.beta.test"
    assert "MX 20 mx2.beta.test" in good[0].dns
    assert " x " in path_text(path)
    fig = figure(path)  # a side node: two rows
    assert fig.get_size_inches()[1] > 3


def test_tempfail_retry_is_shown_pending_then_delivered(rlab: Lab) -> None:
    rlab.limits.relay_retry_first = 5.0  # the retry must not start while we look at the queue
    rlab.relay.fail("mx1.beta.test", "tempfail")
    qid = _send(rlab, "retry me")
    rlab.relay.wait(qid, states=("retrying",), timeout=10)
    path = path_from_relay(rlab, qid)
    assert path.state == "retrying"
    assert any(h.ok is None and h.result.startswith("retry 1 at") for h in path.hops)
    assert any(h.ok is False and "451" in (h.result or "") for h in path.hops)
    queue = QueueView(rlab.relay.queue(), faults=rlab.relay.faults())
    text = repr(queue)
    assert qid in text and "retrying" in text and "451" in text and "mx1.beta.test tempfail" in text
    # a snapshot: the next attempt is a clock time and the title says when the queue was
    # read ("(in 5 s)" went stale while the output stayed on screen)
    entry = next(m for m in rlab.relay.queue() if m.id == qid)
    assert time.strftime("%H:%M:%S", time.localtime(entry.next_attempt)) in text
    assert re.match(r"relay queue at \d\d:\d\d:\d\d\n", text)
    assert "(in " not in text and "(in " not in queue._repr_html_()
    # as a narrow card, the long last error spans the card instead of one 13em column
    assert "<td class='ml-card-wide mono ml-token' data-label='last error'>" in queue._repr_html_()
    rlab.relay.heal("mx1.beta.test")
    assert rlab.relay.flush() == 1  # retry now rather than in 5 s (postqueue -f)
    rlab.relay.wait(qid, timeout=10)
    path = path_from_relay(rlab, qid)
    assert path.state == "delivered" and not any(h.ok is None for h in path.hops)
    assert "empty" in repr(QueueView(rlab.relay.queue()))


def test_bounce_shows_the_dsn_going_back_to_alice(rlab: Lab) -> None:
    rlab.relay.fail("mx1.beta.test", "reject")
    qid = _send(rlab, "bounce me")
    rlab.relay.wait(qid, timeout=10)
    path = path_from_relay(rlab, qid)
    assert path.state == "bounced"
    dsn = [h for h in path.hops if h.protocol == "DSN"]
    assert len(dsn) == 1 and path.nodes[dsn[0].target].name == "mailbox alice@alpha.test"
    assert any("550" in n for n in path.notes)


def test_live_widget_updates_from_lab_thread_events(rlab: Lab) -> None:
    rlab.limits.relay_retry_first = 5.0
    rlab.relay.fail("mx1.beta.test", "tempfail")
    qid = _send(rlab, "watch me")
    rlab.relay.wait(qid, states=("retrying",), timeout=10)
    threads: list[str] = []

    def build() -> RelayPath:
        threads.append(threading.current_thread().name)
        return path_from_relay(rlab, qid)

    view = LiveRelayView(rlab, build, interval=0.05, linger=0.5)
    try:
        assert "retrying" in view.widget.value
        before = view.updates
        rlab.relay.heal("mx1.beta.test")
        rlab.relay.flush()
        assert _wait_until(lambda: "delivered" in view.widget.value, 10), view.widget.value
        assert view.updates > before
        assert "mailbox carol@beta.test" in view.widget.value
        # rebuilt on the view's own publisher thread, never on the lab thread
        lab_thread = rlab.loop.thread.name
        assert threads and lab_thread not in threads
        assert "delivered" in repr(view)
        # once final it stops listening by itself
        assert _wait_until(lambda: not view.listening, 5)
    finally:
        view.close()


def test_a_broken_view_never_breaks_the_relay(rlab: Lab) -> None:
    def build() -> RelayPath:
        raise RuntimeError("view bug")

    view = LiveRelayView(rlab, build, interval=0.05)
    try:
        qid = _send(rlab, "despite the view")
        assert rlab.relay.wait(qid, timeout=10).state == "delivered"
        assert "relay path unavailable" in view.widget.value
        assert "RuntimeError: view bug" in view.widget.value
    finally:
        view.close()
