"""The lab's IMAP server over real sockets: RFC 3501 commands and extensions with
imaplib, and the hostile inputs of SECURITY.md's IMAP section with a raw client."""

from __future__ import annotations

import base64
import imaplib
import itertools
import random
import socket
import ssl
import time
from collections.abc import Iterator

import pytest
from conftest import fast_limits
from wire import IMAPWire

from maillab import Lab
from maillab.store import to_crlf

PASSWORD = "pw-secret-42"
_users = itertools.count(1)


@pytest.fixture(scope="module")
def lab(tmp_path_factory) -> Iterator[Lab]:
    lab = Lab(tmp_path_factory.mktemp("imap") / "lab", ports="auto", domains=["alpha.test"],
              services=("imap", "imaps", "smtp"),
              limits=fast_limits(imap_literal=100_000, imap_line=8192, imap_nesting=10,
                                 imap_connections_per_user=4))
    lab.start()
    yield lab
    lab.stop()


@pytest.fixture
def user(lab: Lab) -> str:
    """A fresh user per test, so tests sharing the lab never see each other's mail."""
    address = f"user{next(_users)}@alpha.test"
    lab.add_user(address, PASSWORD)
    return address


def msg(subject: str, body: str = "hello\r\n", sender: str = "ann@beta.test") -> bytes:
    return (f"From: {sender}\r\nTo: bob@alpha.test\r\nSubject: {subject}\r\n"
            f"Date: Mon, 01 Jan 2024 10:00:00 +0000\r\nMessage-ID: <{subject}@beta.test>\r\n\r\n"
            f"{body}").encode()


def client(lab: Lab, user: str | None = None) -> imaplib.IMAP4:
    c = imaplib.IMAP4(*lab.address("imap"), timeout=5)
    if user:
        c.login(user, PASSWORD)
    return c


def raw(lab: Lab, user: str | None = None) -> IMAPWire:
    r = IMAPWire(*lab.address("imap"))
    if user:
        r.login(user, PASSWORD)
    return r


# -- states, capabilities, login ------------------------------------------------------

def test_greeting_capabilities_and_plain_login(lab: Lab, user: str) -> None:
    c = client(lab)
    for cap in ("IMAP4REV1", "STARTTLS", "AUTH=PLAIN", "LITERAL+", "SASL-IR", "IDLE", "ID"):
        assert cap in c.capabilities
    assert "LOGINDISABLED" not in c.capabilities  # lab policy: loopback accepts plaintext
    typ, data = c.login(user, PASSWORD)
    assert typ == "OK" and b"CAPABILITY" in data[0]
    typ, data = c.capability()
    caps = data[0].split()
    for cap in (b"UIDPLUS", b"MOVE", b"NAMESPACE", b"UNSELECT", b"SPECIAL-USE", b"CHILDREN", b"ENABLE"):
        assert cap in caps
    assert b"STARTTLS" not in caps
    assert c.logout()[0] == "BYE"


def test_failed_login_is_no_and_password_never_recorded(lab: Lab, user: str) -> None:
    c = client(lab)
    with pytest.raises(imaplib.IMAP4.error, match="AUTHENTICATIONFAILED"):
        c.login(user, "wrong-password")
    c.login(user, PASSWORD)
    c.logout()
    text = " ".join(e.text for e in lab.events.events(protocol="imap"))
    assert PASSWORD not in text and "wrong-password" not in text
    assert f"LOGIN {user} ****" in text


def test_login_with_literals_is_masked_in_the_transcript(lab: Lab, user: str) -> None:
    r = raw(lab)
    r.send(f"a LOGIN {{{len(user)}}}\r\n".encode())
    assert r.readline().startswith(b"+")
    r.send(user.encode() + f" {{{len(PASSWORD)}+}}\r\n".encode() + PASSWORD.encode() + b"\r\n")
    assert r.until_tagged("a")[-1].startswith(b"a OK")
    r.close()
    text = " ".join(e.text for e in lab.events.events(protocol="imap"))
    assert PASSWORD not in text


def test_authenticate_plain_with_and_without_initial_response(lab: Lab, user: str) -> None:
    token = base64.b64encode(f"\0{user}\0{PASSWORD}".encode()).decode()
    r = raw(lab)
    lines = r.cmd("a1", f"AUTHENTICATE PLAIN {token}")  # RFC 4959 SASL-IR
    assert lines[-1].startswith(b"a1 OK"), lines
    r.close()
    r = raw(lab)
    r.send(b"a2 AUTHENTICATE PLAIN\r\n")
    assert r.readline() == b"+ \r\n"
    r.send(token.encode() + b"\r\n")
    assert r.until_tagged("a2")[-1].startswith(b"a2 OK")
    r.close()
    r = raw(lab)
    r.send(b"a3 AUTHENTICATE PLAIN\r\n")
    r.readline()
    r.send(b"*\r\n")
    assert r.until_tagged("a3")[-1].startswith(b"a3 BAD")  # cancelled (RFC 3501 6.2.2)
    bad = base64.b64encode(f"\0{user}\0nope".encode()).decode()
    assert r.cmd("a4", f"AUTHENTICATE PLAIN {bad}")[-1].startswith(b"a4 NO")
    r.close()
    text = " ".join(e.text for e in lab.events.events(protocol="imap"))
    assert token not in text and bad not in text


def test_wrong_state_is_bad_and_bad_tag_is_untagged_bad(lab: Lab, user: str) -> None:
    r = raw(lab)
    assert r.cmd("a1", "SELECT INBOX")[-1].startswith(b"a1 BAD")  # not authenticated yet
    r.send(b"\r\n")
    assert r.readline().startswith(b"* BAD")
    r.send(b"+bad NOOP\r\n")  # "+" cannot start a tag
    assert r.readline().startswith(b"* BAD")
    assert r.cmd("a2", "FROBNICATE")[-1].startswith(b"a2 BAD")
    r.login(user, PASSWORD)
    assert r.cmd("a3", "FETCH 1 FLAGS")[-1].startswith(b"a3 BAD")  # no mailbox selected
    assert r.cmd("a4", "LOGIN x y")[-1].startswith(b"a4 BAD")  # already authenticated
    assert r.cmd("a5", "SELECT Nonexistent")[-1].startswith(b"a5 NO")  # valid command that failed
    assert r.cmd("a6", "SELECT INBOX")[-1].startswith(b"a6 OK")
    assert r.cmd("a7", "FETCH 5 FLAGS")[-1].startswith(b"a7 BAD")  # no message 5
    assert r.cmd("a8", "FETCH 1:* (FLAGS")[-1].startswith(b"a8 BAD")  # syntax
    assert r.cmd("a9", "NOOP")[-1].startswith(b"a9 OK")  # the session goes on
    r.close()


def test_logindisabled_when_plaintext_passwords_are_off(lab: Lab, user: str) -> None:
    lab.policy.imap_plaintext_auth = False
    try:
        c = client(lab)
        assert "LOGINDISABLED" in c.capabilities and "AUTH=PLAIN" not in c.capabilities
        typ, data = c._simple_command("LOGIN", user, PASSWORD)
        assert typ == "NO" and b"PRIVACYREQUIRED" in data[0]
        c.starttls(lab.ca.client_context())
        assert "AUTH=PLAIN" in c.capabilities and "LOGINDISABLED" not in c.capabilities
        c.login(user, PASSWORD)
        c.logout()
    finally:
        lab.policy.imap_plaintext_auth = True


def test_idle_timeout_ends_the_session(tmp_path) -> None:
    with Lab(tmp_path / "lab", ports="auto", domains=["alpha.test"], services=("imap",),
             limits=fast_limits(imap_idle_timeout=0.5)) as lab:
        r = IMAPWire(*lab.address("imap"))
        r.sock.settimeout(5)
        assert r.readline().startswith(b"* BYE")
        assert r.closed()


def test_connections_per_user_are_capped(lab: Lab, user: str) -> None:
    clients = [client(lab, user) for _ in range(lab.limits.imap_connections_per_user)]
    extra = client(lab)
    with pytest.raises(imaplib.IMAP4.error, match="LIMIT"):
        extra.login(user, PASSWORD)
    clients.pop().logout()
    time.sleep(0.2)
    extra.login(user, PASSWORD)  # a slot was released
    for c in [*clients, extra]:
        c.logout()


# -- TLS ----------------------------------------------------------------------------------

def test_starttls_and_imaps_with_the_lab_ca(lab: Lab, user: str) -> None:
    ctx = lab.ca.client_context()
    c = client(lab)
    c.starttls(ctx)
    assert "STARTTLS" not in c.capabilities  # re-read after TLS (RFC 3501 6.2.1)
    c.login(user, PASSWORD)
    assert c.select("INBOX")[0] == "OK"
    with pytest.raises(imaplib.IMAP4.error):
        c._simple_command("STARTTLS")  # no second STARTTLS
    c.logout()
    s = imaplib.IMAP4_SSL(*lab.address("imaps"), ssl_context=ctx, timeout=5)
    assert "STARTTLS" not in s.capabilities
    s.login(user, PASSWORD)
    s.logout()
    tls = [e for e in lab.events.events(protocol="imap", kinds=("tls",))]
    assert tls and all(e.data["version"] in ("TLSv1.2", "TLSv1.3") for e in tls)


def test_starttls_injection_is_discarded(lab: Lab) -> None:
    r = raw(lab)
    r.send(b"a STARTTLS\r\nb NOOP\r\n")  # one write: b arrives in plaintext
    assert r.readline().startswith(b"a OK")
    ctx = lab.ca.client_context()
    r.sock = ctx.wrap_socket(r.sock, server_hostname="mail.alpha.test")
    r.buf = b""
    r.send(b"c NOOP\r\n")
    lines = r.until_tagged("c")
    assert not any(ln.startswith(b"b ") for ln in lines), lines
    r.close()
    notes = [e.text for e in lab.events.events(protocol="imap", kinds=("note",))]
    assert any("discarded" in n and "before TLS" in n for n in notes)


@pytest.mark.filterwarnings("ignore::DeprecationWarning")
def test_garbage_instead_of_clienthello_leaves_the_server_serving(lab: Lab, user: str) -> None:
    s = socket.create_connection(lab.address("imaps"), timeout=5)
    s.sendall(b"a LOGIN x y\r\n" * 10)
    s.settimeout(5)
    try:
        s.recv(100)
    except (TimeoutError, ConnectionError):
        pass
    s.close()
    old = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    old.check_hostname = False
    old.verify_mode = ssl.CERT_NONE
    old.maximum_version = ssl.TLSVersion.TLSv1_1
    old.minimum_version = ssl.TLSVersion.TLSv1
    with pytest.raises((ssl.SSLError, ConnectionError)):
        imaplib.IMAP4_SSL(*lab.address("imaps"), ssl_context=old, timeout=5)
    c = imaplib.IMAP4_SSL(*lab.address("imaps"), ssl_context=lab.ca.client_context(), timeout=5)
    c.login(user, PASSWORD)
    c.logout()


# -- mailboxes ------------------------------------------------------------------------------

def test_list_special_use_children_and_modified_utf7(lab: Lab, user: str) -> None:
    r = raw(lab, user)
    assert r.cmd("a", "CREATE \"Projekte/Grüße\"".encode())[-1].startswith(b"a NO")  # 8-bit: not mUTF-7
    r.close()
    c = client(lab, user)
    assert c.create("Projekte/Gr&APwA3w-e")[0] == "OK"
    typ, data = c.list('""', "*")
    listing = b"\n".join(data)
    assert b'(\\HasNoChildren \\Sent) "/" Sent' in listing
    assert b'(\\HasNoChildren \\Trash) "/" Trash' in listing
    assert b'(\\HasNoChildren \\Drafts) "/" Drafts' in listing
    assert b'(\\HasNoChildren \\Junk) "/" Junk' in listing
    assert b'"/" Projekte/Gr&APwA3w-e' in listing
    typ, data = c.list('""', "%")
    assert b'(\\Noselect \\HasChildren) "/" Projekte' in b"\n".join(data)
    assert c.list('""', "inbox")[1] == [b'(\\HasNoChildren) "/" INBOX']  # INBOX is case-insensitive
    assert c.select("inbox")[0] == "OK"
    assert c.list('""', '""')[1] == [b'(\\Noselect) "/" ""']
    assert lab.store.exists(user, "Projekte/Grüße")
    c.logout()


@pytest.mark.parametrize("name", ["..", "../x", "/etc", "~root", "a/../../b", "&AC8-etc",
                                  "&AC4ALg-", "a/&AC4ALg-/b", '"x\\"', "x" * 600, "a//b"])
def test_mailbox_names_that_leave_the_store_are_refused(lab: Lab, user: str, name: str) -> None:
    r = raw(lab, user)
    quoted = '"' + name.replace("\\", "\\\\").replace('"', '\\"') + '"'
    for i, verb in enumerate(("CREATE", "SELECT", "DELETE", "STATUS", "APPEND")):
        args = f"{quoted} (MESSAGES)" if verb == "STATUS" else quoted
        if verb == "APPEND":
            args += " {5+}\r\nhello"
        lines = r.cmd(f"t{i}", f"{verb} {args}")
        assert lines[-1].startswith(f"t{i} NO".encode()), (verb, lines)
    r.send(b"n CREATE {3}\r\n")
    assert r.readline().startswith(b"+")
    r.send(b"a\x00b\r\n")
    assert r.until_tagged("n")[-1].startswith(b"n NO")  # NUL inside a literal name
    r.close()
    root = lab.store.user_root(user)
    assert not (root.parent / "x").exists() and not (root.parent / "etc").exists()


def test_uidvalidity_changes_on_delete_recreate_and_rename(lab: Lab, user: str) -> None:
    c = client(lab, user)
    c.create("Box")
    c.append("Box", None, None, msg("one"))
    uv1 = int(c.status("Box", "(UIDVALIDITY)")[1][0].split()[-1].strip(b")"))
    c.delete("Box")
    c.create("Box")
    typ, data = c.status("Box", "(UIDVALIDITY UIDNEXT MESSAGES)")
    assert typ == "OK"
    fields = data[0].decode().split("(")[1].strip(")").split()
    values = dict(zip(fields[::2], map(int, fields[1::2]), strict=True))
    assert values["UIDVALIDITY"] != uv1 and values["MESSAGES"] == 0
    c.append("Box", None, None, msg("two"))
    c.rename("Box", "Moved")
    typ, data = c.status("Moved", "(UIDVALIDITY MESSAGES)")
    uv3 = int(data[0].split(b"UIDVALIDITY ")[1].split()[0].strip(b")"))
    assert uv3 not in (uv1, values["UIDVALIDITY"])
    assert c.select("Box")[0] == "NO"
    c.logout()


def test_rename_inbox_moves_its_messages_and_leaves_it_empty(lab: Lab, user: str) -> None:
    """RFC 3501 6.3.5: renaming INBOX moves its messages to a new mailbox of the new
    name; INBOX stays (empty, same UIDVALIDITY, UIDs not reused), its children stay."""
    c = client(lab, user)
    c.create("INBOX/Child")
    for subject in ("one", "two"):
        c.append("INBOX", "(\\Flagged $Work)", None, msg(subject))
    typ, data = c.select("INBOX")
    uv = c.response("UIDVALIDITY")[1][0]
    typ, data = c.rename("INBOX", "Old")
    assert typ == "OK", data
    c.noop()
    assert len(c.response("EXPUNGE")[1]) == 2  # INBOX stays selected, now empty
    typ, data = c.status("INBOX", "(MESSAGES UIDVALIDITY UIDNEXT)")
    assert b"MESSAGES 0" in data[0] and b"UIDVALIDITY " + uv in data[0] and b"UIDNEXT 3" in data[0]
    c.select("Old")
    typ, data = c.fetch("1:*", "(FLAGS BODY.PEEK[HEADER.FIELDS (SUBJECT)])")
    text = b" ".join(part[0] + part[1] if isinstance(part, tuple) else part for part in data)
    assert b"Subject: one" in text and b"Subject: two" in text and text.count(b"$Work") == 2
    assert [n for n in (b"INBOX/Child", b"Old") if any(n in x for x in c.list()[1])] == [b"INBOX/Child", b"Old"]
    assert c.rename("INBOX", "Old")[0] == "NO"  # Old exists now
    c.logout()


def test_uids_strictly_ascending_and_never_reused(lab: Lab, user: str) -> None:
    c = client(lab, user)
    c.select("INBOX")
    uids = []
    for i in range(3):
        typ, data = c.append("INBOX", None, None, msg(f"m{i}"))
        uids.append(int(data[0].split(b"APPENDUID ")[1].split()[1].rstrip(b"]")))
    c.store("3", "+FLAGS", "(\\Deleted)")
    c.expunge()
    typ, data = c.append("INBOX", None, None, msg("after"))
    uids.append(int(data[0].split(b"APPENDUID ")[1].split()[1].rstrip(b"]")))
    assert uids == sorted(set(uids)) and uids[-1] > uids[-2]
    assert c.uid("SEARCH", None, "ALL")[1][0].split() == [str(u).encode() for u in (uids[0], uids[1], uids[3])]
    c.logout()


# -- messages -------------------------------------------------------------------------------

def test_overlapping_sequence_sets_name_each_message_once_in_order(lab: Lab, user: str) -> None:
    for i in range(6):
        lab.store.deliver(user, msg(f"seq {i}"))
    r = raw(lab, user)
    r.cmd("s", "SELECT INBOX")
    lines = r.cmd("f", "FETCH 5:*,3:1,2,4,1:2 (UID)")
    assert lines[:-1] == [b"* %d FETCH (UID %d)\r\n" % (n, n) for n in range(1, 7)]
    lines = r.cmd("u", "UID FETCH 6,2:3,9:5,100:200 (FLAGS)")  # UIDs: gaps and ranges past the end
    assert [ln.split()[1] for ln in lines[:-1]] == [b"2", b"3", b"5", b"6"]
    assert r.cmd("b", "FETCH 1,7 (UID)")[-1].startswith(b"b BAD")  # 7 > EXISTS
    r.close()


def test_bodies_reach_a_slow_reader_whole_and_in_order(lab: Lab, user: str) -> None:
    """FETCH data leaves in gathered writes (writev) while the socket takes it and
    through the transport's buffer when it does not: a reader that lets the socket
    fill up still gets every byte in order."""
    rng = random.Random(7)
    sent = []
    for i in range(24):  # ~6 MB: more than the socket buffers and the 1 MiB write buffer
        body = "".join(rng.choice("abcdefghij \r\n") for _ in range(2000)).encode() * 120
        data = msg(f"big {i}", body=body.decode())
        lab.store.deliver(user, data)
        sent.append(data)
    r = raw(lab, user)
    r.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 65536)
    r.cmd("s", "SELECT INBOX")
    r.send(b"f UID FETCH 1:* BODY.PEEK[]\r\n")
    time.sleep(0.5)  # let the server fill the socket and queue the rest
    got = []
    while True:
        ln = r.readline()
        if ln.startswith(b"f "):
            break
        head, _, rest = ln.partition(b"}\r\n")
        size = int(head.rsplit(b"{", 1)[1])
        got.append(rest[:size])
        assert rest[size:] == b")\r\n"
    assert ln.startswith(b"f OK")
    stored = [to_crlf(d) for d in sent]
    assert len(got) == len(stored) and got == stored
    r.close()


def test_fetch_body_sets_and_reports_seen_across_batches(lab: Lab, user: str) -> None:
    from maillab.imap.commands.fetch import SEEN_BATCH

    count = SEEN_BATCH + 44
    for i in range(count):
        lab.store.deliver(user, msg(f"unseen {i}"), flags=("\\Seen",) if i % 3 == 0 else ())
    r = raw(lab, user)
    r.cmd("s", "SELECT INBOX")
    lines = r.cmd("f", "FETCH 1:* (BODY[HEADER.FIELDS (SUBJECT)])")
    assert lines[-1].startswith(b"f OK")
    responses = lines[:-1]
    assert len(responses) == count
    for i, ln in enumerate(responses):
        # RFC 3501 6.4.5: the \Seen the FETCH set is reported; an old \Seen is not
        assert (b"FLAGS (\\Recent \\Seen)" in ln) == (i % 3 != 0), ln
    mb = lab.store.mailbox(user, "INBOX")
    assert all("\\Seen" in info.flags for info in mb.messages())
    assert all(info.filename.endswith(":2,S") for info in mb.messages())  # Maildir info too
    r.close()


def test_a_large_fetch_is_recorded_compactly_but_sent_whole(lab: Lab, user: str) -> None:
    from maillab.imap.server import RECORD_RESPONSES

    count = RECORD_RESPONSES + 30
    for i in range(count):
        lab.store.deliver(user, msg(f"bulk {i}"))
    c = client(lab, user)
    c.select("INBOX")
    since = lab.events.last_seq()
    typ, data = c.fetch("1:*", "(UID BODY.PEEK[])")
    assert typ == "OK"
    bodies = [d[1] for d in data if isinstance(d, tuple)]
    assert len(bodies) == count and bodies[-1].startswith(b"From: ann@beta.test")
    sent = [e for e in lab.events.events(protocol="imap", since=since) if e.kind == "S"]
    assert sum(1 for e in sent if e.text.startswith("* ") and " FETCH " in e.text) == RECORD_RESPONSES
    notes = [e for e in lab.events.events(protocol="imap", since=since, kinds=("note",))
             if e.data.get("limit") == "record"]
    assert len(notes) == 1 and notes[0].data["responses"] == 30
    # imaplib shows "* 130 FETCH (UID 130 BODY[] {142}" as "130 (UID 130 BODY[] {142}"
    text = sum(len(b"* FETCH \r\n)\r\n") + len(d[0]) for d in data[-60:] if isinstance(d, tuple))
    assert notes[0].data["bytes"] == text + sum(len(b) for b in bodies[-30:])
    assert any(e.text.endswith("OK FETCH completed") for e in sent)  # the tagged reply is there
    c.logout()


def test_fetch_store_search_copy_move_append(lab: Lab, user: str) -> None:
    for i in range(5):
        lab.store.deliver(user, msg(f"report {i}", body=f"text number {i}\r\n"))
    c = client(lab, user)
    typ, data = c.select("INBOX")
    assert data == [b"5"]
    typ, data = c.fetch("2", "(UID FLAGS RFC822.SIZE ENVELOPE)")
    assert b"UID 2" in data[0] and b"\\Recent" in data[0] and b'"report 1"' in data[0]
    size = int(data[0].split(b"RFC822.SIZE ")[1].split()[0])
    typ, data = c.fetch("2", "(BODY.PEEK[])")
    assert len(data[0][1]) == size
    assert b"\\Seen" not in c.fetch("2", "(FLAGS)")[1][0]  # PEEK sets nothing
    typ, data = c.fetch("2", "(BODY[TEXT])")
    assert data[0][1] == b"text number 1\r\n"
    assert b"\\Seen" in b"".join(x if isinstance(x, bytes) else x[0] for x in data)  # reported
    typ, data = c.fetch("3", "(BODY.PEEK[HEADER.FIELDS (SUBJECT)]<0.12>)")
    assert b"BODY[HEADER.FIELDS (SUBJECT)]<0>" in data[0][0] and data[0][1] == b"Subject: rep"
    assert c.search(None, "SEEN")[1] == [b"2"]
    assert c.search(None, "UNSEEN", "SUBJECT", "report")[1] == [b"1 3 4 5"]
    assert c.search(None, "OR", "2", "BODY", '"number 4"')[1] == [b"2 5"]
    assert c.search(None, "NOT", "(1:3 LARGER 1)")[1] == [b"4 5"]
    assert c.uid("SEARCH", None, "UID", "4:*")[1] == [b"4 5"]
    typ, data = c.store("1:2", "+FLAGS", "(\\Flagged $Important)")
    assert len(data) == 2 and b"$Important" in data[0]
    assert c.search(None, "KEYWORD", "$important")[1] == [b"1 2"]
    typ, data = c.store("1", "+FLAGS.SILENT", "(\\Answered)")
    assert data == [None]
    typ, data = c.copy("1:2", "Trash")
    assert typ == "OK" and b"COPYUID" in data[0]
    typ, data = c._simple_command("UID", "MOVE", "3", "Junk")
    assert typ == "OK"
    assert c.response("EXPUNGE")[1] == [b"3"]
    typ, data = c.select("Junk")
    assert data == [b"1"]
    assert b"report 2" in c.fetch("1", "(BODY.PEEK[HEADER])")[1][0][1]
    typ, data = c.append("Junk", "(\\Seen)", '"01-Feb-2024 10:00:00 +0100"', msg("appended"))
    assert typ == "OK" and b"APPENDUID" in data[0]
    assert c.fetch("2", "(INTERNALDATE)")[1][0].count(b"2024") == 1
    assert c.search(None, "ON", "1-Feb-2024")[1] == [b"2"]
    assert c.append("Nowhere", None, None, msg("x"))[1][0].startswith(b"[TRYCREATE]")
    c.logout()


def test_expunge_and_close_unselect(lab: Lab, user: str) -> None:
    for i in range(4):
        lab.store.deliver(user, msg(f"e{i}"))
    c = client(lab, user)
    c.select("INBOX")
    c.store("1,3", "+FLAGS", "(\\Deleted)")
    typ, data = c.expunge()
    assert data == [b"3", b"1"]  # each number as it stands when it is sent
    c.store("1", "+FLAGS", "(\\Deleted)")
    c._simple_command("UNSELECT")
    c.select("INBOX")
    assert c.search(None, "ALL")[1] == [b"1 2"]
    c.close()  # CLOSE expunges silently
    c.select("INBOX", readonly=True)
    assert c.search(None, "ALL")[1] == [b"1"]
    assert c.store("1", "+FLAGS", "(\\Seen)")[0] == "NO"  # EXAMINE is read-only
    c.logout()


def test_id_namespace_enable(lab: Lab, user: str) -> None:
    r = raw(lab)
    assert b'"name" "maillab"' in r.cmd("a", 'ID ("name" "test")')[0]
    r.login(user, PASSWORD)
    assert r.cmd("b", "NAMESPACE")[0] == b'* NAMESPACE (("" "/")) NIL NIL\r\n'
    assert r.cmd("c", "ENABLE CONDSTORE")[0] == b"* ENABLED\r\n"
    r.close()


# -- hostile input (SECURITY.md, IMAP) --------------------------------------------------------

def test_synchronizing_literal_over_limit_refused_before_reading(lab: Lab, user: str) -> None:
    r = raw(lab, user)
    r.send(b"a APPEND INBOX {100001}\r\n")
    line = r.readline()
    assert line.startswith(b"a NO [TOOBIG]"), line  # and no "+" before it
    # The client never got "+", so it sends no bytes: the next line is a command.
    assert r.cmd("b", "NOOP")[-1].startswith(b"b OK")
    r.send(b"c APPEND INBOX {5}\r\n")
    assert r.readline().startswith(b"+")
    r.send(b"hello\r\n")
    assert r.until_tagged("c")[-1].startswith(b"c OK [APPENDUID")
    r.close()


def test_non_synchronizing_literal_over_limit_closes(lab: Lab, user: str) -> None:
    r = raw(lab, user)
    r.send(b"a APPEND INBOX {100001+}\r\n" + b"b DELETE Sent\r\n" * 10)
    lines = r.until_tagged("a")
    assert lines[-1].startswith(b"a BAD"), lines
    assert r.closed()
    assert lab.store.exists(user, "Sent")  # the bytes were never executed


def test_overlong_line_and_deep_nesting_keep_the_session(lab: Lab, user: str) -> None:
    r = raw(lab, user)
    r.send(b"a NOOP " + b"x" * 20000 + b"\r\n")
    assert r.readline().startswith(b"* BAD [TOOBIG]")
    assert r.cmd("b", "SELECT INBOX")[-1].startswith(b"b OK")
    lines = r.cmd("c", "SEARCH " + "(" * 50 + "ALL" + ")" * 50)
    assert lines[-1].startswith(b"c BAD"), lines
    assert r.cmd("d", "SEARCH " + "NOT " * 50 + "ALL")[-1].startswith(b"d BAD")
    assert r.cmd("e", "SEARCH " + "(" * 5 + "ALL" + ")" * 5)[-1].startswith(b"e OK")
    r.close()


def test_list_with_many_wildcards_stays_linear(lab: Lab, user: str) -> None:
    r = raw(lab, user)
    start = time.monotonic()
    lines = r.cmd("a", 'LIST "" "' + "*%" * 3000 + 'x"')
    assert lines[-1].startswith(b"a OK") and len(lines) == 1
    lines = r.cmd("b", 'LIST "" "' + "*a" * 2000 + '"')
    assert lines[-1].startswith(b"b OK")
    assert time.monotonic() - start < 5  # a backtracking matcher takes minutes here
    r.close()


def test_expunge_not_sent_during_fetch_store_search(lab: Lab, user: str) -> None:
    for i in range(3):
        lab.store.deliver(user, msg(f"x{i}"))
    a, b = raw(lab, user), raw(lab, user)
    a.cmd("s", "SELECT INBOX")
    b.cmd("s", "SELECT INBOX")
    b.cmd("d", "STORE 1 +FLAGS (\\Deleted)")
    b.cmd("e", "EXPUNGE")
    for tag, command in (("f", "FETCH 1:* (FLAGS)"), ("g", "STORE 2 +FLAGS (\\Seen)"),
                         ("h", "SEARCH ALL")):
        lines = a.cmd(tag, command)
        assert not any(ln.endswith(b" EXPUNGE\r\n") for ln in lines), lines
    lines = a.cmd("f2", "FETCH 1 (UID)")  # message 1 is a ghost here: its UID is still known
    assert lines == [b"* 1 FETCH (UID 1)\r\n", b"f2 OK FETCH completed\r\n"], lines
    lines = a.cmd("f3", "FETCH 1 BODY.PEEK[]")  # its bytes are not
    assert lines == [b"f3 NO [EXPUNGEISSUED] some of the requested messages no longer exist\r\n"]
    lines = a.cmd("n", "NOOP")
    assert lines[0] == b"* 1 EXPUNGE\r\n"
    assert a.cmd("k", "FETCH 1:* (UID)")[:2] == [b"* 1 FETCH (UID 2)\r\n", b"* 2 FETCH (UID 3)\r\n"]
    a.close()
    b.close()


def test_two_clients_see_flags_recent_once_and_agree(lab: Lab, user: str) -> None:
    lab.store.deliver(user, msg("first"))
    a, b = raw(lab, user), raw(lab, user)
    la = a.cmd("s", "SELECT INBOX")
    lb = b.cmd("s", "SELECT INBOX")
    assert b"* 1 RECENT\r\n" in la and b"* 0 RECENT\r\n" in lb  # \Recent in exactly one session
    lines = b.cmd("f", "STORE 1 +FLAGS (\\Flagged)")
    assert lines[0] == b"* 1 FETCH (FLAGS (\\Flagged))\r\n"
    lines = a.cmd("n", "NOOP")
    assert b"* 1 FETCH (UID 1 FLAGS (\\Flagged \\Recent))\r\n" in lines
    lab.store.deliver(user, msg("second"))
    la, lb = a.cmd("n", "NOOP"), b.cmd("n", "NOOP")
    assert b"* 2 EXISTS\r\n" in la and b"* 2 EXISTS\r\n" in lb
    assert (b"* 1 RECENT\r\n" in la + lb) or (b"* 2 RECENT\r\n" in la + lb)
    recent_a = a.cmd("r", "SEARCH RECENT")[0]
    recent_b = b.cmd("r", "SEARCH RECENT")[0]
    # message 2 is recent in exactly one of the two sessions
    assert [b" 2" in recent_a, b" 2" in recent_b].count(True) == 1
    assert a.cmd("u", "FETCH 1:* (UID)")[:2] == b.cmd("u", "FETCH 1:* (UID)")[:2]
    a.close()
    b.close()


def test_idle_sees_smtp_delivery_within_a_second(lab: Lab, user: str) -> None:
    import smtplib

    r = raw(lab, user)
    r.cmd("s", "SELECT INBOX")
    r.send(b"i IDLE\r\n")
    assert r.readline().startswith(b"+")
    start = time.monotonic()
    with smtplib.SMTP(*lab.address("smtp"), timeout=5) as s:
        s.sendmail("ann@beta.test", [user], msg("idle test"))
    r.sock.settimeout(3)
    line = r.readline()
    assert line == b"* 1 EXISTS\r\n", line
    assert time.monotonic() - start < 1.5
    assert r.readline() == b"* 1 RECENT\r\n"
    r.send(b"DONE\r\n")
    assert r.until_tagged("i")[-1].startswith(b"i OK")
    # a store delivery (no SMTP) wakes IDLE too, and so does another session's flag change
    r.send(b"j IDLE\r\n")
    r.readline()
    lab.store.deliver(user, msg("second"))
    assert r.readline() == b"* 2 EXISTS\r\n"
    other = raw(lab, user)
    other.cmd("s", "SELECT INBOX")
    other.cmd("f", "STORE 1 +FLAGS (\\Seen)")
    assert r.readline() == b"* 2 RECENT\r\n"
    assert r.readline().startswith(b"* 1 FETCH (UID 1 FLAGS (\\Recent \\Seen))")
    r.send(b"DONE\r\n")
    r.until_tagged("j")
    other.close()
    r.close()
