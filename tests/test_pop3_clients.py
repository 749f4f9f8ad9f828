"""Real POP3 clients against the lab: curl, fetchmail, getmail6.

fetchmail and getmail are what "download my mail" looks like in practice:
they log in, UIDL/LIST, RETR everything, DELE (unless told to keep), QUIT.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

from maillab import Lab

BOB = "bob@alpha.test"
TIMEOUT = 30


def messages(lab: Lab, n: int, start: int = 1) -> list[bytes]:
    out = []
    for i in range(start, start + n):
        data = (f"From: alice@alpha.test\r\nTo: {BOB}\r\nSubject: client test {i}\r\n"
                f"Message-ID: <c{i}@alpha.test>\r\n\r\nbody {i}\r\n.a dot line\r\n..two\r\n").encode()
        lab.store.deliver(BOB, data)
        out.append(data)
    return out


def left(lab: Lab) -> int:
    return len(lab.store.mailbox(BOB).messages())


def curl(*args: str) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(["curl", "-sS", "--max-time", "10", "-u", "bob:bob-pw", *args],
                          capture_output=True, timeout=TIMEOUT, check=True)


# -- curl -----------------------------------------------------------------------------

def test_curl_list_retr_dele(single_lab: Lab) -> None:
    msgs = messages(single_lab, 3)
    host, port = single_lab.address("pop3")
    listing = curl(f"pop3://{host}:{port}/").stdout
    assert listing.split(b"\r\n")[:3] == [f"{i} {len(m)}".encode() for i, m in enumerate(msgs, 1)]
    assert curl(f"pop3://{host}:{port}/2").stdout == msgs[1]
    # -X DELE with -I: curl sends DELE 1 then QUIT, so the UPDATE state removes it
    curl(f"pop3://{host}:{port}/1", "-X", "DELE", "-I")
    assert left(single_lab) == 2
    assert curl(f"pop3://{host}:{port}/1").stdout == msgs[1]  # renumbered in a new session


def test_curl_pop3s_and_stls(single_lab: Lab) -> None:
    msgs = messages(single_lab, 2)
    ca = str(single_lab.ca_path)
    _h, port = single_lab.address("pop3s")
    assert curl("--cacert", ca, f"pop3s://localhost:{port}/2").stdout == msgs[1]
    _h, port = single_lab.address("pop3")
    run = curl("--cacert", ca, "--ssl-reqd", "-v", f"pop3://localhost:{port}/1")
    assert run.stdout == msgs[0]
    assert b"> STLS" in run.stderr and b"SSL certificate verify ok" in run.stderr
    # and the server saw TLS before the login
    kinds = [e.kind for e in single_lab.events.events(protocol="pop3") if e.side == "server"
             and e.kind in ("tls", "auth")]
    assert kinds[-2:] == ["tls", "auth"]


# -- fetchmail --------------------------------------------------------------------------

def fetchmail(lab: Lab, home: Path, *, keep: bool, uidl: bool, fetchall: bool = False) -> list[bytes]:
    """One fetchmail poll over STLS, delivering each message to a file; returns them."""
    out = home / "out"
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    _h, port = lab.address("pop3")
    rc = home / "fetchmailrc"
    # "localhost": fetchmail wants the name it polls in the certificate (an IP is refused)
    rc.write_text(
        "set no bouncemail\n"
        f"poll localhost service {port} protocol pop3 {'uidl' if uidl else 'no uidl'}\n"
        f'  user "bob" there with password "bob-pw" is "{os.environ.get("USER", "root")}" here\n'
        f"  {'keep' if keep else 'no keep'} {'fetchall' if fetchall else ''}\n"
        f'  sslproto tls1.2+ sslcertck sslcertfile "{lab.ca_path}" sslcertpath /dev/null\n'
        f'  mda "/bin/sh -c \'cat > {out}/msg.$$\'"\n')
    rc.chmod(0o600)
    env = dict(os.environ, HOME=str(home))
    run = subprocess.run(["fetchmail", "-f", str(rc), "--nodetach", "--pidfile", str(home / "pid")],
                         capture_output=True, timeout=TIMEOUT, env=env)
    # status 0: mail fetched, 1: no new mail
    assert run.returncode in (0, 1), run.stderr.decode() + run.stdout.decode()
    return [p.read_bytes() for p in sorted(out.iterdir(), key=lambda p: p.stat().st_mtime_ns)]


def test_fetchmail_download_leave_on_server_then_flush(single_lab: Lab, tmp_path) -> None:
    msgs = messages(single_lab, 3)
    got = fetchmail(single_lab, tmp_path, keep=True, uidl=True)
    assert len(got) == 3
    for original in msgs:  # fetchmail adds a Received: line on top and writes LF line ends
        assert any(g.endswith(original.replace(b"\r\n", b"\n")) for g in got)
    assert left(single_lab) == 3  # "keep": leave mail on the server
    # UIDL lets fetchmail skip what it has already seen: only the new message comes
    new = messages(single_lab, 1, start=4)
    got = fetchmail(single_lab, tmp_path, keep=True, uidl=True)
    assert len(got) == 1 and got[0].endswith(new[0].replace(b"\r\n", b"\n"))
    # classic POP3: download everything, delete it on the server
    got = fetchmail(single_lab, tmp_path, keep=False, uidl=False, fetchall=True)
    assert len(got) == 4
    assert left(single_lab) == 0
    server_commands = [e.text.split(" ")[0] for e in single_lab.events.events(kinds=("C",))
                       if e.side == "server"]
    assert "STLS" in server_commands and "DELE" in server_commands


# -- getmail6 ---------------------------------------------------------------------------

def getmail(lab: Lab, home: Path, *, delete: bool, read_all: bool) -> list[bytes]:
    out = home / "out"
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    _h, port = lab.address("pop3s")
    (home / "getmailrc").write_text(
        "[retriever]\ntype = SimplePOP3SSLRetriever\nserver = localhost\n"
        f"port = {port}\nusername = bob\npassword = bob-pw\nca_certs = {lab.ca_path}\n\n"
        "[destination]\ntype = MDA_external\npath = /bin/sh\n"
        f'arguments = ("-c", "cat > {out}/msg.$$")\nallow_root_commands = true\n\n'
        f"[options]\nread_all = {str(read_all).lower()}\ndelete = {str(delete).lower()}\n")
    run = subprocess.run(["getmail", "--getmaildir", str(home), "--rcfile", "getmailrc"],
                         capture_output=True, timeout=TIMEOUT)
    assert run.returncode == 0, run.stderr.decode() + run.stdout.decode()
    return [p.read_bytes() for p in out.iterdir()]


def test_getmail_pop3s_uidl_then_delete(single_lab: Lab, tmp_path) -> None:
    msgs = messages(single_lab, 2)
    got = getmail(single_lab, tmp_path, delete=False, read_all=False)
    assert len(got) == 2
    for original in msgs:
        body = original.replace(b"\r\n", b"\n")
        assert any(g.endswith(body) for g in got)
    messages(single_lab, 1, start=3)
    assert len(getmail(single_lab, tmp_path, delete=False, read_all=False)) == 1  # UIDL: only new
    assert len(getmail(single_lab, tmp_path, delete=True, read_all=True)) == 3
    assert left(single_lab) == 0
