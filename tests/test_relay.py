"""The lab internet over real sockets: submission -> queue -> MX lookup -> next hop.

alice@alpha.test submits on mail.alpha.test's submission port (STARTTLS + AUTH,
smtplib); the relay finds beta.test's MX in the lab DNS and carries the message
to mx1.beta.test (or mx2) over SMTP; carol reads it from her Maildir or over POP3.
"""

from __future__ import annotations

import asyncio
import email
import gc
import mailbox
import poplib
import smtplib
import socket
import ssl
import time
from email import policy

import dns.asyncresolver
import pytest
from conftest import fast_limits

from maillab import Lab
from maillab.relay.client import ProtocolError, ReplyParser, encode_data
from maillab.relay.mx import RouteError, find_route
from maillab.views.relay import path_from_relay, path_text

ALICE = ("alice@alpha.test", "alice-pw")


@pytest.fixture
def rlab(tmp_path):
    """The default network with lab-short relay times."""
    lab = Lab(tmp_path / "lab", ports="auto", limits=fast_limits(
        relay_retry_first=0.3, relay_retry_max=0.6, relay_expiry=60, relay_connect_timeout=2,
        relay_reply_timeout=10))
    lab.start()
    try:
        yield lab
    finally:
        lab.stop()


def submit(lab: Lab, rcpts: list[str], subject: str = "hello", body: str = "Hi there.\r\n",
           *, extra_headers: str = "", login=ALICE) -> str:
    """Send over mail.alpha.test's submission port like a mail client; the relay queue id."""
    before = {m.id for m in lab.relay.messages()}
    host, port = lab.address("submission", "mail.alpha.test")
    ctx = ssl.create_default_context(cafile=str(lab.ca_path))
    msg = (f"From: {login[0]}\r\nTo: {', '.join(rcpts)}\r\nSubject: {subject}\r\n{extra_headers}\r\n{body}")
    with smtplib.SMTP(host, port, timeout=10) as s:
        s.starttls(context=ctx)
        s.login(*login)
        s.sendmail(login[0], rcpts, msg.encode())
    # Not relay.last(): a quick bounce may already have queued its DSN (from <>) by now.
    [queued] = [m for m in lab.relay.messages() if m.id not in before and m.mail_from == login[0]]
    return queued.id


def maildir(lab: Lab, user: str) -> list[email.message.Message]:
    box = mailbox.Maildir(lab.directory / "mail" / user, factory=None, create=False)
    return [email.message_from_bytes(box.get_bytes(k), policy=policy.default) for k in box.keys()]


def pop3_messages(lab: Lab, user: str, password: str, host: str) -> list[email.message.Message]:
    addr, port = lab.address("pop3", host)
    ctx = ssl.create_default_context(cafile=str(lab.ca_path))
    p = poplib.POP3(addr, port, timeout=10)
    try:
        p.stls(context=ctx)
        p.user(user)
        p.pass_(password)
        count, _size = p.stat()
        return [email.message_from_bytes(b"\r\n".join(p.retr(i)[1]), policy=policy.default)
                for i in range(1, count + 1)]
    finally:
        p.quit()


def received_by(msg: email.message.Message) -> list[str]:
    """The ``by`` host of each Received header, top (newest) first."""
    out = []
    for value in msg.get_all("Received", []):
        text = " ".join(str(value).split())
        out.append(text.split(" by ", 1)[1].split()[0] if " by " in text else "?")
    return out


# -- the three-host path ----------------------------------------------------------------


def test_three_host_relay_with_received_chain(rlab):
    qid = submit(rlab, ["carol@beta.test"], "three hosts", "line one\r\n.starts with a dot\r\n")
    msg = rlab.relay.wait(qid, timeout=15)
    assert msg.state == "delivered", msg.last_error
    attempt = msg.attempts[-1]
    assert (attempt.host, attempt.code, attempt.tls, attempt.protocol) == ("mx1.beta.test", 250, True, "ESMTPS")
    assert "beta.test. MX 10 mx1.beta.test." in attempt.mx
    assert attempt.session and attempt.duration > 0

    [got] = [m for m in maildir(rlab, "carol@beta.test") if m["Subject"] == "three hosts"]
    assert received_by(got) == ["mx1.beta.test", "mail.alpha.test"]
    top, second = (" ".join(str(v).split()) for v in got.get_all("Received"))
    assert top.startswith("from mail.alpha.test") and "with ESMTPS" in top
    assert f"[{rlab.topology.hosts['mail.alpha.test'].address}]" in top  # the true source address
    assert "with ESMTPSA" in second
    assert got.get_content().replace("\r\n", "\n") == "line one\n.starts with a dot\n"  # unstuffed once

    # the hop is in the transcript: a client-side session of mail.alpha.test
    lines = [e for e in rlab.events.events(session=attempt.session)]
    assert all(e.side == "client" and e.host == "mail.alpha.test" for e in lines)
    assert [e.text for e in lines if e.kind == "C"][:2] == ["EHLO mail.alpha.test", "STARTTLS"]
    # PIPELINING (RFC 2920): MAIL, RCPT and DATA leave in one write, the replies follow
    wire = [(e.kind, e.text.split()[0]) for e in lines if e.kind in ("C", "S")]
    i = wire.index(("C", "MAIL"))
    assert wire[i:i + 6] == [("C", "MAIL"), ("C", "RCPT"), ("C", "DATA"), ("S", "250"), ("S", "250"), ("S", "354")]
    # and every state change of the queue entry is an event
    states = [e.data["state"] for e in rlab.events.events(protocol="relay") if e.kind == "state"
              and e.data.get("queue_id") == qid]
    assert states == ["queued", "delivered"]
    assert rlab.relay.queue() == []
    # once finished, the queue keeps it frozen (tests/test_frozen.py): read back whole
    deadline = time.monotonic() + 5
    while type(rlab.relay._messages[qid]) is not bytes and time.monotonic() < deadline:
        time.sleep(0.01)
    assert type(rlab.relay._messages[qid]) is bytes and not gc.is_tracked(rlab.relay._messages[qid])
    assert rlab.relay.get(qid) == msg and rlab.relay.last() == msg


def test_two_domains_in_one_message(rlab):
    qid = submit(rlab, ["carol@beta.test", "dave@gamma.test"], "two domains")
    msg = rlab.relay.wait(qid, timeout=15)
    assert msg.state == "delivered"
    assert sorted(a.host for a in msg.attempts) == ["mail.gamma.test", "mx1.beta.test"]
    assert any(m["Subject"] == "two domains" for m in maildir(rlab, "dave@gamma.test"))


# -- failures ------------------------------------------------------------------------------


def test_mx_fallback_when_mx1_is_down_then_heal(rlab):
    port = rlab.service("smtp", "mx1.beta.test").port
    rlab.relay.fail("mx1.beta.test", "down")
    with pytest.raises(OSError):
        socket.create_connection(("127.0.20.1" if rlab.topology.hosts["mx1.beta.test"].address == "127.0.20.1"
                                  else rlab.topology.hosts["mx1.beta.test"].address, port), timeout=2).close()
    qid = submit(rlab, ["carol@beta.test"], "fallback")
    msg = rlab.relay.wait(qid, timeout=15)
    assert msg.state == "delivered"
    assert [(a.host, a.result) for a in msg.attempts] == [("mx1.beta.test", "unreachable"),
                                                          ("mx2.beta.test", "delivered")]
    assert "refused" in msg.attempts[0].text.lower()
    [got] = [m for m in maildir(rlab, "carol@beta.test") if m["Subject"] == "fallback"]
    assert received_by(got)[0] == "mx2.beta.test"

    rlab.relay.heal("mx1.beta.test")
    svc = rlab.service("smtp", "mx1.beta.test")
    assert svc.port == port and svc.state == "running"
    qid = submit(rlab, ["carol@beta.test"], "mx1 back")
    assert rlab.relay.wait(qid, timeout=15).attempts[-1].host == "mx1.beta.test"


def test_tempfail_is_retried_with_backoff_then_delivered_after_heal(rlab):
    rlab.relay.fail("mx1.beta.test", "tempfail")
    qid = submit(rlab, ["carol@beta.test"], "retry me")
    msg = rlab.relay.wait(qid, states=("retrying",), timeout=10)
    assert msg.attempts[0].code == 451 and msg.attempts[0].host == "mx1.beta.test"
    assert "451" in (msg.last_error or "")
    assert msg.next_attempt is not None
    deadline = time.time() + 10
    while len(msg.attempts) < 2 and time.time() < deadline:  # a second try, still failing
        time.sleep(0.05)
    assert len(msg.attempts) >= 2 and msg.state == "retrying"
    assert [m.id for m in rlab.relay.queue("mail.alpha.test")] == [qid]
    rlab.relay.heal("mx1.beta.test")
    msg = rlab.relay.wait(qid, timeout=15)
    assert msg.state == "delivered"
    assert msg.attempts[-1].code == 250 and msg.retries >= 2
    # a 4xx at RCPT defers: the second MX is not asked (it would say the same)
    assert {a.host for a in msg.attempts} == {"mx1.beta.test"}


def test_reject_bounces_with_a_dsn_alice_reads_over_pop3(rlab):
    rlab.relay.fail("mx1.beta.test", "reject")
    qid = submit(rlab, ["carol@beta.test"], "will bounce")
    msg = rlab.relay.wait(qid, timeout=15)
    assert msg.state == "bounced"
    assert msg.recipients[0].status == "5.7.1" and msg.recipients[0].code == 550
    assert msg.dsn and msg.dsn["delivered_to"] == "alice@alpha.test"
    dsns = [m for m in pop3_messages(rlab, *ALICE, "mail.alpha.test")
            if m.get_content_type() == "multipart/report"]
    assert len(dsns) == 1
    dsn = dsns[0]
    assert dsn.get_param("report-type") == "delivery-status"
    assert dsn["Subject"] == "Undelivered Mail Returned to Sender"
    assert dsn["Auto-Submitted"] == "auto-replied"
    human, status, original = dsn.get_payload()
    assert "550 5.7.1" in human.get_content()
    per_message, per_rcpt = status.get_payload()
    assert per_message["Reporting-MTA"] == "dns; mail.alpha.test"
    assert per_rcpt["Final-Recipient"] == "rfc822; carol@beta.test"
    assert per_rcpt["Original-Recipient"] is None  # no ORCPT was given (RFC 3461 6.3 d)
    assert per_rcpt["Action"] == "failed" and per_rcpt["Status"] == "5.7.1"
    assert per_rcpt["Remote-MTA"] == "dns; mx1.beta.test"
    assert per_rcpt["Diagnostic-Code"].startswith("smtp; 550 5.7.1")
    assert original.get_content_type() == "message/rfc822"
    assert original.get_payload()[0]["Subject"] == "will bounce"


def test_a_host_that_refuses_at_the_greeting_answered_so_it_is_not_unreachable(rlab):
    """421 at the greeting (RFC 5321 3.1): the host was reached and spoke; the attempt
    says "session-failed", keeps the reply code, and the next MX is tried as before."""
    rlab.faults.add("mx1.beta.test", "smtp", "CONNECT", "421 4.3.2 mx1.beta.test is busy", service="smtp")
    try:
        msg = rlab.relay.wait(submit(rlab, ["carol@beta.test"], "greeting refused"), timeout=15)
    finally:
        rlab.faults.heal("mx1.beta.test")
    assert msg.state == "delivered"
    assert [(a.host, a.result, a.code) for a in msg.attempts] == [("mx1.beta.test", "session-failed", 421),
                                                                  ("mx2.beta.test", "delivered", 250)]
    assert "421 4.3.2" in msg.attempts[0].text
    assert "session-failed: 421 4.3.2" in path_text(path_from_relay(rlab, msg.id))


def test_expiry_bounces_with_4_4_7(tmp_path):
    lab = Lab(tmp_path / "lab", ports="auto", limits=fast_limits(
        relay_retry_first=0.2, relay_retry_max=0.3, relay_expiry=1.0, relay_connect_timeout=1))
    lab.start()
    try:
        lab.relay.fail("mx1.beta.test", "down")
        lab.relay.fail("mx2.beta.test", "down")
        qid = submit(lab, ["carol@beta.test"], "nobody home")
        msg = lab.relay.wait(qid, timeout=15)
        assert msg.state == "bounced"
        assert msg.recipients[0].status == "4.4.7"
        assert len(msg.attempts) >= 4  # mx1 and mx2 tried, at least twice each
        assert all(a.result == "unreachable" for a in msg.attempts)
        [dsn] = [m for m in maildir(lab, "alice@alpha.test") if m.get_content_type() == "multipart/report"]
        assert "Status: 4.4.7" in dsn.as_string()
    finally:
        lab.stop()


def test_a_dsn_says_which_host_gave_which_reply_to_which_command(tmp_path):
    """Postfix's words, true to the wire: "host H[A] said: REPLY (in reply to X command)"
    in the human-readable part, the reply itself as the smtp Diagnostic-Code (RFC 3464
    2.3.6); a session that ended without a reply says where it ended, never "said"."""
    lab = Lab(tmp_path / "lab", ports="auto", limits=fast_limits(
        relay_retry_first=0.2, relay_retry_max=0.3, relay_expiry=1.0, relay_connect_timeout=2,
        relay_reply_timeout=10))
    lab.start()
    mx = {h: lab.service("smtp", h).address for h in ("mx1.beta.test", "mx2.beta.test")}
    try:
        def bounce(subject: str, rcpt: str = "carol@beta.test") -> tuple[str, email.message.Message]:
            msg = lab.relay.wait(submit(lab, [rcpt], subject), timeout=20)
            assert msg.state == "bounced", msg
            lab.faults.heal("mx1.beta.test")
            lab.faults.heal("mx2.beta.test")
            lab.set_tls_policy("beta.test", "may")
            [dsn] = [m for m in pop3_messages(lab, *ALICE, "mail.alpha.test")
                     if m.get_content_type() == "multipart/report" and f"Subject: {subject}" in m.as_string()]
            human, status, _original = dsn.get_payload()
            return human.get_content(), status.get_payload()[1]

        human, rcpt = bounce("to nobody", "nobody@beta.test")
        assert f"host mx1.beta.test[{mx['mx1.beta.test']}] said: 550 5.1.1 <nobody@beta.test>" in human
        assert human.rstrip().endswith("(in reply to RCPT TO command)"), human
        assert rcpt["Diagnostic-Code"].startswith("smtp; 550 5.1.1 <nobody@beta.test>")
        # the relay's own transcript names the server it talked to, not the relay's host
        from maillab.views.transcript import render_text

        relayed = [e for e in lab.events.events(protocol="smtp") if e.side == "client" and e.data.get("mx")]
        assert f"(smtp client, from mail.alpha.test to mx1.beta.test [{mx['mx1.beta.test']}:" in render_text(relayed)

        # DATA itself refused (not the RCPT before it, which the host accepted)
        lab.faults.add("mx1.beta.test", "smtp", "DATA", "554 5.3.4 no data today", service="smtp")
        human, rcpt = bounce("no data")
        assert "said: 554 5.3.4 no data today (in reply to DATA command)" in human, human
        assert (rcpt["Diagnostic-Code"], rcpt["Remote-MTA"]) == ("smtp; 554 5.3.4 no data today", "dns; mx1.beta.test")

        # TLS required, STARTTLS refused by both MX hosts: the message expires (4.4.7);
        # the last host's reply to STARTTLS is the diagnostic
        for host in mx:
            lab.faults.add(host, "smtp", "STARTTLS", "454 4.7.0 TLS not available", service="smtp")
        lab.set_tls_policy("beta.test", "encrypt")
        human, rcpt = bounce("tls refused")
        assert "message expired" in human and rcpt["Status"] == "4.4.7"
        assert (f"host mx2.beta.test[{mx['mx2.beta.test']}] said: 454 4.7.0 TLS not available "
                "(in reply to STARTTLS command)") in " ".join(human.split()), human
        assert (rcpt["Diagnostic-Code"], rcpt["Remote-MTA"]) == ("smtp; 454 4.7.0 TLS not available",
                                                                 "dns; mx2.beta.test")

        # a certificate for another name under policy verify: the STARTTLS was answered
        # 220, the handshake failed, and the DSN says so in ssl's words
        zone = lab.dns.zone_text("beta.test")
        lab.dns.replace_zone("beta.test", zone.replace("MX\t10 mx1", "MX\t10 alias").replace("MX\t20 mx2", "MX\t20 alias")
                             + f"\nalias\tIN\tA\t{mx['mx1.beta.test']}\n")
        lab.set_tls_policy("beta.test", "verify")
        human, rcpt = bounce("wrong name")
        assert (f"TLS handshake with alias.beta.test[{mx['mx1.beta.test']}] failed after its 220 reply to STARTTLS:"
                " certificate verify failed: Hostname mismatch") in " ".join(human.split()), human
        assert rcpt["Remote-MTA"] == "dns; alias.beta.test" and "_ssl.c" not in human
        lab.dns.replace_zone("beta.test", zone)

        # the connection closed instead of a reply to RCPT: nobody "said" anything
        lab.faults.add("mx1.beta.test", "smtp", "RCPT", drop=True, service="smtp")
        human, rcpt = bounce("dropped")
        assert f"lost connection with mx1.beta.test[{mx['mx1.beta.test']}] while sending RCPT TO" in human, human
        assert "said:" not in human and "in reply to" not in human
        assert rcpt["Diagnostic-Code"].startswith("x-maillab; ")
    finally:
        lab.stop()


def test_null_mx_bounces_without_a_connection(rlab):
    text = rlab.dns.zone_text("gamma.test").replace("@\tIN\tMX\t10 mail", "@\tIN\tMX\t0 .")
    rlab.dns.replace_zone("gamma.test", text)
    before = {e.session for e in rlab.events.events(protocol="smtp") if e.side == "client"}
    qid = submit(rlab, ["dave@gamma.test"], "to a null MX")
    msg = rlab.relay.wait(qid, timeout=10)
    assert msg.state == "bounced"
    assert msg.recipients[0].status == "5.1.10"
    assert "null MX" in msg.recipients[0].text
    assert [a.host for a in msg.attempts] == [None]  # no SMTP session at all
    after = {e.session for e in rlab.events.events(protocol="smtp") if e.side == "client"}
    assert after == before
    assert any(m.get_content_type() == "multipart/report" for m in maildir(rlab, "alice@alpha.test"))


def test_domain_outside_the_lab_bounces_and_never_leaves(rlab):
    before = rlab.events.last_seq()
    qid = submit(rlab, ["someone@example.com"], "to the real internet")
    msg = rlab.relay.wait(qid, timeout=10)
    assert msg.state == "bounced"
    assert msg.recipients[0].status == "5.1.2"
    assert "outside the lab" in msg.recipients[0].text
    new = rlab.events.events(since=before)
    assert not [e for e in new if e.protocol == "smtp" and e.side == "client"]
    assert not [e for e in new if e.protocol == "dns" and "example.com" in e.text]  # not even asked
    [dsn] = [m for m in maildir(rlab, "alice@alpha.test") if m.get_content_type() == "multipart/report"]
    assert "outside the lab" in dsn.as_string()


def test_mx_pointing_outside_loopback_is_never_contacted(rlab):
    text = rlab.dns.zone_text("gamma.test").replace("@\tIN\tMX\t10 mail", "@\tIN\tMX\t10 evil.gamma.test.")
    text += "evil\tIN\tA\t192.0.2.25\n"
    rlab.dns.replace_zone("gamma.test", text)
    qid = submit(rlab, ["dave@gamma.test"], "to a non-lab address")
    msg = rlab.relay.wait(qid, timeout=10)
    assert msg.state == "bounced" and msg.recipients[0].status == "5.4.4"
    assert "192.0.2.25" in msg.recipients[0].text
    assert [a.address for a in msg.attempts] == [None]


def test_implicit_mx_from_the_a_record(rlab):
    gamma = rlab.topology.hosts["mail.gamma.test"].address
    text = rlab.dns.zone_text("gamma.test").replace("@\tIN\tMX\t10 mail\n", f"@\tIN\tA\t{gamma}\n")
    rlab.dns.replace_zone("gamma.test", text)
    qid = submit(rlab, ["dave@gamma.test"], "implicit")
    msg = rlab.relay.wait(qid, timeout=15)
    assert msg.state == "delivered", msg.last_error
    assert msg.routes["gamma.test"]["targets"][0]["implicit"] is True
    assert any("implicit MX" in n for n in msg.routes["gamma.test"]["notes"])


def test_loop_refused_with_554_5_4_6_and_bounced(rlab):
    hops = "".join(f"Received: from hop{i}.test by hop{i + 1}.test; Mon, 1 Jan 2024 00:00:{i:02d} +0000\r\n"
                   for i in range(25))
    qid = submit(rlab, ["carol@beta.test"], "looping", extra_headers=hops)
    msg = rlab.relay.wait(qid, timeout=15)
    assert msg.state == "bounced"
    assert msg.recipients[0].code == 554 and msg.recipients[0].status == "5.4.6"
    assert msg.recipients[0].command == "end of DATA"
    assert not [m for m in maildir(rlab, "carol@beta.test") if m["Subject"] == "looping"]


def test_no_host_relays_for_an_outsider(rlab):
    for host, rcpt in (("mx1.beta.test", "dave@gamma.test"), ("mail.alpha.test", "carol@beta.test"),
                       ("mail.gamma.test", "someone@example.com"), ("mx2.beta.test", "bob@alpha.test")):
        addr, port = rlab.address("smtp", host)
        with smtplib.SMTP(addr, port, timeout=10) as s:
            s.ehlo("outsider.test")
            assert s.mail("stranger@outsider.test")[0] == 250
            code, text = s.rcpt(rcpt)
            assert code == 550 and b"5.7.1" in text, (host, rcpt, code, text)
    assert rlab.relay.messages() == []


def test_unauthenticated_submission_is_not_relayed(rlab):
    addr, port = rlab.address("submission", "mail.alpha.test")
    with smtplib.SMTP(addr, port, timeout=10) as s:
        s.starttls(context=ssl.create_default_context(cafile=str(rlab.ca_path)))
        s.ehlo("client.test")
        code, _ = s.mail("alice@alpha.test")
        assert code == 530  # authentication first
    assert rlab.relay.messages() == []


# -- routing rules, without a whole delivery -----------------------------------------------------


def _route(lab, domain, **kw):
    async def go():
        return await find_route(domain, lab.dns.async_resolver(), lab_zone=lab.dns.zones.covers, **kw)
    return lab.loop.run(go(), timeout=10)


def test_route_order_and_self_in_mx_list(rlab):
    route = _route(rlab, "beta.test")
    assert [(t.preference, t.name) for t in route.targets] == [(10, "mx1.beta.test"), (20, "mx2.beta.test")]
    # mx2 relaying for beta.test must not hand mail to itself or to an MX it outranks
    route = _route(rlab, "beta.test", self_names=["mx2.beta.test"])
    assert [t.name for t in route.targets] == ["mx1.beta.test"]
    assert any("ignoring mx2.beta.test" in n for n in route.notes)
    with pytest.raises(RouteError) as err:
        _route(rlab, "beta.test", self_names=["mx1.beta.test"])
    assert err.value.permanent and err.value.status == "5.4.6"


def test_route_nxdomain_is_permanent(rlab):
    rlab.dns.replace_zone("gamma.test", rlab.dns.zone_text("gamma.test"))  # still there
    with pytest.raises(RouteError) as err:
        _route(rlab, "nosuch.gamma.test")
    assert err.value.permanent and err.value.status == "5.1.2"


def test_dns_timeout_defers_not_bounces(rlab):
    silent = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    silent.bind(("127.0.0.1", 0))  # a "name server" that never answers
    try:
        async def go():
            res = dns.asyncresolver.Resolver(configure=False)
            res.nameservers, res.port, res.timeout, res.lifetime = ["127.0.0.1"], silent.getsockname()[1], 0.3, 0.6
            return await find_route("beta.test", res)
        with pytest.raises(RouteError) as err:
            rlab.loop.run(go(), timeout=10)
        assert not err.value.permanent and err.value.status.startswith("4.")
    finally:
        silent.close()


# -- the client's wire format ---------------------------------------------------------------------


def test_encode_data_normalises_line_endings_and_stuffs_dots():
    raw = b"a\nb\rc\r\n.\r\n..x\n.\rend"
    assert encode_data(raw) == b"a\r\nb\r\nc\r\n..\r\n...x\r\n..\r\nend\r\n.\r\n"
    # SMTP smuggling shapes can never end the data early at the next hop
    for bad in (b"x\n.\ny", b"x\r.\ry", b"x\n.\r\ny", b"x\r\n.\ny"):
        wire = encode_data(bad)
        assert wire.count(b"\r\n.\r\n") == 1 and wire.endswith(b"\r\n.\r\n")


def test_reply_parser_multiline_and_garbage():
    p = ReplyParser()
    assert p.feed("250-mx1.beta.test") is None
    r = p.feed("250 SIZE 100")
    assert r.code == 250 and r.lines == ["mx1.beta.test", "SIZE 100"]
    r = ReplyParser().feed("451 4.3.0 try later")
    assert r.status == "4.3.0" and r.transient
    with pytest.raises(ProtocolError):
        ReplyParser().feed("hello")
    p = ReplyParser()
    p.feed("250-first")
    with pytest.raises(ProtocolError):
        p.feed("550 changed code mid-reply")


def test_relay_submit_does_not_block_the_lab_loop(rlab):
    rlab.relay.fail("mx1.beta.test", "slow", "150ms")  # per reply: about nine replies
    started = time.monotonic()

    async def submit_on_loop():
        t0 = time.monotonic()
        qid = rlab.relay.submit("alice@alpha.test", ["carol@beta.test"], b"Subject: slow\r\n\r\nx\r\n",
                                origin=rlab.topology.hosts["mail.alpha.test"])
        await asyncio.sleep(0)
        return qid, time.monotonic() - t0

    qid, took = rlab.loop.run(submit_on_loop())
    assert took < 0.1
    msg = rlab.relay.wait(qid, timeout=20)
    assert msg.state == "delivered" and time.monotonic() - started >= 1.0


# -- TLS on the relay's client side -----------------------------------------------------------


def test_implicit_mx_with_tls_required_defers_on_a_name_mismatch(rlab):
    rlab.relay.tls_policy = "verify"  # the cert names mail.gamma.test, the "MX" is gamma.test
    gamma = rlab.topology.hosts["mail.gamma.test"].address
    text = rlab.dns.zone_text("gamma.test").replace("@\tIN\tMX\t10 mail\n", f"@\tIN\tA\t{gamma}\n")
    rlab.dns.replace_zone("gamma.test", text)
    qid = submit(rlab, ["dave@gamma.test"], "tls required")
    msg = rlab.relay.wait(qid, states=("retrying",), timeout=10)
    assert "TLS handshake" in msg.last_error and "gamma.test" in msg.last_error
    rlab.relay.tls_policy = "may"  # opportunistic: noted, then plaintext
    rlab.relay.flush()
    msg = rlab.relay.wait(qid, timeout=10)
    assert msg.state == "delivered" and msg.attempts[-1].tls is False
    notes = [e.text for e in rlab.events.events(session=msg.events_session) if e.kind == "note"]
    assert any("without TLS (opportunistic TLS)" in n for n in notes)


def test_bytes_after_220_ready_are_discarded_before_tls(rlab):
    """A hostile next hop pipelines a fake reply after "220 ready": it must never be
    read as if it had come over TLS (SECURITY.md, TLS section)."""
    from maillab.relay.client import deliver

    ctx = rlab.ca.server_context("evil.beta.test", ["127.0.0.1"])
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(1)
    seen: list[bytes] = []

    def serve() -> None:
        conn, _ = listener.accept()
        f = conn.makefile("rb")
        conn.sendall(b"220 evil.beta.test ESMTP\r\n")
        seen.append(f.readline())
        conn.sendall(b"250-evil.beta.test\r\n250 STARTTLS\r\n")
        seen.append(f.readline())
        conn.sendall(b"220 2.0.0 ready\r\n250 2.1.5 injected in plaintext\r\n")
        tls = ctx.wrap_socket(conn, server_side=True)
        tf = tls.makefile("rb")
        for reply in (b"250-evil.beta.test\r\n250 SIZE 1000\r\n", b"250 2.1.0 ok\r\n", b"550 5.1.1 no such user\r\n",
                      b"221 bye\r\n"):
            seen.append(tf.readline())
            tls.sendall(reply)
        tls.close()

    import threading
    t = threading.Thread(target=serve, daemon=True)
    t.start()

    async def go():
        return await deliver(rlab.events, helo_name="mail.alpha.test", source_address=None,
                             host="evil.beta.test", address="127.0.0.1", port=listener.getsockname()[1],
                             mail_from="alice@alpha.test", rcpts=["carol@beta.test"], data=b"x\r\n",
                             tls_context=rlab.ca.client_context(), queue_id="T")
    try:
        d = rlab.loop.run(go(), timeout=15)
    finally:
        t.join(5)
        listener.close()
    assert d.tls and d.mail_reply.code == 250
    # the injected "250 2.1.5" was thrown away: the RCPT got the real (TLS) answer
    assert d.rcpt_replies["carol@beta.test"].code == 550
    assert seen[2].startswith(b"EHLO")  # after TLS the client starts over with EHLO
    notes = [e.text for e in rlab.events.events(session=d.session) if e.kind == "note"]
    assert any("discarded" in n for n in notes)


def test_submit_from_python_outside_the_lab_thread(rlab):
    qid = rlab.relay.submit("bob@alpha.test", ["dave@gamma.test"], b"Subject: from a cell\r\n\r\nhi\r\n",
                            origin="mail.alpha.test")
    msg = rlab.relay.wait(qid, timeout=10)
    assert msg.state == "delivered" and msg.subject == "from a cell"
    assert msg.routes["gamma.test"]["answer"][0] == "gamma.test. MX 10 mail.gamma.test."


def test_bounce_for_a_sender_of_another_host_travels_with_a_null_sender(rlab):
    rlab.relay.fail("mail.gamma.test", "reject")
    # (not over alpha's submission port: carol's login exists only at beta.test's hosts; a
    # message of hers leaving alpha is one alpha forwards, handed to its queue here)
    qid = rlab.relay.submit("carol@beta.test", ["dave@gamma.test"],
                            b"From: carol@beta.test\r\nSubject: carol via alpha\r\n\r\nHi.\r\n",
                            origin="mail.alpha.test")
    msg = rlab.relay.wait(qid, timeout=15)
    assert msg.state == "bounced"
    # mail.alpha.test does not hold carol's mailbox: the DSN is queued for her MX, from <>
    dsn = rlab.relay.wait(msg.dsn["queue_id"], timeout=15)
    assert dsn.mail_from == "" and dsn.state == "delivered"
    assert dsn.attempts[-1].host == "mx1.beta.test"
    [report] = [m for m in maildir(rlab, "carol@beta.test") if m.get_content_type() == "multipart/report"]
    assert "5.7.1" in report.as_string()


def test_dns_cache_reuses_routes_until_the_zone_changes(tmp_path):
    lab = Lab(tmp_path / "lab", ports="auto", limits=fast_limits(relay_dns_cache=60))
    lab.start()
    try:
        def mx_queries() -> int:
            return sum(1 for e in lab.events.events(protocol="dns") if e.kind == "C" and e.text == "beta.test. IN MX")

        lab.relay.wait(submit(lab, ["carol@beta.test"], "first"), timeout=15)
        assert mx_queries() == 1
        second = lab.relay.wait(submit(lab, ["carol@beta.test"], "second"), timeout=15)
        assert mx_queries() == 1  # the cached route, no new query
        assert any("DNS cache" in n for n in second.routes["beta.test"]["notes"])
        text = lab.dns.zone_text("beta.test").replace("@\tIN\tMX\t20 mx2", "@\tIN\tMX\t5 mx2")
        lab.dns.replace_zone("beta.test", text)  # an edit applies at once
        third = lab.relay.wait(submit(lab, ["carol@beta.test"], "third"), timeout=15)
        assert mx_queries() == 2 and third.attempts[-1].host == "mx2.beta.test"
    finally:
        lab.stop()


# -- the connection cache (Postfix's on-demand connection reuse) ------------------------------


def _burst(lab: Lab, n: int, subject: str = "burst") -> list:
    """n messages queued at once on mail.alpha.test for carol@beta.test; their final states."""
    qids = [lab.relay.submit("alice@alpha.test", ["carol@beta.test"],
                             f"Subject: {subject} {i}\r\n\r\nmessage {i}\r\n".encode(), origin="mail.alpha.test")
            for i in range(n)]
    return [lab.relay.wait(q, timeout=30) for q in qids]


def _client_sessions(lab: Lab, msgs: list) -> list[list]:
    return [lab.events.events(session=m.attempts[-1].session) for m in msgs]


def _cache_a_connection(lab: Lab) -> str:
    """Leave an open session from mail.alpha.test to mx1.beta.test in the relay's connection
    cache, as a burst would (deterministically); the id of the transcript that opened it."""
    from maillab.relay.client import deliver

    source = lab.topology.hosts["mail.alpha.test"].address
    address, port = lab.address("smtp", "mx1.beta.test")

    async def go():
        d = await deliver(lab.events, helo_name="mail.alpha.test", source_address=source, host="mx1.beta.test",
                          address=address, port=port, mail_from="alice@alpha.test", rcpts=["carol@beta.test"],
                          data=b"Subject: opener\r\n\r\nhi\r\n", tls_context=lab.relay.agent.tls_context,
                          keep_open=lambda: True)
        assert d.kept is not None
        lab.relay.agent.connections.put(("mail.alpha.test", source, "mx1.beta.test", address, port, "may"), d.kept)  # the key ends with the TLS policy
        return d.session

    return lab.loop.run(go(), timeout=15)


@pytest.fixture
def burst_lab(tmp_path):
    """Two delivery slots, so a burst makes a backlog; cached connections wait 30 s."""
    lab = Lab(tmp_path / "lab", ports="auto", limits=fast_limits(
        relay_concurrency=2, relay_connection_cache=30, relay_connect_timeout=2, relay_reply_timeout=10))
    lab.start()
    try:
        yield lab
    finally:
        lab.stop()


def test_a_burst_reuses_connections_and_every_message_keeps_its_own_transcript(burst_lab):
    lab = burst_lab
    msgs = _burst(lab, 10)
    assert [m.state for m in msgs] == ["delivered"] * 10
    sessions = _client_sessions(lab, msgs)
    assert len({m.attempts[-1].session for m in msgs}) == 10  # one client transcript per message
    for m, events in zip(msgs, sessions, strict=True):
        lines = [e.text for e in events if e.kind == "C"]
        assert lines.count("MAIL FROM:<alice@alpha.test> SIZE=" + str(m.size)) == 1
        assert m.attempts[-1].tls and m.attempts[-1].protocol == "ESMTPS"
    reused = [m for m in msgs if m.attempts[-1].reused_from]
    fresh = [m for m in msgs if not m.attempts[-1].reused_from]
    assert reused and len(fresh) <= 2  # at most one new session per delivery slot
    handshakes = [e for events in sessions for e in events if e.kind == "tls"]
    assert len(handshakes) == len(fresh)
    for m in reused:
        events = lab.events.events(session=m.attempts[-1].session)
        assert events[0].data.get("reuses") == m.attempts[-1].reused_from
        assert "reusing the open connection" in events[1].text
        assert [e.text for e in events if e.kind == "C"][0] == "RSET"
        assert not any(e.kind == "C" and e.text.startswith(("EHLO", "STARTTLS")) for e in events)
    # every copy carries its own Received line from a TLS session, as without reuse
    copies = [m for m in maildir(lab, "carol@beta.test") if str(m["Subject"]).startswith("burst ")]
    assert len(copies) == 10
    for copy in copies:
        assert "by mx1.beta.test" in copy.get_all("Received")[0] and "ESMTPS" in copy.get_all("Received")[0]


def test_a_message_on_its_own_gets_a_whole_session(burst_lab):
    [msg] = _burst(burst_lab, 1, "alone")
    events = burst_lab.events.events(session=msg.attempts[-1].session)
    lines = [e.text for e in events if e.kind == "C"]
    assert lines[0].startswith("EHLO") and "STARTTLS" in lines and lines[-1] == "QUIT"
    assert msg.attempts[-1].reused_from is None and len(burst_lab.relay.agent.connections) == 0


def test_connection_cache_off_gives_every_message_a_new_session(tmp_path):
    lab = Lab(tmp_path / "lab", ports="auto", limits=fast_limits(relay_concurrency=2, relay_connection_cache=0))
    lab.start()
    try:
        msgs = _burst(lab, 6)
        assert [m.state for m in msgs] == ["delivered"] * 6
        for events in _client_sessions(lab, msgs):
            lines = [e.text for e in events if e.kind == "C"]
            assert "STARTTLS" in lines and lines[-1] == "QUIT"
        assert not any(m.attempts[-1].reused_from for m in msgs)
    finally:
        lab.stop()


def test_idle_cached_connections_close_with_quit(rlab):
    from maillab.relay.client import deliver
    from maillab.relay.connections import ConnectionCache

    address, port = rlab.address("smtp", "mx1.beta.test")
    cache = ConnectionCache(rlab.events, idle=0.3)

    async def go():
        d = await deliver(rlab.events, helo_name="mail.alpha.test", source_address=None, host="mx1.beta.test",
                          address=address, port=port, mail_from="alice@alpha.test", rcpts=["carol@beta.test"],
                          data=b"Subject: kept\r\n\r\nhi\r\n", tls_context=rlab.ca.client_context(),
                          keep_open=lambda: True)
        cache.put(("mail.alpha.test", None, "mx1.beta.test", address, port, False), d.kept)
        return d

    d = rlab.loop.run(go(), timeout=15)
    assert d.data_reply.code == 250 and d.kept is not None and len(cache) == 1
    lines = [e.text for e in rlab.events.events(session=d.session) if e.kind == "C"]
    assert "DATA" in lines and "QUIT" not in lines  # kept open, not ended
    deadline = time.monotonic() + 10
    while len(cache) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert len(cache) == 0
    rlab.loop.run(cache.close(), timeout=10)
    [closing] = [s for s in rlab.events.sessions()
                 if any("closing the cached connection" in e.text for e in rlab.events.events(session=s))]
    events = rlab.events.events(session=closing)
    assert events[0].data.get("reuses") == d.session
    assert [e.text for e in events if e.kind == "C"] == ["QUIT"]
    assert any(e.kind == "S" and e.text.startswith("221") for e in events)


def test_a_failure_injected_drops_cached_connections(burst_lab):
    lab = burst_lab
    _cache_a_connection(lab)
    assert len(lab.relay.agent.connections) == 1  # kept: the cache waits 30 s
    lab.relay.fail("mx1.beta.test", "down")
    assert len(lab.relay.agent.connections) == 0
    [msg] = _burst(lab, 1, "after the failure")
    assert [(a.host, a.result) for a in msg.attempts] == [("mx1.beta.test", "unreachable"),
                                                          ("mx2.beta.test", "delivered")]


def test_a_cached_connection_the_server_closed_is_replaced_in_the_same_transcript(tmp_path):
    lab = Lab(tmp_path / "lab", ports="auto", limits=fast_limits(
        relay_concurrency=2, relay_connection_cache=30, smtp_timeout=0.5))
    lab.start()
    try:
        opener = _cache_a_connection(lab)
        time.sleep(1.5)  # the MX ends the idle session (421, RFC 5321 4.5.3.2)
        [msg] = _burst(lab, 1, "after the timeout")
        assert msg.state == "delivered"
        texts = [e.text for e in lab.events.events(session=msg.attempts[-1].session)]
        assert any("reusing the open connection" in t and opener in t for t in texts)
        assert any("no longer works" in t for t in texts)
        # a whole new session in the same transcript, TLS again
        assert "STARTTLS" in texts and msg.attempts[-1].tls and msg.attempts[-1].reused_from is None
    finally:
        lab.stop()


def test_reuse_without_pipelining_waits_for_the_rset_reply(rlab):
    """A server without PIPELINING gets RSET on its own, then MAIL once RSET is answered."""
    import threading

    from maillab.relay.client import deliver

    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(1)
    seen: list[bytes] = []

    def serve() -> None:
        conn, _ = listener.accept()
        f = conn.makefile("rb")
        conn.sendall(b"220 plain.beta.test ESMTP\r\n")
        replies = {b"EHLO": b"250-plain.beta.test\r\n250 SIZE 1000\r\n", b"MAIL": b"250 ok\r\n",
                   b"RCPT": b"250 ok\r\n", b"DATA": b"354 go\r\n", b"RSET": b"250 reset\r\n", b"QUIT": b"221 bye\r\n"}
        while line := f.readline():
            seen.append(line)
            if line == b".\r\n":
                conn.sendall(b"250 queued\r\n")
            elif line[:4] in replies:
                conn.sendall(replies[line[:4]])
                if line[:4] == b"QUIT":
                    break
        conn.close()

    t = threading.Thread(target=serve, daemon=True)
    t.start()
    port = listener.getsockname()[1]

    async def go():
        common = dict(helo_name="mail.alpha.test", source_address=None, host="plain.beta.test", address="127.0.0.1",
                      port=port, mail_from="alice@alpha.test", rcpts=["carol@beta.test"], tls_context=None)
        first = await deliver(rlab.events, data=b"one\r\n", keep_open=lambda: True, **common)
        second = await deliver(rlab.events, data=b"two\r\n", connection=first.kept, **common)
        return first, second

    try:
        first, second = rlab.loop.run(go(), timeout=15)
    finally:
        t.join(5)
        listener.close()
    assert first.data_reply.code == 250 and first.kept is not None
    assert second.data_reply.code == 250 and second.reused_from == first.session
    commands = [line.split(b" ")[0].rstrip(b"\r\n") for line in seen if not line.startswith((b"one", b"two"))]
    assert commands == [b"EHLO", b"MAIL", b"RCPT", b"DATA", b".", b"RSET", b"MAIL", b"RCPT", b"DATA", b".", b"QUIT"]
    transcript = [(e.kind, e.text) for e in rlab.events.events(session=second.session) if e.kind in ("C", "S")]
    assert transcript[:3] == [("C", "RSET"), ("S", "250 reset"), ("C", "MAIL FROM:<alice@alpha.test> SIZE=5")]
