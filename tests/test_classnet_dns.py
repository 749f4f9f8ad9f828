"""The class DNS (maillab.classnet): RFC 2136 UPDATE signed with RFC 8945 TSIG, the
per-key update policy, and hostile input. Real clients: nsupdate -y and dig (bind9-dnsutils),
and dnspython's dns.update/dns.query for the cases nsupdate cannot produce."""

from __future__ import annotations

import re
import socket
import struct
import subprocess
import time
from unittest import mock

import dns.message
import dns.query
import dns.rcode
import dns.tsig
import dns.update
import pytest

from maillab.classnet import ClassDNS
from maillab.classnet.keys import KeyFile, parse_key_spec, tsig_key
from maillab.classnet.policy import class_address
from maillab.limits import Limits


@pytest.fixture
def host(tmp_path):
    server = ClassDNS(tmp_path / "class", port=0, limits=Limits(class_update_burst=8, class_update_rate=1.0))
    server.start()
    try:
        yield server
    finally:
        server.stop()


def run_nsupdate(cmd: list[str], script: str) -> subprocess.CompletedProcess:
    """BIND's nsupdate reading ``script`` on its standard input."""
    return subprocess.run(cmd, input=script, capture_output=True, text=True, timeout=30)


def nsupdate(host: ClassDNS, lines: str, key: str | None) -> subprocess.CompletedProcess:
    cmd = ["nsupdate"] + (["-y", f"hmac-sha256:{key}"] if key else [])
    script = f"server {host.listen} {host.port}\nzone class.test\n{lines}\nsend\n"
    return run_nsupdate(cmd, script)


def dig(host: ClassDNS, *args: str) -> str:
    return subprocess.run(["dig", f"@{host.listen}", "-p", str(host.port), *args], capture_output=True,
                          text=True, timeout=30).stdout


def update(host: ClassDNS, msg: dns.message.Message) -> dns.message.Message:
    return dns.query.tcp(msg, host.listen, port=host.port, timeout=10)


def test_nsupdate_registers_and_dig_sees_it(host):
    alice = host.keys.add("alice")
    done = nsupdate(host, "update add mail.alice.class.test 60 A 127.0.77.1\n"
                          "update add alice.class.test 60 MX 10 mail.alice.class.test.", alice.spec())
    assert done.returncode == 0, done.stderr
    answer = dig(host, "alice.class.test", "MX")
    assert "status: NOERROR" in answer and "flags: qr aa" in answer
    assert "10 mail.alice.class.test." in answer and "127.0.77.1" in answer  # A as additional data
    assert "ns.class.test. hostmaster.class.test." in dig(host, "class.test", "SOA", "+short")
    assert "status: REFUSED" in dig(host, "example.com", "A")  # only its zone
    assert "mail.alice.class.test." in dig(host, "class.test", "AXFR")
    # the key's records can be removed again by the same key
    assert nsupdate(host, "update delete alice.class.test MX", alice.spec()).returncode == 0
    assert "status: NOERROR" in dig(host, "alice.class.test", "MX") and "ANSWER: 0" in dig(host, "alice.class.test", "MX")


def test_hostile_updates_change_nothing(host):
    alice = host.keys.add("alice")
    bob = host.keys.add("bob")
    assert nsupdate(host, "update add mail.bob.class.test 60 A 127.0.77.2\n"
                          "update add bob.class.test 60 MX 10 mail.bob.class.test.", bob.spec()).returncode == 0
    before = host.records()
    wrong = f"{alice.name}:c2VjcmV0c2VjcmV0c2VjcmV0c2VjcmV0"  # alice's name, another secret
    cases = [
        ("no key", "update add alice.class.test 60 A 127.0.0.9", None, "REFUSED"),
        ("wrong secret", "update add alice.class.test 60 A 127.0.0.9", wrong, "NOTAUTH"),
        ("unknown key", "update add eve.class.test 60 A 127.0.0.9",
         "eve.class.test:c2VjcmV0c2VjcmV0c2VjcmV0c2VjcmV0", "NOTAUTH"),
        ("take over bob's MX", "update delete bob.class.test MX\n"
                               "update add bob.class.test 60 MX 10 mail.alice.class.test.", alice.spec(), "REFUSED"),
        ("bob's A", "update add mail.bob.class.test 60 A 127.0.0.66", alice.spec(), "REFUSED"),
        ("the zone apex", "update add class.test 60 MX 10 mail.alice.class.test.", alice.spec(), "REFUSED"),
        ("a delegation", "update add alice.class.test 60 NS ns.example.com.", alice.spec(), "REFUSED"),
        ("a public address", "update add alice.class.test 60 A 8.8.8.8", alice.spec(), "REFUSED"),
        # all or nothing: an allowed record in the same UPDATE as a refused one is not added
        ("half allowed", "update add ok.alice.class.test 60 A 127.0.0.9\n"
                         "update add mail.bob.class.test 60 A 127.0.0.9", alice.spec(), "REFUSED"),
    ]
    for what, lines, key, rcode in cases:
        done = nsupdate(host, lines, key)
        assert done.returncode != 0, what
        assert rcode in done.stdout + done.stderr, (what, done.stdout, done.stderr)
    host.keys.revoke("alice")
    done = nsupdate(host, "update add alice.class.test 60 A 127.0.0.9", alice.spec())
    assert done.returncode != 0 and "NOTAUTH" in done.stdout + done.stderr
    assert host.records() == before
    reasons = [u.reason for u in host.updates]
    assert any("unsigned" in r for r in reasons) and any("BADSIG" in r for r in reasons)
    assert any("BADKEY" in r for r in reasons) and any("may not change mail.bob" in r for r in reasons)


def tcp_exchange(host: ClassDNS, wire: bytes) -> bytes:
    """One DNS message over TCP (RFC 7766: two-octet length prefix) and the raw answer, for
    checks dnspython's own query functions would raise on before we could look."""
    with socket.create_connection((host.listen, host.port), timeout=5) as s:
        s.sendall(struct.pack("!H", len(wire)) + wire)
        length = struct.unpack("!H", s.recv(2))[0]
        raw = b""
        while len(raw) < length:
            raw += s.recv(length - len(raw))
    return raw


def test_unknown_key_gets_an_unsigned_tsig_with_badkey(host):
    """RFC 8945 5.3.2: NOTAUTH with an unsigned TSIG record (MAC size 0) naming the error, so
    the client can tell BADKEY from a spoofed answer (BIND's nsupdate said "expected a TSIG")."""
    eve = tsig_key("eve.class.test", "c2VjcmV0c2VjcmV0c2VjcmV0c2VjcmV0")
    msg = dns.update.UpdateMessage("class.test", keyring=eve, keyname=eve.name)
    msg.add("eve.class.test.", 60, "A", "127.0.0.9")
    wire = msg.to_wire()
    raw = tcp_exchange(host, wire)
    assert raw[3] & 0xF == dns.rcode.NOTAUTH
    with pytest.raises(dns.tsig.PeerBadKey):
        dns.message.from_wire(raw, keyring=eve, request_mac=msg.mac)
    reply = dns.message.from_wire(raw, keyring=False)  # read, not verified
    assert reply.tsig[0].error == dns.rcode.BADKEY and reply.tsig[0].mac == b"" and reply.tsig[0].original_id == msg.id


def test_bad_time_replay_other_zone_and_size(host):
    alice = host.keys.add("alice")
    key = tsig_key(alice.name, alice.secret)
    before = host.records()

    def signed(*records: tuple[str, str, str], zone: str = "class.test") -> dns.update.UpdateMessage:
        msg = dns.update.UpdateMessage(zone, keyring=key, keyname=key.name)
        for name, rdtype, rdata in records:
            msg.add(name, 60, rdtype, rdata)
        return msg

    # a signature made ten minutes ago (a clock that is off, or a capture replayed later)
    msg = signed(("mail.alice.class.test.", "A", "127.0.0.9"))
    with mock.patch("dns.message.time.time", return_value=time.time() - 600):
        wire = msg.to_wire()
    raw = tcp_exchange(host, wire)
    assert raw[3] & 0xF == dns.rcode.NOTAUTH
    with pytest.raises(dns.tsig.PeerBadTime):  # BADTIME comes signed with alice's key (RFC 8945 5.2.3)
        dns.message.from_wire(raw, keyring=key, request_mac=msg.mac)
    # the same signed UPDATE twice (a retransmission, or a captured UPDATE replayed): the first
    # answer again, nothing applied twice; here it would bring back a record deleted since
    msg = signed(("gone.alice.class.test.", "A", "127.0.0.9"))
    wire = msg.to_wire()
    first = dns.query.udp(dns.message.from_wire(wire, keyring=key), host.listen, port=host.port, timeout=5)
    assert first.rcode() == dns.rcode.NOERROR
    remove = dns.update.UpdateMessage("class.test", keyring=key, keyname=key.name)
    remove.delete("gone.alice.class.test.")
    assert update(host, remove).rcode() == dns.rcode.NOERROR
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.settimeout(5)
        s.sendto(wire, (host.listen, host.port))
        again = dns.message.from_wire(s.recv(4096), keyring=key, request_mac=msg.mac)
    assert again.rcode() == dns.rcode.NOERROR and again.id == msg.id
    assert "nothing applied twice" in host.updates[-1].reason
    assert not any("gone.alice" in r for r in host.records())
    # another zone: not ours
    assert update(host, signed(("x.example.", "A", "127.0.0.9"), zone="example")).rcode() == dns.rcode.NOTAUTH
    # oversized: more records than one UPDATE may carry
    many = signed(*((f"h{i}.alice.class.test.", "A", "127.0.0.9") for i in range(host.limits.class_update_records + 1)))
    assert update(host, many).rcode() == dns.rcode.REFUSED
    assert [r for r in host.records() if "h1.alice" in r] == []
    assert [r for r in host.records() if "alice" in r] == [r for r in before if "alice" in r]


def test_a_flood_of_updates_is_bounded_per_key(host):
    alice, bob = host.keys.add("alice"), host.keys.add("bob")
    akey, bkey = tsig_key(alice.name, alice.secret), tsig_key(bob.name, bob.secret)
    codes = []
    for i in range(30):
        msg = dns.update.UpdateMessage("class.test", keyring=akey, keyname=akey.name)
        msg.replace("mail.alice.class.test.", 60, "A", f"127.0.0.{i + 1}")
        codes.append(update(host, msg).rcode())
    assert codes[:8] == [dns.rcode.NOERROR] * 8  # the burst
    assert codes.count(dns.rcode.REFUSED) >= 15  # then about one a second
    msg = dns.update.UpdateMessage("class.test", keyring=bkey, keyname=bkey.name)
    msg.replace("mail.bob.class.test.", 60, "A", "127.0.0.99")
    assert update(host, msg).rcode() == dns.rcode.NOERROR  # another key is not slowed by alice


def test_malformed_packets_never_stop_the_server(host):
    alice = host.keys.add("alice")
    key = tsig_key(alice.name, alice.secret)
    good = dns.update.UpdateMessage("class.test", keyring=key, keyname=key.name)
    good.add("mail.alice.class.test.", 60, "A", "127.0.0.9")
    wire = good.to_wire()
    hostile = [
        b"", b"\x00", b"\x12\x34\x28\x00" + b"\x00" * 8,  # UPDATE header, no zone section
        wire[:-10],  # a cut-off TSIG
        wire[:2] + b"\x28\x00\x00\x02" + wire[6:],  # two zones
        wire[:2] + b"\xa8\x00" + wire[4:],  # an UPDATE response (QR=1): dropped
        bytes(range(256)) * 2, b"\xff" * 600,
    ]
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.settimeout(0.5)
        for packet in hostile:
            s.sendto(packet, (host.listen, host.port))
            try:
                reply = s.recv(4096)
                assert len(reply) >= 12 and reply[:2] == packet[:2]
                assert reply[3] & 0xF in (dns.rcode.FORMERR, dns.rcode.NOTAUTH, dns.rcode.REFUSED)
            except TimeoutError:
                pass  # dropped is fine too
    with socket.create_connection((host.listen, host.port), timeout=5) as s:
        s.sendall(b"\xff\xff" + b"\x00" * 100)  # a length the client never sends: closed on idle
    assert update(host, good).rcode() == dns.rcode.NOERROR  # still serving
    assert "127.0.0.9" in "\n".join(host.records())


def test_keys_file_is_shared_and_private(tmp_path):
    keys = KeyFile(tmp_path / "keys.json", "class.test")
    alice = keys.add("Alice")
    assert alice.name == "alice.class.test" and (tmp_path / "keys.json").stat().st_mode & 0o077 == 0
    other = KeyFile(tmp_path / "keys.json", "class.test")  # another process, the same file
    assert other.lookup(tsig_key(alice.name, alice.secret).name) is not None
    other.revoke("alice")
    assert keys.lookup(tsig_key(alice.name, alice.secret).name) is None  # reloaded on change
    assert parse_key_spec(f"hmac-sha256:{alice.spec()}") == (alice.name, alice.secret)
    with pytest.raises(ValueError):
        keys.add("../etc")
    with pytest.raises(ValueError):
        parse_key_spec("alice.class.test:not base64!")
    csv = keys.export_csv("127.0.0.1:5053")
    assert csv.splitlines()[0] == "student,domain,key,join options" and "alice" not in csv  # revoked
    assert class_address("127.0.55.1") and class_address("10.1.2.3") and not class_address("8.8.8.8")
    assert not class_address("0.0.0.0") and not class_address("169.254.1.1")


def test_prerequisites_refresh_and_restart(tmp_path):
    """RFC 2136 prerequisites; a refresh (the same records again) changes nothing, not even
    the serial; the zone and the keys survive a restart of the class DNS."""
    server = ClassDNS(tmp_path / "class", port=0).start()
    try:
        alice = server.keys.add("alice")
        key = tsig_key(alice.name, alice.secret)

        def send(*, prereq: str | None = None) -> int:
            msg = dns.update.UpdateMessage("class.test", keyring=key, keyname=key.name)
            if prereq == "absent":
                msg.absent("alice.class.test.")  # name not in use (YXDOMAIN if it is)
            elif prereq == "present":
                msg.present("alice.class.test.", "MX")  # RRset exists (NXRRSET if not)
            msg.replace("alice.class.test.", 60, "MX", "10 mail.alice.class.test.")
            return update(server, msg).rcode()

        assert send(prereq="present") == dns.rcode.NXRRSET
        assert send(prereq="absent") == dns.rcode.NOERROR
        assert send(prereq="absent") == dns.rcode.YXDOMAIN
        serial = [r for r in server.records() if " SOA " in r]
        assert send() == dns.rcode.NOERROR and server.updates[-1].reason == "nothing to change"
        assert [r for r in server.records() if " SOA " in r] == serial
        assert server.last_seen["alice.class.test"] >= server.joined["alice.class.test"]
    finally:
        server.stop()
    again = ClassDNS(tmp_path / "class", port=0).start()
    try:
        assert "alice.class.test. 60 IN MX 10 mail.alice.class.test." in again.records()
        assert again.keys.get("alice") is not None and again.keys.get("alice").active
        msg = dns.update.UpdateMessage("class.test", keyring=key, keyname=key.name)
        msg.delete("alice.class.test.")
        assert update(again, msg).rcode() == dns.rcode.NOERROR
        assert not any(r.startswith("alice.") for r in again.records())
    finally:
        again.stop()


def test_cli_class_host_key_revoke_export(tmp_path):
    """``maillab class host`` in its own process; ``key``/``keys``/``revoke``/``export`` from
    other processes edit the shared keys file, and the running server follows them."""
    import json
    import sys

    directory = tmp_path / "class"
    cli = [sys.executable, "-m", "maillab", "class"]
    server = subprocess.Popen([*cli, "host", "--listen", "127.0.0.1", "--port", "0", "--dir", str(directory)],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        said = [server.stdout.readline() for _ in range(5)]  # the banner ends with "serving; Ctrl-C stops"
        assert said[0].startswith("class DNS for class.test at 127.0.0.1:") and "serving" in said[-1], said
        info = json.loads((directory / "class.json").read_text())
        assert info["zone"] == "class.test" and info["dns"]["address"] == "127.0.0.1"
        printed = subprocess.run([*cli, "key", "alice", "--dir", str(directory)], capture_output=True,
                                 text=True, timeout=30).stdout.split()
        assert printed[:2] == ["--join", info["join"]] and printed[2] == "--key"
        key = printed[3]
        port = info["dns"]["port"]

        def script(address: str) -> str:
            return f"server 127.0.0.1 {port}\nzone class.test\nupdate add mail.alice.class.test 60 A {address}\nsend\n"

        ok = run_nsupdate(["nsupdate", "-y", f"hmac-sha256:{key}"], script("127.0.0.7"))
        assert ok.returncode == 0, ok.stdout + ok.stderr
        assert "127.0.0.7" in subprocess.run(["dig", "@127.0.0.1", "-p", str(port), "mail.alice.class.test", "+short"],
                                             capture_output=True, text=True, timeout=30).stdout
        assert "alice.class.test\tactive" in subprocess.run([*cli, "keys", "--dir", str(directory)],
                                                            capture_output=True, text=True, timeout=30).stdout
        assert "revoked" in subprocess.run([*cli, "revoke", "alice", "--dir", str(directory)],
                                           capture_output=True, text=True, timeout=30).stdout
        refused = run_nsupdate(["nsupdate", "-v", "-y", f"hmac-sha256:{key}"], script("127.0.0.8"))
        alive = server.poll() is None
        assert refused.returncode != 0 and "NOTAUTH" in refused.stdout + refused.stderr, (
            refused.stdout, refused.stderr, alive, "" if alive else server.stderr.read())
        assert "127.0.0.8" not in subprocess.run(["dig", "@127.0.0.1", "-p", str(port), "mail.alice.class.test",
                                                  "+short"], capture_output=True, text=True, timeout=30).stdout
        export = subprocess.run([*cli, "export", "--dir", str(directory)], capture_output=True, text=True, timeout=30)
        assert export.stdout.startswith("student,domain,key,join options") and "alice" not in export.stdout
    finally:
        server.terminate()
        server.wait(15)


def test_class_map_model_and_views(host):
    """What the teacher's map shows: registered, quiet (no refresh for a while) and not
    registered labs, who looked up whom (by the asker's address), as text, HTML and figure."""
    from maillab.classnet.map import class_map
    from maillab.views.class_map import ClassMapView, figure

    for name, address in (("alice", "127.0.0.41"), ("bob", "127.0.0.42")):
        k = host.keys.add(name)
        key = tsig_key(k.name, k.secret)
        msg = dns.update.UpdateMessage("class.test", keyring=key, keyname=key.name)
        msg.replace(f"{k.name}.", 60, "MX", f"10 mail.{k.name}.")
        msg.replace(f"mail.{k.name}.", 60, "A", address)
        assert update(host, msg).rcode() == dns.rcode.NOERROR
    host.keys.add("carol")
    # alice's lab asks for bob's MX from its own address (as ClassUpstream does)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.41", 0))
        s.settimeout(5)
        s.sendto(dns.message.make_query("bob.class.test", "MX").to_wire(), (host.listen, host.port))
        assert dns.message.from_wire(s.recv(4096)).rcode() == dns.rcode.NOERROR
    host.last_seen["bob.class.test"] -= 10 * host.limits.class_refresh  # bob's laptop closed long ago
    m = class_map(host)
    states = {d.domain: d.state for d in m.domains}
    assert states == {"alice.class.test": "registered", "bob.class.test": "quiet",
                      "carol.class.test": "not registered"}
    assert [(e.asker, e.target, e.count) for e in m.edges] == [("alice.class.test", "bob.class.test", 1)]
    view = ClassMapView(m)
    assert "alice.class.test -> bob.class.test  x1" in repr(view)
    assert "MX ×1" in view._repr_html_() and "127.0.0.42" in view._repr_html_()
    # the graph drawn at the text's size, never scaled down (560 units, or 370 in a
    # narrow output): widths in em, each layout with its own arrow marker
    assert "width:40.000em" in view._repr_html_() and "width:26.429em" in view._repr_html_()
    assert 'url(#ml-arrow-370)' in view._repr_html_() and "min(100%" not in view._repr_html_()
    # arrowheads of one size: sized by the stroke, the busiest arrow's covered its
    # lab's circle and the class DNS at the presenter's scale (notebook 06)
    assert view._repr_html_().count('markerUnits="userSpaceOnUse"') == view._repr_html_().count("<marker ")
    assert len(figure(m).axes[0].patches) >= 4  # three labs, the class DNS, an arrow


def test_class_map_says_a_lab_left(host):
    """A lab that left (an accepted UPDATE took its records away, as `%mail leave` does)
    is shown as left, and when: not "not registered" beside "joined 6 s ago"."""
    from maillab.classnet.map import class_map
    from maillab.views.class_map import ClassMapView, body_html

    k = host.keys.add("dave")
    key = tsig_key(k.name, k.secret)
    join = dns.update.UpdateMessage("class.test", keyring=key, keyname=key.name)
    join.replace(f"{k.name}.", 60, "MX", f"10 mail.{k.name}.")
    join.replace(f"mail.{k.name}.", 60, "A", "127.0.0.44")
    assert update(host, join).rcode() == dns.rcode.NOERROR
    leave = dns.update.UpdateMessage("class.test", keyring=key, keyname=key.name)
    leave.delete(f"{k.name}.")
    leave.delete(f"mail.{k.name}.")
    assert update(host, leave).rcode() == dns.rcode.NOERROR
    host.keys.add("erin")  # a key that never joined is still "not registered"
    host.last_seen["dave.class.test"] -= 6  # the leave, 6 s ago
    m = class_map(host)
    dave = m.domain("dave.class.test")
    assert dave is not None and dave.state == "left" and dave.left == host.last_seen["dave.class.test"]
    assert m.domain("erin.class.test").state == "not registered"
    view = ClassMapView(m)
    assert re.search(r"dave\.class\.test +left [67] s ago ", repr(view))
    page = view._repr_html_()
    # a snapshot and the graph say when by the clock (true however long they are shown);
    # the live map adds "6 s ago", which the browser keeps counting (theme.clock_since)
    left = time.strftime("%H:%M:%S", time.localtime(dave.left))
    assert f"left</span> <span class='ml-nw'>{left}</span>" in page and f">left {left}</text>" in page
    assert re.search(rf"{left}</span> <span class='ml-muted'>\(<span class='ml-ago' data-t='\d+'>[67] s ago</span>",
                     body_html(m))
    dave_row = re.search(r"<tr><td class='mono ml-card-head'>dave\.class\.test</td>.*?</tr>", page)
    assert dave_row and "not registered" not in dave_row[0] and "not registered" in page  # erin's


def test_a_lab_joined_beyond_loopback_takes_no_login_before_tls(host, tmp_path):
    from maillab.classnet.member import join_lab

    key = host.keys.add("alice").spec()
    local = join_lab(tmp_path / "a", host.join_address, key, listen="127.0.0.44")
    assert not local.policy.require_tls and local.classnet.mx_port == host.mx_port
    reachable = join_lab(tmp_path / "b", host.join_address, key, listen="10.11.12.13")  # not started: no bind
    assert reachable.policy.require_tls and reachable.classnet.address == "10.11.12.13"
