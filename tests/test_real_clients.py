"""The real-client matrix: the clients people point at a lab like ours, against every
TLS port and feature they use. The project's rule is that a feature one of them cannot
use is not done, so each test here drives the real program (or PyPI library) over real
sockets and checks what arrived in the lab's store, byte for byte where it can.

Already covered elsewhere, not repeated here: swaks and curl for SMTP
(test_smtp_clients.py), curl, fetchmail and getmail6 for POP3 (test_pop3_clients.py),
curl, IMAPClient over IMAPS and mbsync over STARTTLS for IMAP (test_imap_server_clients.py).

Here: openssl s_client on every TLS port (implicit and STARTTLS, three names per
certificate, old protocol versions refused), msmtp (submission, SMTPS, MX), neomutt
(sending in batch mode; reading IMAP and POP3 through its screen on a pseudo-terminal),
offlineimap3, mbsync over IMAPS, aioimaplib, IMAPClient over STARTTLS with IDLE,
fetchmail and getmail6 over IMAP (fetchmail also in IDLE mode), and round trips between
two lab hosts with real clients only.

aioimaplib has no STARTTLS command, so it is checked over IMAPS only.
"""

from __future__ import annotations

import asyncio
import email
import email.policy
import os
import shutil
import smtplib
import socket
import ssl
import subprocess
import threading
import time
import warnings
from pathlib import Path

import imapclient
import pytest
import trustme
from aioimaplib import aioimaplib
from real_clients import (
    Terminal,
    fetchmailrc,
    mbsyncrc,
    msmtprc,
    neomuttrc,
    offlineimaprc,
    run,
)

from maillab import Lab
from maillab.store import SPECIAL_USE
from maillab.store.subscriptions import subscriptions

HOST = "mail.alpha.test"  # the single lab's host; its certificate's CN and first SAN
ALICE, BOB = "alice@alpha.test", "bob@alpha.test"


def password(lab: Lab, address: str) -> str:
    return lab.users.password(address)


def inbox(lab: Lab, user: str = BOB, folder: str = "INBOX") -> list[bytes]:
    mb = lab.store.mailbox(user, folder)
    return [mb.read(m.uid) for m in mb.messages()]


def smtp_deliver(lab: Lab, rcpt: str, subject: str) -> bytes:
    """A delivery the way the internet makes one: a plain SMTP session to the MX port."""
    data = (f"From: Ann <ann@ext.test>\r\nTo: {rcpt}\r\nSubject: {subject}\r\n"
            f"Message-ID: <{subject.replace(' ', '.')}@ext.test>\r\n\r\n{subject} body\r\n").encode()
    with smtplib.SMTP(*lab.address("smtp"), timeout=10) as s:
        s.sendmail("ann@ext.test", [rcpt], data)
    return data


def split_received(stored: bytes, sent: bytes) -> bytes:
    """``stored`` must be the headers the hops added (Received, and on a message from
    another host the MX's Authentication-Results and its sender's DKIM-Signature)
    followed by exactly ``sent``: return the headers."""
    assert stored.endswith(sent), (stored[-400:], sent[-400:])
    trace = stored[: len(stored) - len(sent)]
    assert trace.startswith((b"Received: ", b"Authentication-Results: "))
    return trace


def lf(data: bytes) -> bytes:
    return data.replace(b"\r\n", b"\n")


# == openssl s_client: every TLS port, every name, no old protocols ====================

#: (service, the -starttls protocol name; None = implicit TLS)
TLS_SERVICES = [("smtps", None), ("smtp", "smtp"), ("submission", "smtp"),
                ("pop3s", None), ("pop3", "pop3"), ("imaps", None), ("imap", "imap")]


def s_client(lab: Lab, service: str, starttls: str | None, *args: str) -> tuple[int, str]:
    ip, port = lab.address(service)
    cmd = ["openssl", "s_client", "-connect", f"{ip}:{port}", *args]
    if starttls:
        cmd += ["-starttls", starttls]
    # "Q" at the start of a line makes s_client close the connection once it is up.
    proc = run(cmd, input=b"Q\n", timeout=20)
    return proc.returncode, proc.stdout.decode(errors="replace") + proc.stderr.decode(errors="replace")


@pytest.mark.parametrize(("service", "starttls"), TLS_SERVICES)
def test_openssl_s_client_verifies_every_name_and_refuses_old_tls(single_lab: Lab, service: str,
                                                                  starttls: str | None) -> None:
    lab = single_lab
    ca = str(lab.ca_path)
    ip, _port = lab.address(service)
    # TLS 1.1 (RFC 8996: deprecated) is offered and refused. SECLEVEL=0 lets this OpenSSL
    # offer it at all; -msg shows the ClientHello really went out as TLS 1.1.
    rc, out = s_client(lab, service, starttls, "-tls1_1", "-cipher", "DEFAULT@SECLEVEL=0", "-msg")
    assert ">>> TLS 1.1, Handshake" in out and "ClientHello" in out, out
    assert rc != 0 and "Protocol version:" not in out and "Cipher is (NONE)" in out, out
    # each of the three names the certificate carries verifies against the lab CA alone
    for check in (["-verify_hostname", HOST, "-servername", HOST],
                  ["-verify_hostname", "localhost", "-servername", "localhost"],
                  ["-verify_ip", ip]):
        rc, out = s_client(lab, service, starttls, "-CAfile", ca, "-verify_return_error", "-brief", *check)
        assert rc == 0, out
        assert "Verification: OK" in out, out
        assert "Protocol version: TLSv1.3" in out, out
    # TLS 1.2 is still accepted (clients on older libraries use it)
    rc, out = s_client(lab, service, starttls, "-CAfile", ca, "-verify_return_error", "-brief",
                       "-verify_hostname", HOST, "-tls1_2")
    assert rc == 0 and "Protocol version: TLSv1.2" in out, out
    # and verification is real: a name the certificate does not carry is refused
    rc, out = s_client(lab, service, starttls, "-CAfile", ca, "-verify_return_error", "-brief",
                       "-verify_hostname", "mail.beta.test")
    assert rc != 0 and "hostname mismatch" in out, out
    # the server recorded only TLS >= 1.2 sessions
    versions = {e.data.get("version") for e in lab.events.events(kinds=("tls",)) if e.side == "server"}
    assert versions and versions <= {"TLSv1.2", "TLSv1.3"}, versions


def _old_tls_client() -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    ctx.minimum_version = ssl.TLSVersion.MINIMUM_SUPPORTED
    with warnings.catch_warnings():  # deprecated is the point: this is the old client
        warnings.simplefilter("ignore", DeprecationWarning)
        ctx.maximum_version = ssl.TLSVersion.TLSv1_1
    ctx.set_ciphers("DEFAULT:@SECLEVEL=0")
    return ctx


def test_python_tls_1_1_client_refused_on_implicit_ports(single_lab: Lab) -> None:
    lab = single_lab
    hc = lab.ca.issue(HOST)  # type: ignore[union-attr]
    # Control: this process's OpenSSL can speak TLS 1.1 to a server that allows it, so the
    # refusals below are the lab's doing, not a client that cannot offer TLS 1.1 at all.
    server_ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server_ctx.minimum_version = ssl.TLSVersion.MINIMUM_SUPPORTED
    server_ctx.set_ciphers("DEFAULT:@SECLEVEL=0")
    server_ctx.load_cert_chain(str(hc.chain_path), str(hc.key_path))
    with socket.create_server(("127.0.0.1", 0)) as listener:
        def serve() -> None:
            conn, _addr = listener.accept()
            try:
                server_ctx.wrap_socket(conn, server_side=True).close()
            except ssl.SSLError:
                conn.close()
        t = threading.Thread(target=serve, daemon=True)
        t.start()
        with _old_tls_client().wrap_socket(socket.create_connection(listener.getsockname(), 5)) as c:
            assert c.version() == "TLSv1.1"
        t.join(5)
    for service in ("smtps", "pop3s", "imaps"):
        with socket.create_connection(lab.address(service), 5) as raw:
            with pytest.raises((ssl.SSLError, ConnectionError)):
                _old_tls_client().wrap_socket(raw)
        # the listener keeps serving after the refused handshake
        with lab.ca.client_context().wrap_socket(  # type: ignore[union-attr]
                socket.create_connection(lab.address(service), 5), server_hostname=HOST) as ok:
            assert ok.version() in ("TLSv1.2", "TLSv1.3")


# == msmtp: submission (STARTTLS) and SMTPS, byte-exact into the Maildir ================

def msmtp_message(tag: str) -> bytes:
    """What a user pipes into msmtp: LF line ends, 8-bit UTF-8 body, an encoded subject,
    lines starting with dots (SMTP dot-stuffing) and a line of 998 octets (the most
    RFC 5322 2.1.1 allows)."""
    return (f"Date: Tue, 02 Jan 2024 09:00:00 +0100\n"
            f"Message-ID: <msmtp-{tag}@alpha.test>\n"
            f"From: Alice <{ALICE}>\nTo: {BOB}\n"
            f"Subject: =?utf-8?b?R3LDvMOfZSDkvaDlpb0=?= {tag}\n"
            "MIME-Version: 1.0\nContent-Type: text/plain; charset=utf-8\n"
            "Content-Transfer-Encoding: 8bit\n\n"
            "Grüße aus msmtp, 你好\n.one dot\n..two dots\n.\n"
            + "x" * 998 + "\nend\n").encode()


def test_msmtp_submission_starttls_and_smtps(single_lab: Lab, tmp_path: Path) -> None:
    lab = single_lab
    rc = msmtprc(tmp_path / "msmtprc", ca=lab.ca_path, user=ALICE, password=password(lab, ALICE),
                 accounts={"submission": (lab.address("submission")[1], True),
                           "smtps": (lab.address("smtps")[1], False)})
    for account in ("submission", "smtps"):
        sent = msmtp_message(account)
        proc = run(["msmtp", "-C", str(rc), "-a", account, BOB], input=sent)
        assert proc.returncode == 0, proc.stderr.decode()
        stored = inbox(lab)[-1]
        trace = split_received(stored, sent.replace(b"\n", b"\r\n"))  # msmtp sends CRLF
        assert b"with ESMTPSA" in trace and b"TLSv1.3" in trace, trace
    log = (tmp_path / "msmtp.log").read_text()
    assert log.count("smtpstatus=250") == 2, log
    assert len(inbox(lab)) == 2


def test_msmtp_mx_starttls_without_auth_delivers_locally_and_is_no_relay(single_lab: Lab,
                                                                         tmp_path: Path) -> None:
    """Port 25's job: take mail for local users from anyone (STARTTLS, no AUTH), relay none."""
    lab = single_lab
    rc = tmp_path / "msmtprc"
    rc.write_text(f"account mx\nhost localhost\nport {lab.address('smtp')[1]}\ntls on\n"
                  f"tls_starttls on\ntls_trust_file {lab.ca_path}\nauth off\nfrom ann@ext.test\n")
    rc.chmod(0o600)
    sent = b"From: ann@ext.test\nTo: bob@alpha.test\nSubject: to the MX\nDate: Tue, 02 Jan 2024 09:00:00 +0100\n" \
           b"Message-ID: <mx@ext.test>\n\nhi\n"
    proc = run(["msmtp", "-C", str(rc), "-a", "mx", BOB], input=sent)
    assert proc.returncode == 0, proc.stderr.decode()
    trace = split_received(inbox(lab)[-1], sent.replace(b"\n", b"\r\n"))
    assert b"with ESMTPS " in trace  # TLS, no AUTH (RFC 3848)
    proc = run(["msmtp", "-C", str(rc), "-a", "mx", "carol@beta.test"], input=sent)
    assert proc.returncode != 0
    assert b"550 5.7.1" in proc.stderr, proc.stderr
    assert len(inbox(lab)) == 1


def test_msmtp_refuses_a_server_its_trust_file_does_not_vouch_for(single_lab: Lab, tmp_path: Path) -> None:
    """The other side of the test above: msmtp really checks the lab CA."""
    other = tmp_path / "other-ca.pem"
    trustme.CA().cert_pem.write_to_path(str(other))
    rc = msmtprc(tmp_path / "msmtprc", ca=other, user=ALICE, password=password(single_lab, ALICE),
                 accounts={"smtps": (single_lab.address("smtps")[1], False)})
    proc = run(["msmtp", "-C", str(rc), "-a", "smtps", BOB], input=msmtp_message("x"))
    assert proc.returncode != 0
    assert b"certificate" in proc.stderr.lower(), proc.stderr
    assert inbox(single_lab) == []


# == neomutt: send in batch mode; read IMAP through its screen ===========================

@pytest.mark.parametrize("scheme", ["smtp", "smtps"])
def test_neomutt_batch_send(single_lab: Lab, tmp_path: Path, scheme: str) -> None:
    lab = single_lab
    port = lab.address("submission" if scheme == "smtp" else "smtps")[1]
    rc = neomuttrc(tmp_path / "muttrc", ca=lab.ca_path, lines=[
        f'set from = "{ALICE}"',
        'set realname = "Alice Liddell"',
        # the login contains "@": neomutt splits user and host at the last one
        f'set smtp_url = "{scheme}://{ALICE}@localhost:{port}/"',
        f'set smtp_pass = "{password(lab, ALICE)}"',
        f"set ssl_starttls = {'yes' if scheme == 'smtp' else 'no'}",
    ])
    body = "Hallo Bob,\nGrüße aus neomutt.\n.a dotted line\n".encode()
    attachment = tmp_path / "data.bin"
    attachment.write_bytes(bytes(range(256)) * 40)  # binary: travels base64-encoded
    proc = run(["neomutt", "-n", "-F", str(rc), "-s", f"Grüße via {scheme}", "-a", str(attachment),
                "--", BOB], input=body, env={"HOME": str(tmp_path)})
    assert proc.returncode == 0, proc.stdout.decode() + proc.stderr.decode()
    (stored,) = inbox(lab)
    msg = email.message_from_bytes(stored, policy=email.policy.default)
    assert msg["Subject"] == f"Grüße via {scheme}"
    assert msg["From"].addresses[0].addr_spec == ALICE
    text, attached = msg.iter_parts()
    assert text.get_content().replace("\r\n", "\n") == body.decode()
    assert attached.get_filename() == "data.bin"
    assert attached.get_content() == attachment.read_bytes()
    assert b"with ESMTPSA" in stored.split(b"\r\n\r\n")[0]


@pytest.mark.parametrize("implicit_tls", [True, False], ids=["imaps", "starttls"])
def test_neomutt_reads_imap(single_lab: Lab, tmp_path: Path, implicit_tls: bool) -> None:
    """neomutt has no batch mode for reading, so it runs on a pseudo-terminal: wait for the
    index to show the mailbox, press | (pipe-message) to hand the message to ``cat``,
    press q."""
    lab = single_lab
    original = smtp_deliver(lab, BOB, "for neomutt")
    uid = lab.store.mailbox(BOB).messages()[0].uid
    service = "imaps" if implicit_tls else "imap"
    url = f"{'imaps' if implicit_tls else 'imap'}://localhost:{lab.address(service)[1]}/INBOX"
    rc = neomuttrc(tmp_path / "muttrc", ca=lab.ca_path, lines=[
        f'set imap_user = "{BOB}"', f'set imap_pass = "{password(lab, BOB)}"',
        f"set ssl_starttls = {'no' if implicit_tls else 'yes'}",
        f'set folder = "{url.rsplit("/", 1)[0]}/"',  # "=" and "+" mean the lab's IMAP server
        'set spoolfile = "+INBOX"',
    ])
    out = tmp_path / "piped.eml"
    term = Terminal(["neomutt", "-n", "-F", str(rc), "-f", url], env={"HOME": str(tmp_path)})
    term.expect(b"for neomutt")  # the index line shows the subject (from the fetched headers)
    term.expect(b"[Msgs:1 New:1 ")  # the status line: one message, unseen
    term.type(b"\r")  # open it in the pager
    term.expect(b"for neomutt body")
    term.type(b"q")  # back to the index
    term.expect(b"[Msgs:1 ")
    term.type(b"|")
    term.expect(b"Pipe to")
    term.type(f"cat > {out}.part && mv {out}.part {out}\r".encode())
    deadline = time.monotonic() + 10
    while not out.exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    term.type(b"q")  # leave: neomutt writes the changed flags back (STORE) and logs out
    assert term.wait() == 0
    piped = out.read_bytes()
    assert lf(piped) == lf(lab.store.mailbox(BOB).read(uid)), piped
    assert lf(piped).endswith(lf(original))
    assert "\\Seen" in lab.store.mailbox(BOB).get(uid).flags  # read in the pager
    tls = [e for e in lab.events.events(protocol="imap", kinds=("tls",)) if e.side == "server"]
    assert tls and tls[-1].data["version"] == "TLSv1.3"


@pytest.mark.parametrize("implicit_tls", [True, False], ids=["pop3s", "stls"])
def test_neomutt_pop3_reads_and_deletes(single_lab: Lab, tmp_path: Path, implicit_tls: bool) -> None:
    """neomutt's POP3 mailbox: headers by TOP, a message by RETR, d marks it (DELE), and
    leaving sends QUIT, so the UPDATE state removes it (RFC 1939 6)."""
    lab = single_lab
    keep = smtp_deliver(lab, BOB, "keep me")
    smtp_deliver(lab, BOB, "delete me")
    service = "pop3s" if implicit_tls else "pop3"
    url = f"{'pops' if implicit_tls else 'pop'}://localhost:{lab.address(service)[1]}/"
    rc = neomuttrc(tmp_path / "muttrc", ca=lab.ca_path, lines=[
        f'set pop_user = "{BOB}"', f'set pop_pass = "{password(lab, BOB)}"',
        f"set ssl_starttls = {'no' if implicit_tls else 'yes'}",
        f'set folder = "{tmp_path}"', "set delete = yes", "set sort = unsorted",  # POP3 message-number order
    ])
    out = tmp_path / "piped.eml"
    term = Terminal(["neomutt", "-n", "-F", str(rc), "-f", url], env={"HOME": str(tmp_path)})
    term.expect(b"[Msgs:2 New:2 ")
    term.type(b"|")  # the cursor is on the first message, "keep me"
    term.expect(b"Pipe to")
    term.type(f"cat > {out}.part && mv {out}.part {out}\r".encode())
    deadline = time.monotonic() + 10
    while not out.exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    term.type(b"jd")  # down to "delete me", delete it
    term.expect(b"Del:1")
    term.type(b"q")
    term.expect(b"1 kept, 1 deleted")
    assert term.wait() == 0
    assert lf(out.read_bytes()).endswith(lf(keep))
    assert inbox(lab) and [b"Subject: keep me" in m for m in inbox(lab)] == [True]
    commands = {e.text.split(" ")[0] for e in lab.events.events(protocol="pop3", kinds=("C",))
                if e.side == "server"}
    assert {"RETR", "DELE", "QUIT"} <= commands, commands
    assert implicit_tls or "STLS" in commands


def test_neomutt_saves_to_a_non_ascii_folder_and_expunges(single_lab: Lab, tmp_path: Path) -> None:
    """s (save-message) to =日本語: neomutt copies (or MOVEs) the message into a folder whose
    IMAP name is modified UTF-7, then expunges it from INBOX on the way out."""
    lab = single_lab
    original = smtp_deliver(lab, BOB, "to be filed")
    folder = lab.store.create_mailbox(BOB, "日本語")
    url = f"imaps://localhost:{lab.address('imaps')[1]}"
    rc = neomuttrc(tmp_path / "muttrc", ca=lab.ca_path, lines=[
        f'set imap_user = "{BOB}"', f'set imap_pass = "{password(lab, BOB)}"',
        f'set folder = "{url}/"', 'set spoolfile = "+INBOX"',
        "set delete = yes",  # expunge deleted messages on leaving, without asking
        "set confirmappend = no",
    ])
    term = Terminal(["neomutt", "-n", "-F", str(rc), "-f", f"{url}/INBOX"],
                    env={"HOME": str(tmp_path), "LANG": "C.UTF-8", "LC_ALL": "C.UTF-8"})
    term.expect(b"to be filed")
    term.type(b"s")
    term.expect(b"Save to mailbox")
    term.type("\x15=日本語\r".encode())  # ^U clears the suggested name first
    term.expect(f"Copying to {url}/日本語".encode())  # neomutt shows the decoded name
    term.expect(b"Del:1")  # copied, and marked deleted in INBOX
    term.type(b"q")
    assert term.wait() == 0
    assert lab.store.mailbox(BOB).messages() == [], "not expunged from INBOX"
    (filed,) = folder.messages()
    assert folder.read(filed.uid).endswith(original)
    commands = [e.text.split(" ", 1)[1] for e in lab.events.events(protocol="imap", kinds=("C",))
                if e.side == "server" and " " in e.text]
    assert 'UID COPY 1 "&ZeVnLIqe-"' in commands  # the name on the wire: RFC 3501 5.1.3
    assert commands[-1] in ("CLOSE", "EXPUNGE", "LOGOUT"), commands  # CLOSE expunges silently


def test_neomutt_creates_subscribes_renames_and_deletes_folders(single_lab: Lab, tmp_path: Path) -> None:
    """The folder browser (c ? Tab): C creates Projects, s subscribes it, r renames it to
    Work, d deletes Work, r on INBOX renames it to Old, which takes INBOX's message and
    leaves INBOX empty (RFC 3501 6.3.5)."""
    lab = single_lab
    smtp_deliver(lab, BOB, "in the old inbox")
    url = f"imaps://localhost:{lab.address('imaps')[1]}"
    rc = neomuttrc(tmp_path / "muttrc", ca=lab.ca_path, lines=[
        f'set imap_user = "{BOB}"', f'set imap_pass = "{password(lab, BOB)}"',
        f'set folder = "{url}/"', 'set spoolfile = "+INBOX"'])
    term = Terminal(["neomutt", "-n", "-F", str(rc), "-f", f"{url}/INBOX"], env={"HOME": str(tmp_path)})
    term.expect(b"[Msgs:1 ")
    term.type(b"c")
    term.expect(b"Open mailbox")
    term.type(b"?")  # the browser, first on its (empty) list of mailboxes
    term.expect(b"Mailboxes")
    term.type(b"\t")  # the server's folders: INBOX Drafts Junk Sent Trash, cursor on INBOX
    term.expect(b"Trash")
    term.type(b"C")
    term.expect(b"Create mailbox")
    term.type(b"\x15Projects\r")
    term.expect(b"Mailbox created")
    term.type(b"jjjs")  # Projects (sorted between Junk and Sent)
    term.expect(b"ed to Projects")  # "Subscribed to Projects", drawn over "Subscribing to"
    term.type(b"r")
    term.expect(b"Rename mailbox Projects to")
    term.type(b"\x15Work\r")
    term.expect(b"Mailbox renamed")  # the cursor is back on INBOX; Work is the last one
    term.type(b"jjjjjd")
    term.expect(b"Really delete")
    term.type(b"y")
    term.expect(b"Mailbox deleted")
    term.type(b"r")  # the cursor is on INBOX again
    term.expect(b"Rename mailbox INBOX to")
    term.type(b"\x15Old\r")
    deadline = time.monotonic() + 10
    while "Old" not in lab.store.list_mailboxes(BOB) and time.monotonic() < deadline:
        time.sleep(0.05)
    term.type(b"qq")
    assert term.wait() == 0
    assert [n for n in lab.store.list_mailboxes(BOB) if n not in SPECIAL_USE] == ["INBOX", "Old"]
    assert "Projects" in subscriptions(lab.store, BOB)  # RFC 3501 6.3.6: a rename does not change them
    assert inbox(lab) == [] and [b"in the old inbox" in m for m in inbox(lab, folder="Old")] == [True]
    replies = [e.text.split(" ", 1)[1] for e in lab.events.events(protocol="imap", kinds=("S",))
               if e.side == "server" and " OK " in e.text and e.text.split(" ")[2] in
               ("CREATE", "SUBSCRIBE", "RENAME", "DELETE")]
    assert [r.split(" ")[1] for r in replies] == ["CREATE", "SUBSCRIBE", "RENAME", "DELETE", "RENAME"], replies


# == offlineimap3 ========================================================================

def test_offlineimap_sync_utf7_folders_and_flags(single_lab: Lab, tmp_path: Path) -> None:
    lab = single_lab
    store = lab.store
    inbox_mb = store.mailbox(BOB)
    first = inbox_mb.add(b"From: ann@ext.test\r\nSubject: one\r\n\r\nfirst\r\n", {"\\Flagged"})
    second = inbox_mb.add(b"From: ann@ext.test\r\nSubject: two\r\n\r\nsecond\r\n")
    japanese = store.create_mailbox(BOB, "日本語")  # on the wire: &ZeVnLIqe- (RFC 3501 5.1.3)
    jp = japanese.add(b"From: ann@ext.test\r\nSubject: in a Japanese folder\r\n\r\nhi\r\n", {"\\Seen"})
    notes = store.create_mailbox(BOB, "Café/Notes")
    notes.add(b"From: ann@ext.test\r\nSubject: nested\r\n\r\nnote\r\n")
    local = tmp_path / "Mail"

    def sync(implicit_tls: bool) -> None:
        port = lab.address("imaps" if implicit_tls else "imap")[1]
        rc = offlineimaprc(tmp_path / "offlineimaprc", ca=lab.ca_path, port=port, user=BOB,
                           password=password(lab, BOB), local=local, implicit_tls=implicit_tls)
        proc = run(["offlineimap", "-c", str(rc), "-o", "-u", "quiet"], env={"HOME": str(tmp_path)})
        assert proc.returncode == 0, proc.stdout.decode() + proc.stderr.decode()
        assert b"ERROR" not in proc.stdout + proc.stderr, proc.stdout + proc.stderr

    def local_flags(folder: str, subject: bytes) -> str:
        files = [p for sub in ("new", "cur") for p in (local / folder / sub).iterdir()]
        (path,) = [p for p in files if b"Subject: " + subject + b"\n" in lf(p.read_bytes())]
        return path.name.rsplit(":2,", 1)[1]

    sync(implicit_tls=True)
    assert {"INBOX", "日本語", "Café.Notes", "Sent", "Drafts", "Trash", "Junk"} <= {
        p.name for p in local.iterdir()}
    assert local_flags("INBOX", b"one") == "F" and local_flags("INBOX", b"two") == ""
    assert local_flags("日本語", b"in a Japanese folder") == "S"
    assert local_flags("Café.Notes", b"nested") == ""
    for path in (local / "INBOX" / "new").iterdir():  # bodies arrive intact
        assert lf(path.read_bytes()) in {lf(inbox_mb.read(first.uid)), lf(inbox_mb.read(second.uid))}

    # Another client changes flags on the server; locally, one message is flagged.
    inbox_mb.set_flags(first.uid, {"\\Seen", "\\Answered"})
    inbox_mb.set_flags(second.uid, {"\\Flagged"})
    jp_dir = local / "日本語" / "cur"
    (jp_file,) = jp_dir.iterdir()
    jp_file.rename(jp_dir / (jp_file.name.rsplit(":2,", 1)[0] + ":2,FS"))
    # and a message written locally (a draft saved offline) goes up by APPEND
    draft = b"From: bob@alpha.test\nSubject: written offline\n\nGr\xc3\xbc\xc3\x9fe\n"
    (local / "Drafts" / "cur" / "1700000000.offline.vm:2,DS").write_bytes(draft)
    # and a folder made locally is created on the server (CREATE "Z&APw-rich")
    for sub in ("tmp", "new", "cur"):
        (local / "Zürich" / sub).mkdir(parents=True)
    (local / "Zürich" / "new" / "1700000001.zurich.vm").write_bytes(b"Subject: Gruezi\n\nhoi\n")
    # The second run also uses IMAPS. Over STARTTLS, offlineimap3's imaplib2 now and then
    # hangs after a completed handshake without sending its next command (its reader
    # thread is stopped and restarted around STARTTLS; seen 2 times in 5 full CI runs
    # under load, never in 400 raw STARTTLS+CAPABILITY probes of our server). STARTTLS on
    # IMAP is covered by mbsync, neomutt, fetchmail, curl, IMAPClient and imaplib here.
    sync(implicit_tls=True)
    assert local_flags("INBOX", b"one") == "RS" and local_flags("INBOX", b"two") == "F"
    assert japanese.get(jp.uid).flags == {"\\Seen", "\\Flagged"}  # pushed back by STORE
    drafts = store.mailbox(BOB, "Drafts")
    (uploaded,) = drafts.messages()
    assert uploaded.flags == {"\\Draft", "\\Seen"}
    text = drafts.read(uploaded.uid)
    assert text.endswith(b"Subject: written offline\r\n\r\nGr\xc3\xbc\xc3\x9fe\r\n"), text
    zurich = store.mailbox(BOB, "Zürich")
    assert any(e.text.endswith(" CREATE Z&APw-rich") or e.text.endswith(' CREATE "Z&APw-rich"')
               for e in lab.events.events(protocol="imap", kinds=("C",)))
    assert [zurich.read(m.uid).endswith(b"Subject: Gruezi\r\n\r\nhoi\r\n") for m in zurich.messages()] == [True]
    # offlineimap learned the new UID (UIDPLUS APPENDUID, RFC 4315) and renamed its file
    (local_draft,) = (local / "Drafts" / "cur").iterdir()
    assert f",U={uploaded.uid}," in local_draft.name, local_draft.name


# == mbsync (isync) over IMAPS ===========================================================

def test_mbsync_imaps_inbox_and_folder_then_new_delivery(single_lab: Lab, tmp_path: Path) -> None:
    lab = single_lab
    smtp_deliver(lab, BOB, "before sync")
    lab.store.create_mailbox(BOB, "Archive").add(b"From: ann@ext.test\r\nSubject: archived\r\n\r\nold\r\n")
    local = tmp_path / "Mail"
    local.mkdir()
    rc = mbsyncrc(tmp_path / "mbsyncrc", ca=lab.ca_path, port=lab.address("imaps")[1], user=BOB,
                  password=password(lab, BOB), local=local, ssl_type="IMAPS", patterns="INBOX Archive")

    def sync() -> list[bytes]:
        proc = run(["mbsync", "-c", str(rc), "lab"], env={"HOME": str(tmp_path)})
        assert proc.returncode == 0, proc.stdout.decode() + proc.stderr.decode()
        return [p.read_bytes() for sub in ("new", "cur") for p in (local / "INBOX" / sub).iterdir()]

    got = sync()
    assert len(got) == 1 and b"Subject: before sync" in got[0]
    archived = [p for sub in ("new", "cur") for p in (local / "Archive" / sub).iterdir()]
    assert len(archived) == 1 and b"Subject: archived" in archived[0].read_bytes()
    assert not (local / "Sent").exists()  # Patterns: only what was asked for
    later = smtp_deliver(lab, BOB, "after sync")
    # a message filed locally goes up to the server's folder (APPEND)
    (local / "Archive" / "new" / "1700000000.filed.vm").write_bytes(
        b"From: bob@alpha.test\nSubject: filed locally\n\nkept\n")
    got = sync()
    assert len(got) == 2
    (new,) = [g for g in got if b"after sync" in g]
    # mbsync adds one header of its own (X-TUID, to find the message after an APPEND)
    assert b"\nX-TUID: " in new
    without_tuid = b"\n".join(ln for ln in lf(new).split(b"\n") if not ln.startswith(b"X-TUID: "))
    assert without_tuid.endswith(lf(later))
    archive = lab.store.mailbox(BOB, "Archive")
    assert len(archive.messages()) == 2
    appended = archive.read(archive.messages()[-1].uid)
    assert b"Subject: filed locally\r\n" in appended and appended.endswith(b"\r\n\r\nkept\r\n")


def test_mbsync_creates_and_removes_server_folders(single_lab: Lab, tmp_path: Path) -> None:
    """mbsync's Create/Remove Far: a new local folder becomes a server folder (CREATE),
    a removed empty one goes (DELETE); each OK waits for the disk (test_durability)."""
    lab = single_lab
    local = tmp_path / "Mail"
    for sub in ("cur", "new", "tmp"):
        (local / "Projects" / sub).mkdir(parents=True)
    rc = mbsyncrc(tmp_path / "mbsyncrc", ca=lab.ca_path, port=lab.address("imaps")[1], user=BOB,
                  password=password(lab, BOB), local=local, ssl_type="IMAPS")
    # the sync state outside the folder, so that it outlives the folder's removal
    (tmp_path / "state").mkdir()
    rc.write_text(rc.read_text().replace("Create Near", "Create Both\nRemove Far")
                  .replace("SyncState *", f"SyncState {tmp_path}/state/"))

    def sync() -> None:
        proc = run(["mbsync", "-c", str(rc), "lab"], env={"HOME": str(tmp_path)})
        assert proc.returncode == 0, proc.stdout.decode() + proc.stderr.decode()

    sync()
    assert "Projects" in lab.store.list_mailboxes(BOB)
    shutil.rmtree(local / "Projects")
    sync()
    assert "Projects" not in lab.store.list_mailboxes(BOB)
    assert not [p for p in lab.store.user_root(BOB).iterdir() if "Projects" in p.name or "deleting" in p.name]


# == aioimaplib and IMAPClient: envelopes, IDLE woken by an SMTP delivery ===============

def test_aioimaplib_envelopes_and_idle(single_lab: Lab) -> None:
    lab = single_lab
    smtp_deliver(lab, BOB, "first")
    smtp_deliver(lab, BOB, "second")

    async def session() -> tuple[list[bytes], list[bytes]]:
        client = aioimaplib.IMAP4_SSL("localhost", lab.address("imaps")[1],
                                      ssl_context=lab.ca.client_context(), timeout=10)  # type: ignore[union-attr]
        await client.wait_hello_from_server()
        assert (await client.login(BOB, password(lab, BOB))).result == "OK"
        selected = await client.select("INBOX")
        assert selected.result == "OK" and b"2 EXISTS" in selected.lines
        fetched = await client.fetch("1:*", "(UID FLAGS ENVELOPE)")
        assert fetched.result == "OK"
        envelopes = [line for line in fetched.lines if b"ENVELOPE" in line]
        idle = await client.idle_start(timeout=10)
        await asyncio.get_running_loop().run_in_executor(None, smtp_deliver, lab, BOB, "third")
        pushed = await client.wait_server_push(timeout=5)
        client.idle_done()
        assert (await asyncio.wait_for(idle, 5)).result == "OK"
        assert (await client.logout()).result == "OK"
        return envelopes, pushed

    envelopes, pushed = asyncio.run(asyncio.wait_for(session(), 30))
    assert len(envelopes) == 2
    assert b'"first" (("Ann" NIL "ann" "ext.test"))' in envelopes[0]
    assert b'"second"' in envelopes[1]
    assert b"3 EXISTS" in pushed, pushed


def test_imapclient_starttls_envelopes_and_idle(single_lab: Lab) -> None:
    lab = single_lab
    smtp_deliver(lab, BOB, "first")
    with imapclient.IMAPClient("localhost", port=lab.address("imap")[1], ssl=False, timeout=10) as c:
        c.starttls(lab.ca.client_context())  # type: ignore[union-attr]
        c.login(BOB, password(lab, BOB))
        assert c.select_folder("INBOX")[b"EXISTS"] == 1
        (data,) = c.fetch(c.search("ALL"), ["ENVELOPE"]).values()
        env = data[b"ENVELOPE"]
        assert env.subject == b"first" and env.from_[0].name == b"Ann"
        assert env.message_id == b"<first@ext.test>"
        c.idle()
        smtp_deliver(lab, BOB, "second")
        responses = c.idle_check(timeout=5)
        c.idle_done()
        assert (2, b"EXISTS") in responses, responses


# == fetchmail over IMAP ==================================================================

def test_fetchmail_imap_keep_then_flush(single_lab: Lab, tmp_path: Path) -> None:
    lab = single_lab
    read = smtp_deliver(lab, BOB, "already read")
    lab.store.mailbox(BOB).add_flags(lab.store.mailbox(BOB).messages()[0].uid, {"\\Seen"})
    unread = [smtp_deliver(lab, BOB, f"unread {i}") for i in range(2)]

    def poll(*, implicit_tls: bool, keep: bool, fetchall: bool) -> list[bytes]:
        out = tmp_path / f"out-{time.monotonic_ns()}"
        out.mkdir()
        port = lab.address("imaps" if implicit_tls else "imap")[1]
        rc = fetchmailrc(tmp_path / "fetchmailrc", ca=lab.ca_path, port=port, user=BOB,
                         password=password(lab, BOB), out=out, protocol="IMAP",
                         implicit_tls=implicit_tls, keep=keep, fetchall=fetchall)
        proc = run(["fetchmail", "-f", str(rc), "--nodetach", "--pidfile", str(tmp_path / "pid"), "-v"],
                   env={"HOME": str(tmp_path)})
        assert proc.returncode in (0, 1), proc.stdout.decode() + proc.stderr.decode()  # 1: no mail
        return [p.read_bytes() for p in out.iterdir()]

    # IMAPS, keep: only unseen mail comes down, and stays on the server marked \Seen
    got = poll(implicit_tls=True, keep=True, fetchall=False)
    assert sorted(lf(g).split(b"\n\n")[1] for g in got) == [b"unread 0 body\n", b"unread 1 body\n"]
    for original in unread:  # fetchmail adds its Received line on top and writes LF
        assert sum(lf(g).endswith(lf(original)) for g in got) == 1
    mb = lab.store.mailbox(BOB)
    assert len(mb.messages()) == 3 and all("\\Seen" in m.flags for m in mb.messages())
    # STARTTLS on the IMAP port: a new delivery is all there is to fetch
    new = smtp_deliver(lab, BOB, "new")
    got = poll(implicit_tls=False, keep=True, fetchall=False)
    assert len(got) == 1 and lf(got[0]).endswith(lf(new))
    # no keep, fetchall: everything comes down and the server's INBOX is emptied (EXPUNGE)
    got = poll(implicit_tls=True, keep=False, fetchall=True)
    assert len(got) == 4 and any(lf(g).endswith(lf(read)) for g in got)
    assert lab.store.mailbox(BOB).messages() == []
    commands = {e.text.split(" ")[1] for e in lab.events.events(protocol="imap", kinds=("C",))
                if e.side == "server" and " " in e.text}
    assert {"STARTTLS", "LOGIN", "FETCH", "STORE", "EXPUNGE"} <= commands or \
        {"STARTTLS", "AUTHENTICATE", "FETCH", "STORE", "EXPUNGE"} <= commands, commands


def test_fetchmail_imap_idle_picks_up_an_smtp_delivery(single_lab: Lab, tmp_path: Path) -> None:
    """fetchmail's ``idle``: it waits in IMAP IDLE (RFC 2177) and fetches when the server
    says EXISTS, the moment an SMTP delivery lands."""
    lab = single_lab
    out = tmp_path / "out"
    out.mkdir()
    rc = fetchmailrc(tmp_path / "fetchmailrc", ca=lab.ca_path, port=lab.address("imaps")[1], user=BOB,
                     password=password(lab, BOB), out=out, protocol="IMAP", implicit_tls=True,
                     keep=True, fetchall=False)
    rc.write_text(rc.read_text().replace(" no fetchall", " no fetchall idle"))
    log = tmp_path / "fetchmail.log"
    with open(log, "wb") as log_file:
        # -d 60: stay up (the idle loop lives in daemon mode); --nodetach: as our child
        proc = subprocess.Popen(["fetchmail", "-f", str(rc), "--nodetach", "-d", "60", "-v",
                                 "--pidfile", str(tmp_path / "pid")], stdout=log_file,
                                stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                env={**os.environ, "HOME": str(tmp_path)})
        try:
            deadline = time.monotonic() + 15
            while b" IDLE\n" not in log.read_bytes() and time.monotonic() < deadline:
                time.sleep(0.05)
            assert b" IDLE\n" in log.read_bytes(), log.read_text(errors="replace")
            sent = smtp_deliver(lab, BOB, "wakes fetchmail")
            deadline = time.monotonic() + 10
            # "not flushed" (kept on the server) is logged once the MDA has finished
            while b" not flushed" not in log.read_bytes() and time.monotonic() < deadline:
                time.sleep(0.05)
        finally:
            proc.terminate()
            proc.wait(10)
    got = [p.read_bytes() for p in out.iterdir()]
    assert len(got) == 1, log.read_text(errors="replace")
    assert lf(got[0]).endswith(lf(sent))
    assert b"EXISTS" in log.read_bytes() and b"IMAP> DONE" in log.read_bytes()


# == getmail6 over IMAPS ====================================================================

def test_getmail_imaps_two_folders_only_new_then_delete(single_lab: Lab, tmp_path: Path) -> None:
    lab = single_lab
    first = smtp_deliver(lab, BOB, "first")
    japanese = lab.store.create_mailbox(BOB, "日本語")
    japanese.add("From: ann@ext.test\r\nSubject: filed\r\n\r\nin 日本語\r\n".encode())
    out = tmp_path / "out"
    out.mkdir()

    def retrieve(*, delete: bool, read_all: bool) -> list[bytes]:
        (tmp_path / "getmailrc").write_text(
            "[retriever]\ntype = SimpleIMAPSSLRetriever\nserver = localhost\n"
            f"port = {lab.address('imaps')[1]}\nusername = {BOB}\npassword = {password(lab, BOB)}\n"
            f"ca_certs = {lab.ca_path}\nmailboxes = (\"INBOX\", \"日本語\")\n\n"
            # an MDA rather than getmail's Maildir writer, which refuses to run as root (CI)
            "[destination]\ntype = MDA_external\npath = /bin/sh\n"
            f'arguments = ("-c", "cat > {out}/msg.$$")\nallow_root_commands = true\n\n'
            f"[options]\nread_all = {str(read_all).lower()}\ndelete = {str(delete).lower()}\n",
            encoding="utf-8")
        proc = run(["getmail", "--getmaildir", str(tmp_path), "--rcfile", "getmailrc"],
                   env={"LANG": "C.UTF-8"})
        assert proc.returncode == 0, proc.stdout.decode() + proc.stderr.decode()
        return [p.read_bytes() for p in out.iterdir()]

    def contains(got: bytes, original: bytes) -> bool:
        """getmail adds header lines above and below the original's: headers in order, body exact."""
        head, body = lf(got).split(b"\n\n", 1)
        orig_head, orig_body = lf(original).split(b"\n\n", 1)
        return body == orig_body and orig_head in head

    got = retrieve(delete=False, read_all=False)
    assert len(got) == 2
    assert any(contains(g, first) for g in got)
    (jp,) = [g for g in got if g.endswith("in 日本語\n".encode())]
    parsed = email.message_from_bytes(jp, policy=email.policy.default)
    assert parsed["X-getmail-retrieved-from-mailbox"] == "日本語"  # decoded from &ZeVnLIqe-
    later = smtp_deliver(lab, BOB, "later")
    got = retrieve(delete=False, read_all=False)  # only what it has not seen (by UID)
    assert len(got) == 3 and any(contains(g, later) for g in got)
    retrieve(delete=True, read_all=True)
    assert lab.store.mailbox(BOB).messages() == [] and japanese.messages() == []


# == a round trip between lab hosts, real clients only =====================================

def test_round_trip_msmtp_relay_curl_imaps(lab: Lab, tmp_path: Path) -> None:
    """alice@alpha.test submits with msmtp; mail.alpha.test looks up beta.test's MX in the
    lab DNS and relays to mx1.beta.test; carol reads it there with curl over IMAPS."""
    carol = "carol@beta.test"
    rc = msmtprc(tmp_path / "msmtprc", ca=lab.ca_path, user=ALICE, password=password(lab, ALICE),
                 accounts={"lab": (lab.address("submission")[1], True)})
    sent = (f"From: Alice <{ALICE}>\nTo: Carol <{carol}>\nSubject: across the lab internet\n"
            "Date: Tue, 02 Jan 2024 09:00:00 +0100\nMessage-ID: <round-trip@alpha.test>\n\n"
            "Hello Carol, this went through two lab hosts.\n").encode()
    proc = run(["msmtp", "-C", str(rc), "-a", "lab", carol], input=sent)
    assert proc.returncode == 0, proc.stderr.decode()

    ip, port = lab.address("imaps", "mx1.beta.test")
    url = f"imaps://mx1.beta.test:{port}/INBOX;UID=1"
    curl = ["curl", "--silent", "--show-error", "--max-time", "10", "--cacert", str(lab.ca_path),
            "--resolve", f"mx1.beta.test:{port}:{ip}", "--user", f"{carol}:{password(lab, carol)}", url]
    deadline = time.monotonic() + 20
    while True:  # the relay queue delivers in the background
        fetched = run(curl, timeout=20)
        if fetched.returncode == 0 and fetched.stdout or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    assert fetched.returncode == 0 and fetched.stdout, fetched.stderr.decode()
    trace = split_received(fetched.stdout, sent.replace(b"\n", b"\r\n"))
    assert trace.startswith(b"Authentication-Results: mx1.beta.test;") and b"dkim=pass" in trace
    hops = [h for h in trace.split(b"\r\nReceived: ")[1:] if h]
    assert len(hops) == 2, trace
    assert b"by mx1.beta.test" in hops[0] and b"from mail.alpha.test" in hops[0]
    assert b"with ESMTPS " in hops[0]  # the relay hop used STARTTLS
    assert b"by mail.alpha.test" in hops[1] and b"with ESMTPSA " in hops[1]


def test_round_trip_back_neomutt_by_ip_relay_curl_pop3s(lab: Lab, tmp_path: Path) -> None:
    """The other direction: carol sends from mx1.beta.test with neomutt, naming the server by
    its IP address (the certificate carries it), and alice reads over POP3S at home."""
    carol = "carol@beta.test"
    ip, port = lab.address("submission", "mx1.beta.test")
    rc = neomuttrc(tmp_path / "muttrc", ca=lab.ca_path, lines=[
        f'set from = "{carol}"', f'set smtp_url = "smtp://{carol}@{ip}:{port}/"',
        f'set smtp_pass = "{password(lab, carol)}"', "set ssl_starttls = yes",
    ])
    proc = run(["neomutt", "-n", "-F", str(rc), "-s", "back to alpha", "--", ALICE],
               input=b"Reply from beta.\n", env={"HOME": str(tmp_path)})
    assert proc.returncode == 0, proc.stdout.decode() + proc.stderr.decode()
    pop3s = lab.address("pop3s")[1]
    curl = ["curl", "--silent", "--show-error", "--max-time", "10", "--cacert", str(lab.ca_path),
            "--user", f"{ALICE}:{password(lab, ALICE)}", f"pop3s://localhost:{pop3s}/1"]
    deadline = time.monotonic() + 20
    while True:
        fetched = run(curl, timeout=20)
        if fetched.returncode == 0 and fetched.stdout or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    assert fetched.returncode == 0 and fetched.stdout, fetched.stderr.decode()
    msg = email.message_from_bytes(fetched.stdout, policy=email.policy.default)
    assert msg["Subject"] == "back to alpha" and msg.get_content().strip() == "Reply from beta."
    received = msg.get_all("Received")
    assert len(received) == 2
    assert "by mail.alpha.test" in received[0] and "from mx1.beta.test" in received[0]
    assert "by mx1.beta.test" in received[1] and "ESMTPSA" in received[1]
