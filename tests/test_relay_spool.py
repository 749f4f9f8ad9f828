"""A relay queue entry outlives its process (maillab/relay/spool.py, issue 15).

The submission port answers 250 for a message to carol@beta.test while both of
beta.test's MX hosts answer 451 (so the message waits in the queue); the lab process
is then killed with SIGKILL, and ``maillab serve`` on the same directory delivers the
message once, and empties the spool.
"""

from __future__ import annotations

import signal
import smtplib
import ssl
import subprocess
import sys
import time
from pathlib import Path

from test_cli import wait_for_lab_json

from maillab.relay.spool import DIRNAME

HOLDING_LAB = """
import sys, time
from maillab import Lab
from maillab.limits import Limits
lab = Lab(sys.argv[1], ports="auto", limits=Limits(relay_retry_first=0.2, relay_retry_max=0.5,
                                                   auth_failure_delay=0.05))
lab.start()
for host in ("mx1.beta.test", "mx2.beta.test"):
    lab.relay.fail(host, "tempfail")
print("ready", flush=True)
time.sleep(600)
"""


def _carol_subjects(directory: Path) -> list[str]:
    found = []
    for sub in ("new", "cur"):
        folder = directory / "mail" / "carol@beta.test" / sub
        if folder.is_dir():
            found += [line for f in folder.iterdir() for line in f.read_text().splitlines()
                      if line.startswith("Subject:")]
    return found


def test_a_queued_message_survives_kill_9_and_is_sent_once(tmp_path) -> None:
    directory = tmp_path / "lab"
    holder = subprocess.Popen([sys.executable, "-c", HOLDING_LAB, str(directory)],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "ready"
        info = wait_for_lab_json(holder, directory)
        sub = info["services"]["submission"]
        ctx = ssl.create_default_context(cafile=info["ca"])
        with smtplib.SMTP(sub["host"], sub["port"], timeout=10) as s:
            s.starttls(context=ctx)
            s.login("alice", "alice-pw")
            s.sendmail("alice@alpha.test", ["carol@beta.test"],
                       b"From: alice@alpha.test\r\nTo: carol@beta.test\r\nSubject: spooled\r\n\r\nhi\r\n")
        assert list((directory / DIRNAME).glob("*.json")), "acknowledged, but not on disk"
        time.sleep(0.5)  # a retry or two fail meanwhile
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.communicate(timeout=10)
    assert _carol_subjects(directory) == []

    (directory / "lab.json").unlink()
    serve = subprocess.Popen([sys.executable, "-m", "maillab", "serve", "--ports", "auto", "--dir", str(directory)],
                             stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        wait_for_lab_json(serve, directory)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and (_carol_subjects(directory) == [] or
                                               list((directory / DIRNAME).glob("*.json"))):
            time.sleep(0.1)
        time.sleep(0.5)  # a second copy would have arrived by now
        assert _carol_subjects(directory) == ["Subject: spooled"]
        assert not list((directory / DIRNAME).iterdir()), "the spool keeps a delivered message"
    finally:
        serve.send_signal(signal.SIGTERM)
        serve.communicate(timeout=15)


def test_flush_puts_an_entry_on_disk_and_passes_over_one_already_gone(tmp_path) -> None:
    from maillab.relay.spool import Spool

    spool = Spool(tmp_path / DIRNAME)
    spool.directory.mkdir()
    (spool.directory / "Q1.eml").write_bytes(b"Subject: x\r\n\r\nhi\r\n")
    (spool.directory / "Q1.json").write_text("{}")
    spool.flush("Q1")  # the SMTP server's step before its 250
    spool.remove("Q1")
    spool.flush("Q1")  # delivered before the worker thread got to it: nothing to keep
