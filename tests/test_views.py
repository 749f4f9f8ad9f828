"""Views rendered from the events of real sessions (real sockets, real servers)."""

from __future__ import annotations

import re
import threading
import time

import pytest

from maillab.clients.smtp import send
from maillab.compose import compose
from maillab.events import EventBus
from maillab.views import Inbox, StatusTable, TranscriptView, render_html, render_text
from maillab.views.transcript import explainer, select


def _send_one(lab, subject="你好, Bob", body="Hello from the lab.\n"):
    return send(lab, compose(sender="alice@alpha.test", to=["bob@alpha.test"], subject=subject, body=body))


def test_transcript_text_from_a_real_submission_session(single_lab):
    result = _send_one(single_lab)
    text = render_text(single_lab.events.events())
    # both ends of the conversation are there: maillab's client and the lab's server
    assert f"=== {result.session} (smtp client, to 127.0.0.1:{result.port})" in text
    assert re.search(r"=== smtp-\d+ \(smtp server, mail\.alpha\.test <- 127\.0\.0\.1:\d+\)", text)
    lines = text.splitlines()
    stamped = [ln for ln in lines if re.match(r"\d\d:\d\d:\d\d\.\d{3} [CS]: ", ln)]
    assert len(stamped) > 20
    assert any(re.match(r".*S: 354 .*# start mail input; end with <CRLF>\.<CRLF> \(RFC 5321", ln) for ln in lines)
    assert any("C: STARTTLS" in ln and "RFC 3207" in ln for ln in lines)
    assert any("TLS started: TLSv1." in ln for ln in lines)
    # the credential never reaches a transcript; the masked line does, on both ends
    assert text.count("C: AUTH PLAIN ****") == 2
    assert "alice-pw" not in text
    import base64
    secret = base64.b64encode(b"\0alice@alpha.test\0alice-pw").decode()
    assert secret not in text
    # the message went over the wire with its encoded subject
    assert "C: Subject: =?utf-8?b?" in text


def test_render_without_notes_and_times(single_lab):
    _send_one(single_lab)
    text = render_text(single_lab.events.events(), explain=False, times=False)
    assert "# " not in text
    assert "\nS: 220 " in text


def test_select_filters_by_session_protocol_and_user(single_lab):
    result = _send_one(single_lab)
    events = single_lab.events.events()
    only = select(events, session=result.session)
    assert {e.session for e in only} == {result.session}
    assert select(events, protocol="imap") == []
    alice = {e.session for e in select(events, user="alice")}
    assert result.session in alice and len(alice) == 2  # client and server side both logged in as alice
    assert select(events, user="carol") == []


def test_html_rendering_escapes_and_colours(single_lab):
    _send_one(single_lab, subject="<script>x</script>")
    html = render_html(single_lab.events.events())
    assert "<script>x</script>" not in html
    assert "&lt;script&gt;" in html
    # the 354 line, coloured as a positive reply (its row's class colours it)
    assert re.search(r'<tr class="ok"><td class="t">[^<]*<td class="tag">S:<td class="line">354 ', html)
    # one conversation: the client's and the server's copies shown once, in one column
    assert html.count("(smtp server") == 1 and "(smtp client" not in html and "the client copy" in html
    assert "text-align:left!important" in html  # whatever JupyterLab's table CSS says
    limited = render_html(single_lab.events.events(), limit=5)
    assert "earlier events not shown" in limited


def test_missing_explainer_is_tolerated():
    assert explainer("nosuchprotocol") is None
    bus = EventBus()
    rec = bus.session("nosuchprotocol", "server", "h", "p")
    rec.client_line("HELLO")
    rec.server_line("+OK")
    rec.close()
    text = render_text(bus.events())
    assert "C: HELLO" in text and "#" not in text


def test_live_widget_updates_from_the_lab_thread(single_lab):
    view = TranscriptView(single_lab.events, interval=0.05)
    try:
        applied_on: list[threading.Thread] = []
        view.html.observe(lambda change: applied_on.append(threading.current_thread()), names="value")
        before = view.updates
        result = _send_one(single_lab)
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline and "Bye" not in view.html.value:
            time.sleep(0.02)
        assert view.updates > before
        assert "354" in view.html.value and "Bye" in view.html.value
        # updates were applied by the view's publisher, never on the lab's server thread
        assert applied_on and single_lab.loop.thread not in applied_on
        # the filters
        assert result.session in view.session_w.options
        view.session_w.value = result.session
        assert "smtp client" in view.html.value and "smtp server" not in view.html.value
        assert view.html.value.count("<details") == 1
        view.session_w.value = "(all)"
        view.user_w.value = "nobody-here"
        assert "no sessions yet" in view.html.value
        view.user_w.value = ""
        assert "smtp server" in view.html.value and "the client copy" in view.html.value
        view.copy_w.value = "client"
        assert "smtp client" in view.html.value and "the server copy" in view.html.value
        assert "S: 354" in view.text()
    finally:
        view.close()
    # a closed view no longer follows the bus
    updates = view.updates
    _send_one(single_lab)
    time.sleep(0.2)
    assert view.updates == updates


def test_a_broken_subscriber_never_breaks_a_server(single_lab):
    def broken(_event):
        raise RuntimeError("view bug")

    unsubscribe = single_lab.events.subscribe(broken)
    try:
        assert _send_one(single_lab).ok
    finally:
        unsubscribe()
    assert len(Inbox(single_lab, "bob")) == 1


def test_inbox_decodes_subjects_and_counts_crlf_size(single_lab):
    _send_one(single_lab)
    inbox = Inbox(single_lab, "bob")
    assert inbox.address == "bob@alpha.test"
    (row,) = inbox.rows
    assert row.subject == "你好, Bob"
    assert row.sender == "alice@alpha.test"
    mb = single_lab.store.mailbox("bob@alpha.test")
    assert row.size == mb.messages()[0].crlf_size
    assert "你好, Bob" in repr(inbox) and "你好, Bob" in inbox._repr_html_()
    assert "0 message(s)" in repr(Inbox(single_lab, "alice"))


def test_status_table_lists_lab_and_standard_ports(single_lab):
    table = StatusTable(single_lab.status(), ca_path=str(single_lab.ca_path))
    text = repr(table)
    host, port = single_lab.address("submission")
    row = next(ln for ln in text.splitlines() if ln.startswith("submission "))
    assert f" {port} " in row and " 587 " in row and "starttls" in row and "running" in row
    smtps = next(ln for ln in text.splitlines() if ln.startswith("smtps "))
    assert " 465 " in smtps and "implicit" in smtps
    assert str(single_lab.ca_path) in text
    assert "<table class='ml-cards-narrow'>" in table._repr_html_()


@pytest.mark.parametrize("line, direction, expected", [
    ("354 End data with <CR><LF>.<CR><LF>", "S", "start mail input; end with <CRLF>.<CRLF>"),
    ("550 5.7.1 Relaying denied", "S", "5.7.1"),
    ("250-PIPELINING", "S", "RFC 2920"),
    ("451 4.3.0 try later", "S", "try again later"),
    ("RCPT TO:<bob@alpha.test>", "C", "RFC 5321 4.1.1.3"),
    ("quit", "C", "RFC 5321 4.1.1.10"),
])
def test_smtp_explanations(line, direction, expected):
    from maillab.smtp.explain import explain

    note = explain(line, direction)
    assert note is not None and expected in note


def test_smtp_explanation_is_silent_on_message_text():
    from maillab.smtp.explain import explain

    assert explain("Hello Bob, how are you?", "C") is None
    assert explain("no code here", "S") is None


def test_reply_colours_follow_the_reply_and_never_stand_alone():
    from maillab.views.theme import badge, reply_kind

    assert reply_kind("pop3", "-ERR no such message") == "err"  # not coloured like +OK
    assert reply_kind("pop3", "+OK 2 messages") == "ok"
    assert [reply_kind("smtp", t) for t in ("250 ok", "354 go", "451 later", "550 no")] == [
        "ok", "ok", "temp", "err"]
    assert reply_kind("imap", "a1 NO [AUTHENTICATIONFAILED] nope") == "err"
    assert reply_kind("imap", "a2 BAD what") == "err" and reply_kind("imap", "* 3 EXISTS") == "ok"
    assert "✗\u00a0-ERR" in badge("err", "-ERR") and "✓\u00a0+OK" in badge("ok", "+OK")
    # the lab DNS's answers: a refused or failed lookup is no success
    assert [reply_kind("dns", t) for t in ("NOERROR aa: 1 answer(s)", "REFUSED: 0 answer(s)",
                                           "NXDOMAIN aa: 0 answer(s)", "SERVFAIL: 0 answer(s)")] == [
        "ok", "err", "err", "temp"]


def test_figures_say_when_no_cjk_font_is_installed(monkeypatch):
    from maillab.views import fonts

    assert fonts.missing_font_note("plain ASCII") is None
    monkeypatch.setattr(fonts, "installed_cjk_families", lambda: ())
    assert "fonts-noto-cjk" in fonts.missing_font_note("你好, Bob")
    monkeypatch.setattr(fonts, "installed_cjk_families", lambda: ("Noto Sans CJK SC",))
    assert fonts.missing_font_note("你好, Bob") is None
    assert fonts.figure_font_family()[:2] == ["DejaVu Sans", "Noto Sans CJK SC"]


def test_a_live_block_that_went_on_is_sent_as_its_new_rows():
    from maillab.views.live import Block

    s1, s2 = "<details><summary>1</summary><table><tbody>", "<details><summary>2</summary><table><tbody>"
    old = Block(s1, ["r1", "r2", "r3"], "</b>", (1, 2, 3))
    # the oldest row trimmed, two added, the summary changed: only that is sent
    assert old.edit(Block(s2, ["r2", "r3", "r4", "r5"], "</b>", (2, 3, 4, 5))) == \
        {"drop": 1, "add": ["r4", "r5"], "top": s2}
    assert old.edit(Block(s1, ["r1", "r2", "r3", "r4"], "</b>", (1, 2, 3, 4))) == {"drop": 0, "add": ["r4"]}
    # a table row that changed in place: that row; a gap: the rows after it
    assert old.edit(Block(s1, ["r1", "R2", "r3"], "</b>", (1, 2, 3))) == {"drop": 0, "add": [], "put": [[1, "R2"]]}
    assert old.edit(Block(s1, ["r1", "r3"], "</b>", (1, 3))) == {"drop": 0, "add": ["r3"], "cut": 2}
    # a log shown newest first: the new line at the top, the oldest gone at the end
    assert old.edit(Block(s1, ["r0", "r1", "r2"], "</b>", (0, 1, 2))) == {"drop": 0, "add": [], "cut": 1,
                                                                        "front": ["r0"]}
    # rows rewritten (explain switched on, another copy), nothing kept, or more than
    # the summary changed in the top: sent whole
    assert old.edit(Block(s1, ["R1", "R2", "R3"], "</b>", (1, 2, 3))) is None
    assert old.edit(Block(s1, ["r9"], "</b>", (9,))) is None
    assert old.edit(Block("<table><tbody>", ["r1", "r2", "r3", "r4"], "</b>", (1, 2, 3, 4))) is None


def test_a_live_view_sends_the_rows_that_changed_and_keeps_the_whole_as_state():
    from maillab.views.live import Block, LiveBlocks

    def table(*cells: str) -> Block:
        return Block("<table><tbody>", [f"<tr><td>{c}</td></tr>" for c in cells], "</tbody></table>",
                     tuple(range(len(cells))))

    view = LiveBlocks([("t", table("a", "b", "c"))], "<style>x</style>")
    sent: list[dict] = []
    view.send = lambda content, buffers=None: sent.append(content)  # what the browser would get
    assert view.show([("t", table("a", "B", "c"))], "<style>x</style>")
    # one row, in place; the head and the order did not change, so they are not sent again
    assert sent[-1]["edit"] == {"t": {"drop": 0, "add": [], "put": [[1, "<tr><td>B</td></tr>"]]}}
    assert "head" not in sent[-1] and "order" not in sent[-1] and sent[-1]["set"] == {}
    assert not view.show([("t", table("a", "B", "c"))], "<style>x</style>")  # nothing changed: nothing sent
    assert view.show([("n", Block("<p>note</p>")), ("t", table("a", "B", "c", "d"))], "<style>x</style>")
    assert sent[-1]["order"] == ["n", "t"] and sent[-1]["set"] == {"n": ["<p>note</p>", [], ""]}
    assert sent[-1]["edit"] == {"t": {"drop": 0, "add": ["<tr><td>d</td></tr>"]}}
    # the whole view, as a second output or a saved notebook gets it
    state = view.get_state()["blocks"]
    assert state["gen"] == 2 and [k for k, _b in state["items"]] == ["n", "t"]
    assert view.value == "<style>x</style><p>note</p>" + table("a", "B", "c", "d").html
    # a block that leaves and comes back (a POP3 maildrop at the next login) is an edit
    # of what the page kept of it, not sent whole again
    assert view.show([("n", Block("<p>note</p>"))], "<style>x</style>")
    assert view.show([("n", Block("<p>note</p>")), ("t", table("a", "B", "c", "d", "e"))], "<style>x</style>")
    assert sent[-1]["set"] == {} and sent[-1]["edit"] == {
        "t": {"drop": 0, "add": ["<tr><td>e</td></tr>"], "parked": True}}
    view.close()


class _Page:
    """What the page's store makes of a LiveBlocks view's messages (live.py's ES module,
    in Python): the blocks, their order, the head and the streaming note."""

    def __init__(self, snapshot: dict) -> None:
        self.reset(snapshot)

    def reset(self, snap: dict) -> None:
        self.gen, self.head, self.stream = snap["gen"], snap["head"], snap.get("stream", "")
        self.order = [key for key, _b in snap["items"]]
        self.blocks = {key: list(b) for key, b in snap["items"]}
        self.parked: dict = {}

    def apply(self, msg: dict) -> None:
        from maillab.views.live import LiveBlocks

        if msg["kind"] == "full":
            self.reset(msg)
            return
        assert msg["base"] == self.gen, "a patch went missing"
        self.gen = msg["gen"]
        self.head = msg.get("head", self.head)
        self.stream = msg.get("stream", "")
        if "order" in msg:
            for key in self.order:
                if key not in msg["order"] and key in self.blocks:
                    self.parked.pop(key, None)
                    self.parked[key] = self.blocks.pop(key)
            self.order = msg["order"]
        self.blocks = {k: b for k, b in self.blocks.items() if k in self.order}
        for key, b in msg["set"].items():
            self.blocks[key] = list(b)
        for key, e in msg["edit"].items():
            top, rows, bottom = self.blocks.get(key) or self.parked[key]
            rows = rows[e["drop"]:len(rows) - e.get("cut", 0)]
            for i, row in e.get("put", []):
                rows[i] = row
            self.blocks[key] = [e.get("top", top), e.get("front", []) + rows + e["add"], bottom]
        for key in self.order:
            self.parked.pop(key, None)
        while len(self.parked) > LiveBlocks.PARKED:
            del self.parked[next(iter(self.parked))]

    @property
    def value(self) -> str:
        return self.head + "".join(top + "".join(rows) + bottom for top, rows, bottom in
                                   (self.blocks[key] for key in self.order))


def test_a_parked_block_comes_back_while_another_leaves_with_the_parking_full():
    """The page keeps the blocks the kernel keeps for a return: with PARKED blocks
    parked, one coming back (sent as an edit) while another leaves in the same patch
    is still on the page (it trimmed its parking before taking the returning block out,
    lost it, and the view missed that block for good: a streaming transcript's older
    sessions, back when the stream paused)."""
    from maillab.views.live import Block, LiveBlocks

    def block(key: str, *rows: str) -> Block:
        return Block(f'<details data-key="{key}"><table><tbody>', [f"<tr><td>{r}</td></tr>" for r in rows],
                     "</tbody></table></details>", tuple(range(len(rows))))

    many = {k: block(k, f"{k}1", f"{k}2", f"{k}3", f"{k}4") for k in "abcdef"}
    view = LiveBlocks(list(many.items()))
    page = _Page(view.get_state()["blocks"])
    sent: list[dict] = []
    view.send = lambda content, buffers=None: (sent.append(content), page.apply(content))
    try:
        assert view.show([("e", many["e"]), ("f", many["f"])])  # a, b, c, d parked
        # a comes back (a row more), f leaves: one patch
        assert view.show([("a", block("a", "a1", "a2", "a3", "a4", "a5")), ("e", many["e"])])
        assert sent[-1]["edit"]["a"]["parked"]
        assert page.value == view.value
    finally:
        view.close()


def test_a_streaming_transcript_shows_its_newest_lines_then_every_line_exactly():
    """Hundreds of lines a second: the live transcript sends only the newest
    STREAM_LINES at each publish, says how many it skipped, and once the traffic
    pauses shows every line, exactly what a fresh rendering of the same events shows
    (checked on the page's side too, by applying every message it was sent)."""
    from maillab.views import transcript
    from maillab.views.transcript import STREAM_LINES, render_body

    bus = EventBus()
    quiet = bus.session("pop3", "server", "mail.alpha.test", "127.0.0.1:39999")
    for i in range(100):
        quiet.client_line(f"RETR {i + 1}")
        quiet.server_line("+OK")
    view = TranscriptView(bus, interval=0.02, max_events=2000)
    # Filtered to a session that does not stream: never trimmed, however busy the lab.
    pop3 = TranscriptView(bus, interval=0.02, max_events=2000, protocol="pop3")
    pop3_sent: list[dict] = []
    pop3_send = pop3.html.send
    pop3.html.send = lambda content, buffers=None: (pop3_sent.append(content), pop3_send(content))
    page = _Page(view.html.get_state()["blocks"])
    sent: list[dict] = []
    send = view.html.send
    view.html.send = lambda content, buffers=None: (sent.append(content), page.apply(content), send(content))
    try:
        def traffic() -> None:
            for n in range(30):
                rec = bus.session("smtp", "server", "mx.alpha.test", f"127.0.0.1:{40000 + n}")
                rec.server_line("220 mx.alpha.test ESMTP")
                for i in range(60):
                    rec.client_line(f"RCPT TO:<user{i}@alpha.test>")
                    rec.server_line("250 2.1.5 Ok")
                    if i % 20 == 0:
                        time.sleep(0.01)
                rec.close()
                quiet.client_line("NOOP")
        worker = threading.Thread(target=traffic)
        worker.start()
        worker.join(60)
        expected = render_body(bus.events(), limit=2000)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and (view.html.value != expected or page.value != expected):
            time.sleep(0.05)
        streamed = [m for m in sent if m.get("stream")]
        assert streamed, "the stream was never trimmed"
        for m in streamed:
            rows = sum(len(b[1]) for b in m["set"].values()) + sum(
                len(e["add"]) + len(e.get("front", [])) + len(e.get("put", [])) for e in m["edit"].values())
            assert rows <= STREAM_LINES
        assert "lines skipped while traffic streams" in streamed[-1]["stream"]
        # ... then every line, exactly: in the kernel's view and on the page
        assert view.html.value == expected and page.value == expected and page.stream == ""
        assert transcript.flush_live_views() is None and view.html.value == expected
        assert pop3_sent and not [m for m in pop3_sent if m.get("stream")]
        assert pop3.html.value.count('class="line">NOOP') == 30  # every line of it
    finally:
        view.close()
        pop3.close()


def test_mime_header_cards_are_headed_by_the_header_name():
    """Each header's card is headed by its name (Subject, Content-Type...), so a class
    scans them down the cards; the part it belongs to is a labelled fact, not the heading."""
    from maillab.views.mime_tree import MimeTree, from_message

    data = (b"Subject: =?utf-8?b?5L2g5aW9?=\r\nMIME-Version: 1.0\r\n"
            b"Content-Type: multipart/mixed; boundary=b\r\n\r\n--b\r\n"
            b"Content-Type: text/plain\r\n\r\nhi\r\n--b--\r\n")
    page = MimeTree(from_message(data))._repr_html_()
    heads = re.findall(r"<td class='ml-card-head[^']*' data-label='([^']*)'>([^<]*)</td>", page)
    assert heads and {label for label, _ in heads} == {"header"}
    assert [name for _, name in heads] == ["Subject", "Content-Type", "Content-Type"]
    assert "data-label='part'>message</td>" in page and "data-label='part'>1</td>" in page


def test_mime_tree_labels_wrap_at_spaces_only():
    """A part's label is protocol text: at the presenter's scale '"trip-1.jpg"' broke as
    '"trip-' / '1.jpg"' and 'filename*=utf-' / '8...' (notebook 03). Its break points
    are held (theme.protocol_line), the label's text unchanged."""
    from maillab.views.mime_tree import MimeTree, from_message

    data = (b"MIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary=b\r\n\r\n--b\r\n"
            b"Content-Type: image/jpeg\r\nContent-Disposition: attachment; filename=\"trip-1.jpg\"\r\n"
            b"Content-Transfer-Encoding: base64\r\n\r\naGk=\r\n--b--\r\n")
    page = MimeTree(from_message(data))._repr_html_()
    assert "<span class='ml-nb'>-1</span>" in page
    assert "<span class='ml-nb'>/j</span>" in page  # image/jpeg


def test_status_note_shows_a_joins_records_one_a_line(single_lab) -> None:
    """%mail join's note lists the DNS records the class registered; run together in one
    bold paragraph they read as one record ("…IN MX 10 mail.x. mail.x. 60 IN A…")."""
    from maillab.views.status import StatusTable

    note = ("joined class.test as alice.class.test: mail host mail.alice.class.test\n"
            "registered in the class DNS 127.0.0.1:5053:\n"
            "  alice.class.test. 60 IN MX 10 mail.alice.class.test.\n"
            "  mail.alice.class.test. 60 IN A 127.0.61.1\n"
            "your user: alice@alice.class.test  password x")
    shown = StatusTable(single_lab.status(), note=note)._repr_html_()
    assert ("<div class='ml-lines'><div>alice.class.test. 60 IN MX 10 mail.alice.class.test.</div>"
            "<div>mail.alice.class.test. 60 IN A 127.0.61.1</div></div>") in shown
    assert "<div><b>your user: alice@alice.class.test  password x</b></div>" in shown
