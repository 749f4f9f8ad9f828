"""The SMTP section of SECURITY.md, line by line, over real sockets.

A small byte-level client (``Wire``) sends exactly the bytes each attack needs
(bare LF, pipelined writes, over-long lines), which smtplib would never send.
"""

from __future__ import annotations

import asyncio
import select
import socket
import ssl
import time
import warnings

import pytest
from conftest import fast_limits
from wire import SMTPWire as Wire

from maillab import Lab


def mx(lab: Lab, **kw) -> Wire:
    w = Wire(lab.address("smtp"), **kw)
    assert w.reply()[0] == 220
    return w


def ehlo(w: Wire) -> None:
    code, text = w.cmd("EHLO student.test")
    assert code == 250, text


def inbox(lab: Lab, user: str = "bob@alpha.test") -> list[bytes]:
    mb = lab.store.mailbox(user)
    mb.sync()
    return [mb.read(m.uid) for m in mb.messages()]


def authed_submission(lab: Lab, user: str = "alice@alpha.test", pw: str = "alice-pw") -> Wire:
    import base64
    w = Wire(lab.address("submission"))
    assert w.reply()[0] == 220
    ehlo(w)
    w.starttls(lab.ca.client_context())
    ehlo(w)
    token = base64.b64encode(f"\0{user}\0{pw}".encode()).decode()
    assert w.cmd(f"AUTH PLAIN {token}")[0] == 235
    return w


@pytest.fixture
def small_lab(tmp_path):
    """alpha.test with small limits, so limit tests send little."""
    lab = Lab(tmp_path / "lab", ports="auto", domains=["alpha.test"], services=("smtp", "submission", "smtps"),
              limits=fast_limits(smtp_message_size=20_000, smtp_bad_commands=5, smtp_timeout=0.6))
    lab.start()
    yield lab
    lab.stop()


@pytest.fixture
def mx_lab(tmp_path):
    lab = Lab(tmp_path / "lab", ports="auto", domains=["alpha.test"], services=("smtp", "submission", "smtps"),
              limits=fast_limits())
    lab.start()
    yield lab
    lab.stop()


# -- end of DATA and smuggling ---------------------------------------------------------

SMUGGLE_ENDINGS = [b"\n.\n", b"\n.\r\n", b"\r.\r", b"\r.\n", b"\r\n.\n", b"\r.\r\n"]


@pytest.mark.parametrize("ending", SMUGGLE_ENDINGS, ids=repr)
def test_only_crlf_dot_crlf_ends_data_never_two_messages(mx_lab, ending):
    w = mx(mx_lab)
    ehlo(w)
    w.send("MAIL FROM:<a@ext.test>\r\nRCPT TO:<bob@alpha.test>\r\nDATA\r\n")
    assert [w.reply()[0] for _ in range(3)] == [250, 250, 354]
    w.send(b"Subject: first\r\n\r\nfirst" + ending
           + b"MAIL FROM:<evil@ext.test>\r\nRCPT TO:<bob@alpha.test>\r\nDATA\r\n"
           + b"Subject: smuggled\r\n\r\nsmuggled\r\n.\r\n")
    code, text = w.reply()
    assert (code, text.split()[0]) == (554, "5.5.2")
    assert "bare" in text
    # The smuggled commands were message text: the next reply answers our NOOP.
    assert w.cmd("NOOP")[0] == 250
    assert w.cmd("QUIT")[0] == 221
    assert inbox(mx_lab) == []


def test_clean_message_after_refused_one_is_stored_once(mx_lab):
    w = mx(mx_lab)
    ehlo(w)
    for body, want in [(b"a\nb\r\n.\r\n", 554), (b"Subject: ok\r\n\r\nfine\r\n.\r\n", 250)]:
        w.send("MAIL FROM:<a@ext.test>\r\nRCPT TO:<bob@alpha.test>\r\nDATA\r\n")
        assert [w.reply()[0] for _ in range(3)] == [250, 250, 354]
        w.send(body)
        assert w.reply()[0] == want
    stored = inbox(mx_lab)
    assert len(stored) == 1 and stored[0].endswith(b"Subject: ok\r\n\r\nfine\r\n")


def test_empty_message_and_leading_dot_lines(mx_lab):
    w = mx(mx_lab)
    ehlo(w)
    for body in [b".\r\n", b"..x\r\n...\r\n.\r\n"]:
        w.send("MAIL FROM:<>\r\nRCPT TO:<bob@alpha.test>\r\nDATA\r\n")
        assert [w.reply()[0] for _ in range(3)] == [250, 250, 354]
        w.send(body)
        assert w.reply()[0] == 250
    first, second = inbox(mx_lab)
    assert first.split(b"\r\n", 4)[-1] == b""  # only the Received header
    assert second.endswith(b"\r\n.x\r\n..\r\n")


def test_commands_ending_in_bare_lf_are_refused_and_session_goes_on(mx_lab):
    w = mx(mx_lab)
    ehlo(w)
    w.send(b"MAIL FROM:<a@ext.test>\n")
    code, text = w.reply()
    assert code == 500 and text.startswith("5.5.2") and "bare <LF>" in text
    w.send(b"NOOP\rMAIL FROM:<a@ext.test>\r\n")
    code, text = w.reply()
    assert code == 500 and "bare <CR>" in text
    assert w.cmd("MAIL FROM:<a@ext.test>")[0] == 250  # nothing was half-done


def test_relay_gets_only_clean_messages(mx_lab):
    """Bytes with stray CR/LF never reach the relay (it only sees accepted messages)."""
    got = []

    class Queue:
        def submit(self, mail_from, rcpts, data, *, origin, session):
            got.append((mail_from, rcpts, data, origin.name, session))
            return "Q1"

    mx_lab.relay = Queue()
    w = authed_submission(mx_lab)
    for body, want in [(b"x\n.\nDATA\r\n.\r\n", 554), (b"Subject: r\r\n\r\n..hi\r\n.\r\n", 250)]:
        w.send("MAIL FROM:<alice@alpha.test>\r\nRCPT TO:<carol@beta.test>\r\nDATA\r\n")
        assert [w.reply()[0] for _ in range(3)] == [250, 250, 354]
        w.send(body)
        assert w.reply()[0] == want
    assert len(got) == 1
    mail_from, rcpts, data, origin, session = got[0]
    assert (mail_from, rcpts, origin) == ("alice@alpha.test", ["carol@beta.test"], "mail.alpha.test")
    assert session.startswith("smtp-")
    assert data.startswith(b"Received: ") and data.endswith(b"Subject: r\r\n\r\n.hi\r\n")
    assert data.count(b"\n") == data.count(b"\r\n")


# -- limits ------------------------------------------------------------------------------

def test_command_line_limit(mx_lab):
    w = mx(mx_lab)
    ehlo(w)
    ok = "NOOP " + "x" * (512 - 7)  # 512 octets with CRLF
    assert w.cmd(ok)[0] == 250
    code, text = w.cmd(ok + "x")
    assert code == 500 and text.startswith("5.5.2") and "too long" in text
    # a megabyte without a line end: read and thrown away, the session goes on
    w.send(b"NOOP " + b"y" * 1_000_000 + b"\r\n")
    assert w.reply()[0] == 500
    assert w.cmd("NOOP")[0] == 250


def test_text_line_limit_refused_after_end_of_data(mx_lab):
    w = mx(mx_lab)
    ehlo(w)
    for line_len, want in [(998, 250), (999, 500)]:
        w.send("MAIL FROM:<a@ext.test>\r\nRCPT TO:<bob@alpha.test>\r\nDATA\r\n")
        assert [w.reply()[0] for _ in range(3)] == [250, 250, 354]
        # a stuffed line: ".." + text is "." + text, line_len octets, once un-stuffed
        w.send(b"Subject: long\r\n\r\n.." + b"z" * (line_len - 1) + b"\r\nNOOP\r\n.\r\n")
        code, text = w.reply()
        assert code == want, text
    assert w.cmd("NOOP")[0] == 250
    assert len(inbox(mx_lab)) == 1


@pytest.mark.parametrize("address, what", [
    ("<" + "l" * 65 + "@alpha.test>", "Local part too long"),
    ("<bob@" + ("d" * 60 + ".") * 4 + "dddddddddddd>", "Domain too long"),
    ("<@" + "r" * 150 + ".test,@" + "s" * 150 + ".test:" + "bob@alpha.test>", "Path too long"),
])
def test_address_limits_501(mx_lab, address, what):
    w = mx(mx_lab)
    ehlo(w)
    assert w.cmd("MAIL FROM:<a@ext.test>")[0] == 250
    code, text = w.cmd(f"RCPT TO:{address}")
    assert code == 501 and what in text
    assert w.cmd("RCPT TO:<bob@alpha.test>")[0] == 250


def test_size_parameter_and_oversized_body(small_lab):
    w = mx(small_lab)
    code, text = w.cmd("EHLO student.test")
    assert "SIZE 20000" in text
    code, text = w.cmd("MAIL FROM:<a@ext.test> SIZE=20001")
    assert (code, text[:5]) == (552, "5.3.4")
    assert w.cmd("MAIL FROM:<a@ext.test> SIZE=19000")[0] == 250
    assert w.cmd("RCPT TO:<bob@alpha.test>")[0] == 250
    assert w.cmd("DATA")[0] == 354
    # over the limit, and carrying commands inside: nothing of it is executed
    w.send(b"Subject: big\r\n\r\n" + b"0123456789" * 3000 + b"\r\nRSET\r\nQUIT\r\n.\r\n")
    code, text = w.reply()
    assert (code, text[:5]) == (552, "5.3.4")
    assert w.cmd("NOOP")[0] == 250
    assert inbox(small_lab) == []
    # exactly at the limit is fine, one octet more is not; transparency dots do not
    # count (RFC 1870), though a text of dot lines is a quarter longer on the wire
    for size, want, fill in [(20_000, 250, b"x"), (20_001, 552, b"x"), (20_000, 250, b"."), (20_001, 552, b".")]:
        filler = size - 17
        body = (b"Subject: fits\r\n\r\n" + (fill * 98 + b"\r\n") * (filler // 100)
                + fill * (filler % 100 - 2) + b"\r\n")
        assert len(body) == size
        w.send("MAIL FROM:<a@ext.test>\r\nRCPT TO:<bob@alpha.test>\r\nDATA\r\n")
        assert [w.reply()[0] for _ in range(3)] == [250, 250, 354]
        w.send(body.replace(b"\r\n.", b"\r\n..") + b".\r\n")
        assert w.reply()[0] == want, (size, fill)
    assert len(inbox(small_lab)) == 2


def test_recipient_cap(mx_lab):
    w = mx(mx_lab)
    ehlo(w)
    assert w.cmd("MAIL FROM:<a@ext.test>")[0] == 250
    w.send("RCPT TO:<bob@alpha.test>\r\n" * 100 + "RCPT TO:<alice@alpha.test>\r\n")
    codes = [w.reply()[0] for _ in range(101)]
    assert codes[:100] == [250] * 100
    assert codes[100] == 452
    assert w.cmd("DATA")[0] == 354
    w.send(b"Subject: many\r\n\r\nhi\r\n.\r\n")
    assert w.reply()[0] == 250
    assert len(inbox(mx_lab)) == 1 and inbox(mx_lab, "alice@alpha.test") == []


def test_command_order(mx_lab):
    w = mx(mx_lab)
    assert w.cmd("MAIL FROM:<a@ext.test>")[0] == 503  # before EHLO
    ehlo(w)
    assert w.cmd("RCPT TO:<bob@alpha.test>")[:1] == (503,)
    assert w.cmd("DATA")[0] == 503
    assert w.cmd("MAIL FROM:<a@ext.test>")[0] == 250
    assert w.cmd("MAIL FROM:<a@ext.test>")[0] == 503  # nested
    assert w.cmd("DATA")[0] == 503  # no RCPT yet
    ehlo(w)  # RFC 5321 4.1.4: EHLO mid-transaction resets it
    code, text = w.cmd("RCPT TO:<bob@alpha.test>")
    assert (code, text) == (503, "5.5.1 Error: need MAIL command")
    assert w.cmd("MAIL FROM:<a@ext.test>")[0] == 250
    assert w.cmd("RCPT TO:<nobody@alpha.test>")[0] == 550
    code, text = w.cmd("DATA")
    assert (code, text[:5]) == (554, "5.5.1")


def test_disconnect_during_data_delivers_nothing(mx_lab):
    w = mx(mx_lab)
    ehlo(w)
    w.send("MAIL FROM:<a@ext.test>\r\nRCPT TO:<bob@alpha.test>\r\nDATA\r\n")
    assert [w.reply()[0] for _ in range(3)] == [250, 250, 354]
    w.send(b"Subject: cut\r\n\r\nhalf a message\r\n.")
    w.close()
    deadline = time.time() + 3
    while time.time() < deadline and mx_lab.service("smtp").active:
        time.sleep(0.02)
    assert mx_lab.service("smtp").active == 0
    assert inbox(mx_lab) == []
    assert not any((mx_lab.store.mailbox("bob@alpha.test").path / "tmp").iterdir())


# -- relaying ----------------------------------------------------------------------------

RELAY_TRICKS = ["<u@ext.test>", "<u%ext.test@alpha.test>", "<ext.test!u@alpha.test>",
                "<@alpha.test:u@ext.test>", '<"u@ext.test"@alpha.test>', "<u@[127.0.0.1]>",
                "<bob@[127.0.0.1]>"]


@pytest.mark.parametrize("source", ["127.0.0.1", "127.0.0.77"])
def test_no_open_relay(mx_lab, source):
    w = mx(mx_lab, source=source)
    ehlo(w)
    assert w.cmd("MAIL FROM:<bob@alpha.test>")[0] == 250
    for rcpt in RELAY_TRICKS:
        code, text = w.cmd(f"RCPT TO:{rcpt}")
        assert (code, text[:5]) == (550, "5.7.1"), (rcpt, text)
        assert "Relay access denied" in text
    code, text = w.cmd("DATA")
    assert code == 554


def test_source_route_to_a_local_user_is_ignored_not_obeyed(mx_lab):
    w = mx(mx_lab)
    ehlo(w)
    assert w.cmd("MAIL FROM:<a@ext.test>")[0] == 250
    assert w.cmd("RCPT TO:<@ext.test:bob@alpha.test>")[0] == 250
    assert w.cmd('RCPT TO:<"alice"@alpha.test>')[0] == 250


def test_authenticated_relay_without_a_relay_queue(mx_lab):
    mx_lab.relay = None  # a lab without maillab.relay
    w = authed_submission(mx_lab)
    assert w.cmd("MAIL FROM:<alice@alpha.test>")[0] == 250
    code, text = w.cmd("RCPT TO:<carol@beta.test>")
    assert (code, text[:5]) == (550, "5.7.1") and "no relay" in text


def test_relay_failure_is_a_temporary_error_and_nothing_is_delivered(mx_lab):
    class Broken:
        def submit(self, *a, **kw):
            raise OSError("queue disk full")

    mx_lab.relay = Broken()
    w = authed_submission(mx_lab)
    w.send("MAIL FROM:<alice@alpha.test>\r\nRCPT TO:<carol@beta.test>\r\nRCPT TO:<bob@alpha.test>\r\nDATA\r\n")
    assert [w.reply()[0] for _ in range(4)] == [250, 250, 250, 354]
    w.send(b"Subject: x\r\n\r\nx\r\n.\r\n")
    code, text = w.reply()
    assert (code, text[:5]) == (451, "4.3.0")
    assert inbox(mx_lab) == []


def test_mail_loop_refused(mx_lab):
    w = mx(mx_lab)
    ehlo(w)
    w.send("MAIL FROM:<a@ext.test>\r\nRCPT TO:<bob@alpha.test>\r\nDATA\r\n")
    assert [w.reply()[0] for _ in range(3)] == [250, 250, 354]
    hops = b"".join(b"Received: from h%d by h%d; Mon, 1 Jan 2024 00:00:00 +0000\r\n" % (i, i)
                    for i in range(25))
    w.send(hops + b"Subject: loop\r\n\r\nround\r\n.\r\n")
    assert w.reply()[0] == 250  # 25 + ours = 26 is still delivered
    stored = inbox(mx_lab)[0]
    w.send("MAIL FROM:<a@ext.test>\r\nRCPT TO:<bob@alpha.test>\r\nDATA\r\n")
    assert [w.reply()[0] for _ in range(3)] == [250, 250, 354]
    w.send(stored + b".\r\n")  # 26 Received headers
    code, text = w.reply()
    assert (code, text[:5]) == (554, "5.4.6")


# -- parameters and SMTPUTF8 -----------------------------------------------------------

def test_body_and_smtputf8_parameters(mx_lab):
    w = mx(mx_lab)
    ehlo(w)
    code, text = w.cmd("MAIL FROM:<a@ext.test> BODY=BINARYMIME")
    assert (code, text[:5]) == (555, "5.5.4")
    code, text = w.cmd("MAIL FROM:<a@ext.test> FROBNICATE=1")
    assert code == 555
    code, text = w.cmd("MAIL FROM:<josé@ext.test>")
    assert (code, text[:5]) == (553, "5.6.7")
    assert w.cmd("MAIL FROM:<josé@ext.test> SMTPUTF8 BODY=8BITMIME")[0] == 250
    assert w.cmd("RCPT TO:<bob@alpha.test> NOTIFY=NEVER")[0] == 555
    assert w.cmd("RCPT TO:<bob@alpha.test>")[0] == 250
    assert w.cmd("DATA")[0] == 354
    w.send("Subject: ünïcode\r\n\r\nhéllo\r\n.\r\n".encode())
    assert w.reply()[0] == 250
    assert b"with UTF8SMTP id" in inbox(mx_lab)[0]
    w2 = mx(mx_lab)
    assert w2.cmd("HELO old.test")[0] == 250
    # after HELO nothing is advertised, so nothing is accepted
    for param in ("SIZE=10", "BODY=8BITMIME", "SMTPUTF8"):
        assert w2.cmd(f"MAIL FROM:<a@ext.test> {param}")[0] == 555


# -- abuse and timeouts ----------------------------------------------------------------

def test_unknown_command_flood_ends_in_421(small_lab):
    w = mx(small_lab)
    w.send("XYZZY\r\n" * 10)
    codes = []
    while True:
        try:
            codes.append(w.reply()[0])
        except (EOFError, ConnectionResetError):
            break
    assert codes == [500] * 5 + [421]  # unrecognized: 500 (RFC 5321 4.2.4)


def test_idle_client_gets_421(small_lab):
    w = mx(small_lab)
    start = time.time()
    code, text = w.reply()
    assert (code, text[:5]) == (421, "4.4.2")
    assert 0.4 < time.time() - start < 3
    assert w.closed()


def test_byte_at_a_time_client_times_out(small_lab):
    """The idle timer restarts only on a complete line: a trickle of bytes is idle."""
    w = mx(small_lab)
    start = time.time()
    line = b"EHLO " + b"s" * 200 + b"\r\n"
    for byte in line:
        if select.select([w.sock], [], [], 0.05)[0]:
            break
        try:
            w.send(bytes([byte]))
        except (BrokenPipeError, ConnectionResetError):
            break
    assert time.time() - start < 5
    code, text = w.reply()
    assert (code, text[:5]) == (421, "4.4.2")
    assert w.closed()


# -- TLS -------------------------------------------------------------------------------

def test_starttls_pipelined_plaintext_is_discarded(mx_lab):
    w = mx(mx_lab)
    ehlo(w)
    w.send(b"STARTTLS\r\nNOOP\r\nMAIL FROM:<injected@ext.test>\r\n")
    code, _ = w.reply()
    assert code == 220
    w.sock = mx_lab.ca.client_context().wrap_socket(w.sock, server_hostname="mail.alpha.test")
    # After the handshake the session is new: the first reply answers our EHLO,
    # and MAIL needs that EHLO (RFC 3207 4.2), so nothing injected survived.
    code, text = w.cmd("MAIL FROM:<a@ext.test>")
    assert (code, text) == (503, "5.5.1 Error: send HELO/EHLO first")
    code, text = w.cmd("EHLO student.test")
    assert code == 250 and "STARTTLS" not in text
    code, text = w.cmd("STARTTLS")
    assert (code, text) == (554, "5.5.1 Error: TLS already active")
    notes = [e.text for e in mx_lab.events.events(kinds=("note",))]
    assert any("discarded" in n for n in notes)


def session_tasks(lab: Lab) -> int:
    return lab.loop.call(lambda: sum(1 for t in asyncio.all_tasks()
                                     if t.get_name().startswith("smtp session")))


def test_tls_garbage_and_old_versions_are_refused_others_undisturbed(mx_lab):
    healthy = mx(mx_lab)
    assert session_tasks(mx_lab) == 1
    # garbage instead of a ClientHello on the implicit-TLS port
    g = socket.create_connection(mx_lab.address("smtps"), timeout=5)
    g.sendall(b"EHLO plain.text\r\n" * 10)
    g.settimeout(5)
    try:
        answer = g.recv(100)
    except ConnectionResetError:
        answer = b""
    assert b"250" not in answer  # no plaintext was processed
    g.close()
    # TLS 1.1 only: refused (the lab insists on TLS >= 1.2)
    old = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    old.check_hostname, old.verify_mode = False, ssl.CERT_NONE
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        old.minimum_version = old.maximum_version = ssl.TLSVersion.TLSv1_1
    with pytest.raises((ssl.SSLError, ConnectionResetError)):
        Wire(mx_lab.address("smtps"), tls=old).reply()
    # aborted STARTTLS handshake
    w = mx(mx_lab)
    ehlo(w)
    assert w.cmd("STARTTLS")[0] == 220
    w.send(b"\x16\x03\x01\x00\x05hello")
    assert w.closed()
    ehlo(healthy)
    assert healthy.cmd("NOOP")[0] == 250
    ok = Wire(mx_lab.address("smtps"), tls=mx_lab.ca.client_context())
    assert ok.reply()[0] == 220
    ok.close()
    healthy.close()
    deadline = time.time() + 3
    while time.time() < deadline and (session_tasks(mx_lab) or mx_lab.service("smtps").active):
        time.sleep(0.05)
    assert session_tasks(mx_lab) == 0  # no session task leaked
    assert [mx_lab.service(n).active for n in ("smtp", "smtps")] == [0, 0]


def test_auth_rules(mx_lab):
    # MX: no AUTH at all
    w = mx(mx_lab)
    code, text = w.cmd("EHLO student.test")
    assert "AUTH" not in text
    assert w.cmd("AUTH PLAIN AGFsaWNlAGFsaWNlLXB3")[0] == 503
    # submission: AUTH only after STARTTLS, required before MAIL
    s = Wire(mx_lab.address("submission"))
    s.reply()
    code, text = s.cmd("EHLO student.test")
    assert "STARTTLS" in text and "AUTH" not in text
    assert s.cmd("AUTH PLAIN AGFsaWNlAGFsaWNlLXB3")[0] == 538
    assert s.cmd("MAIL FROM:<alice@alpha.test>")[0] == 530
    s.starttls(mx_lab.ca.client_context())
    code, text = s.cmd("EHLO student.test")
    assert "AUTH PLAIN LOGIN" in text
    code, text = s.cmd("MAIL FROM:<alice@alpha.test>")
    assert (code, text) == (530, "5.7.0 Authentication required")
    start = time.time()
    code, text = s.cmd("AUTH PLAIN AGFsaWNlAHdyb25n")  # alice / wrong
    assert (code, text) == (535, "5.7.8 Authentication credentials invalid")
    assert time.time() - start >= mx_lab.limits.auth_failure_delay
    assert s.cmd("AUTH LOGIN")[:1] == (334,)
    assert s.cmd("*")[0] == 501
    assert s.cmd("AUTH LOGIN YWxpY2U=") == (334, "UGFzc3dvcmQ6")
    assert s.cmd("YWxpY2UtcHc=")[0] == 235
    assert s.cmd("AUTH PLAIN AGFsaWNlAGFsaWNlLXB3")[0] == 503  # already
    code, text = s.cmd("MAIL FROM:<bob@alpha.test>")
    assert (code, text[:5]) == (550, "5.7.1") and "not owned" in text
    assert s.cmd("MAIL FROM:<Alice@Alpha.test>")[0] == 250
    # credentials never enter the event stream
    for ev in mx_lab.events:
        blob = ev.text + repr(ev.data)
        for secret in ("alice-pw", "YWxpY2UtcHc=", "AGFsaWNlAGFsaWNlLXB3", "AGFsaWNlAHdyb25n", "wrong"):
            assert secret not in blob, ev
    lines = [e.text for e in mx_lab.events.events(kinds=("C",))]
    assert "AUTH PLAIN ****" in lines and "****" in lines


def test_unknown_local_user(mx_lab):
    w = mx(mx_lab)
    ehlo(w)
    assert w.cmd("MAIL FROM:<a@ext.test>")[0] == 250
    code, text = w.cmd("RCPT TO:<nobody@alpha.test>")
    assert (code, text[:5]) == (550, "5.1.1")


# -- failure injection (the relay lessons) -----------------------------------------------

def test_fault_injection(mx_lab):
    relay = mx_lab.relay  # %mail fail's presets: rules of mx_lab.faults
    relay.fail("mail.alpha.test", "tempfail")
    w = mx(mx_lab)
    ehlo(w)
    assert w.cmd("MAIL FROM:<a@ext.test>")[0] == 250
    code, text = w.cmd("RCPT TO:<bob@alpha.test>")
    assert (code, text) == (451, "4.3.0 mail.alpha.test temporary failure (lab fault injected)")
    relay.fail("mail.alpha.test", "reject")
    code, text = w.cmd("RCPT TO:<bob@alpha.test>")
    assert (code, text) == (550, "5.7.1 mail.alpha.test rejects this mail (lab fault injected)")
    relay.fail("mail.alpha.test", "slow", 0.3)
    start = time.time()
    assert w.cmd("NOOP")[0] == 250
    assert time.time() - start >= 0.3
    relay.heal("mail.alpha.test")
    start = time.time()
    assert w.cmd("RCPT TO:<bob@alpha.test>")[0] == 250
    assert time.time() - start < 0.3
    # submission is not the MX: faults do not apply there
    relay.fail("mail.alpha.test", "reject")
    s = authed_submission(mx_lab)
    assert s.cmd("MAIL FROM:<alice@alpha.test>")[0] == 250
    assert s.cmd("RCPT TO:<bob@alpha.test>")[0] == 250


def test_connection_cap_and_informational_commands(tmp_path):
    lab = Lab(tmp_path / "lab", ports="auto", domains=["alpha.test"], services=("smtp",),
              limits=fast_limits(max_connections=2))
    lab.start()
    try:
        first, second = mx(lab), mx(lab)
        third = Wire(lab.address("smtp"))
        code, text = third.reply()
        assert (code, text[:5]) == (421, "4.7.0") and "too many connections" in text
        assert third.closed()
        assert first.cmd("VRFY bob@alpha.test")[0] == 252
        assert first.cmd("EXPN staff")[0] == 502
        assert first.cmd("HELP")[0] == 214
        assert second.cmd("QUIT")[0] == 221
        assert second.closed()
        again = mx(lab)  # a freed slot is usable again
        assert again.cmd("NOOP")[0] == 250
    finally:
        lab.stop()


def test_overlong_auth_line_is_masked_too(mx_lab):
    s = Wire(mx_lab.address("smtps"), tls=mx_lab.ca.client_context())
    s.reply()
    ehlo(s)
    code, _ = s.cmd("AUTH PLAIN " + "c2VjcmV0" * 2000)
    assert code == 500
    assert all("c2VjcmV0" not in e.text for e in mx_lab.events)
