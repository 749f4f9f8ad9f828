"""Ports and TLS you can see: the probe, the port/TLS map, the lab's key files.

Real sockets throughout: the probe against the lab's own servers and against
scripted ones (no STARTTLS, silence), real clients (curl, Python ssl) to make
sessions appear in the live port map.
"""

from __future__ import annotations

import os
import socket
import ssl
import stat
import subprocess
import threading
import time
from collections.abc import Iterator

import pytest
from conftest import fast_limits, magic_shell

from maillab import Lab
from maillab.probe import BAD_CERT, NO_STARTTLS, OK, REFUSED, TIMEOUT, WRONG_PROTOCOL, probe
from maillab.views.ports import LivePortMap, figure, port_map


@pytest.fixture(scope="module")
def lab(tmp_path_factory) -> Iterator[Lab]:
    lab = Lab(tmp_path_factory.mktemp("ports") / "lab", ports="auto", limits=fast_limits())
    lab.start()
    yield lab
    lab.stop()


# -- the probe -------------------------------------------------------------------------------


@pytest.mark.parametrize("service,starttls", [("imaps", None), ("pop3s", None), ("smtps", None),
                                              ("smtp", "smtp"), ("pop3", "pop3"), ("imap", "imap")])
def test_probe_reads_handshake_and_verifies_against_the_lab_ca(lab: Lab, service: str,
                                                               starttls: str | None) -> None:
    host = "mx1.beta.test"
    r = probe(*lab.address(service, host), starttls=starttls, protocol=service.rstrip("s") if
              service != "smtps" else "smtp", ca=lab.ca_path, name=host)
    assert r.outcome == OK, r
    assert r.version in ("TLSv1.2", "TLSv1.3") and r.cipher and r.sni == host
    assert r.verified and r.verified_for == host
    assert r.names_ok == {host: True, "localhost": True, lab.topology.hosts[host].address: True}
    leaf, issuer = r.chain
    assert leaf["sans"][:2] == [host, "localhost"] and leaf["issuer"] == issuer["subject"]
    assert leaf["key"].startswith("ECDSA") and len(leaf["sha256"].split(":")) == 32
    if starttls:
        assert r.starttls_offered is True and r.greeting
        assert ("*", f"TLS started: {r.version} {r.cipher}") in r.transcript
    assert "Traceback" not in repr(r) and r._repr_html_()
    # the server's transcript says where TLS started, what was negotiated and the SNI asked for
    tls = [e for e in lab.events.events(kinds=("tls",)) if e.side == "server" and e.host == host][-1]
    assert tls.text == f"TLS started: {r.version} {r.cipher}, SNI {host}" and tls.data["sni"] == host


def test_probe_answers_each_failure_in_one_line(lab: Lab) -> None:
    ca = lab.ca_path
    plain = lab.address("pop3")
    cases = {
        # TLS to a plaintext port: the server's greeting is not a ServerHello
        WRONG_PROTOCOL: probe(*lab.address("smtp"), ca=ca),
        BAD_CERT: probe(*plain, starttls="pop3", ca=ca, name="mx2.beta.test"),
        REFUSED: probe("127.0.0.1", _closed_port(), ca=ca),
    }
    # STARTTLS spoken at an implicit-TLS port: no greeting comes
    silent = probe(*lab.address("imaps"), starttls="imap", ca=ca, timeout=0.5)
    assert silent.outcome == WRONG_PROTOCOL and "implicit" in silent.answer
    for outcome, r in cases.items():
        assert r.outcome == outcome, r
        assert "\n" not in r.answer and "Traceback" not in repr(r)
    assert "not for mx2.beta.test" in cases[BAD_CERT].answer
    assert "--starttls" in cases[WRONG_PROTOCOL].answer


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _scripted(greeting: bytes, replies: dict[bytes, bytes]) -> tuple[int, threading.Thread]:
    """A one-connection server: sends ``greeting``, answers lines starting with a key."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(1)

    def serve() -> None:
        listener.settimeout(10)
        try:
            conn, _ = listener.accept()
        except OSError:
            return
        with conn, listener:
            conn.settimeout(5)
            if greeting:
                conn.sendall(greeting)
            f = conn.makefile("rb")
            try:
                for line in f:
                    for key, reply in replies.items():
                        if line.upper().startswith(key):
                            conn.sendall(reply)
                            break
            except OSError:
                pass

    t = threading.Thread(target=serve, daemon=True)
    t.start()
    return listener.getsockname()[1], t


def test_probe_says_when_starttls_is_not_offered_and_when_nothing_answers() -> None:
    port, t = _scripted(b"220 old.test ESMTP\r\n", {b"EHLO": b"250-old.test\r\n250 SIZE 1000\r\n",
                                                     b"QUIT": b"221 bye\r\n"})
    r = probe("127.0.0.1", port, starttls="smtp")
    t.join(5)
    assert r.outcome == NO_STARTTLS and r.starttls_offered is False
    assert r.answer == "STARTTLS is not offered: the session can only go on in plaintext"
    port, t = _scripted(b"", {})  # accepts, then says nothing: a ClientHello goes unanswered
    r = probe("127.0.0.1", port, timeout=0.5)
    assert r.outcome == TIMEOUT and "timed out" in r.answer
    t.join(5)


def test_probe_discards_what_a_server_injects_after_its_starttls_go_ahead(lab: Lab) -> None:
    port, t = _scripted(b"+OK hi\r\n", {b"CAPA": b"+OK\r\nSTLS\r\n.\r\n",
                                         b"STLS": b"+OK go\r\n-ERR injected\r\n"})
    r = probe("127.0.0.1", port, starttls="pop3", timeout=1)
    t.join(5)
    assert any("discarded" in text and "injection" in text for d, text in r.transcript if d == "*"), r
    assert ("S", "-ERR injected") not in r.transcript


# -- key files and certificates ------------------------------------------------------------------


def test_private_keys_are_0600_and_the_ca_key_is_never_written(lab: Lab) -> None:
    tls_dir = lab.ca_path.parent
    keys = sorted((tls_dir / "certs").glob("*.key"))
    assert len(keys) == len(lab.topology.hosts)
    for key in keys:
        assert stat.S_IMODE(os.stat(key).st_mode) == 0o600, key
    for path in tls_dir.rglob("*"):
        if path.is_file() and path.suffix != ".key":
            assert b"PRIVATE KEY" not in path.read_bytes(), path


@pytest.mark.parametrize("host", ["mail.alpha.test", "mx1.beta.test"])
def test_each_host_certificate_verifies_for_its_name_localhost_and_ip(lab: Lab, host: str) -> None:
    address, port = lab.address("imaps", host)
    ctx = ssl.create_default_context(cafile=str(lab.ca_path))
    for name in (host, "localhost", address):
        with socket.create_connection((address, port), timeout=5) as raw, \
                ctx.wrap_socket(raw, server_hostname=name) as tls:
            assert tls.recv(100).startswith(b"* OK")
    with socket.create_connection((address, port), timeout=5) as raw, \
            pytest.raises(ssl.SSLCertVerificationError):
        ctx.wrap_socket(raw, server_hostname="mail.gamma.test")


# -- the port map -------------------------------------------------------------------------------


def test_port_map_rows_say_which_port_is_which(lab: Lab) -> None:
    pm = port_map(lab)
    assert [r.service for r in pm.rows] == ["smtp", "submission", "smtps", "pop3", "pop3s", "imap", "imaps"]
    assert pm.hosts == list(lab.topology.hosts)
    sub = pm.row("submission")
    assert (sub.standard_port, sub.tls, sub.auth_before_tls) == (587, "starttls", "no")
    assert pm.row("imaps").tls == "implicit" and pm.row("imaps").min_tls == "TLS 1.2"
    assert pm.row("pop3").plaintext_login_refused == "no"  # the lab's loopback leniency
    text = repr(pm)
    assert "● implicit TLS" in text and "◐ STARTTLS" in text
    html = pm._repr_html_()
    assert "SHA-256 fingerprint" in html and "ml-badge ml-ok" in html and "◐" in html and "ml-view" in html
    assert "mx1.beta.test" in pm.certificate_text("mx1.beta.test")
    fig = figure(pm)
    assert fig.get_size_inches()[0] > 6


def test_live_port_map_shows_a_curl_session_and_what_it_negotiated(lab: Lab) -> None:
    pytest.importorskip("ipywidgets")
    view = LivePortMap(lab, interval=0.05)
    try:
        address, port = lab.address("pop3s")
        before = view.updates
        out = subprocess.run(["curl", "--silent", "--show-error", "--max-time", "10", "--cacert",
                              str(lab.ca_path), "-u", "bob@alpha.test:bob-pw",
                              f"pop3s://localhost:{port}/"], capture_output=True, timeout=20)
        assert out.returncode == 0, out.stderr
        deadline = time.monotonic() + 5
        while view.updates == before and time.monotonic() < deadline:
            time.sleep(0.05)
        cell = view.map.row("pop3s").cells["mail.alpha.test"]
        assert cell.total >= 1 and cell.sessions[-1].negotiated.startswith("TLSv1.")
        assert cell.sessions[-1].session in view.grid.value
        view.select.value = ("mail.alpha.test", "pop3s")
        assert "SHA-256 fingerprint" in view.cert.value and "mail.alpha.test" in view.cert.value
    finally:
        view.close()


def test_magics_ports_and_probe(tmp_path) -> None:
    with magic_shell(tmp_path) as (shell, lab):
        static = shell.run_line_magic("mail", "ports --static")
        assert "submission" in repr(static)
        path = tmp_path / "ports.svg"
        shell.run_line_magic("mail", f"ports --figure {path}")
        assert path.read_bytes().lstrip().startswith(b"<?xml")
        cert = shell.run_line_magic("mail", "ports --cert mx2.beta.test")
        assert "SHA-256 fingerprint" in repr(cert)
        r = shell.run_line_magic("mail", "probe imaps")
        assert r.ok and r.verified_for == "mail.alpha.test"
        r = shell.run_line_magic("mail", "probe submission --host mx1.beta.test")
        assert r.ok and r.mode == "STARTTLS (smtp)" and r.verified_for == "mx1.beta.test"
        smtp = lab.service("smtp", "mx1.beta.test")
        r = shell.run_line_magic("mail", f"probe mx1.beta.test:{smtp.port}")
        assert r.outcome == WRONG_PROTOCOL


def test_require_tls_means_no_plaintext_login_anywhere(tmp_path) -> None:
    lab = Lab(tmp_path / "lab", ports="auto", domains=["alpha.test"], require_tls=True, limits=fast_limits(),
              services=("submission", "pop3", "imap"))
    lab.start()
    try:
        with socket.create_connection(lab.address("submission"), timeout=5) as s:
            f = s.makefile("rb")
            f.readline()
            s.sendall(b"EHLO c.test\r\n")
            while f.readline()[3:4] == b"-":
                pass
            s.sendall(b"AUTH PLAIN AGJvYkBhbHBoYS50ZXN0AGJvYi1wdw==\r\nMAIL FROM:<bob@alpha.test>\r\n")
            assert f.readline().startswith(b"530 5.7.0") and f.readline().startswith(b"530 5.7.0")
        with socket.create_connection(lab.address("imap"), timeout=5) as s:
            f = s.makefile("rb")
            assert b"LOGINDISABLED" in f.readline()
            s.sendall(b"a LOGIN bob@alpha.test bob-pw\r\n")
            assert f.readline().startswith(b"a NO [PRIVACYREQUIRED]")
        with socket.create_connection(lab.address("pop3"), timeout=5) as s:
            f = s.makefile("rb")
            f.readline()
            s.sendall(b"CAPA\r\n")
            caps = [f.readline().strip()]
            while caps[-1] != b".":
                caps.append(f.readline().strip())
            assert b"USER" not in caps and b"STLS" in caps
            s.sendall(b"USER bob@alpha.test\r\n")
            assert f.readline().startswith(b"-ERR")
        pm = port_map(lab)
        assert pm.row("pop3").plaintext_login_refused.startswith("yes")
        assert pm.row("submission").plaintext_login_refused == "yes (530 5.7.0)" and pm.require_tls
        lab.policy.plaintext_auth_demo = True  # the teacher's switch wins, for the next session
        assert pm.row("imap").auth_before_tls == "no" and port_map(lab).row("imap").auth_before_tls.startswith("yes")
    finally:
        lab.stop()


def test_starttls_after_a_login_is_refused_in_all_three_protocols(tmp_path) -> None:
    """Only the teacher's switch lets a login come before TLS; STARTTLS after it is refused
    (SMTP 503, POP3 -ERR in TRANSACTION, IMAP BAD in AUTHENTICATED) and the session goes on."""
    lab = Lab(tmp_path / "lab", ports="auto", domains=["alpha.test"], limits=fast_limits(),
              services=("submission", "pop3", "imap"))
    lab.start()
    lab.policy.plaintext_auth_demo = True
    try:
        cases = [("submission", b"EHLO c.test\r\nAUTH PLAIN AGFsaWNlQGFscGhhLnRlc3QAYWxpY2UtcHc=\r\n",
                  b"STARTTLS\r\n", b"503 5.5.1", b"NOOP\r\n", b"250"),
                 ("pop3", b"USER bob@alpha.test\r\nPASS bob-pw\r\n", b"STLS\r\n", b"-ERR", b"NOOP\r\n", b"+OK"),
                 ("imap", b"a LOGIN bob@alpha.test bob-pw\r\n", b"b STARTTLS\r\n", b"b BAD", b"c NOOP\r\n",
                  b"c OK")]
        for service, login, starttls, refused, noop, ok in cases:
            with socket.create_connection(lab.address(service), timeout=5) as s:
                f = s.makefile("rb")
                f.readline()
                s.sendall(login)
                line = f.readline()
                while not line.startswith((b"235", b"+OK bob", b"a OK")):
                    line = f.readline()
                s.sendall(starttls)
                assert f.readline().startswith(refused), service
                s.sendall(noop)
                assert f.readline().startswith(ok), service
    finally:
        lab.stop()
