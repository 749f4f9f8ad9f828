"""Helpers for tests/test_real_clients.py: config files for real mail clients, and a
pseudo-terminal driver for the one client (neomutt) that reads mail only through its
full-screen interface.

Every config is written the way a user would write it by hand after reading
``maillab serve``'s table: host name ``localhost`` (mbsync and fetchmail refuse a
certificate that matches only by IP), the lab port, and the lab CA as the only trust
anchor, so a passing run means certificate verification really happened.
"""

from __future__ import annotations

import os
import select
import signal
import subprocess
import time
from pathlib import Path

#: Seconds any one client run may take before the test fails (a hang is a failure).
CLIENT_TIMEOUT = 60


def run(cmd: list[str], *, env: dict[str, str] | None = None, input: bytes | None = None,
        timeout: float = CLIENT_TIMEOUT, cwd: Path | None = None) -> subprocess.CompletedProcess[bytes]:
    """Run a client to completion, its output captured (never inherits a terminal)."""
    return subprocess.run(cmd, input=input, capture_output=True, timeout=timeout,
                          env={**os.environ, **(env or {})}, cwd=cwd,
                          stdin=None if input is not None else subprocess.DEVNULL)


def private(path: Path, text: str) -> Path:
    """Write a config holding a password: msmtp and fetchmail refuse group/world-readable ones."""
    path.write_text(text)
    path.chmod(0o600)
    return path


# -- SMTP senders ----------------------------------------------------------------------

def msmtprc(path: Path, *, ca: Path, user: str, password: str,
            accounts: dict[str, tuple[int, bool]]) -> Path:
    """An msmtp config; ``accounts`` maps name -> (port, STARTTLS?) (False: implicit TLS)."""
    text = f"defaults\ntls on\ntls_trust_file {ca}\nauth on\nlogfile {path.parent / 'msmtp.log'}\n"
    for name, (port, starttls) in accounts.items():
        text += (f"\naccount {name}\nhost localhost\nport {port}\n"
                 f"tls_starttls {'on' if starttls else 'off'}\n"
                 f"user {user}\npassword {password}\nfrom {user}\n")
    return private(path, text)


def neomuttrc(path: Path, *, ca: Path, lines: list[str]) -> Path:
    """A neomutt config that trusts only the lab CA and never stores anything locally."""
    base = [
        f'set ssl_ca_certificates_file = "{ca}"',
        "set ssl_force_tls = yes",  # refuse to fall back to plaintext
        f'set certificate_file = "{path.parent / "neomutt-certs"}"',
        'set record = ""',  # no copy to a local "sent" folder
        'set header_cache = ""',
        'set message_cachedir = ""',
        "set charset = utf-8",
        "set send_charset = utf-8",
        "set quit = yes",  # q quits without asking
        "set wait_key = no",
        "set mail_check_stats = no",
        "set pipe_decode = no",  # | hands the raw message to the command
    ]
    return private(path, "\n".join(base + lines) + "\n")


# -- IMAP/POP3 readers -----------------------------------------------------------------

def offlineimaprc(path: Path, *, ca: Path, port: int, user: str, password: str, local: Path,
                  implicit_tls: bool) -> Path:
    """A one-account offlineimap config: lab IMAP (IMAPS or STARTTLS) -> local Maildir.

    ``utf8foldernames`` makes offlineimap decode modified UTF-7 (RFC 3501 5.1.3)
    folder names into UTF-8 directory names, so a folder named 日本語 on the server is
    a directory named 日本語 on disk.
    """
    tls = "ssl = yes\n" if implicit_tls else "ssl = no\nstarttls = yes\n"
    return private(path, f"""[general]
accounts = lab
metadata = {path.parent / 'offlineimap-meta'}

[Account lab]
localrepository = local
remoterepository = remote
utf8foldernames = yes

[Repository local]
type = Maildir
localfolders = {local}

[Repository remote]
type = IMAP
remotehost = localhost
remoteport = {port}
remoteuser = {user}
remotepass = {password}
{tls}sslcacertfile = {ca}
""")


def mbsyncrc(path: Path, *, ca: Path, port: int, user: str, password: str, local: Path,
             ssl_type: str, patterns: str = "*") -> Path:
    """An isync config: one far IMAP store, one near Maildir store, one channel ``lab``."""
    return private(path, f"""IMAPAccount lab
Host localhost
Port {port}
User {user}
Pass {password}
SSLType {ssl_type}
CertificateFile {ca}

IMAPStore lab-remote
Account lab

MaildirStore lab-local
Path {local}/
Inbox {local}/INBOX
SubFolders Verbatim

Channel lab
Far :lab-remote:
Near :lab-local:
Patterns {patterns}
Create Near
SyncState *
""")


def fetchmailrc(path: Path, *, ca: Path, port: int, user: str, password: str, out: Path,
                protocol: str, implicit_tls: bool, keep: bool, fetchall: bool) -> Path:
    """A fetchmail poll that hands each message to an MDA writing one file per message."""
    tls = "ssl" if implicit_tls else ""  # without "ssl", sslproto tls1.2+ demands STARTTLS
    local_user = os.environ.get("USER", "root")
    return private(path, (
        "set no bouncemail\nset no syslog\n"
        f"poll localhost service {port} protocol {protocol} auth password\n"
        f'  user "{user}" there with password "{password}" is "{local_user}" here\n'
        f"  {'keep' if keep else 'no keep'} {'fetchall' if fetchall else 'no fetchall'}\n"
        f'  {tls} sslproto tls1.2+ sslcertck sslcertfile "{ca}" sslcertpath /dev/null\n'
        # fetchmail expands %s/%T/%F in an MDA, so the file name uses only $$.
        f"  mda \"/bin/sh -c 'cat > {out}/msg.$$'\"\n"))


# -- a terminal for full-screen clients ------------------------------------------------

class Terminal:
    """Run a curses program on a pseudo-terminal and type at it when its screen shows
    what we wait for, as a person would. Everything it drew is kept in ``screen``."""

    def __init__(self, cmd: list[str], *, env: dict[str, str], rows: int = 40, cols: int = 120) -> None:
        import fcntl
        import pty
        import struct
        import termios

        self.master, slave = pty.openpty()
        fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", rows, cols, 0, 0))
        self.proc = subprocess.Popen(cmd, stdin=slave, stdout=slave, stderr=slave,
                                     env={**os.environ, "TERM": "xterm", **env},
                                     start_new_session=True)
        os.close(slave)
        self.screen = b""
        self._mark = 0

    def _read(self, deadline: float) -> bool:
        """Read what is there; False once the program has closed the terminal."""
        ready, _w, _x = select.select([self.master], [], [], max(0.0, min(0.2, deadline - time.monotonic())))
        if not ready:
            return True
        try:
            data = os.read(self.master, 65536)
        except OSError:  # EIO: the program exited and the slave side is gone
            return False
        self.screen += data
        return bool(data)

    def expect(self, text: bytes, timeout: float = 15) -> None:
        """Wait until ``text`` is drawn after the previous match (AssertionError if not)."""
        deadline = time.monotonic() + timeout
        while text not in self.screen[self._mark:] and time.monotonic() < deadline:
            if not self._read(deadline):
                break
        found = self.screen.find(text, self._mark)
        assert found >= 0, f"{text!r} never shown; screen ends {self.screen[-1500:]!r}"
        self._mark = found + len(text)

    def type(self, keys: bytes) -> None:
        os.write(self.master, keys)

    def wait(self, timeout: float = 15) -> int:
        """Wait for the program to exit, draining its output; kill it if it will not."""
        deadline = time.monotonic() + timeout
        while self.proc.poll() is None and time.monotonic() < deadline:
            if not self._read(deadline):
                break
        try:
            return self.proc.wait(max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(5)
            raise AssertionError(f"{self.proc.args[0]} did not exit; screen ends {self.screen[-1500:]!r}") from None
        finally:
            os.close(self.master)
