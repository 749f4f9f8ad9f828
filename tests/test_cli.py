"""The ``maillab`` command in a subprocess, answered by real clients."""

from __future__ import annotations

import errno
import json
import os
import signal
import smtplib
import socket
import ssl
import subprocess
import sys
import time
from email.message import EmailMessage
from importlib.metadata import entry_points
from pathlib import Path

import pytest

from maillab.lab import _load_service_modules
from maillab.services import FACTORIES

MAILLAB = [sys.executable, "-m", "maillab"]


def test_console_script_is_declared():
    (ep,) = [e for e in entry_points(group="console_scripts") if e.name == "maillab"]
    assert ep.value == "maillab.cli:main"
    from maillab.cli import main

    assert ep.load() is main


def wait_for_lab_json(proc: subprocess.Popen, directory: Path, timeout: float = 30) -> dict:
    path = directory / "lab.json"
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"maillab serve exited early: {proc.communicate()}")
        if path.exists():
            return json.loads(path.read_text())
        time.sleep(0.05)
    raise AssertionError("lab.json never appeared")


def message(sender: str, subject: str) -> EmailMessage:
    msg = EmailMessage()
    msg["From"], msg["To"], msg["Subject"] = sender, "bob@alpha.test", subject
    msg.set_content("hello\n")
    return msg


@pytest.fixture
def served(tmp_path):
    directory = tmp_path / "lab"
    proc = subprocess.Popen(
        [*MAILLAB, "serve", "--ports", "auto", "--dir", str(directory), "--domain", "alpha.test",
         "--user", "carol@alpha.test=carol-pw"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        info = wait_for_lab_json(proc, directory)
        yield proc, directory, info
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate(timeout=10)


def test_serve_answers_smtplib_and_swaks_and_stops_on_sigterm(served):
    proc, directory, info = served
    services = info["services"]
    assert {"smtp", "submission", "smtps"} <= set(services)
    assert services["submission"]["standard_port"] == 587 and services["submission"]["tls"] == "starttls"
    assert info["users"]["carol@alpha.test"] == "carol-pw"
    ca = info["ca"]
    assert Path(ca).exists()
    ctx = ssl.create_default_context(cafile=ca)

    smtp = services["smtp"]
    with smtplib.SMTP(smtp["host"], smtp["port"], timeout=10) as c:  # MX: no AUTH for local mail
        c.send_message(message("alice@alpha.test", "via port 25"))

    sub = services["submission"]
    with smtplib.SMTP(sub["host"], sub["port"], timeout=10) as c:
        c.starttls(context=ctx)
        c.login("carol@alpha.test", "carol-pw")  # the user added with --user
        c.send_message(message("carol@alpha.test", "via port 587"))

    smtps = services["smtps"]
    with smtplib.SMTP_SSL(smtps["host"], smtps["port"], timeout=10, context=ctx) as c:
        c.login("alice", "alice-pw")  # the local part alone is unambiguous here
        c.send_message(message("alice@alpha.test", "via port 465"))

    swaks = subprocess.run(
        ["swaks", "--server", sub["host"], "--port", str(sub["port"]), "--from", "alice@alpha.test",
         "--to", "bob@alpha.test", "--tls", "--tls-verify", "--tls-ca-path", ca,
         "--auth", "PLAIN", "--auth-user", "alice@alpha.test", "--auth-password", "alice-pw",
         "--header", "Subject: via swaks", "--timeout", "10"],
        capture_output=True, text=True, timeout=30)
    assert swaks.returncode == 0, swaks.stdout + swaks.stderr
    assert "235 2.7.0" in swaks.stdout

    new = directory / "mail" / "bob@alpha.test" / "new"
    subjects = sorted(line for f in new.iterdir() for line in f.read_text().splitlines()
                      if line.startswith("Subject:"))
    assert subjects == ["Subject: via port 25", "Subject: via port 465", "Subject: via port 587",
                        "Subject: via swaks"]

    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=15)
    assert proc.returncode == 0, err
    assert "submission" in out and str(sub["port"]) in out and "587" in out
    assert f"CA certificate: {ca}" in out
    assert "maillab: stopped" in out
    with pytest.raises(OSError):
        socket.create_connection((smtp["host"], smtp["port"]), timeout=2).close()


def test_serve_stops_on_ctrl_c(served):
    proc, _directory, info = served
    proc.send_signal(signal.SIGINT)
    out, _err = proc.communicate(timeout=15)
    assert proc.returncode == 0 and "maillab: stopped" in out


def test_busy_port_is_a_clear_error(tmp_path):
    holder = socket.socket()
    # SO_REUSEADDR as the lab's own listeners use: a connection another test just closed
    # (TIME_WAIT on 2525) must not stop the holder from binding, or the lab would get
    # the port and serve until the timeout. A real listener still makes the bind fail.
    holder.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        try:
            holder.bind(("127.0.0.1", 2525))
            holder.listen()
        except OSError as exc:  # someone else holds it already: just as busy
            assert exc.errno == errno.EADDRINUSE
        proc = subprocess.run([*MAILLAB, "serve", "--dir", str(tmp_path / "lab"), "--domain", "alpha.test"],
                              capture_output=True, text=True, timeout=60)
    finally:
        holder.close()
    assert proc.returncode == 2
    assert "port 2525" in proc.stderr and "--ports auto" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_bad_user_option_is_a_clear_error(tmp_path):
    proc = subprocess.run([*MAILLAB, "serve", "--ports", "auto", "--dir", str(tmp_path), "--user", "carol"],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2 and "ADDRESS=PASSWORD" in proc.stderr


def test_tour_prints_the_scenario_and_transcripts():
    proc = subprocess.run([*MAILLAB, "tour"], capture_output=True, text=True, timeout=120,
                          env={**os.environ, "PYTHONIOENCODING": "utf-8"})
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    assert "submission: STARTTLS, AUTH as alice@alpha.test" in out
    inbox = out.split("== bob's mailbox", 1)[1].split("==", 1)[0]
    assert "你好, Bob" in inbox and "alice@alpha.test" in inbox
    assert "C: AUTH PLAIN ****" in out and "alice-pw" not in out
    assert "# start mail input; end with <CRLF>.<CRLF>" in out
    assert "TLS started: TLSv1." in out
    _load_service_modules()
    if "pop3" in FACTORIES:
        assert "== bob reads it over POP3" in out and "RETR 1" in out
    if "imap" in FACTORIES:
        assert "== bob reads it over IMAP" in out and "你好, Bob" in out.split("over IMAP", 1)[1]
