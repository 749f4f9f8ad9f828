"""Self-checking exercises: every check fails on an empty attempt with a hint that
says what to do, and passes on the teacher's solution (all solutions run in ONE
kernel, one after another, to keep CI lean: kernel start-up is the expensive part)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient
from nbformat.v4 import new_code_cell

from maillab import exercises

ROOT = Path(__file__).resolve().parent.parent
EXERCISES = sorted((ROOT / "notebooks" / "exercises").glob("*.ipynb"))
SOLUTIONS = sorted((ROOT / "notebooks" / "solutions").glob("*.ipynb"))


def _name(path: Path) -> str:
    return path.stem.split("_", 1)[1]


def test_every_exercise_has_a_notebook_a_solution_and_a_check():
    names = exercises.names()
    assert len(names) >= 8
    assert [_name(p) for p in EXERCISES] == names
    assert [p.name for p in SOLUTIONS] == [p.name for p in EXERCISES]
    for path in EXERCISES + SOLUTIONS:
        nb = nbformat.read(path, as_version=4)
        code = [c for c in nb.cells if c.cell_type == "code"]
        assert all(c.outputs == [] and c.execution_count is None for c in code), f"{path.name}: outputs"
        assert code[-1].source.startswith(f"%mail check {_name(path)}"), path.name


def test_maillab_exercises_lists_the_names():
    out = subprocess.run([sys.executable, "-m", "maillab", "exercises"], capture_output=True, text=True,
                         timeout=60, check=True).stdout
    assert out.splitlines() == exercises.names()


def test_every_check_fails_on_an_empty_attempt_with_a_hint(lab):
    for name in exercises.names():
        result = lab.check(name)
        assert result.passed is False, name
        assert result.hints, f"{name}: no hint"
        assert all(len(h) > 40 for h in result.hints), f"{name}: a hint too short to help: {result.hints}"
        assert "missing:" in repr(result) and "not yet" in result._repr_html_()
        # each names a command to type, marked `so` in the text and shown as <code>
        shown = result._repr_html_().split("</style>", 1)[1]
        assert "`" in repr(result) and "<code>" in shown and "`" not in shown, f"{name}: {result.hints}"
    with pytest.raises(KeyError, match="no exercise"):
        lab.check("no_such_exercise")


@pytest.mark.timeout(900)
def test_every_solution_passes_its_check_and_every_exercise_notebook_runs(tmp_path):
    """Each exercise notebook as a student gets it (its check: not yet, with a hint),
    then its solution (its check: PASSED), one after another in one kernel, each on
    a fresh lab."""
    combined = nbformat.v4.new_notebook()
    checks: list[tuple[str, str, int]] = []
    for exercise_path, solution_path in zip(EXERCISES, SOLUTIONS, strict=True):
        for kind, path in (("exercise", exercise_path), ("solution", solution_path)):
            nb = nbformat.read(path, as_version=4)
            combined.cells.append(new_code_cell("%mail stop" if combined.cells else "%load_ext maillab"))
            for cell in nb.cells:
                if cell.cell_type == "code":
                    combined.cells.append(new_code_cell(cell.source))
            checks.append((_name(path), kind, len(combined.cells) - 1))
    (tmp_path / "work").mkdir()
    client = NotebookClient(combined, timeout=120, kernel_name="python3", allow_errors=False,
                            resources={"metadata": {"path": str(tmp_path / "work")}})
    client.execute()
    wrong = {}
    for name, kind, index in checks:
        shown = "\n".join(o.get("data", {}).get("text/plain", "") + o.get("text", "")
                          for o in combined.cells[index].outputs)
        expected = "PASSED" if kind == "solution" else "missing:"
        if expected not in shown or (kind == "exercise" and "PASSED" in shown):
            wrong[f"{kind} {name}"] = shown
    assert wrong == {}


def test_partial_attempts_get_hints_about_what_is_missing(lab):
    import smtplib
    import time

    from maillab.clients.smtp import send
    from maillab.compose import compose

    host, port = lab.address("submission")
    with smtplib.SMTP(host, port, timeout=10) as smtp:  # no STARTTLS, so no AUTH either
        smtp.ehlo("student.test")
    result = lab.check("submission")
    assert not result.passed and "STARTTLS" in result.hints[0]

    send(lab, compose(sender="alice@alpha.test", to=["carol@beta.test"], subject="path", body="x"),
         via="submission")
    carol = lab.store.mailbox("carol@beta.test")
    deadline = time.monotonic() + 20
    while not carol.messages() and time.monotonic() < deadline:
        time.sleep(0.1)
    assert "give the host" in lab.check("received_chain").hints[0]
    wrong = lab.check("received_chain", answer="mx1.beta.test")
    assert not wrong.passed and "bottom-up" in wrong.hints[0]
    assert lab.check("received_chain", answer="mail.alpha.test").passed


def test_checks_judge_any_client_the_step_through_one_too(single_lab):
    """The checks read the servers' side: an attempt made one command at a time counts."""
    from maillab.step import StepClient

    lab = single_lab
    smtp = StepClient(lab, "smtp", "alice", recipient="bob@alpha.test", timeout=5)
    for _ in range(12):
        if not smtp.suggestion():
            break
        smtp.send(smtp.suggestion())
    assert lab.check("submission").passed
    dropped = StepClient(lab, "pop3", "bob", timeout=5)
    for line in ("USER bob", "PASS bob-pw", "DELE 1"):
        dropped.send(line)
    dropped.close()  # no QUIT
    assert "no message is really gone" in lab.check("pop3_delete").hints[0]
    quit_ = StepClient(lab, "pop3", "bob", timeout=5)
    for line in ("USER bob", "PASS bob-pw", "DELE 1", "QUIT"):
        quit_.send(line)
    assert lab.check("pop3_delete").passed


def _submit(lab, msg) -> None:
    import smtplib

    host, port = lab.address("submission")
    with smtplib.SMTP(host, port, timeout=10) as smtp:
        smtp.starttls(context=lab.ca.client_context())
        smtp.login("alice@alpha.test", "alice-pw")
        if isinstance(msg, bytes):
            smtp.sendmail("alice@alpha.test", ["bob@alpha.test"], msg)
        else:
            smtp.send_message(msg)


def _wait(box, count: int) -> None:
    import time

    deadline = time.monotonic() + 20
    while len(box.messages()) < count and time.monotonic() < deadline:
        time.sleep(0.1)


def _pop3(lab, user: str):
    import poplib

    client = poplib.POP3(*lab.address("pop3"), timeout=10)
    client.user(f"{user}@alpha.test")
    client.pass_(f"{user}-pw")
    return client


def _imap(lab, user="bob"):
    import imaplib

    host, port = lab.address("imap")
    client = imaplib.IMAP4(host, port, timeout=10)
    client.login(f"{user}@alpha.test", f"{user}-pw")
    return client


def test_wrong_ways_fail_with_a_hint_judged_from_the_servers_side(lab):
    """Each of these passed the old checks: judged from the client's words instead of
    what the server sent and what the store holds."""
    import poplib
    import time
    from email.message import EmailMessage

    def message(to: str, subject: str, pdf: bytes | None = None) -> EmailMessage:
        msg = EmailMessage()
        msg["From"], msg["To"], msg["Subject"] = "alice@alpha.test", to, subject
        msg.set_content("x")
        if pdf is not None:
            msg.add_attachment(pdf, maintype="application", subtype="pdf", filename="r.pdf")
        return msg

    bob = lab.store.mailbox("bob@alpha.test")
    imap = _imap(lab)
    imap.select("INBOX")
    imap.uid("FETCH", "1:*", "(ENVELOPE)")  # an empty INBOX: OK, and not one envelope
    imap.logout()
    assert "the server sent none" in lab.check("imap_envelopes").hints[0]

    for i in range(2):
        _submit(lab, message("bob@alpha.test", f"m{i}"))
    raw = (b"From: alice@alpha.test\r\nTo: bob@alpha.test\r\nSubject: \xe4\xbd\xa0\xe5\xa5\xbd\r\n"
           b"MIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary=b\r\n\r\n--b\r\n\r\nx\r\n--b\r\n"
           b"Content-Type: application/pdf\r\nContent-Transfer-Encoding: base64\r\n\r\nJVBERi0xLjQK\r\n--b--\r\n")
    _submit(lab, raw)
    _wait(bob, 3)
    assert "RFC 2047" in lab.check("mime_parts").hints[0]
    _submit(lab, message("bob@alpha.test", "报告", pdf=b"not a pdf"))
    _wait(bob, 4)
    imap = _imap(lab)
    imap.select("INBOX")
    imap.fetch("4", "(BODYSTRUCTURE)")
    imap.fetch("4", "(BODY.PEEK[2])")
    imap.logout()
    assert "not a PDF" in lab.check("mime_parts").hints[0]
    alternative = message("bob@alpha.test", "报告三")
    alternative.add_alternative(b"%PDF-1.4\n%%EOF\n", maintype="application", subtype="pdf")
    _submit(lab, alternative)  # the PDF as another form of the text, not an attachment
    _wait(bob, 5)
    assert "multipart/alternative" in lab.check("mime_parts").hints[0]
    _submit(lab, message("bob@alpha.test", "报告二", pdf=b"%PDF-1.4\n%%EOF\n"))
    _wait(bob, 6)
    imap = _imap(lab)
    imap.select("INBOX")
    imap.fetch("6", "(BODYSTRUCTURE)")
    imap.uid("FETCH", "999", "(BODY.PEEK[2])")  # no such message: OK, nothing sent
    imap.create("Archive")
    imap.copy("2", "Archive")
    imap.store("1", "+FLAGS", "(\\Deleted)")  # not the message copied
    imap.expunge()
    imap.logout()
    assert "server sent no PDF" in lab.check("mime_parts").hints[0]
    assert "not the one you copied" in lab.check("imap_move").hints[0]

    _submit(lab, message("nobody@beta.test", "to nobody"))
    alice = lab.store.mailbox("alice@alpha.test")
    _wait(alice, 1)
    _submit(lab, message("alice@alpha.test", "not a bounce"))
    _wait(alice, 2)
    host, port = lab.address("pop3")
    pop = poplib.POP3(host, port, timeout=10)
    pop.user("alice@alpha.test")
    pop.pass_("alice-pw")
    dsn = next(n for n in (1, 2) if b"multipart/report" in b"\n".join(pop.top(n, 0)[1]))
    pop.retr(3 - dsn)  # another message
    pop.quit()
    assert "read only the DSN's header" in lab.check("bounce_dsn").hints[0]
    imap = _imap(lab, "alice")
    imap.select("INBOX")
    number = imap.search(None, "SUBJECT", '"Undelivered"')[1][0].split()[0]
    imap.fetch(number, "(BODY.PEEK[3])")  # the returned message, not the report
    imap.logout()
    assert "returns your own message" in lab.check("bounce_dsn").hints[0]

    gone = _pop3(lab, "bob")
    gone.dele(1)
    gone.quit()
    dropped = _pop3(lab, "bob")
    dropped.dele(1)
    dropped.close()  # no QUIT; and nobody looks again
    wait = time.monotonic() + 10
    while not any(e.data.get("pop3") == "aborted" for e in lab.events.events(kinds=("note",))) \
            and time.monotonic() < wait:
        time.sleep(0.05)
    assert "see that it is still there" in lab.check("pop3_delete").hints[0]
    _pop3(lab, "bob").quit()
    assert lab.check("pop3_delete").passed


def test_right_ways_the_checks_once_refused(single_lab):
    """FETCH 1:* ALL holds ENVELOPE; a folder name with a space travels quoted; a login on
    465 is told it is the wrong port."""
    import smtplib

    lab = single_lab
    from maillab.clients.smtp import send
    from maillab.compose import compose

    host, port = lab.address("smtps")  # 465: TLS from the first byte, not the task's 587
    with smtplib.SMTP_SSL(host, port, timeout=10, context=lab.ca.client_context()) as smtp:
        smtp.login("alice@alpha.test", "alice-pw")
    assert "465" in lab.check("submission").hints[0]

    send(lab, compose(sender="alice@alpha.test", to=["bob@alpha.test"], subject="s", body="x"),
         via="submission")
    _wait(lab.store.mailbox("bob@alpha.test"), 1)
    imap = _imap(lab)
    imap.create('"My Archive"')
    imap.select("INBOX")
    imap.fetch("1:*", "ALL")
    imap.uid("MOVE", "1", '"My Archive"')
    imap.logout()
    assert lab.check("imap_envelopes").passed
    assert lab.check("imap_move").passed


def test_a_task_done_as_another_user_does_not_count(lab):
    """Each task names its user (alice sends, bob reads, carol receives): done as another,
    it passed the old checks, which looked only at what was done. Judged from the
    servers' side: who logged in, whose mailbox holds the message, the envelope."""
    import poplib
    import smtplib
    import time
    from email.message import EmailMessage

    def submit(user: str, to: str, subject: str, pdf: bytes | None = None) -> None:
        msg = EmailMessage()
        msg["From"], msg["To"], msg["Subject"] = user, to, subject
        msg.set_content("x")
        if pdf is not None:
            msg.add_attachment(pdf, maintype="application", subtype="pdf", filename="r.pdf")
        host, port = lab.address("submission")
        with smtplib.SMTP(host, port, timeout=10) as smtp:
            smtp.starttls(context=lab.ca.client_context())
            smtp.login(user, user.split("@")[0] + "-pw")
            smtp.send_message(msg)

    host, port = lab.address("submission")
    sent = subprocess.run(  # swaks as bob, STARTTLS and AUTH on 587: all right but the user
        ["swaks", "--server", f"{host}:{port}", "--tls", "--tls-ca-path", str(lab.ca.ca_path),
         "--auth", "PLAIN", "--auth-user", "bob@alpha.test", "--auth-password", "bob-pw",
         "--from", "bob@alpha.test", "--to", "alice@alpha.test", "--header", "Subject: as bob"],
        capture_output=True, text=True, timeout=60)
    assert sent.returncode == 0, sent.stdout + sent.stderr
    result = lab.check("submission")
    assert not result.passed and "alice@alpha.test" in result.hints[0], result
    submit("alice@alpha.test", "alice@alpha.test", "to herself")  # alice, but not to bob
    result = lab.check("submission")
    assert not result.passed and "bob@alpha.test" in result.hints[0], result

    submit("bob@alpha.test", "alice@alpha.test", "二")
    submit("bob@alpha.test", "alice@alpha.test", "报告", pdf=b"%PDF-1.4\n%%EOF\n")
    alice = lab.store.mailbox("alice@alpha.test")
    _wait(alice, 4)
    imap = _imap(lab, "alice")  # every reading task as alice, where the task says bob
    imap.select("INBOX")
    imap.fetch("1:*", "(ENVELOPE)")
    imap.logout()
    imap = _imap(lab, "alice")
    imap.select("INBOX")
    imap.fetch("4", "(BODYSTRUCTURE)")
    imap.fetch("4", "(BODY.PEEK[2])")
    imap.create("Archive")
    imap.uid("MOVE", "1", "Archive")
    imap.logout()
    host, port = lab.address("pop3")

    gone = _pop3(lab, "alice")
    gone.dele(1)
    gone.quit()
    dropped = _pop3(lab, "alice")
    dropped.dele(1)
    dropped.close()  # no QUIT
    wait = time.monotonic() + 10
    while not any(e.data.get("pop3") == "aborted" for e in lab.events.events(kinds=("note",))) \
            and time.monotonic() < wait:
        time.sleep(0.05)
    _pop3(lab, "alice").quit()  # and it is still there
    for name in ("imap_envelopes", "mime_parts", "imap_move", "pop3_delete"):
        result = lab.check(name)
        assert not result.passed and "bob@alpha.test" in result.hints[0], result

    submit("bob@alpha.test", "nobody@beta.test", "to nobody")  # bob's bounce, bob reads it
    bob = lab.store.mailbox("bob@alpha.test")
    _wait(bob, 1)
    reader = poplib.POP3(host, port, timeout=10)
    reader.user("bob@alpha.test")
    reader.pass_("bob-pw")
    reader.retr(1)
    reader.quit()
    result = lab.check("bounce_dsn")
    assert not result.passed and "alice@alpha.test" in result.hints[0], result

    submit("bob@alpha.test", "carol@beta.test", "bob's path")  # the same hosts as alice's would cross
    _wait(lab.store.mailbox("carol@beta.test"), 1)
    result = lab.check("received_chain", answer="mail.alpha.test")
    assert not result.passed and "from alice@alpha.test to carol@beta.test" in result.hints[0], result


def test_the_mx_task_counts_the_mx_port_not_the_backup_hosts_submission_port(lab):
    """Handing carol's message to mx2 on its submission port (587, logged in as carol)
    passed the MX task: that is a mail program sending, not delivery to the backup MX."""
    import smtplib

    host, port = lab.address("submission", "mx2.beta.test")
    with smtplib.SMTP(host, port, timeout=10) as smtp:
        smtp.starttls(context=lab.ca.client_context())
        smtp.login("carol@beta.test", "carol-pw")
        smtp.sendmail("carol@beta.test", ["carol@beta.test"], "Subject: via 587\r\n\r\nx\r\n")
    result = lab.check("mx_preference")
    assert not result.passed and "submission port" in result.hints[0], result
    host, port = lab.address("smtp", "mx2.beta.test")  # the MX port, no login: right
    with smtplib.SMTP(host, port, timeout=10) as smtp:
        smtp.sendmail("alice@alpha.test", ["carol@beta.test"], "Subject: via 25\r\n\r\nx\r\n")
    assert lab.check("mx_preference").passed


def test_the_envelope_task_counts_a_header_by_either_name(single_lab):
    """FETCH (ENVELOPE BODY.PEEK[HEADER]) was refused and FETCH (ENVELOPE RFC822.HEADER),
    the same octets by their older name (RFC 3501 6.4.5), passed: both send message text,
    and the task asks for envelopes alone."""
    import imaplib

    lab = single_lab
    from maillab.clients.smtp import send
    from maillab.compose import compose

    send(lab, compose(sender="alice@alpha.test", to=["bob@alpha.test"], subject="s", body="x"),
         via="submission")
    _wait(lab.store.mailbox("bob@alpha.test"), 1)
    host, port = lab.address("imap")
    with imaplib.IMAP4(host, port, timeout=10) as imap:
        imap.starttls(ssl_context=lab.ca.client_context())
        imap.login("bob@alpha.test", "bob-pw")
        imap.select("INBOX")
        imap.fetch("1:*", "(ENVELOPE RFC822.HEADER)")
        imap.logout()
    result = lab.check("imap_envelopes")
    assert not result.passed and "RFC822.HEADER" in result.hints[0], result
    with imaplib.IMAP4(host, port, timeout=10) as imap:
        imap.starttls(ssl_context=lab.ca.client_context())
        imap.login("bob@alpha.test", "bob-pw")
        imap.select("INBOX")
        imap.fetch("1:*", "(ENVELOPE)")
        imap.logout()
    assert lab.check("imap_envelopes").passed


def test_the_submission_task_counts_alices_own_provider(lab):
    """Alice logged in on mx1.beta.test's submission port (the lab's hosts shared their
    users) passed the task: her provider is mail.alpha.test, the host of her domain.
    Now beta refuses her login (535) and the hint names her own host."""
    import smtplib

    for host_name, passed in (("mx1.beta.test", False), ("mail.alpha.test", True)):
        host, port = lab.address("submission", host_name)
        with smtplib.SMTP(host, port, timeout=10) as smtp:
            smtp.starttls(context=lab.ca.client_context())
            if passed:
                smtp.login("alice@alpha.test", "alice-pw")
                smtp.sendmail("alice@alpha.test", ["bob@alpha.test"], f"Subject: via {host_name}\r\n\r\nx\r\n")
            else:
                with pytest.raises(smtplib.SMTPAuthenticationError):
                    smtp.login("alice@alpha.test", "alice-pw")
        result = lab.check("submission")
        assert result.passed is passed, result
        if not passed:
            assert "mail.alpha.test" in result.hints[0] and "mx1.beta.test" in result.hints[0], result
