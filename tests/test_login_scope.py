"""A mail host lets only its own users log in: alice (alpha.test) at mail.alpha.test,
never at mx1.beta.test, as on the internet, where her password exists only at her
own provider. Real clients (smtplib, swaks, imaplib, poplib, curl) on a real lab:
the refusal is the protocol's ordinary failed login, the session goes on, and
nothing is relayed for the outsider.
"""

from __future__ import annotations

import base64
import imaplib
import poplib
import shutil
import smtplib
import ssl
import subprocess

import pytest
from conftest import fast_limits

from maillab import Lab
from maillab.clients.smtp import send
from maillab.compose import compose
from maillab.magics.mail import UsersTable
from maillab.magics.pop3 import run_client_session
from maillab.topology import single_host
from maillab.users import Users

ALICE = ("alice@alpha.test", "alice-pw")
CAROL = ("carol@beta.test", "carol-pw")
HOME, BETA = "mail.alpha.test", "mx1.beta.test"


@pytest.fixture(scope="module")
def mlab(tmp_path_factory):
    lab = Lab(tmp_path_factory.mktemp("scope") / "lab", ports="auto", limits=fast_limits())
    lab.start()
    try:
        yield lab
    finally:
        lab.stop()


def _ctx(lab: Lab) -> ssl.SSLContext:
    return ssl.create_default_context(cafile=str(lab.ca_path))


def _smtp(lab: Lab, service: str, host: str) -> smtplib.SMTP:
    addr, port = lab.address(service, host)
    if service == "smtps":
        return smtplib.SMTP_SSL(addr, port, timeout=10, context=_ctx(lab))
    s = smtplib.SMTP(addr, port, timeout=10)
    s.starttls(context=_ctx(lab))
    return s


@pytest.mark.parametrize("service", ["submission", "smtps"])
def test_smtp_auth_only_at_the_users_own_host(mlab, service):
    before = len(mlab.relay.messages())
    with _smtp(mlab, service, HOME) as s:
        assert s.login(*ALICE)[0] == 235
    with _smtp(mlab, service, BETA) as s:
        with pytest.raises(smtplib.SMTPAuthenticationError) as refused:
            s.login(*ALICE)
        assert refused.value.smtp_code == 535 and refused.value.smtp_error.startswith(b"5.7.8")
        # not logged in: beta's MSA takes no mail from her
        code, text = s.mail(ALICE[0])
        assert code == 530, text
        s.rset()
        # the session goes on: carol, beta's own user, logs in on the same connection
        assert s.login(*CAROL)[0] == 235
    assert len(mlab.relay.messages()) == before  # nothing was relayed


def test_swaks_relay_through_beta_as_alice_is_refused(mlab):
    assert shutil.which("swaks"), "swaks is missing: scripts/test installs it (a set-up error, not a reason to skip)"
    before = len(mlab.relay.messages())

    def swaks(host: str) -> subprocess.CompletedProcess[str]:
        addr, port = mlab.address("submission", host)
        return subprocess.run(
            ["swaks", "--server", addr, "--port", str(port), "--tls", "--tls-verify", "--tls-ca-path",
             str(mlab.ca_path), "--tls-sni", host, "--auth", "PLAIN", "--auth-user", ALICE[0],
             "--auth-password", ALICE[1], "--from", ALICE[0], "--to", "dave@gamma.test",
             "--timeout", "10", "--helo", "student.test"],
            capture_output=True, text=True, timeout=60)

    refused = swaks(BETA)
    assert refused.returncode != 0 and "535 5.7.8" in refused.stdout, refused.stdout
    assert len(mlab.relay.messages()) == before
    ok = swaks(HOME)
    assert ok.returncode == 0 and "235 2.7.0" in ok.stdout, ok.stdout
    assert len(mlab.relay.messages()) == before + 1  # her own provider relays it


def _imap(lab: Lab, host: str) -> imaplib.IMAP4:
    addr, port = lab.address("imap", host)
    c = imaplib.IMAP4(addr, port, timeout=10)
    c.starttls(_ctx(lab))  # (the lab certificates name the host's address too)
    return c


def test_imap_login_only_at_the_users_own_host(mlab):
    c = _imap(mlab, HOME)
    assert c.login(*ALICE)[0] == "OK"
    c.logout()
    c = _imap(mlab, BETA)
    try:
        for attempt in (lambda: c.login(*ALICE),
                        lambda: c.authenticate("PLAIN", lambda _: f"\0{ALICE[0]}\0{ALICE[1]}".encode()),
                        lambda: c.login("alice", ALICE[1])):  # the bare local part is nobody's here
            with pytest.raises(imaplib.IMAP4.error, match=r"\[AUTHENTICATIONFAILED\]"):
                attempt()
        assert c.login("carol", CAROL[1])[0] == "OK"  # the session went on
        assert c.select("INBOX")[0] == "OK"
    finally:
        c.logout()


def _pop3(lab: Lab, host: str) -> poplib.POP3:
    addr, port = lab.address("pop3", host)
    p = poplib.POP3(addr, port, timeout=10)
    p.stls(_ctx(lab))
    return p


def test_pop3_login_only_at_the_users_own_host(mlab):
    p = _pop3(mlab, HOME)
    assert p.user(ALICE[0]).startswith(b"+OK")
    assert p.pass_(ALICE[1]).startswith(b"+OK")
    p.quit()
    p = _pop3(mlab, BETA)
    try:
        p.user(ALICE[0])
        with pytest.raises(poplib.error_proto, match=r"-ERR \[AUTH\]"):
            p.pass_(ALICE[1])
        with pytest.raises(poplib.error_proto, match=r"-ERR \[AUTH\]"):
            p._shortcmd("AUTH PLAIN " + base64.b64encode(f"\0{ALICE[0]}\0{ALICE[1]}".encode()).decode())
        if p.timestamp.search(p.welcome):  # APOP: her password is not known here either
            with pytest.raises(poplib.error_proto, match=r"-ERR \[AUTH\]"):
                p.apop(ALICE[0], ALICE[1])
        p.user(CAROL[0])
        assert p.pass_(CAROL[1]).startswith(b"+OK")  # the session went on
    finally:
        p.quit()


def test_pop3_cross_host_logins_count_as_failed_logins(mlab):
    p = _pop3(mlab, BETA)
    for _ in range(mlab.limits.auth_failures - 1):
        p.user(ALICE[0])
        with pytest.raises(poplib.error_proto) as refused:
            p.pass_(ALICE[1])
        assert refused.value.args[0] == b"-ERR [AUTH] invalid user name or password"
    p.user(ALICE[0])
    with pytest.raises(poplib.error_proto, match="too many failed logins"):
        p.pass_(ALICE[1])
    p.close()


def test_curl_logs_in_only_at_home(mlab):
    assert shutil.which("curl"), "curl is missing: scripts/test installs it (a set-up error, not a reason to skip)"

    def curl(scheme: str, host: str, user: tuple[str, str]) -> int:
        addr, port = mlab.address(scheme, host)
        return subprocess.run(
            ["curl", "-sS", "--max-time", "10", "--ssl-reqd", "--cacert", str(mlab.ca_path),
             "--resolve", f"{host}:{port}:{addr}", "-u", f"{user[0]}:{user[1]}", f"{scheme}://{host}:{port}/"],
            capture_output=True, text=True, timeout=30).returncode

    for scheme in ("imap", "pop3"):
        assert curl(scheme, HOME, ALICE) == 0
        assert curl(scheme, BETA, ALICE) == 67  # CURLE_LOGIN_DENIED
        assert curl(scheme, BETA, CAROL) == 0


def test_lab_clients_go_to_the_users_own_host(mlab):
    # %%mail --from carol@beta.test submits at mx1.beta.test, where her login exists
    result = send(mlab, compose(sender=CAROL[0], to=[ALICE[0]], subject="from carol", body="hi\n"))
    assert result.ok and result.port == mlab.address("submission", BETA)[1]
    # %pop3 carol reads her mailbox at mx1.beta.test
    assert run_client_session(mlab, "carol", tls="stls").user == CAROL[0]
    # %mail users says where each logs in
    rows = {a: (loc, home) for a, _p, loc, home in UsersTable(mlab).rows}
    assert rows[ALICE[0]] == ("alice", HOME) and rows[CAROL[0]] == ("carol", BETA)
    assert "logs in at" in repr(UsersTable(mlab)) and f"at {BETA}" in UsersTable(mlab)._repr_html_()


def test_who_logs_in_where_without_servers():
    topo = Lab(ports="auto").topology  # the default network: four hosts, three domains
    users = Users({**dict([ALICE, CAROL]), "eve@nowhere.test": "eve-pw"})
    at = {name: users.at(lambda d, h=host: topo.keeps_users_of(h, d)) for name, host in topo.hosts.items()}
    assert at[HOME].authenticate(*ALICE) == ALICE[0]
    assert at[BETA].authenticate(*ALICE) is None and at[BETA].resolve("alice") is None
    assert at["mx2.beta.test"].authenticate("carol", CAROL[1]) == CAROL[0]  # beta's second MX keeps it too
    assert at["mail.gamma.test"].authenticate(*CAROL) is None
    # a user of a domain no host is final for logs in at the primary host only
    assert at[HOME].authenticate("eve", "eve-pw") == "eve@nowhere.test"
    assert at[BETA].authenticate("eve", "eve-pw") is None
    assert [u.address for u in at[BETA]] == [CAROL[0]] and ALICE[0] not in at[BETA]
    assert topo.home_of("beta.test").name == BETA and topo.home_of("nowhere.test").name == HOME
    # one host (maillab serve --domain, the embedded lab): everyone logs in there, as before
    one = single_host(["alpha.test"])
    host = one.primary
    assert users.at(lambda d: one.keeps_users_of(host, d)).authenticate(*CAROL) == CAROL[0]
