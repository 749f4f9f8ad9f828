"""%mail relay/queue/fail/heal/dig/hops and %%zone, %%mail_hops through a real
IPython InteractiveShell against a real lab (and the real dig for comparison)."""

from __future__ import annotations

import shutil
import socket
import subprocess
from pathlib import Path

import pytest
from conftest import kernel_lab as lab
from conftest import magic_shell
from IPython.core.error import UsageError

from maillab.views.dns import DigAnswer, dig_real
from maillab.views.relay import FigureView, HopsView, LiveRelayView, QueueView, RelayView

DATA = Path(__file__).parent / "data" / "received"


@pytest.fixture
def ip(tmp_path):
    with magic_shell(tmp_path) as (shell, lab):
        lab.limits.relay_retry_first = 0.3  # the lab's short retry times, shorter still for tests
        lab.limits.relay_retry_max = 1.0
        yield shell


def send(ip, subject: str, to: str = "carol@beta.test") -> str:
    ip.run_line_magic("mail", f"send --from alice@alpha.test --to {to} --subject {subject} --body hi")
    msg = lab().relay.last()
    assert msg.subject == subject
    return msg.id


def test_dig_mx_like_dig_and_agrees_with_the_real_dig(ip) -> None:
    ans = ip.run_line_magic("mail", "dig beta.test MX")
    assert isinstance(ans, DigAnswer)
    assert ans.status == "NOERROR" and "aa" in ans.flags
    assert sorted(ans.values()) == ["10 mx1.beta.test.", "20 mx2.beta.test."]  # a set: any order
    additional = {(n, t) for n, _ttl, t, _d in ans.records("additional")}
    assert ("mx1.beta.test.", "A") in additional
    text = repr(ans)
    for part in (";; QUESTION SECTION:", ";; ANSWER SECTION:", ";; ADDITIONAL SECTION:", "Query time:",
                 f"SERVER: {lab().dns.address}#{lab().dns.port}", "(UDP)"):
        assert part in text
    assert ans.records()[0][1] > 0  # a TTL
    dig = shutil.which("dig")
    assert dig, "bind9-dnsutils (dig) is installed by .ci/run"
    out = subprocess.run([dig, f"@{lab().dns.address}", "-p", str(lab().dns.port), "beta.test", "MX", "+short"],
                         capture_output=True, text=True, timeout=10).stdout.split("\n")
    assert sorted(x for x in out if x) == sorted(ans.values())


def test_dig_nxdomain_over_tcp_shows_the_authority_soa(ip) -> None:
    ans = ip.run_line_magic("mail", "dig nope.beta.test A --tcp")
    assert ans.status == "NXDOMAIN" and ans.transport == "TCP"
    assert [t for _n, _ttl, t, _d in ans.records("authority")] == ["SOA"]
    assert "(TCP)" in repr(ans)
    with pytest.raises(UsageError):
        ip.run_line_magic("mail", "dig beta.test NOSUCHTYPE")
    with pytest.raises(UsageError, match="not a valid domain name"):
        ip.run_line_magic("mail", "dig a..beta.test MX")


def test_dig_real_says_offline_plainly() -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # a UDP port where nobody answers
        ans = dig_real("example.com", "A", nameserver="127.0.0.1", port=port, timeout=0.5)
    assert ans.response is None
    assert ans.error.startswith("offline?") and "lab DNS works without it" in ans.error
    assert "offline?" in repr(ans)


def test_zone_cell_replaces_a_zone_and_mail_follows_it(ip) -> None:
    zone = ("$TTL 60\n"
            "@    IN SOA ns.beta.test. hostmaster.beta.test. 7 60 60 600 60\n"
            "@    IN NS  ns\n"
            f"ns   IN A   {lab().dns.address}\n"
            "@    IN MX  5 mx2\n"
            f"mx2  IN A   {lab().topology.hosts['mx2.beta.test'].address}\n"
            "@    IN TXT \"v=spf1 -all\"\n")
    view = ip.run_cell_magic("zone", "beta.test", zone)
    assert any("MX 5 mx2.beta.test." in r for r in view.records)
    assert ip.run_line_magic("mail", "dig beta.test MX").values() == ["5 mx2.beta.test."]
    assert ip.run_line_magic("mail", "dig beta.test TXT").values() == ['"v=spf1 -all"']
    qid = send(ip, "new-zone")
    msg = lab().relay.wait(qid, timeout=10)
    assert msg.state == "delivered" and msg.attempts[-1].host == "mx2.beta.test"
    with pytest.raises(UsageError, match="not replaced"):
        ip.run_cell_magic("zone", "beta.test", "this is not a zone\n")
    assert ip.run_line_magic("mail", "dig beta.test MX").values() == ["5 mx2.beta.test."]


def test_relay_live_static_and_figure(ip, tmp_path) -> None:
    qid = send(ip, "path")
    lab().relay.wait(qid, timeout=10)
    live = ip.run_line_magic("mail", "relay")
    try:
        assert isinstance(live, LiveRelayView)
        assert "[delivered]" in repr(live) and "mx1.beta.test" in live.widget.value
        bundle = live._repr_mimebundle_()
        assert "application/vnd.jupyter.widget-view+json" in bundle and "text/plain" in bundle
    finally:
        live.close()
    static = ip.run_line_magic("mail", f"relay {qid} --static")
    assert isinstance(static, RelayView) and "ESMTPS, TLSv1.3" in repr(static)
    out = tmp_path / "path.svg"
    fig = ip.run_line_magic("mail", f"relay --figure {out}")
    assert isinstance(fig, FigureView) and out.read_bytes().startswith(b"<?xml")
    assert str(out) in repr(fig)
    with pytest.raises(UsageError, match="no relayed message"):
        ip.run_line_magic("mail", "relay NOSUCHID")


def test_fail_queue_heal(ip) -> None:
    said = ip.run_line_magic("mail", "fail mx1.beta.test tempfail")
    assert "451" in repr(said)
    qid = send(ip, "queued")
    lab().relay.wait(qid, states=("retrying",), timeout=10)
    q = ip.run_line_magic("mail", "queue")
    assert isinstance(q, QueueView) and qid in repr(q) and "mx1.beta.test tempfail" in repr(q)
    assert qid in repr(ip.run_line_magic("mail", "queue --host mail.alpha.test"))
    assert qid not in repr(ip.run_line_magic("mail", "queue --host mx1.beta.test"))
    assert "healed" in repr(ip.run_line_magic("mail", "heal mx1.beta.test"))
    assert lab().relay.wait(qid, timeout=10).state == "delivered"
    assert qid in repr(ip.run_line_magic("mail", "queue --all"))
    slow = ip.run_line_magic("mail", "fail mx2.beta.test slow 500ms")
    assert "0.5 s" in repr(slow)
    ip.run_line_magic("mail", "heal")
    with pytest.raises(UsageError):
        ip.run_line_magic("mail", "fail mx9.beta.test down")
    with pytest.raises(UsageError):
        ip.run_line_magic("mail", "fail mx1.beta.test explode")


def test_hops_from_a_file_a_pasted_cell_and_a_delivered_message(ip, tmp_path) -> None:
    view = ip.run_line_magic("mail", f"hops {DATA / 'exim.txt'}")
    assert isinstance(view, HopsView) and len(view.table) == 3
    assert "TLS1.3 TLS_AES_256_GCM_SHA384" in repr(view)
    pasted = ip.run_cell_magic("mail_hops", "", (DATA / "broken.txt").read_text())
    assert len(pasted.table.unparsed) == 3 and "unparsed" in repr(pasted)
    out = tmp_path / "hops.png"
    fig = ip.run_cell_magic("mail_hops", f"--figure {out}", (DATA / "gmail.txt").read_text())
    assert isinstance(fig, FigureView) and out.read_bytes().startswith(b"\x89PNG")
    qid = send(ip, "mine")
    lab().relay.wait(qid, timeout=10)
    mine = ip.run_line_magic("mail", "hops last")
    assert [h.by for h in mine.table] == ["mail.alpha.test", "mx1.beta.test"]
    with pytest.raises(UsageError, match="no such file"):
        ip.run_line_magic("mail", f"hops {tmp_path / 'missing.eml'}")
