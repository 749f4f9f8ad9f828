"""A class network on one machine: the class DNS in this process (the teacher's kernel),
student labs as ``maillab serve --join`` processes on their own loopback addresses, and
one student lab in this process (so its queue can be inspected). Mail all-to-all over real
SMTP, swaks across labs, a lab stopped and restarted on a new address while mail waits
for it, and a lab that leaves (mail for it bounces with a DSN)."""

from __future__ import annotations

import json
import random
import re
import smtplib
import ssl
import subprocess
import sys
import time
from email.message import EmailMessage
from pathlib import Path

import pytest
from conftest import fast_limits

from maillab.classnet import ClassDNS
from maillab.classnet.member import join_lab
from maillab.topology import loopback_aliases_work

pytestmark = pytest.mark.skipif(not loopback_aliases_work(), reason="needs loopback aliases (Linux)")
STUDENTS = ("alice", "bob", "carol")


class StudentLab:
    """One student's ``maillab serve --join`` process."""

    def __init__(self, name: str, host: ClassDNS, directory: Path, address: str) -> None:
        self.name, self.host, self.directory, self.address = name, host, directory, address
        self.domain = f"{name}.class.test"
        self.user = f"{name}@{self.domain}"
        self.proc: subprocess.Popen | None = None

    def start(self, address: str | None = None) -> StudentLab:
        self.address = address or self.address
        key = self.host.keys.get(self.name) or self.host.keys.add(self.name)
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "maillab", "serve", "--join", self.host.join_address, "--key", key.spec(),
             "--listen", self.address, "--dir", str(self.directory)],
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        deadline = time.monotonic() + 60
        while f"mail.{self.domain}. 60 IN A {self.address}" not in "\n".join(self.host.records()):
            assert self.proc.poll() is None, f"{self.name}'s lab exited: {self.proc.stderr.read()}"
            assert time.monotonic() < deadline, f"{self.name}'s lab did not register"
            time.sleep(0.1)
        while not (self.directory / "lab.json").exists() or self.lab_json().get("users") is None:
            time.sleep(0.1)
        return self

    def lab_json(self) -> dict:
        try:
            return json.loads((self.directory / "lab.json").read_text())
        except (OSError, ValueError):
            return {}

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self.proc = None

    @property
    def password(self) -> str:
        return self.lab_json()["users"][self.user]

    def send(self, to: list[str], subject: str) -> None:
        """Submission with STARTTLS and AUTH, as a mail client of this lab would."""
        msg = EmailMessage()
        msg["From"], msg["To"], msg["Subject"] = self.user, ", ".join(to), subject
        msg.set_content(f"from {self.name}, across the class\n")
        context = ssl.create_default_context(cafile=str(self.directory / "tls" / "ca.pem"))
        with smtplib.SMTP(self.address, 2587, timeout=20) as smtp:
            smtp.starttls(context=context)
            smtp.login(self.user, self.password)
            smtp.send_message(msg)

    def inbox(self) -> list[str]:
        box = self.directory / "mail" / self.user
        return [p.read_text(errors="replace") for sub in ("new", "cur") for p in sorted((box / sub).glob("*"))]


def wait_for(predicate, what: str, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.1)


@pytest.fixture(scope="module")
def classroom(tmp_path_factory):
    root = tmp_path_factory.mktemp("classroom")
    host = ClassDNS(root / "class", port=0).start()
    net = f"127.0.{random.randrange(100, 250)}"
    labs = {name: StudentLab(name, host, root / name, f"{net}.{i}") for i, name in enumerate(STUDENTS, 1)}
    try:
        for lab in labs.values():
            lab.start()
        yield host, labs, net
    finally:
        for lab in labs.values():
            lab.stop()
        host.stop()


def test_all_to_all_across_labs(classroom):
    host, labs, _net = classroom
    for lab in labs.values():
        lab.send([o.user for o in labs.values() if o is not lab], f"hello from {lab.name}")
    for lab in labs.values():
        wait_for(lambda lab=lab: len(lab.inbox()) >= 2, f"{lab.name}'s mail")
        texts = lab.inbox()
        senders = {o.name for o in labs.values() if o is not lab}
        assert {s for s in senders if any(f"Subject: hello from {s}" in t for t in texts)} == senders
        # the message left the sender's lab and arrived over SMTP: Received headers of both
        received = [t for t in texts if "hello from" in t][0]
        assert f"by mail.{lab.domain} (maillab) with ESMTPS" in received  # TLS between labs
        assert "with ESMTPSA" in received  # the sender's submission
    # the class DNS answered each lab's MX lookups, asked from the lab's own address
    peers = {lk.peer for lk in host.lookups if lk.qtype == "MX"}
    assert {lab.address for lab in labs.values()} <= peers


def test_swaks_across_labs(classroom):
    _host, labs, _net = classroom
    alice, carol = labs["alice"], labs["carol"]
    before = len(carol.inbox())
    done = subprocess.run(
        ["swaks", "--server", f"{alice.address}:2587", "--tls", "--tls-ca-path", str(alice.directory / "tls/ca.pem"),
         "--auth", "PLAIN", "--auth-user", alice.user, "--auth-password", alice.password,
         "--from", alice.user, "--to", carol.user, "--header", "Subject: swaks across the class"],
        capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stdout + done.stderr
    wait_for(lambda: len(carol.inbox()) > before, "swaks's message at carol")
    # port 25 of a lab is no open relay for the class: carol's MX refuses mail for alice
    refused = subprocess.run(["swaks", "--server", f"{carol.address}:2525", "--from", alice.user,
                              "--to", labs["bob"].user, "--quit-after", "RCPT"],
                             capture_output=True, text=True, timeout=60)
    assert "550 5.7.1" in refused.stdout


def test_lab_stopped_restarted_and_leaving(classroom, tmp_path):
    host, labs, net = classroom
    bob = labs["bob"]
    # dave's lab runs in this process, so its queue can be read
    dave_key = host.keys.add("dave")
    dave = join_lab(tmp_path / "dave", host.join_address, dave_key.spec(), listen=f"{net}.4",
                    limits=fast_limits(relay_retry_first=1.0, relay_retry_max=2.0))
    dave.start()
    try:
        # DANE across labs: each lab publishes TLSA 3 1 1 for its MX; with the dane policy the
        # other lab's certificate (from a CA dave does not know) is authenticated by it
        assert "_25._tcp.mail.carol.class.test. 60 IN TLSA 3 1 1 " in "\n".join(host.records())
        dave.set_tls_policy(default="dane")
        qid = dave.relay.submit("dave@dave.class.test", [labs["carol"].user], b"Subject: dane\r\n\r\nhi\r\n",
                                origin="mail.dave.class.test")
        attempt = dave.relay.wait(qid, timeout=60).attempts[-1]
        assert attempt.result == "delivered" and attempt.tls_verified == "DANE"
        dave.set_tls_policy(default="may")
        bob.stop()
        before = len(bob.inbox())
        dave.relay.submit("dave@dave.class.test", [bob.user], b"Subject: while you were away\r\n\r\nhi\r\n",
                          origin="mail.dave.class.test")
        qid = dave.relay.last().id
        wait_for(lambda: dave.relay.get(qid).state == "retrying", "the message to wait in dave's queue")
        assert "refused" in (dave.relay.get(qid).last_error or "").lower() or dave.relay.get(qid).last_error
        bob.start(address=f"{net}.5")  # back, on a new address: it re-registers its A record
        dave.relay.wait(qid, timeout=60)
        assert dave.relay.get(qid).state == "delivered"
        assert dave.relay.get(qid).attempts[-1].address == f"{net}.5"
        wait_for(lambda: len(bob.inbox()) == before + 1, "bob's waiting mail")
        time.sleep(1)
        assert sum("while you were away" in t for t in bob.inbox()) == 1  # delivered once
        # a lab that answers slowly still gets its mail (alice's relay waits for each reply)
        alice = labs["alice"]
        dave.relay.fail("mail.dave.class.test", "slow", "0.4s")
        alice.send(["dave@dave.class.test"], "slowly")
        dave_box = dave.directory / "mail" / "dave@dave.class.test" / "new"
        wait_for(lambda: any("Subject: slowly" in p.read_text() for p in dave_box.glob("*")), "mail at slow dave")
        dave.relay.heal()
        # dave leaves: its records go, and mail for it bounces back to the sender with a DSN
        text = dave.classnet.leave()
        assert "left the class" in text and "dave.class.test" not in "\n".join(host.records())
        before = len(alice.inbox())
        alice.send(["dave@dave.class.test"], "are you there?")
        wait_for(lambda: len(alice.inbox()) > before, "alice's bounce")
        dsn = alice.inbox()[-1]
        assert "multipart/report" in dsn and "Status: 5.1.2" in dsn
    finally:
        dave.stop()


def test_magics_teacher_and_student_in_one_kernel(tmp_path):
    """%mail class host/key/keys/revoke/export/map and %mail join/leave, in one IPython shell."""
    from IPython.core.interactiveshell import InteractiveShell

    shell = InteractiveShell.instance()
    shell.run_line_magic("load_ext", "maillab")
    mail = lambda line: shell.run_line_magic("mail", line)  # noqa: E731
    try:
        host = repr(mail(f"class host --port 0 --dir {tmp_path / 'class'}"))
        assert "class DNS for class.test at 127.0.0.1:" in host
        join = repr(mail("class key erin")).split("%mail ", 1)[1].splitlines()[0]
        assert join.startswith("join 127.0.0.1:") and "--key erin.class.test:" in join
        mail("class key frank")
        assert "frank.class.test                 revoked" in repr(mail("class revoke frank")) + repr(mail("class keys"))
        mail(f"class export {tmp_path / 'keys.csv'}")
        assert "erin,erin.class.test," in (tmp_path / "keys.csv").read_text()
        address = f"127.0.{random.randrange(100, 250)}.9"
        joined = repr(mail(f"{join} --listen {address} --ports auto --dir {tmp_path / 'erin'}"))
        assert f"mail.erin.class.test. 60 IN A {address}" in joined and "your user: erin@erin.class.test" in joined
        static = mail("class map --static")
        assert "erin.class.test" in repr(static) and "127.0." in static._repr_html_() and "<svg" in static._repr_html_()
        live = mail("class map")
        assert "<svg" in live.widget.value and "erin.class.test" in repr(live)
        figure = mail(f"class map --figure {tmp_path / 'map.png'}")
        assert (tmp_path / "map.png").stat().st_size > 1000 and "class map figure" in repr(figure)
        assert "left the class" in repr(mail("leave"))
        wait_for(lambda: re.search(r"erin\.class\.test +left \d+ s ago", repr(mail("class map --static"))),
                 "the map to show erin gone")
        live.close()
    finally:
        mail("stop")
        mail("class stop")
