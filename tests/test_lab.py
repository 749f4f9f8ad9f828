"""The Lab runtime: one lab thread, idempotent start, clean stop, two labs side by side."""

from __future__ import annotations

import json
import smtplib
import socket
import threading

import pytest
from conftest import fast_limits

from maillab import Lab
from maillab.services import PortBusy


def _lab_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name.startswith("maillab-loop")]


def test_start_is_idempotent_and_stop_closes_everything(tmp_path):
    before = len(_lab_threads())
    lab = Lab(tmp_path, ports="auto", limits=fast_limits())
    lab.start()
    lab.start()
    assert len(_lab_threads()) == before + 1
    addr = lab.address("smtp")
    with smtplib.SMTP(*addr, timeout=5) as c:
        assert c.noop()[0] == 250
    lab.stop()
    assert len(_lab_threads()) == before
    with pytest.raises(OSError):
        socket.create_connection(addr, timeout=2).close()
    lab.stop()  # stopping twice is harmless


def test_every_service_of_every_host_is_listed_with_both_port_numbers(lab):
    rows = lab.status()
    names = {(r["host"], r["service"]) for r in rows}
    for host in lab.topology.hosts:
        assert (host, "smtp") in names
    smtp = next(r for r in rows if r["service"] == "smtp" and r["host"] == "mail.alpha.test")
    assert smtp["standard_port"] == 25 and smtp["lab_port"] > 0 and smtp["state"] == "running"
    assert smtp["address"] == "127.0.0.1"


def test_lab_json_describes_the_lab(lab):
    data = json.loads((lab.directory / "lab.json").read_text())
    assert data["services"]["smtp"]["port"] == lab.address("smtp")[1]
    assert data["services"]["submission"]["tls"] == "starttls"
    assert data["services"]["smtps"]["tls"] == "implicit"
    assert data["users"]["alice@alpha.test"] == "alice-pw"
    assert data["ca"].endswith("ca.pem")
    assert "mx1.beta.test" in data["hosts"]
    assert data["domains"]["beta.test"]["mx"] == [[10, "mx1.beta.test"], [20, "mx2.beta.test"]]


def test_two_labs_in_one_process_do_not_interfere(tmp_path):
    a = Lab(tmp_path / "a", ports="auto", domains=["alpha.test"], limits=fast_limits()).start()
    b = Lab(tmp_path / "b", ports="auto", domains=["alpha.test"], limits=fast_limits()).start()
    try:
        assert a.address("smtp") != b.address("smtp")
        with smtplib.SMTP(*a.address("smtp"), timeout=5) as c:
            c.sendmail("x@outside.test", ["bob@alpha.test"], b"Subject: to a\r\n\r\nhi\r\n")
        assert len(a.store.mailbox("bob@alpha.test").messages()) == 1
        assert len(b.store.mailbox("bob@alpha.test").messages()) == 0
        b.stop()
        with smtplib.SMTP(*a.address("smtp"), timeout=5) as c:
            assert c.noop()[0] == 250
    finally:
        a.stop()
        b.stop()


def test_busy_port_names_the_port_and_the_way_out(tmp_path):
    holder = socket.socket()
    holder.bind(("127.0.0.1", 0))
    holder.listen()
    port = holder.getsockname()[1]
    try:
        lab = Lab(tmp_path, ports={"smtp": port}, domains=["alpha.test"], services=("smtp",))
        with pytest.raises(PortBusy) as exc:
            lab.start()
        assert str(port) in str(exc.value) and "--ports auto" in str(exc.value)
        assert not lab.loop.running
    finally:
        holder.close()


def test_restart_on_the_same_directory_keeps_mail_and_uidvalidity(tmp_path):
    lab = Lab(tmp_path, ports="auto", domains=["alpha.test"], limits=fast_limits()).start()
    with smtplib.SMTP(*lab.address("smtp"), timeout=5) as c:
        c.sendmail("x@outside.test", ["bob@alpha.test"], b"Subject: keep me\r\n\r\nhi\r\n")
    uidvalidity = lab.store.mailbox("bob@alpha.test").uidvalidity
    lab.stop()
    again = Lab(tmp_path, ports="auto", domains=["alpha.test"], limits=fast_limits()).start()
    try:
        mb = again.store.mailbox("bob@alpha.test")
        assert mb.uidvalidity == uidvalidity
        assert [m.uid for m in mb.messages()] == [1]
    finally:
        again.stop()
