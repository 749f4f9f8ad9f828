"""TLS between mail servers: per-destination policies, DANE against the lab's TLSA
records, the STARTTLS-stripping middlebox, and what an eavesdropper reads.

Every message here crosses real sockets: alice submits over STARTTLS+AUTH, the
alpha.test MTA looks beta.test's MX up in the lab DNS and connects, through the
middlebox when one is in front of the MX host.
"""

from __future__ import annotations

import imaplib
import poplib
import smtplib
import socket
import threading
import time
from collections.abc import Iterator

import pytest
from conftest import fast_limits, magic_shell

from maillab import Lab
from maillab.middlebox import captures
from maillab.views.eavesdrop import EavesdropView
from maillab.views.relay import QueueView, path_from_relay, path_html, path_text

BETA_MX = ("mx1.beta.test", "mx2.beta.test")


@pytest.fixture
def lab(tmp_path) -> Iterator[Lab]:
    lab = Lab(tmp_path / "lab", ports="auto", limits=fast_limits(relay_retry_first=30))
    lab.start()
    try:
        yield lab
    finally:
        lab.stop()


def send(lab: Lab, secret: str) -> str:
    with smtplib.SMTP(*lab.address("submission"), timeout=10) as s:
        s.starttls(context=lab.ca.client_context())
        s.login("alice@alpha.test", "alice-pw")
        s.sendmail("alice@alpha.test", ["carol@beta.test"],
                   f"Subject: {secret}\r\n\r\nthe secret is {secret}\r\n".encode())
    msg = lab.relay.last()
    deadline = time.monotonic() + 20
    while not msg.final and not msg.attempts and time.monotonic() < deadline:
        time.sleep(0.02)
    while msg.state == "queued" and time.monotonic() < deadline:
        time.sleep(0.02)
    return msg.id


def wire_text(lab: Lab) -> str:
    return "\n".join(it.text for cap in captures(lab) for it in cap.items if it.kind == "line")


@pytest.mark.parametrize("policy", ["may", "encrypt", "verify", "dane"])
def test_stripping_attacker_against_each_policy(lab: Lab, policy: str) -> None:
    for host in BETA_MX:
        lab.mitm(host)
    lab.set_tls_policy("beta.test", policy)
    qid = send(lab, f"launch-{policy}")
    msg = lab.relay.get(qid)
    if policy == "may":
        # opportunistic TLS is silently downgraded: delivered in plaintext, Eve read it all
        msg = lab.relay.wait(qid, timeout=20)
        assert msg.state == "delivered"
        attempt = msg.attempts[-1]
        assert not attempt.tls and attempt.downgraded and attempt.starttls_offered is False
        assert "the secret is launch-may" in wire_text(lab)
        path = path_from_relay(lab, qid)
        assert "DOWNGRADED" in path_text(path)
        assert "ml-err'>⚠ ESMTP, no TLS, DOWNGRADED" in path_html(path)
    else:
        # TLS required: deferred with a clear reason, nothing of the message on the wire
        assert msg.state == "retrying", msg.state
        assert all(a.result == "no-starttls" and not a.tls for a in msg.attempts)  # they answered
        assert "does not offer STARTTLS" in (msg.attempts[-1].text or ""), msg.attempts[-1]
        assert "launch" not in wire_text(lab)
        assert not any(it.text.upper().startswith(("MAIL", "RCPT", "DATA"))
                       for cap in captures(lab) for it in cap.items if it.kind == "line")
    assert all(c.stripped for c in captures(lab))
    from maillab.views.ports import port_map

    cell = port_map(lab).row("smtp").cells["mx1.beta.test"]
    assert cell.middlebox == "STARTTLS-stripping middlebox" and "⚠ STARTTLS-stripping" in port_map(lab).grid_html()


def test_without_the_attacker_each_policy_delivers_and_says_how_it_authenticated(lab: Lab) -> None:
    expected = {"none": (False, None), "may": (True, "lab CA"), "encrypt": (True, None),
                "verify": (True, "lab CA"), "dane": (True, "DANE")}
    for policy, (tls, verified) in expected.items():
        lab.set_tls_policy("beta.test", policy)
        msg = lab.relay.wait(send(lab, f"clean-{policy}"), timeout=20)
        attempt = msg.attempts[-1]
        assert msg.state == "delivered" and attempt.tls is tls, (policy, attempt)
        assert (attempt.tls_verified, attempt.tls_policy, attempt.downgraded) == (verified, policy, False)


def test_dane_refuses_a_key_that_matches_no_tlsa_record(lab: Lab) -> None:
    zone = lab.dns.zone_text("beta.test")
    assert "_25._tcp.mx1\tIN\tTLSA\t3 1 1 " in zone and "DNSSEC-signed" in zone
    forged = "\n".join(ln if "TLSA" not in ln else ln.rsplit(" ", 1)[0] + " " + "00" * 32
                       for ln in zone.splitlines())
    lab.dns.replace_zone("beta.test", forged)
    lab.set_tls_policy("beta.test", "dane")
    msg = lab.relay.get(send(lab, "dane-mismatch"))
    assert msg.state == "retrying"
    assert "matches none of its 1 TLSA record" in msg.attempts[0].text
    assert msg.attempts[0].result == "tls-failed" and msg.attempts[0].code is None
    lab.set_tls_policy(default="may")
    assert lab.tls_policy.level_for("beta.test") == "dane" and lab.tls_policy.level_for("gamma.test") == "may"
    with pytest.raises(ValueError):
        lab.set_tls_policy("beta.test", "sometimes")


def test_a_host_that_answered_without_starttls_is_labelled_so_not_unreachable(lab: Lab) -> None:
    """Policy "encrypt", STARTTLS stripped: both MX hosts answered, greeting and EHLO
    and all; what stopped the relay was its own TLS policy (Postfix: "TLS is required,
    but was not offered by host ..."). Every view must say that, not "unreachable"."""
    for host in BETA_MX:
        lab.mitm(host)
    lab.set_tls_policy("beta.test", "encrypt")
    msg = lab.relay.get(send(lab, "labels"))
    assert msg.state == "retrying", msg.state
    assert [(a.host, a.result, a.starttls_offered, a.protocol) for a in msg.attempts] == [
        (host, "no-starttls", False, "ESMTP") for host in BETA_MX]
    [carol] = msg.recipients
    assert (carol.state, carol.status) == ("deferred", "4.7.4"), carol  # RFC 3463: security features not supported
    assert carol.text.startswith("no MX host of beta.test took the message (last: mx2.beta.test"), carol.text
    assert "does not offer STARTTLS" in carol.text and msg.last_error == carol.text
    text = path_text(path_from_relay(lab, msg.id))
    assert "no-starttls: mx1.beta.test" in text and "unreachable" not in text, text
    queue = QueueView([msg])
    shown = repr(queue) + queue._repr_html_()
    assert "connect to all MX" not in shown and "does not offer STARTTLS" in shown


def test_middlebox_binds_the_lab_host_address_only_and_goes_away(lab: Lab) -> None:
    from maillab.views.ports import LivePortMap

    svc = lab.service("smtp", "mx1.beta.test")
    public = svc.port
    view = LivePortMap(lab, interval=0.05)
    box = lab.mitm("mx1.beta.test")
    deadline = time.monotonic() + 5
    while "STARTTLS-stripping middlebox" not in view.grid.value and time.monotonic() < deadline:
        time.sleep(0.05)
    view.close()
    assert "⚠ STARTTLS-stripping middlebox" in view.grid.value  # the projected map shows the attacker
    assert {s.getsockname() for s in box.server.sockets} == {(svc.address, public)}
    assert box.hidden_port != public and lab.address("smtp", "mx1.beta.test") == (svc.address, public)
    from maillab.middlebox import _check_lab_address

    for outside in ("0.0.0.0", "192.0.2.1", "127.9.9.9"):
        with pytest.raises(ValueError, match="lab addresses only"):
            _check_lab_address(lab, outside)
    lab.mitm("mx1.beta.test", on=False)
    assert lab.service("smtp", "mx1.beta.test").port == public
    notes = [e.text for e in lab.events.events(protocol="wire", kinds=("note",)) if e.host == "mx1.beta.test"]
    assert notes[0].startswith("a STARTTLS-stripping middlebox now listens on") and "is gone" in notes[-1]
    with socket.create_connection((svc.address, public), timeout=5) as s:  # the real server again
        f = s.makefile("rb")
        assert f.readline().startswith(b"220")
        s.sendall(b"EHLO x.test\r\n")
        lines = [f.readline()]
        while lines[-1][3:4] == b"-":
            lines.append(f.readline())
        assert b"250-STARTTLS\r\n" in lines


def test_eavesdropper_reads_a_plaintext_login_and_only_record_sizes_of_a_tls_one(lab: Lab) -> None:
    lab.mitm("mail.alpha.test", service="pop3", strip=False)
    lab.mitm("mail.alpha.test", service="imap", strip=False)
    p = poplib.POP3(*lab.address("pop3"), timeout=5)
    p.user("bob@alpha.test")
    p.pass_("bob-pw")
    p.quit()
    p = poplib.POP3(*lab.address("pop3"), timeout=5)
    p.stls(lab.ca.client_context())
    p.user("bob@alpha.test")
    p.pass_("bob-pw")
    p.quit()
    imap = imaplib.IMAP4(*lab.address("imap"), timeout=5)
    imap.authenticate("PLAIN", lambda _challenge: b"\0bob@alpha.test\0bob-pw")
    imap.logout()
    time.sleep(0.2)
    plain_pop, tls_pop, plain_imap = captures(lab)[-3:]
    view = EavesdropView(lab, [plain_pop, tls_pop, plain_imap])
    assert view.secrets() == ["POP3 PASS: password 'bob-pw'",
                              "AUTH PLAIN: user 'bob@alpha.test', password 'bob-pw'"]
    assert tls_pop.tls and not plain_pop.tls
    records = [it for it in tls_pop.items if it.kind == "record"]
    assert records and {r.record_type for r in records} >= {"handshake", "application_data"}
    after = tls_pop.items[next(i for i, it in enumerate(tls_pop.items) if it.kind == "record"):]
    assert all(it.kind in ("record", "note") for it in after)  # nothing readable after the handshake
    assert not any("bob-pw" in e.text for e in lab.events.events())  # the event stream stays masked
    text = repr(view)
    assert "Eve decodes" in text and "TLS handshake" in text
    # the decoded secret is protocol text: "'bob-pw'" broke as "'bob-" / "pw'" (notebook 05)
    assert "Eve decodes: POP3 PASS: password <span class='ml-tok'>&#x27;bob<span class='ml-nb'>-p</span>w&#x27;" \
        in view._repr_html_()
    # the server saw the client's own address (transparent), and its session is found
    assert plain_pop.server_session(lab) is not None
    lab.policy.plaintext_auth_demo = True
    assert "TEACHER SWITCH ON" in EavesdropView(lab)._repr_html_()


def test_relay_client_discards_bytes_injected_after_the_starttls_go_ahead(lab: Lab) -> None:
    """A next hop (or someone on the path) sends a fake reply behind "220 go ahead" in the
    same packet: it arrived in plaintext and must not be read as the first TLS reply."""
    from maillab.relay.client import deliver

    server_ctx = lab.ca.server_context("mx.evil.test", ["127.0.0.1"])
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(1)
    heard: list[bytes] = []

    def serve() -> None:
        listener.settimeout(10)
        conn, _ = listener.accept()
        with conn, listener:
            f = conn.makefile("rb")
            conn.sendall(b"220 mx.evil.test ESMTP\r\n")
            f.readline()
            conn.sendall(b"250-mx.evil.test\r\n250 STARTTLS\r\n")
            f.readline()
            conn.sendall(b"220 2.0.0 go ahead\r\n250-injected\r\n250 AUTH PLAIN\r\n")
            tls = server_ctx.wrap_socket(conn, server_side=True)
            tf = tls.makefile("rb")
            for _ in range(8):
                line = tf.readline()
                heard.append(line)
                if not line or line.startswith(b"QUIT"):
                    break
                reply = {b"EHLO": b"250 mx.evil.test\r\n", b"DATA": b"354 go\r\n"}.get(line[:4], b"250 ok\r\n")
                tls.sendall(reply)
                if line.startswith(b"DATA"):
                    while tf.readline() not in (b".\r\n", b""):
                        pass
                    tls.sendall(b"250 queued\r\n")
            tls.sendall(b"221 bye\r\n")

    t = threading.Thread(target=serve, daemon=True)
    t.start()

    async def go():
        return await deliver(lab.events, helo_name="mail.alpha.test", source_address=None, host="mx.evil.test",
                             address="127.0.0.1", port=listener.getsockname()[1], mail_from="alice@alpha.test",
                             rcpts=["carol@beta.test"], data=b"Subject: s\r\n\r\nx\r\n",
                             tls_context=lab.ca.client_context(), connect_timeout=5, reply_timeout=5)

    d = lab.loop.run(go(), timeout=20)
    t.join(10)
    assert d.tls and d.data_reply is not None and d.data_reply.code == 250
    notes = [e.text for e in lab.events.events(session=d.session, kinds=("note",))]
    assert any("discarded" in n for n in notes), notes
    # the first reply after TLS is the real answer to the new EHLO, not the injected one
    lines = [e.text for e in lab.events.events(session=d.session) if e.kind == "S"]
    assert "250-injected" not in lines


def test_magics_tls_mitm_tap_eve(tmp_path) -> None:
    with magic_shell(tmp_path) as (shell, lab):
        table = shell.run_line_magic("mail", "tls beta.test --policy encrypt")
        assert "encrypt" in repr(table) and lab.tls_policy.level_for("beta.test") == "encrypt"
        shell.run_line_magic("mail", "tls --default none")
        assert lab.tls_policy.default == "none"
        assert "dane" in repr(shell.run_line_magic("mail", "tls gamma.test --policy dane"))
        assert "not DNSSEC-signed" in repr(shell.run_line_magic("mail", "tls"))
        out = shell.run_line_magic("mail", "mitm mx1.beta.test")
        assert "STARTTLS-stripping" in repr(out) and "mx1.beta.test/smtp" in lab.middleboxes
        shell.run_line_magic("mail", "mitm mx1.beta.test --off")
        assert not lab.middleboxes
        shell.run_line_magic("mail", "tap mail.alpha.test pop3")
        p = poplib.POP3(*lab.address("pop3"), timeout=5)
        p.user("bob@alpha.test")
        p.pass_("bob-pw")
        p.quit()
        time.sleep(0.2)
        view = shell.run_line_magic("mail", "eve")
        assert "Eve decodes" in repr(view)
        assert "pop3" in repr(shell.run_line_magic("mail", "eve --list"))
        shell.run_line_magic("mail", "tap mail.alpha.test pop3 --off")
        # every service tapped: any new session can be looked at by its own id
        assert "in front of 28 services" in repr(shell.run_line_magic("mail", "tap --all"))
        imap = imaplib.IMAP4_SSL(*lab.address("imaps", "mx2.beta.test"), ssl_context=lab.ca.client_context(),
                                 timeout=10)
        imap.login("carol@beta.test", "carol-pw")
        imap.logout()
        time.sleep(0.2)
        server_session = [e.session for e in lab.events.events(kinds=("opened",))
                          if e.side == "server" and e.data.get("service") == "imaps"][-1]
        seen = shell.run_line_magic("mail", f"eve {server_session}")
        assert len(seen.captures) == 1 and seen.captures[0].tls and seen.secrets() == []
        assert "TLS application_data" in repr(seen) and "carol-pw" not in repr(seen)
        shell.run_line_magic("mail", "tap --all --off")
        assert not lab.middleboxes


def test_teacher_switch_lets_eve_read_a_submission_login_and_the_message(lab: Lab) -> None:
    with smtplib.SMTP(*lab.address("submission"), timeout=10) as s:
        s.ehlo("c.test")
        assert not s.has_extn("auth")  # a real server: no AUTH before STARTTLS
    lab.policy.plaintext_auth_demo = True
    lab.mitm("mail.alpha.test", service="submission", strip=False)
    with smtplib.SMTP(*lab.address("submission"), timeout=10) as s:
        s.ehlo("c.test")
        s.login("alice@alpha.test", "alice-pw")  # smtplib uses AUTH PLAIN
        s.sendmail("alice@alpha.test", ["bob@alpha.test"], b"Subject: demo\r\n\r\nthe body crosses in the clear\r\n")
    time.sleep(0.2)
    view = EavesdropView(lab)
    assert view.secrets() == ["AUTH PLAIN: user 'alice@alpha.test', password 'alice-pw'"]
    assert "the body crosses in the clear" in repr(view) and "TEACHER SWITCH ON" in repr(view)
    from maillab.views.ports import port_map

    assert port_map(lab).row("submission").auth_before_tls.startswith("YES")
