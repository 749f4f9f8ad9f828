"""SECURITY.md, DNS: what tests/test_dns.py and tests/test_relay.py leave open.

A name server that answers SERVFAIL (on a real UDP socket) defers mail, it does not
bounce it; an MX whose exchange is a CNAME loop or an over-long CNAME chain ends
the delivery quickly (bounced, a bounded number of queries), never in a hang.
"""

from __future__ import annotations

import socket
import threading

import dns.asyncresolver
import dns.message
import dns.rcode
import dns.rdatatype
import pytest

from maillab import Lab
from maillab.relay.mx import RouteError, find_route


class ScriptedDNS:
    """A UDP name server on loopback answering each query with ``answer(query)``."""

    def __init__(self, answer) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.settimeout(0.2)
        self.port = self.sock.getsockname()[1]
        self.answer = answer
        self.queries: list[tuple[str, str]] = []
        self.stopping = False
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        while not self.stopping:
            try:
                wire, peer = self.sock.recvfrom(4096)
            except TimeoutError:
                continue
            q = dns.message.from_wire(wire)
            self.queries.append((q.question[0].name.to_text(), dns.rdatatype.to_text(q.question[0].rdtype)))
            self.sock.sendto(self.answer(q).to_wire(), peer)

    def resolver(self) -> dns.asyncresolver.Resolver:
        res = dns.asyncresolver.Resolver(configure=False)
        res.nameservers, res.port, res.timeout, res.lifetime = ["127.0.0.1"], self.port, 1.0, 2.0
        return res

    def close(self) -> None:
        self.stopping = True
        self.thread.join(2)
        self.sock.close()


def servfail(q: dns.message.Message) -> dns.message.Message:
    r = dns.message.make_response(q)
    r.set_rcode(dns.rcode.SERVFAIL)
    return r


def mx_then_servfail(q: dns.message.Message) -> dns.message.Message:
    """beta.test's MX answers; the exchange's address lookup fails."""
    if q.question[0].rdtype == dns.rdatatype.MX:
        r = dns.message.make_response(q)
        r.answer.append(dns.rrset.from_text("beta.test.", 60, "IN", "MX", "10 mx1.beta.test."))
        return r
    return servfail(q)


@pytest.mark.parametrize("answer", [servfail, mx_then_servfail], ids=["mx-servfail", "a-servfail"])
def test_servfail_defers_and_does_not_bounce(lab: Lab, answer) -> None:
    server = ScriptedDNS(answer)
    try:
        with pytest.raises(RouteError) as err:
            lab.loop.run(find_route("beta.test", server.resolver()), timeout=10)
    finally:
        server.close()
    assert not err.value.permanent, err.value  # RFC 5321 4.5.4.1: try again later
    assert err.value.status.startswith("4."), err.value.status
    assert server.queries, "the scripted server was never asked"


@pytest.mark.parametrize("zone_extra, exchange, outcome", [
    # dnspython gives up on the loop ("CNAME chain is too long"): a name service error, deferred
    ("loop1\tIN\tCNAME\tloop2\nloop2\tIN\tCNAME\tloop1\n", "loop1", ("retrying", "4.4.3")),
    # the lab DNS stops after 8 CNAMEs (CNAME_DEPTH): no address at the end, bounced
    ("".join(f"c{i}\tIN\tCNAME\tc{i + 1}\n" for i in range(30)) + "c30\tIN\tA\t127.0.30.1\n", "c0",
     ("bounced", "5.4.4")),
], ids=["cname-loop", "cname-chain-30"])
def test_mx_exchange_behind_a_cname_loop_or_long_chain_ends_quickly(lab: Lab, zone_extra: str,
                                                                    exchange: str, outcome) -> None:
    text = lab.dns.zone_text("gamma.test").replace("@\tIN\tMX\t10 mail", f"@\tIN\tMX\t10 {exchange}")
    assert text != lab.dns.zone_text("gamma.test")
    lab.dns.replace_zone("gamma.test", text + zone_extra)
    before = lab.events.last_seq()
    qid = lab.relay.submit("alice@alpha.test", ["dave@gamma.test"], b"Subject: chain\r\n\r\nx\r\n",
                           origin="mail.alpha.test")
    # the first attempt ends within seconds (lab.limits.relay_retry_first is 5 s away)
    msg = lab.relay.wait(qid, states=("bounced", "retrying", "delivered"), timeout=5)
    queries = [e for e in lab.events.events(since=before, protocol="dns") if e.kind == "C" and e.side == "server"]
    state, status = outcome
    assert msg.state == state, (msg.state, msg.last_error)
    assert msg.recipients[0].status == status, (msg.recipients[0].status, msg.last_error)
    assert len(queries) <= 6, [e.text for e in queries]  # the chain was cut, not walked
    assert not [e for e in lab.events.events(since=before, protocol="smtp") if e.side == "client"]
