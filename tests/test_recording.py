"""Recorded runs: ``%mail save`` writes a real lab's events, ``%mail replay``
shows them again with no server running, and the RFC export reads like the RFCs."""

from __future__ import annotations

import json
import time

import pytest
from conftest import magic_shell
from IPython.core.error import UsageError

from maillab import recording
from maillab.views.replay import Replay


def test_save_replay_and_rfc_text(tmp_path):
    with magic_shell(tmp_path) as (shell, lab):
        shell.run_cell_magic("mail", "--from alice@alpha.test --to bob@alpha.test --subject saved", "hello")
        shell.run_cell_magic("mail", "--from alice@alpha.test --to carol@beta.test --subject far", "hi")
        carol = lab.store.mailbox("carol@beta.test")
        deadline = time.monotonic() + 20
        while not carol.messages() and time.monotonic() < deadline:
            time.sleep(0.1)
        live_path = repr(shell.run_line_magic("mail", "relay --static"))
        shell.run_line_magic("pop3", "bob --list --dele 1")
        done = shell.run_line_magic("mail", f"save {tmp_path / 'run.json'}")
        assert "saved" in repr(done)
        shell.run_line_magic("mail", f"save {tmp_path / 'run.txt'}")
        shell.run_line_magic("mail", f"save {tmp_path / 'client.txt'} --side client --protocol pop3")
        recorded = len(lab.events.events())
    # the lab is stopped: what follows needs no server
    saved = (tmp_path / "run.json").read_text(encoding="utf-8")
    assert "bob-pw" not in saved and "alice-pw" not in saved
    assert json.loads(saved)["format"] == "maillab-run"

    with magic_shell(tmp_path / "again") as (shell, _):
        shell.run_line_magic("mail", "stop")
        run = shell.run_line_magic("mail", f"replay {tmp_path / 'run.json'}")
        seq = shell.run_line_magic("mail", f"replay {tmp_path / 'run.json'} --sequence")
    assert "<svg" in seq.svg() and "C: QUIT" in repr(seq)
    assert isinstance(run, Replay)
    assert "text/plain" in run._repr_mimebundle_()
    assert len(run.events) == recorded
    text = run.text()
    assert "FROM:<alice@alpha.test>" in text and "S: 354 " in text
    assert "UPDATE removed message(s) 1" in text  # the POP3 state view, from the file
    assert live_path in text and "mx1.beta.test" in live_path  # the relay path as it was
    pytest.importorskip("ipywidgets")
    assert "RETR" in run.transcript.html.value or "DELE 1" in run.transcript.html.value

    rfc = (tmp_path / "run.txt").read_text(encoding="utf-8")
    assert rfc.startswith("# SMTP smtp-")
    assert "\nC: ehlo " in rfc and "\nS: 250 2.1.5 " in rfc and "\nC: AUTH PLAIN ****" in rfc
    assert "   [TLS started: TLSv1." in rfc
    client = (tmp_path / "client.txt").read_text(encoding="utf-8")
    assert client.startswith("# POP3 ") and "client to" in client.splitlines()[0]
    assert "\nC: DELE 1\nS: +OK" in client and "SMTP" not in client


def test_replay_refuses_what_is_not_a_run(tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text('{"events": []}')
    with pytest.raises(ValueError, match="not a maillab run"):
        recording.load(bad)
    bad.write_text("C: HELO")
    with pytest.raises(ValueError, match="not JSON"):
        recording.load(bad)
    from IPython.core.interactiveshell import InteractiveShell

    shell = InteractiveShell.instance()
    shell.run_line_magic("load_ext", "maillab")
    with pytest.raises(UsageError, match="cannot replay"):
        shell.run_line_magic("mail", f"replay {bad}")
