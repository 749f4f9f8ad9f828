"""The receiving MX's resolver cache, through real sockets: a second message from the
same domain asks the lab DNS nothing, a zone edit counts for the very next message, a
short TTL runs out, negative answers are kept for the SOA's negative TTL (RFC 2308).

What the lab DNS was asked is read from its event stream (every query it receives is a
session there), so "asked nothing" means no packet reached it.
"""

from __future__ import annotations

import smtplib
import time

import pytest
from conftest import fast_limits

from maillab import Lab
from maillab.auth import settings
from maillab.auth.lookup import LabLookup
from maillab.auth.mta import resolver_cache
from maillab.auth.resolver_cache import ResolverCache
from maillab.events import CLIENT_LINE
from maillab.views.auth import AuthView

MX = "mx1.beta.test"


@pytest.fixture(scope="module")
def clab(tmp_path_factory):
    lab = Lab(tmp_path_factory.mktemp("authcache") / "lab", ports="auto", limits=fast_limits())
    lab.start()
    try:
        yield lab
    finally:
        lab.stop()


def dns_questions(lab: Lab, since: int, under: str = "alpha.test") -> list[str]:
    """The questions about names under ``under`` the lab DNS received after event ``since``."""
    return [e.text for e in lab.events.events(protocol="dns", since=since, kinds=(CLIENT_LINE,))
            if under in e.text.lower()]


def send(lab: Lab, subject: str) -> object:
    """alice@alpha.test's message straight to beta's MX; the MX's verdict (SPF passes: with
    ``ports="auto"`` the lab's hosts share 127.0.0.1, mail.alpha.test's address too)."""
    host, port = lab.address("smtp", MX)
    with smtplib.SMTP(host, port, timeout=20) as s:
        s.sendmail("alice@alpha.test", ["carol@beta.test"],
                   f"From: alice@alpha.test\r\nTo: carol@beta.test\r\nSubject: {subject}\r\n"
                   f"Message-ID: <{subject.replace(' ', '.')}@alpha.test>\r\n\r\nHello.\r\n")
    entry = settings(lab).last(subject)
    assert entry is not None
    return entry.verdict


def set_spf(lab: Lab, record: str, ttl: int | None = None) -> None:
    lines = [ln for ln in lab.dns.zone_text("alpha.test").splitlines() if "v=spf1" not in ln]
    lines.append(f'@\t{ttl or ""}\tIN\tTXT\t"{record}"')
    lab.dns.replace_zone("alpha.test", "\n".join(lines) + "\n")


def test_second_message_asks_nothing_and_the_view_says_cached(clab):
    since = clab.events.last_seq()
    first = send(clab, "cache one")
    asked = dns_questions(clab, since)
    assert any("alpha.test. IN TXT" in q for q in asked) and any("_dmarc.alpha.test" in q for q in asked)
    assert all(q.cached is None for q in first.trace)

    since = clab.events.last_seq()
    second = send(clab, "cache two")
    assert dns_questions(clab, since) == []  # no packet about alpha.test reached the lab DNS
    assert (second.spf.result, second.dmarc.result) == (first.spf.result, first.dmarc.result)
    assert second.trace and all(q.cached is not None and 0 < q.cached <= 300 for q in second.trace)
    text = repr(AuthView(settings(clab).last("cache two")))
    assert "0 asked of the lab DNS" in text and "s left: not asked on the wire" in text
    assert "v=spf1 mx -all" in text  # the SPF step still shows the record, from the cache
    notes = [e.text for e in clab.events.events(protocol="smtp", since=since) if e.text.startswith("auth: ")]
    assert notes and "(DNS: 0 asked of the lab DNS" in notes[-1] and "from the MX's resolver cache" in notes[-1]


def test_a_zone_edit_counts_for_the_next_message(clab):
    assert send(clab, "before the edit").spf.result == "pass"
    set_spf(clab, "v=spf1 -all")  # a teacher breaks the record...
    try:
        since = clab.events.last_seq()
        broken = send(clab, "after the edit")
        assert any("alpha.test. IN TXT" in q for q in dns_questions(clab, since))
        assert broken.spf.result == "fail"
        assert all(q.cached is None for q in broken.trace)  # the edit dropped every kept answer
    finally:
        clab.dns.rebuild(keep_edited=False)  # ...and fixes it again
    since = clab.events.last_seq()
    fixed = send(clab, "after the fix")
    assert fixed.spf.result == "pass" and any("alpha.test. IN TXT" in q for q in dns_questions(clab, since))


def test_a_short_ttl_runs_out(clab):
    set_spf(clab, "v=spf1 -all", ttl=1)
    try:
        first = send(clab, "short ttl one")
        txt = next(q for q in first.trace if q.name == "alpha.test" and q.rdtype == "TXT")
        assert txt.cached is None
        kept = resolver_cache(clab, MX).get(("alpha.test", "TXT"))
        assert kept is None or kept[1] <= 1  # kept for its TTL, not the 300 s cap
        time.sleep(1.2)
        since = clab.events.last_seq()
        second = send(clab, "short ttl two")
        assert [q for q in dns_questions(clab, since) if "alpha.test. IN TXT" in q]  # asked again
        assert not [q for q in dns_questions(clab, since) if "_dmarc" in q]  # TTL 300: still kept
        txt = next(q for q in second.trace if q.name == "alpha.test" and q.rdtype == "TXT")
        assert txt.cached is None and second.spf.result == "fail"
    finally:
        clab.dns.rebuild(keep_edited=False)


def test_negative_answers_are_kept_for_the_soa_negative_ttl(clab):
    cache = ResolverCache(clab.dns.zones, cap=300)
    for name, rdtype, error in (("nosuch.alpha.test", "TXT", "NXDOMAIN"), ("alpha.test", "AAAA", "")):
        first = LabLookup(clab.dns.address, clab.dns.port, cache=cache)
        assert first.query(name, rdtype) == [] and first.trace[0].error == error
        since = clab.events.last_seq()
        again = LabLookup(clab.dns.address, clab.dns.port, cache=cache)
        assert again.query(name, rdtype) == []
        q = again.trace[0]
        assert q.error == error and q.cached is not None
        assert q.cached <= 60  # min(SOA TTL 300, SOA MINIMUM 60), RFC 2308 5
        assert dns_questions(clab, since) == []
    # REFUSED (a name outside the lab's zones) is not a negative answer: asked every time.
    LabLookup(clab.dns.address, clab.dns.port, cache=cache).query("example.com", "TXT")
    since = clab.events.last_seq()
    q = LabLookup(clab.dns.address, clab.dns.port, cache=cache)
    q.query("example.com", "TXT")
    assert q.trace[0].cached is None and dns_questions(clab, since, "example.com")


def test_the_cache_can_be_switched_off(clab):
    clab.limits.auth_dns_cache = 0
    try:
        send(clab, "uncached one")
        since = clab.events.last_seq()
        v = send(clab, "uncached two")
        assert dns_questions(clab, since) and all(q.cached is None for q in v.trace)
    finally:
        clab.limits.auth_dns_cache = 300.0
