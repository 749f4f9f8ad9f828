"""Real clients against the lab's three SMTP listeners: smtplib, swaks, curl."""

from __future__ import annotations

import base64
import os
import smtplib
import socket
import ssl
import subprocess
from email.message import EmailMessage
from email.policy import SMTP as SMTP_POLICY

import pytest
from conftest import fast_limits

from maillab import Lab

HOST = "mail.alpha.test"


@pytest.fixture
def lab(tmp_path):
    lab = Lab(tmp_path / "lab", ports="auto", domains=["alpha.test"],
              services=("smtp", "submission", "smtps"), limits=fast_limits())
    lab.start()
    yield lab
    lab.stop()


def messages(lab: Lab, user: str = "bob@alpha.test") -> list[bytes]:
    mb = lab.store.mailbox(user)
    mb.sync()
    return [mb.read(m.uid) for m in mb.messages()]


def only_received_prefix(stored: bytes, sent: bytes) -> bytes:
    """The stored file must be one Received header followed by exactly ``sent``."""
    assert stored.endswith(sent)
    header = stored[: len(stored) - len(sent)]
    assert header.startswith(b"Received: from ")
    assert header.count(b"\r\n") == len([ln for ln in header.split(b"\r\n") if ln])
    assert all(ln.startswith(b"\t") for ln in header.split(b"\r\n")[1:-1])  # folded lines
    return header


class NamedSMTP_SSL(smtplib.SMTP_SSL):
    """SMTP_SSL that connects to an address but verifies the certificate for a host name."""

    def __init__(self, address: tuple[str, int], hostname: str, context: ssl.SSLContext) -> None:
        self._address = address
        super().__init__(hostname, address[1], context=context, timeout=10)

    def _get_socket(self, host, port, timeout):
        sock = socket.create_connection(self._address, timeout)
        return self.context.wrap_socket(sock, server_hostname=host)


class NamedSMTP(smtplib.SMTP):
    """SMTP whose STARTTLS verifies the certificate for ``hostname``."""

    def __init__(self, address: tuple[str, int], hostname: str) -> None:
        super().__init__(timeout=10)
        self.connect(*address)
        self._host = hostname


# -- smtplib ------------------------------------------------------------------------

def test_smtplib_mx_plain_delivery(lab):
    sent = b"From: a@ext.test\r\nTo: bob@alpha.test\r\nSubject: plain\r\n\r\nhello\r\n.leading dot\r\n"
    with smtplib.SMTP(*lab.address("smtp"), timeout=10) as s:
        code, text = s.ehlo("student.test")
        assert code == 250 and b"STARTTLS" in text and b"AUTH" not in text
        assert b"SIZE 26214400" in text and b"ENHANCEDSTATUSCODES" in text
        assert s.sendmail("a@ext.test", ["bob@alpha.test"], sent) == {}
        with pytest.raises(smtplib.SMTPRecipientsRefused) as exc:
            s.sendmail("a@ext.test", ["carol@beta.test"], sent)
        assert exc.value.recipients["carol@beta.test"][0] == 550
    (stored,) = messages(lab)
    header = only_received_prefix(stored, sent)
    assert b"from student.test ([127.0.0.1])" in header
    assert b"by mail.alpha.test (maillab) with ESMTP id" in header
    assert b"for <bob@alpha.test>;" in header


def test_postmaster_is_always_accepted(lab):
    """RFC 5321 4.5.1: a server that delivers mail MUST take "postmaster" of its domains,
    in any case, and 4.1.1.3 "<Postmaster>" with no domain; the lab delivers it to the
    domain's first user (alice here), and Received still names the address given."""
    sent = b"From: a@ext.test\r\nSubject: to the postmaster\r\n\r\nyour MX says 550 to me\r\n"
    with smtplib.SMTP(*lab.address("smtp"), timeout=10) as s:
        s.ehlo("student.test")
        for rcpt in ("postmaster@alpha.test", "PostMaster@Alpha.Test", "<Postmaster>"):
            assert s.mail("a@ext.test")[0] == 250
            assert s.rcpt(rcpt)[0] == 250, rcpt
            assert s.data(sent)[0] == 250
            s.rset()
        assert s.mail("a@ext.test")[0] == 250
        assert s.rcpt("postmistress@alpha.test")[0] == 550  # only the one reserved name
    stored = messages(lab, "alice@alpha.test")
    assert len(stored) == 3 and all(m.endswith(sent) for m in stored)
    assert all(b"for <postmaster@alpha.test>;" in m for m in stored)


def test_smtplib_starttls_on_mx_verified_by_host_name(lab):
    with NamedSMTP(lab.address("smtp"), HOST) as s:
        s.starttls(context=lab.ca.client_context())
        code, text = s.ehlo("student.test")
        assert b"STARTTLS" not in text and b"AUTH" not in text
        s.sendmail("a@ext.test", ["bob@alpha.test"], b"Subject: tls\r\n\r\nx\r\n")
    (stored,) = messages(lab)
    assert b"(using TLSv1.3 with cipher " in stored and b"with ESMTPS id" in stored
    with NamedSMTP(lab.address("smtp"), "mail.beta.test") as s:  # wrong name: must fail
        with pytest.raises(ssl.SSLCertVerificationError):
            s.starttls(context=lab.ca.client_context())


@pytest.mark.parametrize("mechanism", ["PLAIN", "LOGIN"])
def test_smtplib_submission_auth(lab, mechanism):
    with NamedSMTP(lab.address("submission"), HOST) as s:
        s.ehlo("student.test")
        assert "auth" not in s.esmtp_features  # never before TLS
        with pytest.raises(smtplib.SMTPNotSupportedError):
            s.login("alice@alpha.test", "alice-pw")
        s.starttls(context=lab.ca.client_context())
        s.ehlo("student.test")
        assert s.esmtp_features["auth"].split() == ["PLAIN", "LOGIN"]
        s.user, s.password = "alice", "wrong-pw"
        with pytest.raises(smtplib.SMTPAuthenticationError) as exc:
            s.auth(mechanism, getattr(s, f"auth_{mechanism.lower()}"), initial_response_ok=False)
        assert exc.value.smtp_code == 535
        s.user, s.password = "alice", "alice-pw"  # the local part alone is unambiguous
        code, _ = s.auth(mechanism, getattr(s, f"auth_{mechanism.lower()}"))
        assert code == 235
        s.sendmail("alice@alpha.test", ["bob@alpha.test"], b"Subject: sub\r\n\r\nx\r\n")
    (stored,) = messages(lab)
    assert b"with ESMTPSA id" in stored
    auth = [e for e in lab.events.events(kinds=("auth",))]
    assert [(e.data["ok"], e.data["mechanism"]) for e in auth] == [(False, mechanism), (True, mechanism)]
    for e in lab.events:
        assert "alice-pw" not in e.text and "wrong-pw" not in e.text
        assert base64.b64encode(b"alice-pw").decode() not in e.text


def test_smtplib_smtps_implicit_tls_verified(lab):
    with NamedSMTP_SSL(lab.address("smtps"), HOST, lab.ca.client_context()) as s:
        s.ehlo("student.test")
        assert b"STARTTLS" not in s.ehlo_resp and "auth" in s.esmtp_features
        with pytest.raises(smtplib.SMTPSenderRefused) as exc:
            s.sendmail("alice@alpha.test", ["bob@alpha.test"], b"x\r\n")
        assert exc.value.smtp_code == 530
        s.login("alice@alpha.test", "alice-pw")
        s.sendmail("alice@alpha.test", ["bob@alpha.test"], b"Subject: 465\r\n\r\nx\r\n")
    (stored,) = messages(lab)
    assert b"with ESMTPSA id" in stored and b"(using TLSv1" in stored
    tls = lab.events.events(kinds=("tls",))
    assert tls and tls[0].data["version"].startswith("TLSv1.")
    with pytest.raises(ssl.SSLCertVerificationError):
        NamedSMTP_SSL(lab.address("smtps"), "mx1.beta.test", lab.ca.client_context())


def test_pipelined_transaction_in_one_write(lab):
    with socket.create_connection(lab.address("smtp"), timeout=10) as sock:
        f = sock.makefile("rb")
        assert f.readline().startswith(b"220 ")
        sock.sendall(b"EHLO pipe.test\r\nMAIL FROM:<a@ext.test>\r\nRCPT TO:<bob@alpha.test>\r\n"
                     b"RCPT TO:<alice@alpha.test>\r\nDATA\r\n")
        replies = []
        while len(replies) < 5:
            line = f.readline()
            if line[3:4] == b" ":
                replies.append(int(line[:3]))
        assert replies == [250, 250, 250, 250, 354]
        sock.sendall(b"Subject: piped\r\n\r\nbody\r\n.\r\nQUIT\r\n")
        assert f.readline().startswith(b"250 2.0.0 Ok: queued as ")
        assert f.readline().startswith(b"221 ")
    assert len(messages(lab)) == 1 and len(messages(lab, "alice@alpha.test")) == 1
    assert b"\tfor <" not in messages(lab)[0]  # two recipients: no "for" clause


def test_big_attachment_and_chinese_subject_byte_exact(lab):
    msg = EmailMessage()
    msg["From"] = "alice@alpha.test"
    msg["To"] = "bob@alpha.test"
    msg["Subject"] = "你好, Bob: 大附件"
    msg.set_content("Hello Bob,\n.a line that starts with a dot\n..and two\n")
    msg.add_attachment(os.urandom(5 * 1024 * 1024), maintype="application",
                       subtype="octet-stream", filename="big.bin")
    sent = msg.as_bytes(policy=SMTP_POLICY)
    assert b"=?utf-8?" in sent and len(sent) > 5_000_000
    with NamedSMTP_SSL(lab.address("smtps"), HOST, lab.ca.client_context()) as s:
        s.login("alice", "alice-pw")
        s.sendmail("alice@alpha.test", ["bob@alpha.test"], sent)
    (stored,) = messages(lab)
    only_received_prefix(stored, sent)
    path = lab.store.mailbox("bob@alpha.test").path / "new"
    (name,) = os.listdir(path)
    assert (path / name).read_bytes() == stored
    import email
    parsed = email.message_from_bytes(stored, policy=email.policy.default)
    assert parsed["Subject"] == "你好, Bob: 大附件"
    payload = [p for p in parsed.iter_attachments()][0].get_content()
    assert len(payload) == 5 * 1024 * 1024
    payload_events = [e for e in lab.events.events(kinds=("C",)) if e.data.get("payload")]
    assert payload_events[-1].data["bytes"] == len(sent) and len(payload_events[-1].text) < 5000


def test_restart_keeps_mail_and_uidvalidity(tmp_path):
    seen = []
    for subject in ("one", "two"):  # the same directory, two lab lifetimes
        lab = Lab(tmp_path / "lab", ports="auto", domains=["alpha.test"], services=("smtp",),
                  limits=fast_limits()).start()
        try:
            with smtplib.SMTP(*lab.address("smtp"), timeout=10) as s:
                s.sendmail("a@ext.test", ["bob@alpha.test"], f"Subject: {subject}\r\n\r\nx\r\n".encode())
            mb = lab.store.mailbox("bob@alpha.test")
            seen.append((mb.uidvalidity, [m.uid for m in mb.messages()], messages(lab)))
        finally:
            lab.stop()
    (uv1, uids1, _), (uv2, uids2, stored) = seen
    assert uv1 == uv2
    assert uids2 == uids1 + [uids1[-1] + 1]
    assert stored[0].endswith(b"Subject: one\r\n\r\nx\r\n") and stored[1].endswith(b"Subject: two\r\n\r\nx\r\n")


# -- swaks -------------------------------------------------------------------------------

def swaks(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["swaks", "--timeout", "10", *args], capture_output=True, text=True, timeout=60)


def test_swaks_mx_starttls_and_smtps(lab):
    host, port = lab.address("smtp")
    r = swaks("--server", host, "--port", str(port), "--from", "a@ext.test", "--to", "bob@alpha.test",
              "--helo", "swaks.test")
    assert r.returncode == 0, r.stdout + r.stderr
    r = swaks("--server", host, "--port", str(port), "--from", "a@ext.test", "--to", "carol@beta.test")
    assert r.returncode != 0 and "550 5.7.1" in r.stdout
    _, sub = lab.address("submission")
    r = swaks("--server", host, "--port", str(sub), "--tls", "--tls-verify", "--tls-ca-path", str(lab.ca_path),
              "--tls-sni", HOST, "--auth", "LOGIN", "--auth-user", "alice@alpha.test",
              "--auth-password", "alice-pw", "--from", "alice@alpha.test", "--to", "bob@alpha.test")
    assert r.returncode == 0, r.stdout + r.stderr
    _, smtps = lab.address("smtps")
    r = swaks("--server", host, "--port", str(smtps), "--tls-on-connect", "--auth", "PLAIN",
              "--auth-user", "alice", "--auth-password", "alice-pw", "--from", "alice@alpha.test",
              "--to", "bob@alpha.test")
    assert r.returncode == 0, r.stdout + r.stderr
    r = swaks("--server", host, "--port", str(smtps), "--tls-on-connect", "--auth", "PLAIN",
              "--auth-user", "alice", "--auth-password", "nope", "--from", "alice@alpha.test",
              "--to", "bob@alpha.test")
    assert r.returncode != 0 and "535 5.7.8" in r.stdout
    stored = messages(lab)
    assert len(stored) == 3
    assert [b"with ESMTP id" in stored[0], b"with ESMTPSA" in stored[1], b"with ESMTPSA" in stored[2]] == [True] * 3


# -- curl --------------------------------------------------------------------------------

def curl(lab: Lab, url: str, *args: str, body: bytes) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(["curl", "--silent", "--show-error", "--max-time", "20", "--url", url,
                           "--upload-file", "-", *args], input=body, capture_output=True, timeout=60)


def test_curl_smtp_starttls_and_smtps(lab):
    body = b"From: a@ext.test\r\nTo: bob@alpha.test\r\nSubject: curl\r\n\r\nhi from curl\r\n.dot\r\n"
    host, port = lab.address("smtp")
    r = curl(lab, f"smtp://{host}:{port}/curl.test", "--mail-from", "a@ext.test",
             "--mail-rcpt", "bob@alpha.test", body=body)
    assert r.returncode == 0, r.stderr
    _, sub = lab.address("submission")
    resolve = ["--resolve", f"{HOST}:{sub}:{host}", "--cacert", str(lab.ca_path)]
    r = curl(lab, f"smtp://{HOST}:{sub}/curl.test", "--ssl-reqd", *resolve, "--user", "alice@alpha.test:alice-pw",
             "--mail-from", "alice@alpha.test", "--mail-rcpt", "bob@alpha.test", body=body)
    assert r.returncode == 0, r.stderr
    _, smtps = lab.address("smtps")
    resolve = ["--resolve", f"{HOST}:{smtps}:{host}", "--cacert", str(lab.ca_path)]
    r = curl(lab, f"smtps://{HOST}:{smtps}/curl.test", *resolve, "--user", "alice:alice-pw",
             "--mail-from", "alice@alpha.test", "--mail-rcpt", "bob@alpha.test", body=body)
    assert r.returncode == 0, r.stderr
    r = curl(lab, f"smtps://{HOST}:{smtps}/curl.test", *resolve, "--user", "alice:bad",
             "--mail-from", "alice@alpha.test", "--mail-rcpt", "bob@alpha.test", body=body)
    assert r.returncode == 67  # CURLE_LOGIN_DENIED
    stored = messages(lab)
    assert len(stored) == 3
    for m in stored:
        only_received_prefix(m, body)


def test_submission_to_another_lab_domain_goes_through_the_relay(tmp_path):
    """alice@alpha.test -> carol@beta.test: submission hands over to the relay queue,
    which delivers to beta.test's MX (another lab host, another SMTP listener)."""
    import time

    net = Lab(tmp_path / "net", ports="auto", limits=fast_limits()).start()
    try:
        if net.relay is None:
            pytest.fail("maillab.relay is part of the lab: lab.relay should be set")
        with NamedSMTP_SSL(net.address("smtps"), HOST, net.ca.client_context()) as s:
            s.login("alice@alpha.test", "alice-pw")
            refused = s.sendmail("alice@alpha.test", ["carol@beta.test", "bob@alpha.test"],
                                 b"Subject: across\r\n\r\nhello carol\r\n")
        assert refused == {}
        assert len(messages(net)) == 1  # the local recipient directly
        deadline = time.time() + 15
        while time.time() < deadline and not messages(net, "carol@beta.test"):
            time.sleep(0.1)
        (stored,) = messages(net, "carol@beta.test")
        # two hops, newest on top: beta's MX, then alpha's submission
        assert stored.index(b"by mx1.beta.test") < stored.index(b"by mail.alpha.test")
        assert stored.endswith(b"Subject: across\r\n\r\nhello carol\r\n")
    finally:
        net.stop()


# -- msmtp -------------------------------------------------------------------------------

def test_msmtp_starttls_and_smtps(lab):
    """msmtp (what mutt users send with) turns the LF text it is given into CRLF lines."""
    host, sub = lab.address("submission")
    _, smtps = lab.address("smtps")
    msg = b"Subject: msmtp\n\nhello from msmtp\n.dot line\n"

    def msmtp(port: int, starttls: str, name: str = HOST) -> subprocess.CompletedProcess[bytes]:
        return subprocess.run(
            ["msmtp", f"--host={host}", f"--port={port}", "--tls=on", f"--tls-starttls={starttls}",
             f"--tls-trust-file={lab.ca_path}", f"--tls-host-override={name}", "--auth=on",
             "--user=alice@alpha.test", "--passwordeval=echo alice-pw", "--from=alice@alpha.test",
             "--timeout=10", "bob@alpha.test"], input=msg, capture_output=True, timeout=60)

    assert msmtp(sub, "on").returncode == 0
    assert msmtp(smtps, "off").returncode == 0
    assert msmtp(smtps, "off", name="mx1.beta.test").returncode != 0  # the name is checked
    stored = messages(lab)
    assert len(stored) == 2
    for m in stored:
        assert m.endswith(b"Subject: msmtp\r\n\r\nhello from msmtp\r\n.dot line\r\n")
        assert b"with ESMTPSA id" in m
