"""Every notebook executes top to bottom in a fresh kernel (one test per notebook,
so notebooks added later are run too), and is committed without outputs."""

from __future__ import annotations

import re
import tempfile
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient
from traitlets.config import Config

NOTEBOOKS = sorted((Path(__file__).resolve().parent.parent / "notebooks").glob("*.ipynb"))
#: What a notebook's outputs must show: the claims its text makes.
CLAIMS = {
    "00_tour.ipynb": [
        "[delivered]", "DNS: beta.test MX 10 mx1.beta.test",  # the relay path, with the MX answer
        re.compile(r"2\. mail\.alpha\.test --ESMTPS, TLSv1\.\d.*--> mx1\.beta\.test"),  # Received, bottom-up
        "C: AUTH PLAIN ****", "POP3 would download",
        re.compile(r"POP3 would have moved at least \d+, [1-9]\d+\.\dx as many"),  # summaries: 10x+ cheaper
        re.compile(r"POP3 would download.*'2 message\(s\) on the server'", re.S),  # IMAP left both
        "QUIT -> UPDATE removed message(s) 1", "'1 message(s) on the server'",  # POP3 took one
        "'-ERR STAT is not valid in the AUTHORIZATION state (log in first)'",  # step-through
        "'TRANSACTION'", "'UPDATE'", "Received chain of the delivered copy of the last relayed message",
        re.compile(r"submission +587 +\d+( / \d+)* +◐ STARTTLS"), "● implicit TLS",  # the port map
    ],
    "01_smtp.ipynb": [
        "next (suggested): 'EHLO step.test'",  # the step-through client, waiting for a click
        "S: 354 ",  # DATA: go ahead
        "500 5.5.2", "503 5.5.1", "550 5.1.1", "452 4.5.3",  # the reply classes, provoked
        "\n.begins with one dot",  # dot-stuffing undone by the server
        "C: ..a line that starts with a dot",  # ... and done by smtplib
        "530 5.7.0 Must issue a STARTTLS command first", "530 5.7.0 Authentication required",
        "C: AUTH PLAIN ****", "235 2.7.0",
        "no plaintext greeting in 1 s: port 465 waits",  # implicit TLS: nothing before the handshake
        re.compile(r"\*\* TLS started: TLSv1\.\d[^\n]*\n[^\n]*S: 220 "),  # ... and the greeting after it
        re.compile(r"C: RCPT TO:<carol@beta\.test>.*\n.*S: 250 2\.1\.5"),  # relay for a logged-in user ...
        "Relay access denied",  # ... refused on port 25
        "你好, Bob", "charset=utf-8 encoding=b text=5L2g5aW9LA== -> '你好,'",  # RFC 2047, taken apart
        "=?utf-8?q?=E4=BD=A0=E5=A5=BD=2C_Bob?= -> 你好, Bob",  # ... and its q encoding
        "decoded: 你好, Bob",
    ],
    "02_pop3.ipynb": [
        "next (suggested): 'STLS'",  # the step-through client, waiting for a click: TLS before the password
        "-ERR STAT is not valid in the AUTHORIZATION state", "S: ..this line starts with a dot",
        "[b'.this line starts with a dot']",  # ... and unstuffed by the client
        "password sent without TLS", "--QUIT--> [UPDATE]", "no UPDATE state, nothing deleted",
        "UPDATE removed message(s) 1;", "-ERR message 1 already deleted", "TOP 2 0 (peek)",
        "[True, False]", "[True, True]", "-ERR [IN-USE]", "S: +OK begin TLS negotiation",
        "no answer to the smuggled CAPA", "discarded 6 plaintext bytes", "('pop3', 110, ",
        "('pop3s', 995, ",
    ],
    "03_imap.ipynb": [
        "next (suggested): 'a1 STARTTLS'",  # the step-through client, waiting for a click
        re.compile(r"C: \w+ FETCH 1:\* \(UID FLAGS RFC822\.SIZE ENVELOPE\)\n"),  # summaries ...
        re.compile(r'RFC822\.SIZE \d+ ENVELOPE \("[^"]+" "=\?utf-8\?b\?'),  # ... the subject still encoded
        "1 messages deleted", "(the server sets \\Seen)", "FLAGS (\\Flagged)", " EXISTS'",
        "a3 OK CREATE completed", "Projects/2024", "POP3 would download",
        "Leaving out connecting and logging in (POP3 pays for those too): IMAP moved",  # like with like
        'attachment "Übersicht 2024.pdf"',  # the RFC 2231 file name, decoded
        "= 你好，Bob：季度报告", "UID SEARCH SUBJECT 季度报告 in INBOX: 1 found",
        "BODY.PEEK[1.MIME] BODY.PEEK[2.MIME]",  # the parts' headers, asked for without downloading
        re.compile(r"--=+\d+==   <- a part begins\nContent-Type: application/pdf"),  # MIME as text ...
        "more lines of base64 ...", "==--   <- closes the multipart",
    ],
    "04_relay_dns.ipynb": [
        ";; ANSWER SECTION:",
        re.compile(r"<<>> DiG 9\.[^\n]*beta\.test MX.*?flags: qr aa;", re.S),  # the real dig, same answer
        "status: NXDOMAIN", "status: REFUSED", "delivered by mx2.beta.test",
        "ESMTPSA", "unreachable: connect to mx1.beta.test", "451 4.3.0", "Status: 5.7.1",
        "Undelivered Mail Returned to Sender", "negative delay at hop 5", "unparsed:",
        "(in reply to RCPT TO command)",  # the DSN names the command the 550 answered
    ],
    "05_ports_tls.ipynb": [
        "● implicit TLS", "◐ STARTTLS", "certificate verifies against the lab CA for mail.alpha.test",
        "STARTTLS offered  yes", "the server answered in plaintext, not TLS", "bad certificate:",
        "Eve decodes: POP3 PASS: password 'bob-pw'", "nothing readable after the handshake",
        "DOWNGRADED (STARTTLS stripped), policy may", "The secret is 4711",
        "does not offer STARTTLS, and this relay requires TLS", "IN\tTLSA\t3 1 1 ",
        "retrying - no-starttls: mx",  # the host answered: not "unreachable"
        "authenticated by DANE", "4711 read: True; 4712 read: False",  # policy encrypt: nothing crossed
    ],
    "06_class_network.ipynb": [
        "mail.bob.class.test. 60 IN A 127.0.61.2", "by mail.bob.class.test (maillab) with ESMTPS",
        "Re: Hello, class", "Connection refused",
        # the retries while Carol was away: one, or more when her lab started slower than the backoff
        re.compile(r"delivered via 127\.0\.61\.4 after [2-9] attempts"),
        "1 copy in Carol's mailbox", "alice's key, bob's MX                    -> REFUSED",
        "-> NOTAUTH", "alice.class.test -> bob.class.test", "left the class",
        "alice.class.test MX -> NXDOMAIN",  # after %mail leave
    ],
    "07_failures.ipynb": [
        "The server said: -ERR [SYS/TEMP] disk busy.",
        "fault injected (mail.alpha.test): UID FETCH -> answers 'NO [UNAVAILABLE] try later'",
        "UID FETCH 1 failed: the server said NO [UNAVAILABLE] try later",
        "connection closed before the QUIT was answered",  # the client sent QUIT; it was never carried out
        "deferred  mx1.beta.test: 452 4.2.2 mailbox full",
        "The server closed the connection without a reply: no UPDATE state",
        "[fired 2/2, spent]",
    ],
    "08_who_may_send.ipynb": [
        '"v=spf1 mx -all"', 'lab._domainkey.alpha.test.\t\t300\tIN\tTXT\t"v=DKIM1; k=rsa; p=', '"v=DMARC1; p=none',
        "spf=pass dkim=pass dmarc=pass -> deliver", "(same: the body is as signed)",
        "Sender address rejected: not owned by user alice@alpha.test",  # forgery: submission refuses it
        "'Wire the money, signed: bounced'", "spf=pass dkim=pass dmarc=fail -> reject",  # a From: line alone
        "error: 550 5.7.1 Message rejected: DMARC policy p=reject: beta.test: SPF fail",  # ... the MX too
        "spf=fail dkim=none dmarc=fail -> reject",
        "DNS questions (5 asked of the lab DNS):",  # after a zone edit: nothing cached ...
        "answered from the MX's resolver cache",  # ... and then cached again
        "(DIFFERENT: the body changed after signing)", "result: fail — body hash mismatch",  # tampering
        "what changed: mail.alpha.test changed body octet 0: b'p' -> b'P' after signing",
        "spf=fail dkim=pass arc=pass dmarc=pass -> deliver",  # forwarding: DKIM survives, ARC seals
        "(ARC-Authentication-Results i=1): i=1; mail.gamma.test; spf=pass",
        "spf=pass dkim=pass,fail arc=pass dmarc=fail -> deliver",  # the list: ARC repairs the verdict
        "policy overridden: arc=pass from gamma.test", "bounced 550 5.7.1 Message rejected",
        "team-bounces@gamma.test INBOX: 1 message(s)",  # ... and the list got the bounce
    ],
}
#: What a notebook's live widgets must show by the end (their state as the kernel sent it).
WIDGET_CLAIMS = {
    # the transcript widget grew after its cell had finished: a later cell's session is in it
    "01_smtp.ipynb": ["FROM:&lt;bob@alpha.test&gt;"],
    # the class map redrew after its cell: carol came back later on a new address (its
    # whole state is saved when the class DNS stops: LiveClassMap.finish)
    "06_class_network.ipynb": ["127.0.61.4"],
}
CELL_TIMEOUT = 90  # seconds; every client call in a notebook has its own, shorter timeout


def test_there_are_notebooks():
    assert any(p.name == "01_smtp.ipynb" for p in NOTEBOOKS)


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.name for p in NOTEBOOKS])
def test_notebook_is_committed_without_outputs(path):
    nb = nbformat.read(path, as_version=4)
    for cell in nb.cells:
        if cell.cell_type == "code":
            assert cell.outputs == [] and cell.execution_count is None, f"{path.name}: outputs committed"


def _kernel_config(sockets: Path) -> Config:
    """The kernel talks to nbclient over Unix sockets in ``sockets``, not TCP: jupyter_client
    picks TCP ports free when it looks and the kernel binds them later, and a port taken
    meanwhile (any process's outgoing connection may get it as its ephemeral port) killed
    the kernel at its start ("Address already in use"; seen with busy cores)."""
    config = Config()
    config.KernelManager.transport = "ipc"
    config.KernelManager.ip = str(sockets / "kernel")  # short: a socket path has ~100 bytes
    return config


@pytest.mark.timeout(600)
@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.name for p in NOTEBOOKS])
def test_notebook_executes(path):
    nb = nbformat.read(path, as_version=4)
    with tempfile.TemporaryDirectory(prefix="nb-") as sockets:
        client = NotebookClient(nb, timeout=CELL_TIMEOUT, kernel_name="python3", allow_errors=False,
                                store_widget_state=True, resources={"metadata": {"path": str(path.parent)}},
                                config=_kernel_config(Path(sockets)))
        client.execute()  # raises CellExecutionError on the first failing cell
    errors = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs if o.output_type == "error"]
    assert errors == []
    shown = "\n".join(_text(o) for c in nb.cells if c.cell_type == "code" for o in c.outputs)
    missing = [claim for claim in CLAIMS.get(path.name, [])
               if (claim.search(shown) is None if isinstance(claim, re.Pattern) else claim not in shown)]
    assert missing == [], f"{path.name} no longer shows: {missing}"
    widgets = nb.metadata.get("widgets", {}).get("application/vnd.jupyter.widget-state+json", {})
    # a LiveBlocks view (the transcript) keeps its whole view in "blocks", not "value"
    values = "\n".join(str(m["state"].get("value", "")) + "".join(
        top + "".join(rows) + bottom for _key, (top, rows, bottom) in m["state"].get("blocks", {}).get("items", []))
        for m in widgets.get("state", {}).values())
    missing = [claim for claim in WIDGET_CLAIMS.get(path.name, []) if claim not in values]
    assert missing == [], f"{path.name}: widgets no longer show: {missing}"


def _text(output) -> str:
    if output.output_type == "stream":
        return output.text
    return output.get("data", {}).get("text/plain", "")
