"""The lab DNS over real sockets: dig and dnspython, UDP and TCP, hostile packets."""

from __future__ import annotations

import random
import socket
import struct
import subprocess
import time

import dns.exception
import dns.flags
import dns.message
import dns.opcode
import dns.query
import dns.rcode
import dns.rdatatype
import dns.resolver
import pytest

from maillab.dns.server import handle_wire
from maillab.dns.zones import LabZones, ZoneError
from maillab.topology import default_network


def dig(lab, *args: str) -> str:
    out = subprocess.run(
        ["dig", f"@{lab.dns.address}", "-p", str(lab.dns.port), "+time=5", "+tries=1", *args],
        capture_output=True, text=True, timeout=30,
    )
    return out.stdout


def udp(lab, wire: bytes, timeout: float = 10) -> bytes | None:
    """Send one datagram; the answer, or None after ``timeout`` (generous: a loaded CI machine)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.settimeout(timeout)
        s.sendto(wire, (lab.dns.address, lab.dns.port))
        try:
            return s.recv(65535)
        except TimeoutError:
            return None


def still_answers(lab) -> None:
    r = lab.dns.query("mx1.beta.test", "A")
    assert [rr.to_text() for rrset in r.answer for rr in rrset] == ["127.0.20.1"]


def header(qid: int = 0x1234, flags: int = 0x0100, qd: int = 1, an: int = 0, ns: int = 0, ar: int = 0) -> bytes:
    return struct.pack("!HHHHHH", qid, flags, qd, an, ns, ar)


def rcode_of(wire: bytes) -> int:
    return struct.unpack("!H", wire[2:4])[0] & 0xF


# -- dig ---------------------------------------------------------------------------


def test_dig_mx_in_preference_order_with_glue(lab):
    out = dig(lab, "beta.test", "MX")
    assert "status: NOERROR" in out
    assert "flags: qr aa" in out
    assert "beta.test.\t\t300\tIN\tMX\t10 mx1.beta.test." in out
    assert "beta.test.\t\t300\tIN\tMX\t20 mx2.beta.test." in out
    # the additional section carries the MX hosts' addresses
    assert "mx1.beta.test.\t\t300\tIN\tA\t127.0.20.1" in out or "mx1.beta.test.\t\t300\tIN\tA\t" in out
    short = dig(lab, "+short", "beta.test", "MX").split("\n")
    assert sorted(filter(None, short)) == ["10 mx1.beta.test.", "20 mx2.beta.test."]


def test_dig_over_tcp(lab):
    out = dig(lab, "+tcp", "beta.test", "MX")
    assert "status: NOERROR" in out and "10 mx1.beta.test." in out
    # the TCP listener counted the session
    svc = lab.service("dns")
    assert svc.total >= 1


def test_dig_nxdomain_has_soa_in_authority(lab):
    out = dig(lab, "nobody.beta.test", "A")
    assert "status: NXDOMAIN" in out
    assert "AUTHORITY SECTION" in out
    assert "IN\tSOA\tns.beta.test. hostmaster.beta.test." in out


def test_dig_txt_and_cname_and_ptr(lab):
    assert dig(lab, "+short", "alpha.test", "TXT").strip() == '"v=spf1 mx -all"'
    cname = dig(lab, "+short", "smtp.alpha.test", "A").split()
    assert cname == ["mail.alpha.test.", lab.topology.hosts["mail.alpha.test"].address]
    addr = lab.topology.hosts["mail.gamma.test"].address
    assert dig(lab, "+short", "-x", addr).strip() == "mail.gamma.test."


def test_dig_out_of_zone_is_refused(lab):
    out = dig(lab, "example.com", "A")
    assert "status: REFUSED" in out
    assert "ANSWER: 0" in out
    out = dig(lab, "+tcp", "www.google.com", "MX")
    assert "status: REFUSED" in out


def test_dig_axfr_over_tcp_lists_the_zone(lab):
    out = dig(lab, "beta.test", "AXFR")
    lines = [ln for ln in out.splitlines() if ln and not ln.startswith(";")]
    assert lines[0].split()[3] == "SOA" and lines[-1].split()[3] == "SOA"
    assert any("MX\t10 mx1.beta.test." in ln for ln in lines)


def test_nodata_for_existing_name_without_that_type(lab):
    r = lab.dns.query("mx1.beta.test", "MX")
    assert r.rcode() == dns.rcode.NOERROR
    assert not r.answer
    assert r.authority[0].rdtype == dns.rdatatype.SOA


# -- dnspython ---------------------------------------------------------------------


def test_dnspython_resolver(lab):
    res = lab.dns.resolver()
    mx = sorted((r.preference, r.exchange.to_text()) for r in res.resolve("beta.test", "MX"))
    assert mx == [(10, "mx1.beta.test."), (20, "mx2.beta.test.")]
    assert [r.address for r in res.resolve("mx2.beta.test", "A")] == [lab.topology.hosts["mx2.beta.test"].address]
    with pytest.raises(dns.resolver.NXDOMAIN):
        res.resolve("ghost.gamma.test", "A")
    with pytest.raises(dns.resolver.NoAnswer):
        res.resolve("mail.gamma.test", "MX")
    # out of zone: REFUSED, which a resolver reports as no usable name server
    with pytest.raises(dns.resolver.NoNameservers):
        res.resolve("example.org", "A")
    r = lab.dns.query("gamma.test", "MX", tcp=True)
    assert r.flags & dns.flags.AA and r.answer


def test_srv_records_give_the_lab_ports(lab):
    svc = lab.service("pop3", "mail.alpha.test")
    r = lab.dns.resolver().resolve("_pop3._tcp.alpha.test", "SRV")
    assert [(x.port, x.target.to_text()) for x in r] == [(svc.port, "mail.alpha.test.")]


def test_queries_are_recorded_as_events(lab):
    before = lab.events.last_seq()
    lab.dns.resolver().resolve("beta.test", "MX")
    evs = [e for e in lab.events.events(protocol="dns", since=before)]
    assert any(e.kind == "C" and e.text == "beta.test. IN MX" for e in evs)
    answer = next(e for e in evs if e.kind == "S")
    assert answer.data["rcode"] == "NOERROR"
    assert "beta.test. 300 IN MX 10 mx1.beta.test." in answer.data["answer"]


# -- zones: editable -----------------------------------------------------------------


def test_replace_zone_changes_answers_and_bad_text_keeps_old_zone(lab):
    text = lab.dns.zone_text("beta.test")
    new = text.replace("@\tIN\tMX\t10 mx1", "@\tIN\tMX\t30 mx1")
    records = lab.dns.replace_zone("beta.test", new)
    assert any("MX 30 mx1.beta.test." in r for r in records)
    assert "30 mx1.beta.test." in dig(lab, "+short", "beta.test", "MX")
    with pytest.raises(ZoneError):
        lab.dns.replace_zone("beta.test", "@ IN MX ten nowhere\n")  # no SOA, bad MX
    assert "30 mx1.beta.test." in dig(lab, "+short", "beta.test", "MX")
    # a brand-new zone
    lab.dns.replace_zone("delta.test", "$TTL 60\n@ IN SOA ns hm 1 2 3 4 5\n@ IN NS ns\nns IN A 127.0.0.1\n"
                                       "@ IN MX 0 .\n*.w IN A 127.0.40.1\n")
    assert dig(lab, "+short", "delta.test", "MX").strip() == "0 ."
    assert dig(lab, "+short", "x.w.delta.test", "A").strip() == "127.0.40.1"  # wildcard


def test_udp_answer_over_512_without_edns_is_truncated_and_tcp_has_it_all(lab):
    txt = "".join(f'big IN TXT "{"x" * 200} {i}"\n' for i in range(10))
    lab.dns.replace_zone("gamma.test", lab.dns.zone_text("gamma.test") + txt)
    q = dns.message.make_query("big.gamma.test", "TXT", use_edns=False)
    r = dns.query.udp(q, lab.dns.address, port=lab.dns.port, timeout=10)
    assert r.flags & dns.flags.TC
    full = dns.query.tcp(q, lab.dns.address, port=lab.dns.port, timeout=10)
    assert not full.flags & dns.flags.TC
    assert len(full.answer[0]) == 10
    out = dig(lab, "+noedns", "+ignore", "big.gamma.test", "TXT")
    assert " tc" in out.split("flags:")[1].split(";")[0]
    assert dig(lab, "big.gamma.test", "TXT").count('"xxxx') == 10  # dig retries over TCP


def test_generated_zones_parse_and_cover_every_host():
    topo = default_network()
    zones = LabZones()
    zones.build(topo, "127.0.0.1")
    assert set(zones.names()) == {"alpha.test", "beta.test", "gamma.test", "127.in-addr.arpa"}
    for host in topo.hosts.values():
        assert zones.covers(host.name)
    with pytest.raises(ZoneError):
        zones.replace("beta.test", "$INCLUDE /etc/passwd\n")


# -- hostile packets -----------------------------------------------------------------


def test_short_header_and_responses_are_dropped(lab):
    assert udp(lab, b"\x12\x34\x01", timeout=0.5) is None
    assert udp(lab, b"", timeout=0.5) is None
    q = dns.message.make_query("beta.test", "MX").to_wire()
    as_response = q[:2] + bytes([q[2] | 0x80]) + q[3:]
    assert udp(lab, as_response, timeout=0.5) is None
    still_answers(lab)


@pytest.mark.parametrize("body,why", [
    (header() + b"\xc0\x0c\x00\x01\x00\x01", "compression pointer to itself"),
    (header() + b"\x01a\xc0\x0c\x00\x01\x00\x01", "compression loop through a label"),
    (header() + (b"\x3f" + b"a" * 63) * 5 + b"\x00\x00\x01\x00\x01", "name over 255 octets"),
    (header(qd=2) + b"\x04beta\x04test\x00\x00\x01\x00\x01" * 2, "two questions"),
    (header(qd=0), "no question"),
    (dns.message.make_query("beta.test", "MX").to_wire() + b"junk", "trailing junk"),
    (header() + b"\x04beta\x04te", "truncated name"),
    (header() + b"\x44beta\x00\x00\x01\x00\x01", "reserved label type"),
    (header(an=5) + b"\x04beta\x04test\x00\x00\x01\x00\x01", "counts promise records that are not there"),
])
def test_malformed_queries_get_formerr(lab, body, why):
    out = udp(lab, body)
    assert out is not None, why
    assert out[:2] == body[:2]
    assert rcode_of(out) == dns.rcode.FORMERR, why
    assert struct.unpack("!H", out[2:4])[0] & 0x8000  # QR
    still_answers(lab)


def test_malformed_query_over_tcp_then_a_good_one(lab):
    with socket.create_connection((lab.dns.address, lab.dns.port), timeout=10) as s:
        bad = header(qd=2)
        s.sendall(struct.pack("!H", len(bad)) + bad)
        n = struct.unpack("!H", s.recv(2))[0]
        assert rcode_of(s.recv(n)) == dns.rcode.FORMERR
        good = dns.message.make_query("beta.test", "MX").to_wire()
        s.sendall(struct.pack("!H", len(good)) + good)
        n = struct.unpack("!H", s.recv(2))[0]
        data = b""
        while len(data) < n:
            data += s.recv(n - len(data))
        assert dns.message.from_wire(data).answer
    # a TCP client promising more than it sends, then hanging up
    with socket.create_connection((lab.dns.address, lab.dns.port), timeout=10) as s:
        s.sendall(b"\x03\xe8" + b"\x00" * 10)
    still_answers(lab)


def test_notimp_and_badvers(lab):
    q = dns.message.make_query("beta.test", "MX")
    q.set_opcode(dns.opcode.STATUS)
    r = dns.query.udp(q, lab.dns.address, port=lab.dns.port, timeout=10)
    assert r.rcode() == dns.rcode.NOTIMP
    q = dns.message.make_query("beta.test", "MX", use_edns=1)
    r = dns.query.udp(q, lab.dns.address, port=lab.dns.port, timeout=10)
    assert r.rcode() == dns.rcode.BADVERS


def test_fuzzed_packets_never_raise_and_server_survives(lab):
    rnd = random.Random(5)
    zones = lab.dns.zones
    good = dns.message.make_query("beta.test", "MX").to_wire()
    for _ in range(3000):
        if rnd.random() < 0.5:
            pkt = bytearray(good)
            for _ in range(rnd.randint(1, 6)):
                pkt[rnd.randrange(len(pkt))] = rnd.randrange(256)
            pkt = bytes(pkt)
        else:
            pkt = bytes(rnd.randrange(256) for _ in range(rnd.randint(0, 80)))
        outcome = handle_wire(zones, pkt)  # the sans-IO core: must never raise
        assert outcome.wire is None or len(outcome.wire) >= 12
    for _ in range(200):
        udp(lab, bytes(rnd.randrange(256) for _ in range(rnd.randint(0, 60))), timeout=0.01)
    still_answers(lab)


def test_cname_loop_and_long_chain_are_cut_short(lab):
    chain = "".join(f"c{i}\tIN\tCNAME\tc{i + 1}\n" for i in range(20))
    lab.dns.replace_zone("gamma.test", lab.dns.zone_text("gamma.test")
                         + "loop1\tIN\tCNAME\tloop2\nloop2\tIN\tCNAME\tloop1\n" + chain)
    r = lab.dns.query("loop1.gamma.test", "A")
    assert r.rcode() == dns.rcode.NOERROR
    assert [rr.name.to_text() for rr in r.answer] == ["loop1.gamma.test.", "loop2.gamma.test."]
    r = lab.dns.query("c0.gamma.test", "A", tcp=True)
    assert len(r.answer) == 9  # the first CNAME and eight more (CNAME_DEPTH), then we stop
    still_answers(lab)


# -- the answer cache and the relay's stub resolver -------------------------------------------


def test_repeated_queries_get_the_same_answer_with_their_own_id_until_a_zone_edit(lab):
    q = dns.message.make_query("beta.test", "MX")
    wire = q.to_wire()
    before = len([s for s in lab.events.sessions() if s.startswith("dns-")])
    hits = lab.dns.server.answers.hits
    first = udp(lab, wire)
    second = udp(lab, struct.pack("!H", 0xBEEF) + wire[2:])
    assert first is not None and second is not None
    assert first[:2] == wire[:2] and second[:2] == b"\xbe\xef" and first[2:] == second[2:]
    assert lab.dns.server.answers.hits == hits + 1
    # both queries were received, answered and recorded: the cache only saves the work
    assert len([s for s in lab.events.sessions() if s.startswith("dns-")]) == before + 2
    ids = [e.data.get("id") for e in lab.events.events(protocol="dns", kinds=("S",))][-2:]
    assert ids == [q.id, 0xBEEF]
    text = lab.dns.zone_text("beta.test").replace("MX\t10 mx1", "MX\t30 mx1")
    lab.dns.replace_zone("beta.test", text)
    third = dns.message.from_wire(udp(lab, wire))
    assert sorted(rr.preference for rr in third.answer[0]) == [20, 30]


def _run(lab, coro):
    return lab.loop.run(coro, timeout=20)


def test_stub_resolver_answers_like_dnspython(lab):
    stub = lab.dns.stub_resolver()
    resolver = lab.dns.async_resolver()

    async def both(name, rdtype):
        out = []
        for res in (stub, resolver):
            try:
                a = await res.resolve(name, rdtype, raise_on_no_answer=False, search=False)
                out.append(("ok", sorted(rr.to_text() for rr in a.rrset) if a.rrset else None,
                            str(a.canonical_name)))
            except dns.resolver.NXDOMAIN:
                out.append(("NXDOMAIN",))
            except dns.resolver.NoNameservers as exc:
                out.append(("NoNameservers", "REFUSED" in str(exc)))
        return out

    try:
        for name, rdtype in [("beta.test", "MX"), ("smtp.alpha.test", "A"), ("mx1.beta.test", "TXT"),
                             ("nope.beta.test", "A"), ("example.com", "MX")]:
            ours, theirs = _run(lab, both(name, rdtype))
            assert ours == theirs, (name, rdtype)
    finally:
        lab.loop.call(stub.close)


def test_stub_resolver_fails_fast_when_nobody_listens_and_times_out_on_silence(lab):
    from maillab.dns.stub import StubResolver

    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as silent:
        silent.bind(("127.0.0.1", 0))
        quiet = StubResolver("127.0.0.1", silent.getsockname()[1], timeout=0.3)
        with pytest.raises(dns.exception.Timeout):
            _run(lab, quiet.resolve("beta.test", "MX"))
        lab.loop.call(quiet.close)
        closed_port = silent.getsockname()[1]
    gone = StubResolver("127.0.0.1", closed_port, timeout=30)
    started = time.monotonic()
    with pytest.raises(dns.exception.DNSException, match="did not take the query"):
        _run(lab, gone.resolve("beta.test", "MX"))
    assert time.monotonic() - started < 5  # "port unreachable", not the 30 s timeout
    lab.loop.call(gone.close)


def test_stub_resolver_ignores_responses_that_do_not_match(lab):
    """RFC 5452 9.1: a response counts only with the query's ID and question."""
    from maillab.dns.stub import StubResolver

    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as server:
        server.bind(("127.0.0.1", 0))
        stub = StubResolver("127.0.0.1", server.getsockname()[1], timeout=10)
        fut = lab.loop.submit(stub.resolve("beta.test", "MX"))
        server.settimeout(10)
        wire, client = server.recvfrom(512)
        q = dns.message.from_wire(wire)
        good = handle_wire(lab.dns.zones, wire).wire
        other = dns.message.make_query("gamma.test", "MX")
        other.id = q.id
        wrong_question = handle_wire(lab.dns.zones, other.to_wire()).wire
        wrong_id = struct.pack("!H", (q.id + 1) % 65536) + good[2:]
        for forged in (wrong_id, wrong_question, wire):  # wrong ID, wrong question, not a response
            server.sendto(forged, client)
        time.sleep(0.2)
        assert not fut.done()
        server.sendto(good, client)
        answer = fut.result(10)
    assert sorted(rr.preference for rr in answer.rrset) == [10, 20]
    lab.loop.call(stub.close)
