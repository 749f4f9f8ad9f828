"""POP3 download throughput: maillab's server against Dovecot on the same Maildir.

    python benchmarks/pop3_retr.py [--messages 2000] [--rounds 5]

Builds a Maildir of 2,000 messages (2-100 KB each, some lines starting with "."
so dot-stuffing is exercised), then repeatedly runs one complete "download
everything" session against each server with the same client: USER/PASS, STAT,
LIST, UIDL, RETR 1..N, QUIT, one command at a time (no pipelining). Rounds
alternate between the servers; medians are printed with the ratio.

Dovecot (``/usr/sbin/dovecot``, package dovecot-pop3d) is started with its own
generated configuration in a temporary directory, listening on a loopback
port, with ``mail_location`` pointing at the lab's Maildir and its index
files kept outside it. When Dovecot is not installed, that is printed instead.
"""

from __future__ import annotations

import argparse
import os
import pwd
import random
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from maillab import Lab  # noqa: E402
from maillab.limits import Limits  # noqa: E402

USER, PASSWORD = "bob@alpha.test", "bob-pw"
DOVECOT = "/usr/sbin/dovecot"


# -- the client: the same for both servers ------------------------------------------

class Client:
    """A minimal POP3 client that reads replies with large recv() calls, so the
    client is not what is measured."""

    def __init__(self, host: str, port: int) -> None:
        self.sock = socket.create_connection((host, port), timeout=30)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.buf = bytearray()
        self.status()

    def _more(self) -> None:
        chunk = self.sock.recv(1 << 20)
        if not chunk:
            raise ConnectionError("server closed the connection")
        self.buf += chunk

    def status(self) -> bytes:
        while (nl := self.buf.find(b"\r\n")) < 0:
            self._more()
        line = bytes(self.buf[:nl])
        del self.buf[: nl + 2]
        if not line.startswith(b"+"):
            raise RuntimeError(line.decode(errors="replace"))
        return line

    def body(self) -> int:
        """Read a multi-line body up to CRLF.CRLF; returns its length."""
        if self.buf[:3] == b".\r\n":
            del self.buf[:3]
            return 0
        start = 0
        while (end := self.buf.find(b"\r\n.\r\n", start)) < 0:
            start = max(0, len(self.buf) - 4)
            self._more()
        n = end + 2
        del self.buf[: end + 5]
        return n

    def cmd(self, line: str, multiline: bool = False) -> tuple[bytes, int]:
        self.sock.sendall(line.encode() + b"\r\n")
        st = self.status()
        return st, (self.body() if multiline else 0)

    def close(self) -> None:
        self.sock.close()


#: Commands in flight at once when pipelining (RFC 2449 PIPELINING): a window, so that
#: neither side's socket buffers fill up while the other is not reading.
WINDOW = 64


def download_all(host: str, port: int, login: str, pipelined: bool = False) -> tuple[float, int, int]:
    """One session; returns (seconds, messages, body bytes)."""
    start = time.perf_counter()
    c = Client(host, port)
    c.cmd(f"USER {login}")
    c.cmd(f"PASS {PASSWORD}")
    count = int(c.cmd("STAT")[0].split()[1])
    c.cmd("LIST", True)
    c.cmd("UIDL", True)
    total = 0
    if pipelined:
        for first in range(1, count + 1, WINDOW):
            batch = range(first, min(count, first + WINDOW - 1) + 1)
            c.sock.sendall(b"".join(b"RETR %d\r\n" % n for n in batch))
            for _ in batch:
                c.status()
                total += c.body()
    else:
        for n in range(1, count + 1):
            total += c.cmd(f"RETR {n}", True)[1]
    c.cmd("QUIT")
    c.close()
    return time.perf_counter() - start, count, total


# -- the data ------------------------------------------------------------------------

def text_lines(rng: random.Random, count: int = 5000) -> list[bytes]:
    """A pool of 76-octet text lines, 2% of them starting with "." (dot-stuffing)."""
    alphabet = "abcdefghijklmnopqrstuvwxyz0123456789 "
    pool = []
    for _ in range(count):
        text = "".join(rng.choices(alphabet, k=74))
        if rng.random() < 0.02:
            text = "." + text[1:]
        pool.append((text + "\r\n").encode())
    return pool


def make_message(rng: random.Random, i: int, pool: list[bytes]) -> bytes:
    size = rng.randint(2 * 1024, 100 * 1024)
    head = (f"From: alice@alpha.test\r\nTo: {USER}\r\nSubject: benchmark message {i}\r\n"
            f"Message-ID: <bench{i}@alpha.test>\r\nDate: Mon, 1 Jan 2024 00:00:00 +0000\r\n\r\n")
    lines = [head.encode()]
    lines.extend(rng.choices(pool, k=max(1, (size - len(lines[0])) // 76)))
    return b"".join(lines)


# -- Dovecot ---------------------------------------------------------------------------

def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_dovecot(maildir: Path, workdir: Path) -> tuple[subprocess.Popen[bytes] | None, int, str]:
    """Dovecot serving ``maildir`` for one passwd-file user; returns (process, port, login)."""
    port = free_port()
    me = pwd.getpwuid(os.getuid())
    if os.getuid() == 0:
        # Dovecot runs no login or mail process as root: use the package's users and
        # give the Maildir to "nobody", as whom the mail processes then run.
        login_user, internal_user = "dovenull", "dovecot"
        me = pwd.getpwnam("nobody")
        for path in [maildir, *maildir.rglob("*")]:
            os.chown(path, me.pw_uid, me.pw_gid)
    else:
        login_user = internal_user = me.pw_name
    for d in ("run", "index", "control", "home"):
        (workdir / d).mkdir(parents=True, exist_ok=True)
        if d != "run":
            os.chown(workdir / d, me.pw_uid, me.pw_gid)
    os.chmod(workdir / "run", 0o755)
    (workdir / "passwd").write_text(f"bench:{{PLAIN}}{PASSWORD}::::::\n")
    conf = workdir / "dovecot.conf"
    conf.write_text(f"""
base_dir = {workdir}/run
state_dir = {workdir}/run
log_path = {workdir}/dovecot.log
protocols = pop3
listen = 127.0.0.1
ssl = no
disable_plaintext_auth = no
auth_mechanisms = plain
default_login_user = {login_user}
default_internal_user = {internal_user}
default_internal_group = {internal_user if os.getuid() else "dovecot"}
first_valid_uid = 0
mail_location = maildir:{maildir}:INDEX={workdir}/index:CONTROL={workdir}/control
pop3_uidl_format = %08Xu%08Xv
passdb {{
  driver = passwd-file
  args = scheme=PLAIN username_format=%u {workdir}/passwd
}}
userdb {{
  driver = static
  args = uid={me.pw_uid} gid={me.pw_gid} home={workdir}/home
}}
service pop3-login {{
  inet_listener pop3 {{
    address = 127.0.0.1
    port = {port}
  }}
  inet_listener pop3s {{
    port = 0
  }}
}}
service imap-login {{
  inet_listener imap {{
    port = 0
  }}
  inet_listener imaps {{
    port = 0
  }}
}}
""")
    proc = subprocess.Popen([DOVECOT, "-F", "-c", str(conf)], stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT)
    deadline = time.time() + 10
    while time.time() < deadline:
        if proc.poll() is not None:
            out = proc.stdout.read().decode(errors="replace") if proc.stdout else ""
            log = (workdir / "dovecot.log").read_text() if (workdir / "dovecot.log").exists() else ""
            raise RuntimeError(f"dovecot exited: {out}\n{log}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1) as s:
                if s.recv(100).startswith(b"+OK"):
                    return proc, port, "bench"
        except OSError:
            time.sleep(0.1)
    proc.kill()
    raise RuntimeError("dovecot did not answer within 10 s")


def stop_dovecot(proc: subprocess.Popen[bytes]) -> None:
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(10)
    except subprocess.TimeoutExpired:
        proc.kill()


# -- main ------------------------------------------------------------------------------

def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--messages", type=int, default=2000)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--pipelined", action="store_true",
                    help=f"send the RETR commands {WINDOW} at a time (RFC 2449 PIPELINING)")
    args = ap.parse_args()

    tmp = Path(tempfile.mkdtemp(prefix="maillab-bench-pop3-"))
    tmp.chmod(0o755)  # Dovecot's auth process (another user when run as root) reads its passwd file
    lab = Lab(tmp / "lab", ports="auto", domains=["alpha.test"], services=("pop3",),
              limits=Limits(auth_failure_delay=0.05))
    lab.start()
    proc = None
    try:
        rng = random.Random(1939)
        t0 = time.perf_counter()
        pool = text_lines(rng)
        for i in range(args.messages):
            lab.store.deliver(USER, make_message(rng, i, pool))
        mb = lab.store.mailbox(USER)
        size = sum(m.crlf_size for m in mb.messages())
        print(f"Maildir {mb.path}: {args.messages} messages, {size / 1e6:.1f} MB"
              f" (built in {time.perf_counter() - t0:.1f} s)")

        servers: dict[str, tuple[str, int, str]] = {"maillab": (*lab.address("pop3"), USER)}
        if shutil.which(DOVECOT) or Path(DOVECOT).exists():
            proc, port, login = start_dovecot(mb.path, tmp / "dovecot")
            servers["dovecot"] = ("127.0.0.1", port, login)
        else:
            print(f"Dovecot not installed ({DOVECOT} missing): measuring maillab only")

        # one warm-up session each (Dovecot builds its index, we warm the page cache)
        for host, port, login in servers.values():
            download_all(host, port, login, args.pipelined)
        results: dict[str, list[tuple[float, int, int]]] = {n: [] for n in servers}
        for _ in range(args.rounds):
            for name, (host, port, login) in servers.items():
                results[name].append(download_all(host, port, login, args.pipelined))

        print(f"\n{'server':10} {'median s':>9} {'messages/s':>11} {'MB/s':>8}   (rounds: {args.rounds},"
              " pipelined)" if args.pipelined else " one command at a time)")
        medians: dict[str, tuple[float, float]] = {}
        for name, runs in results.items():
            secs = statistics.median(r[0] for r in runs)
            count, total = runs[0][1], runs[0][2]
            assert all(r[1] == count and r[2] == total for r in runs), "servers disagree"
            medians[name] = (count / secs, total / secs / 1e6)
            print(f"{name:10} {secs:9.3f} {count / secs:11.0f} {total / secs / 1e6:8.1f}")
        if "dovecot" in medians:
            a, b = results["maillab"][0], results["dovecot"][0]
            assert a[1:] == b[1:], f"maillab served {a[1:]}, dovecot {b[1:]}"
            ratio = medians["maillab"][0] / medians["dovecot"][0]
            print(f"\nratio maillab/dovecot (messages/s, medians): {ratio:.2f}  (goal >= 0.5)")
    finally:
        if proc is not None:
            stop_dovecot(proc)
        lab.stop()
        if not os.environ.get("KEEP"):
            shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
