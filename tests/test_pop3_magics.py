"""%pop3, %%pop3 and the POP3 state view, through a real IPython shell and a real lab."""

from __future__ import annotations

import time

import pytest
from conftest import kernel_lab as lab
from conftest import magic_shell
from IPython.core.error import UsageError

from maillab.magics.pop3 import POP3Result, pop3_reply_complete
from maillab.views.pop3_state import POP3StateView, render_text, session_state

BOB = "bob@alpha.test"


@pytest.fixture
def ip(tmp_path):
    with magic_shell(tmp_path, "--domain alpha.test") as (shell, _):
        yield shell


def deliver(n: int) -> None:
    for i in range(1, n + 1):
        lab().store.deliver(BOB, f"From: alice@alpha.test\r\nSubject: =?utf-8?b?5L2g5aW9?= {i}\r\n"
                                 f"\r\nline one of {i}\r\nline two\r\n".encode())


def left() -> int:
    return len(lab().store.mailbox(BOB).messages())


def test_pop3_list_top_retr(ip) -> None:
    deliver(3)
    res = ip.run_line_magic("pop3", "bob --list")
    assert isinstance(res, POP3Result)
    assert [r["number"] for r in res.rows] == [1, 2, 3]
    assert all(r["uidl"] and r["size"] > 0 for r in res.rows)
    text = repr(res)
    assert "C: LIST" in text and "C: UIDL" in text and "C: PASS ****" in text and "bob-pw" not in text
    assert res.state.visited == ["AUTHORIZATION", "TRANSACTION", "UPDATE"]
    res = ip.run_line_magic("pop3", "bob --top 2 1")
    assert res.rows[1]["subject"] == "你好 2" and "peek" in res.rows[1]["action"]
    # LIST gave only numbers and sizes: the other messages' subjects are unknown, and
    # the table says so (a blank read as "no subject"); the one shown came from TOP
    assert res.rows[0]["subject"] is None and res.rows[2]["subject"] is None
    text, page = repr(res), res._repr_html_()
    assert text.count("(not downloaded: LIST gives sizes only)") == 2 and "C: TOP 2 1" in text
    assert page.count("<span class='ml-muted'>(not downloaded: LIST gives sizes only)</span>") == 2
    assert res.bodies[0][1].endswith("line one of 2")
    assert "\\Seen" not in lab().store.mailbox(BOB).messages()[1].flags
    res = ip.run_line_magic("pop3", "bob --retr 1")
    assert "line two" in res.bodies[0][1]
    assert "\\Seen" in lab().store.mailbox(BOB).messages()[0].flags
    assert left() == 3  # --keep is the default
    assert "<svg" in res._repr_html_() and "RETR" in res._repr_html_()


def test_dele_then_drop_versus_dele_then_quit(ip) -> None:
    deliver(3)
    res = ip.run_line_magic("pop3", "bob --dele 1 2 --drop")
    assert left() == 3
    assert res.state.aborted and res.state.removed is None
    assert "nothing deleted" in res.state.outcome
    res = ip.run_line_magic("pop3", "bob --dele 1 2")
    assert left() == 1
    assert res.state.removed == [1, 2] and res.state.left == 1
    res = ip.run_line_magic("pop3", "bob --retr 1 --no-keep")
    assert left() == 0 and "DELE" in res.rows[0]["action"]


def test_keep_unmarks_with_rset_before_quit(ip) -> None:
    deliver(2)
    res = ip.run_line_magic("pop3", "bob --list --top 1 0 --dele 1 --keep  # README line, comment and all")
    assert len(ip.run_line_magic("mail", "inbox bob").rows) == 2
    assert [e.text for e in res.events if e.kind == "C"][-2:] == ["RSET", "QUIT"]
    assert res.state.removed == [] and "RSET unmarked message(s) 1" in repr(res)


def test_usage_errors(ip) -> None:
    with pytest.raises(UsageError, match="needs a user"):
        ip.run_line_magic("pop3", "")
    with pytest.raises(UsageError, match="no lab user"):
        ip.run_line_magic("pop3", "mallory --list")
    res = ip.run_line_magic("pop3", "bob --retr 7")
    assert "no such message" in res.note
    # one sentence per line, in text and in HTML (not "...maildrop after the session...")
    assert res.notes[0].startswith("The server said: -ERR") and res.notes[-1].startswith("After the session")
    assert "</div><div>After the session" in res._repr_html_()


def test_tls_modes(ip) -> None:
    deliver(1)
    for mode in ("stls", "implicit"):
        res = ip.run_line_magic("pop3", f"bob --tls {mode}")
        assert any(e.kind == "tls" for e in res.events)
        assert len(res.rows) == 1


def test_raw_cell_by_hand(ip) -> None:
    deliver(2)
    res = ip.run_cell_magic("pop3", "pop3", "CAPA\nUSER bob\nPASS bob-pw\nSTAT\nLIST\nUIDL 1\n"
                            "RETR 2\nTOP 1 0\nDELE 1\nRETR 1\nRSET\nQUIT\n")
    assert res.problems == []
    text = repr(res)
    assert "C: PASS ****" in text and "bob-pw" not in text
    assert "S: +OK 2 " in text and "-ERR message 1 already deleted" in text
    assert "S: ." in text
    assert left() == 2  # RSET undid the DELE


def test_raw_cell_stls_and_pop3s(ip) -> None:
    res = ip.run_cell_magic("pop3", "pop3", "STLS\nCAPA\nUSER bob\nPASS bob-pw\nQUIT\n")
    assert res.problems == []
    events = res._events()
    assert any(e.kind == "tls" for e in events)
    capa = [e.text for e in events if e.kind == "S"]
    assert "STLS" not in capa[capa.index("+OK begin TLS negotiation") + 1:]
    h, p = lab().address("pop3s")
    res = ip.run_cell_magic("pop3", f"{h}:{p}", "USER bob\nPASS wrong\nQUIT\n")
    assert any("[AUTH]" in e.text for e in res._events())
    assert any(e.kind == "tls" for e in res._events())


def test_raw_cell_sasl_continuation_masked(ip) -> None:
    res = ip.run_cell_magic("pop3", "pop3", "AUTH PLAIN\nAGJvYgBib2ItcHc=\nSTAT\nQUIT\n")
    lines = [e.text for e in res._events() if e.kind == "C"]
    assert lines == ["AUTH PLAIN", "****", "STAT", "QUIT"]
    assert any(e.text.startswith("+OK bob@alpha.test's maildrop") for e in res._events())


def test_reply_complete_rule() -> None:
    assert pop3_reply_complete(None, ["+OK ready"])
    assert pop3_reply_complete("STAT", ["+OK 1 2"])
    assert pop3_reply_complete("LIST 1", ["+OK 1 2"])
    assert not pop3_reply_complete("LIST", ["+OK 1 messages"])
    assert pop3_reply_complete("LIST", ["+OK 1 messages", "1 2", "."])
    assert not pop3_reply_complete("RETR 1", ["+OK", "..", "x"])
    assert pop3_reply_complete("RETR 1", ["-ERR no such message"])
    assert pop3_reply_complete("AUTH PLAIN", ["+ "])


def test_state_view_follows_live_session(ip) -> None:
    import poplib

    deliver(2)
    view = POP3StateView(lab().events, interval=0.02)
    h, p = lab().address("pop3")
    c = poplib.POP3(h, p, timeout=5)

    def wait_for(text: str) -> str:
        deadline = time.time() + 3
        while time.time() < deadline:
            if text in view.html.value:
                return view.html.value
            time.sleep(0.02)
        raise AssertionError(f"{text!r} not in the view: {view.text()}")

    wait_for("AUTHORIZATION")
    assert "[AUTHORIZATION]" in view.text()
    c.user("bob")
    c.pass_("bob-pw")
    wait_for("class='mono'")  # the UIDL column: the maildrop is listed once logged in
    assert "[TRANSACTION]" in view.text() and "▶ TRANSACTION" in view.html.value
    c.dele(2)
    wait_for("marked for deletion")
    c.quit()
    html = wait_for("removed in UPDATE")
    assert "still on the server" in html
    assert "[UPDATE]" in view.text() and "left on the server" in view.text()
    assert view.updates >= 3
    view.close()


def test_state_view_keeps_its_session_without_reading_the_bus(ip) -> None:
    """The view opened on a finished session, then a new one: it follows the events as
    they arrive (a refresh under load must not scan the whole event log), and what it
    shows is what the bus says of each session."""
    import poplib

    deliver(3)
    ip.run_line_magic("pop3", "bob --list")
    bus = lab().events
    first = [e.session for e in bus.events(kinds=("opened",)) if e.side == "server" and e.protocol == "pop3"][-1]
    view = POP3StateView(bus, interval=0.02)
    assert view.session == first and view.text() == render_text(session_state(bus.events(session=first), first))
    scans = []
    events = bus.events
    bus.events = lambda *a, **kw: scans.append(kw) or events(*a, **kw)  # type: ignore[method-assign]
    try:
        c = poplib.POP3(*lab().address("pop3"), timeout=5)
        c.user("bob")
        c.pass_("bob-pw")
        c.dele(1)
        c.quit()
        deadline = time.time() + 5
        while "removed in UPDATE" not in view.html.value and time.time() < deadline:
            time.sleep(0.02)
        assert scans == []  # every refresh read the view's own events
    finally:
        bus.events = events  # type: ignore[method-assign]
    second = view.session
    assert second != first
    assert view.text() == render_text(session_state(bus.events(session=second), second))
    assert "removed in UPDATE" in view.html.value
    view.close()


def test_state_text_after_drop(ip) -> None:
    deliver(1)
    ip.run_line_magic("pop3", "bob --dele 1 --drop")
    sid = [e.session for e in lab().events.events(kinds=("opened",)) if e.side == "server"
           and e.protocol == "pop3"][-1]
    text = render_text(session_state(lab().events.events(session=sid), sid))
    assert "1 (marked)" in text and "no UPDATE state, nothing deleted" in text
    assert "[TRANSACTION]" not in text
