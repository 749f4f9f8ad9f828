"""Issue 13: a joined lab's MX is the only service that faces the class. Beyond loopback,
submission, POP3, IMAP and the lab DNS bind 127.0.0.1; on loopback everything stays on
the listen address (one machine, the other class-network tests)."""

from __future__ import annotations

import json
import smtplib
import socket
import ssl

import pytest

from maillab.classnet import ClassDNS
from maillab.classnet.member import join_lab, service_address
from maillab.topology import SERVICES, loopback_aliases_work

LOCAL = ("submission", "smtps", "pop3", "pop3s", "imap", "imaps", "dns")


def _non_loopback_address() -> str | None:
    """This machine's address on its default route (a UDP connect sends nothing)."""
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.connect(("203.0.113.1", 9))  # TEST-NET-3 (RFC 5737): only picks the route
            address = s.getsockname()[0]
    except OSError:
        return None
    return None if address.startswith("127.") or address == "0.0.0.0" else address


def _greeting(address: str, port: int) -> bytes:
    with socket.create_connection((address, port), timeout=10) as s:
        return s.recv(200)


def test_service_address_only_mx_leaves_loopback():
    assert service_address("smtp", "10.0.0.5") == "10.0.0.5"
    assert {service_address(name, "10.0.0.5") for name in LOCAL} == {"127.0.0.1"}
    assert {service_address(name, "127.0.61.4") for name in SERVICES} == {"127.0.61.4"}
    assert service_address("imap", "::1") == "::1"


@pytest.fixture
def class_dns(tmp_path):
    # the class's MX port (a TXT record at the apex): one free on this machine
    host = ClassDNS(tmp_path / "class", port=0, mx_port=_free_port("0.0.0.0")).start()
    yield host
    host.stop()


def _join(class_dns, tmp_path, listen: str):
    key = class_dns.keys.add("erin")
    return join_lab(tmp_path / "erin", class_dns.join_address, key.spec(), listen=listen)


def _free_port(address: str) -> int:
    with socket.socket() as s:
        s.bind((address, 0))
        return s.getsockname()[1]


def test_non_loopback_lab_keeps_all_but_its_mx_on_loopback(class_dns, tmp_path):
    listen = _non_loopback_address()
    if listen is None:
        pytest.skip("no non-loopback address on this machine")
    lab = _join(class_dns, tmp_path, listen)
    lab.start()  # lab ports on 127.0.0.1; any that another lab here holds become free ones
    try:
        services = json.loads((lab.directory / "lab.json").read_text())["services"]
        assert services["smtp"]["host"] == listen
        assert {services[name]["host"] for name in LOCAL} == {"127.0.0.1"}
        assert _greeting(listen, services["smtp"]["port"]).startswith(b"220 ")
        for name in ("submission", "pop3", "imap"):
            with pytest.raises(OSError):  # nothing of the lab but its MX on the class's side
                socket.create_connection((listen, services[name]["port"]), timeout=5).close()
        # the student's own client: submission on loopback, STARTTLS verified against the lab CA
        with smtplib.SMTP("127.0.0.1", services["submission"]["port"], timeout=10) as smtp:
            smtp.starttls(context=ssl.create_default_context(cafile=str(lab.ca_path)))
            assert smtp.ehlo()[0] == 250
        assert _greeting("127.0.0.1", services["imap"]["port"]).startswith(b"* OK")
    finally:
        lab.stop()


@pytest.mark.skipif(not loopback_aliases_work(), reason="needs loopback aliases (Linux)")
def test_loopback_lab_serves_everything_on_its_address(class_dns, tmp_path):
    listen = "127.0.63.7"
    lab = _join(class_dns, tmp_path, listen)
    lab.start()
    try:
        services = lab.lab_json()["services"]
        assert {s["host"] for s in services.values()} == {listen}
        for name, banner in (("smtp", b"220 "), ("submission", b"220 "), ("pop3", b"+OK"), ("imap", b"* OK")):
            assert _greeting(listen, services[name]["port"]).startswith(banner), name
    finally:
        lab.stop()
