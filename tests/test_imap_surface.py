"""IMAP lab surface: the recording client, explain notes, the views and the magics,
all against a real lab IMAP server over real sockets."""

from __future__ import annotations

import threading
import time

import pytest
from IPython.core.error import UsageError
from IPython.core.interactiveshell import InteractiveShell

from maillab.clients.envelopes import EnvelopeClient
from maillab.clients.imap import (
    RecordingIMAP4,
    RecordingIMAP4_SSL,
    connect,
    mask_imap,
    parse_fetch,
    parse_list_line,
)
from maillab.compose import compose, wire_bytes
from maillab.events import MASK
from maillab.imap.explain import explain
from maillab.magics import state
from maillab.magics.imap import FetchedMessage, ResultTable
from maillab.magics.mail import RawResult
from maillab.views.mailbox import POP3_PER_MESSAGE, MailboxView
from maillab.views.mime_tree import MimeTree, fetch_tree, from_message

BOB = "bob@alpha.test"


def chinese_multipart() -> bytes:
    msg = compose(sender="alice@alpha.test", to=[BOB], subject="你好，Bob: 报告",
                  body="Hallo Bob,\nder Bericht hängt an.\n", html="<p>Hallo <b>Bob</b></p>",
                  attachments=[])
    msg.add_attachment(b"%PDF-1.4 " + bytes(range(256)) * 40, maintype="application", subtype="pdf",
                       filename="Übersicht 2024.pdf")
    return wire_bytes(msg)


def plain(subject: str, body: str = "hello\r\n") -> bytes:
    return f"From: Alice <alice@alpha.test>\r\nTo: {BOB}\r\nSubject: {subject}\r\n\r\n{body}".encode()


def client_lines(client) -> list[tuple[str, str]]:
    return [(e.kind, e.text) for e in client.events() if e.is_line]


# -- the recording client -------------------------------------------------------------------

def test_mask_imap_hides_passwords_only():
    assert mask_imap('a1 LOGIN bob "s3cret pw"') == f"a1 LOGIN bob {MASK}"
    assert mask_imap("a1 login \"bob@alpha.test\" pw") == f'a1 login "bob@alpha.test" {MASK}'
    assert mask_imap("a2 AUTHENTICATE PLAIN AGJvYgBwdw==") == f"a2 AUTHENTICATE PLAIN {MASK}"
    assert mask_imap("a3 SELECT INBOX") == "a3 SELECT INBOX"


def test_client_records_masked_transcript_with_tls_and_byte_counts(single_lab):
    single_lab.store.deliver(BOB, plain("one", "x" * 5000 + "\r\n"))
    with connect(single_lab, "bob") as imap:
        imap.select("INBOX")
        typ, data = imap.uid("FETCH", "1", "(BODY.PEEK[])")
        assert typ == "OK"
        body = parse_fetch(data)[0]["BODY[]"]
        sent, received = imap.wire_bytes()
    events = imap.events()
    texts = [e.text for e in events]
    password = single_lab.users.password(BOB)
    assert not any(password in t for t in texts), "the password leaked into the transcript"
    assert any(t.endswith(f"LOGIN {BOB} {MASK}") for t in texts)
    kinds = [e.kind for e in events]
    # TLS comes before LOGIN, and the session is marked as a client session
    assert kinds.index("tls") < next(i for i, e in enumerate(events) if "LOGIN" in e.text)
    assert all(e.side == "client" and e.protocol == "imap" for e in events)
    payloads = [e for e in events if e.data.get("payload")]
    assert payloads and payloads[0].data["bytes"] == len(body) == single_lab.store.mailbox(BOB).get(1).crlf_size
    assert received > len(body) and sent > 0
    assert events[-1].kind == "closed"


def test_implicit_tls_and_authenticate_plain_are_masked(single_lab):
    host, port = single_lab.address("imaps")
    svc = single_lab.service("imaps")
    imap = RecordingIMAP4_SSL(host, port, events=single_lab.events, ssl_context=single_lab.ca.client_context(),
                              server_hostname=svc.hostname, timeout=5)
    try:
        imap.authenticate_plain(BOB, single_lab.users.password(BOB))
        assert imap.state == "AUTH"
    finally:
        imap.logout()
    lines = client_lines(imap)
    evs = imap.events()
    assert evs[1].kind == "tls", "implicit TLS is recorded before the greeting"
    auth = [t for k, t in lines if k == "C" and "AUTHENTICATE" in t]
    assert auth and (auth[0].endswith("AUTHENTICATE PLAIN") or auth[0].endswith(MASK))
    assert not any("AGJvYg" in t or single_lab.users.password(BOB) in t for _, t in lines)
    assert any(e.kind == "auth" and e.data["ok"] for e in evs)


def test_append_literal_is_recorded_as_payload_and_login_failure_recorded(single_lab):
    with connect(single_lab, "bob") as imap:
        typ, _ = imap.append("INBOX", None, None, plain("appended"))
        assert typ == "OK"
        evs = imap.events()
    lit = [e for e in evs if e.kind == "C" and e.data.get("payload")]
    assert lit and lit[0].data["bytes"] == len(plain("appended")) and "Subject: appended" in lit[0].text
    host, port = single_lab.address("imap")
    bad = RecordingIMAP4(host, port, events=single_lab.events, timeout=5,
                         server_hostname=single_lab.service("imap").hostname)
    bad.starttls(single_lab.ca.client_context())
    with pytest.raises(RecordingIMAP4.error):
        bad.login(BOB, "wrong-password")
    bad.shutdown()
    assert any(e.kind == "auth" and not e.data["ok"] for e in bad.events())
    assert not any("wrong-password" in e.text for e in bad.events())


def test_idle_sees_a_delivery(single_lab):
    with connect(single_lab, "bob") as imap:
        imap.select("INBOX")
        timer = threading.Timer(0.3, lambda: single_lab.store.deliver(BOB, plain("pushed")))
        timer.start()
        t0 = time.monotonic()
        pushed = imap.idle(timeout=5)
        assert time.monotonic() - t0 < 1.5
        assert any(line.endswith(b"EXISTS") for line in pushed)
        assert imap.idle(timeout=0.2) == []  # nothing new: returns after the timeout


def test_parse_fetch_envelope_bodystructure_and_list(single_lab):
    single_lab.store.deliver(BOB, chinese_multipart())
    with connect(single_lab, "bob") as imap:
        imap.select("INBOX", readonly=True)
        typ, data = imap.fetch("1", "(UID FLAGS RFC822.SIZE ENVELOPE BODYSTRUCTURE BODY.PEEK[HEADER.FIELDS (SUBJECT)])")
        item = parse_fetch(data)[0]
        typ, listing = imap.list('""', "*")
    assert item["UID"] == 1 and isinstance(item["RFC822.SIZE"], int)
    assert item["ENVELOPE"][1].startswith(b"=?utf-8?")
    assert item["ENVELOPE"][2][0][2:] == [b"alice", b"alpha.test"]
    assert item["BODY[HEADER.FIELDS (SUBJECT)]"].startswith(b"Subject: ")
    assert isinstance(item["BODYSTRUCTURE"][0], list)  # multipart: parts first
    names = {parse_list_line(x)[2] for x in listing}
    assert {"INBOX", "Sent", "Trash"} <= names


# -- explain ------------------------------------------------------------------------------------

@pytest.mark.parametrize("line,direction,needle", [
    ("a1 LOGIN bob ****", "C", "6.2.3"),
    ("a2 UID FETCH 1:* (BODY.PEEK[])", "C", "6.4.8"),
    ("a3 APPEND INBOX {310+}", "C", "LITERAL+"),
    ("* 4 EXISTS", "S", "7.3.1"),
    ("* 2 EXPUNGE", "S", "7.4.1"),
    ("* 1 FETCH (FLAGS (\\Seen))", "S", "7.4.2"),
    ("* OK [UIDVALIDITY 1700000000] UIDs valid", "S", "2.3.1.1"),
    ("* OK [UIDNEXT 5] next", "S", "next new message"),
    ("a4 NO [TOOBIG] message too big", "S", "RFC 4469"),
    ("a5 BAD unknown command", "S", "not understood"),
    ("+ idling", "S", "7.5"),
    ("DONE", "C", "2177"),
])
def test_explain_notes(line, direction, needle):
    note = explain(line, direction)
    assert note and needle in note


def test_explain_covers_a_real_session(single_lab):
    with connect(single_lab, "bob") as imap:
        imap.select("INBOX")
        imap.fetch("1:*", "(FLAGS)")
        evs = imap.events()
    server = [e.text for e in evs if e.kind == "S" and not e.data.get("payload")]
    noted = [t for t in server if explain(t, "S")]
    assert len(noted) == len(server), [t for t in server if not explain(t, "S")]
    assert explain("Subject: hello", "C") is None  # literal data is not a command


# -- views ---------------------------------------------------------------------------------------

def test_mailbox_view_summaries_first_counts_bytes(single_lab):
    big = chinese_multipart()
    for data in (big, plain("small one"), big):
        single_lab.store.deliver(BOB, data)
    view = MailboxView(EnvelopeClient.open(single_lab, "bob"))
    try:
        assert [r.uid for r in view.rows] == [1, 2, 3]
        assert view.rows[0].subject == "你好，Bob: 报告" and view.rows[1].subject == "small one"
        assert view.rows[0].sender == "alice@alpha.test"
        assert [s.name.split()[0] for s in view.steps] == ["connect,", "EXAMINE", "FETCH"]
        envelopes = view.steps[-1]
        sizes = sum(r.size for r in view.rows)
        assert envelopes.received < sizes / 4, "summaries must be far smaller than the bodies"
        assert view.pop3_total == sizes + 3 * POP3_PER_MESSAGE
        before = view.imap_total
        got = view.download([2])
        assert got[2].endswith(b"hello\r\n")
        step = view.steps[-1]
        assert step.name.startswith("download UID 2") and step.received > len(got[2])
        # the picker and its button (ipywidgets) take the view's text size: at the
        # presenter's scale they stayed at JupyterLab's 13 px (notebook 03)
        from maillab.views.theme import settings
        settings.set_scale(1.6)
        try:
            panel = view.widget()
            assert "ml-picker" in panel.children[0]._dom_classes
            assert ".ml-picker,.ml-picker select{font-size:min(22.4px,3.2vw)" in panel.children[2].value
        finally:
            settings.set_scale(1.0)
        assert view.imap_total == before + step.total
        text = view.text()
        assert "你好，Bob: 报告" in text and "POP3 would download" in text and str(view.pop3_total) in text
        assert "POP3 would have moved" in view._repr_html_()
        # like with like: POP3 would connect and log in too, so IMAP's login is left out
        assert view.imap_after_login == view.imap_total - view.steps[0].total
        assert f"IMAP moved {view.imap_after_login} octets" in text
        assert all("\\Seen" not in r.flags for r in MailboxView(EnvelopeClient.open(single_lab, "bob")).rows), \
            "looking (EXAMINE + PEEK) must not mark anything read"
    finally:
        view.close()


def test_mime_tree_from_bodystructure_matches_local_parse(single_lab):
    data = chinese_multipart()
    single_lab.store.deliver(BOB, data)
    with connect(single_lab, "bob") as imap:
        imap.select("INBOX", readonly=True)
        remote = fetch_tree(imap, 1)
    local = from_message(data)
    shape = lambda n: [(x.path, x.content_type, x.encoding, x.filename) for x in n.walk()]  # noqa: E731
    assert shape(remote) == shape(local)
    assert [n.content_type for n in remote.walk()] == [
        "multipart/mixed", "multipart/alternative", "text/plain", "text/html", "application/pdf"]
    pdf = remote.walk()[-1]
    assert pdf.encoding == "base64" and pdf.disposition == "attachment" and pdf.filename == "Übersicht 2024.pdf"
    text = MimeTree(remote, "BODYSTRUCTURE").text()
    assert "=?utf-8?" in text and "你好，Bob: 报告" in text  # raw and decoded side by side
    assert "├─ 1 multipart/alternative" in text and "└─ 2 application/pdf" in text
    assert "<table class='ml-cards'>" in MimeTree(remote)._repr_html_()


# -- magics through a real InteractiveShell ----------------------------------------------------------

@pytest.fixture
def ip(tmp_path):
    shell = InteractiveShell.instance()
    shell.run_line_magic("load_ext", "maillab")
    shell.run_line_magic("mail", f"start --ports auto --dir {tmp_path / 'lab'} --domain alpha.test")
    try:
        yield shell
    finally:
        shell.run_line_magic("mail", "stop")


def test_imap_line_magics(ip):
    lab = state.existing_lab()
    lab.store.deliver(BOB, chinese_multipart())
    lab.store.deliver(BOB, plain("second"))
    listing = ip.run_line_magic("imap", "bob --list")
    assert isinstance(listing, ResultTable)
    rows = {r["mailbox"]: r for r in listing.rows}
    assert rows["INBOX"]["messages"] == 2 and "\\Sent" in rows["Sent"]["attributes"]
    view = ip.run_line_magic("imap", "bob --envelopes")
    assert isinstance(view, MailboxView) and len(view.rows) == 2
    found = ip.run_line_magic("imap", "bob --search SUBJECT 你好")
    assert [r["uid"] for r in found.rows] == [1]
    peek = ip.run_line_magic("imap", "bob --fetch 2 --peek")
    assert isinstance(peek, FetchedMessage) and "\\Seen" not in peek.flags_after
    read = ip.run_line_magic("imap", "bob --fetch 2")
    assert "\\Seen" in read.flags_after and "second" in repr(read)
    flagged = ip.run_line_magic("imap", "bob --flag 1 \\\\Flagged")
    assert "\\Flagged" in flagged.rows[0]["flags"]
    with pytest.raises(UsageError):
        ip.run_line_magic("imap", "bob --fetch 99")
    with pytest.raises(UsageError):
        ip.run_line_magic("imap", "nobody --list")
    # every session above was recorded, with the password masked
    evs = lab.events.events(protocol="imap")
    assert not any(lab.users.password(BOB) in e.text for e in evs)


def test_imap_raw_cell_tags_literals_starttls_idle(ip):
    lab = state.existing_lab()
    msg = "Subject: raw\r\n\r\nhi\r\n"
    cell = "\n".join([
        "CAPABILITY",
        "STARTTLS",
        f"LOGIN {BOB} {lab.users.password(BOB)}",
        "SELECT INBOX",
        f"APPEND INBOX {{{len(msg.encode())}}}",
        *msg.rstrip("\r\n").split("\r\n"),
        "FETCH 1 (FLAGS BODY.PEEK[])",
        "IDLE",
        "DONE",
        "BOGUS",
        "LOGOUT",
    ])
    result = ip.run_cell_magic("imap", "", cell)
    assert isinstance(result, RawResult) and not result.problems, result.problems
    evs = result._events()
    sent = [e.text for e in evs if e.kind == "C" and not e.data.get("payload")]
    assert sent[:4] == ["a1 CAPABILITY", "a2 STARTTLS", f"a3 LOGIN {BOB} {MASK}", "a4 SELECT INBOX"]
    assert sent[sent.index("a7 IDLE") + 1] == "DONE" and "a8 BOGUS" in sent
    got = [e.text for e in evs if e.kind == "S"]
    assert any(t.startswith("a5 OK") for t in got)  # APPEND after "+"
    assert any(t.startswith("* 1 FETCH") for t in got) and any(t.startswith("a6 OK") for t in got)
    assert any(t.startswith("a7 OK") for t in got)  # IDLE ended by DONE
    assert any(t.startswith("a8 BAD") for t in got)  # a bad command; the session goes on
    assert any(t.startswith("a9 OK") for t in got)
    assert [e.kind for e in evs].count("tls") == 1
    assert lab.store.mailbox(BOB).read(1).endswith(b"hi\r\n")


def test_imap_raw_cell_reports_a_wrong_literal_count(ip):
    lab = state.existing_lab()
    cell = f"LOGIN {BOB} {lab.users.password(BOB)}\nAPPEND INBOX {{50}}\nSubject: x\n\nshort\nLOGOUT"
    result = ip.run_cell_magic("imap", "imap", cell)
    assert result.problems and "fix the count" in result.problems[0]


def test_decoded_column_decodes_rfc2231_file_names():
    from maillab.views.mime_tree import header_pairs

    pairs = header_pairs(b"Content-Disposition: attachment; filename*=utf-8''%C3%9Cbersicht%202024.pdf\r\n"
                         b"Content-Type: application/pdf; name*0*=utf-8''%C3%9C; name*1=bersicht.pdf\r\n")
    assert pairs[0][2] == 'attachment; filename="Übersicht 2024.pdf"'
    assert pairs[1][2] == 'application/pdf; name="Übersicht.pdf"'
    assert "%C3%9C" in pairs[0][1]  # the raw column stays as on the wire


def test_decoded_column_of_a_parsed_part_decodes_its_file_name():
    from maillab.views.mime_tree import from_message

    data = (b"MIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary=b\r\n\r\n--b\r\n"
            b"Content-Type: text/plain\r\n\r\nhi\r\n--b\r\nContent-Type: application/pdf\r\n"
            b"Content-Disposition: attachment; filename*=utf-8''%C3%9Cbersicht%202024.pdf\r\n"
            b"Content-Transfer-Encoding: base64\r\n\r\nJVBERg==\r\n--b--\r\n")
    part = from_message(data).children[1]
    decoded = dict((name, dec) for name, _raw, dec in part.headers)
    assert decoded["Content-Disposition"] == 'attachment; filename="Übersicht 2024.pdf"'
