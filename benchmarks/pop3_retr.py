"""POP3 download throughput: maillab's server against Dovecot on the same Maildir.

    python benchmarks/pop3_retr.py [--messages 2000] [--rounds 5] [--pipelined]
    python benchmarks/pop3_retr.py --login-messages 100000   # login + STAT on a large maildrop

Builds a Maildir of 2,000 messages (2-100 KB each, some lines starting with "."
so dot-stuffing is exercised), then repeatedly runs one complete "download
everything" session against each server with the same client: USER/PASS, STAT,
LIST, UIDL, RETR 1..N, QUIT, one command at a time (or, with ``--pipelined``, the
RETRs 64 at a time). Rounds alternate between the servers; medians are printed
with the ratio.

Each server runs in its own process(es) and serves its own copy of the Maildir:
maillab as a ``Lab`` in a child process (so the client, in this process, does not
share the lab thread's interpreter lock), Dovecot (``/usr/sbin/dovecot``, package
dovecot-pop3d) with its own generated configuration in a temporary directory,
listening on a loopback port, with its index files kept outside the Maildir.
When Dovecot is not installed, that is printed instead.

``--login-messages N`` measures instead what a login costs on a maildrop of N
small messages (the corpus of ``scale.py``): USER/PASS/STAT/QUIT the first time
(the server indexes the files) and warm, and, for maillab, the longest round trip
of a CAPA that another connection sends meanwhile (the lab loop must stay free).
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
import threading
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
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


def cpu_seconds(pid: int) -> float:
    """CPU time of process ``pid`` and its descendants, the exited ones it reaped
    included (Dovecot's pop3 process of a session ends with it)."""
    kids: dict[int, list[int]] = {}
    stats: dict[int, list[str]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                stats[int(entry)] = Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            kids.setdefault(int(stats[int(entry)][1]), []).append(int(entry))
    ticks, todo = 0, [pid]
    while todo:
        p = todo.pop()
        if p in stats:
            fields = stats[p]
            ticks += int(fields[11]) + int(fields[12]) + int(fields[13]) + int(fields[14])
        todo += kids.get(p, [])
    return ticks / os.sysconf("SC_CLK_TCK")


def measured(pid: int, fn: Callable[..., tuple], *args: object) -> tuple:
    """``fn(*args)``'s result and the CPU seconds the server ``pid`` spent meanwhile."""
    before = cpu_seconds(pid)
    out = fn(*args)
    time.sleep(0.05)  # Dovecot's master reaps the session's process
    return (*out, cpu_seconds(pid) - before)


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


def build_maildir(maildir: Path, count: int) -> int:
    """``count`` messages as Maildir files in ``new/``, named as maillab and Dovecot
    name them (``,S=`` size, ``,W=`` CRLF size), in arrival order; returns the octets."""
    rng = random.Random(1939)
    pool = text_lines(rng)
    for sub in ("cur", "new", "tmp"):
        (maildir / sub).mkdir(parents=True, exist_ok=True)
    total, base = 0, 1_700_000_000
    for i in range(count):
        data = make_message(rng, i, pool)
        total += len(data)
        path = maildir / "new" / f"{base + i}.M{i}P1.bench,S={len(data)},W={len(data)}"
        path.write_bytes(data)
        os.utime(path, (base + i, base + i))
    return total


# -- maillab, in a child process ---------------------------------------------------

SERVE = """
import shutil, sys
from pathlib import Path
from maillab import Lab
from maillab.limits import Limits
work, maildir, user, password = sys.argv[1:5]
lab = Lab(Path(work), ports="auto", domains=["alpha.test"], users={user: password},
          services=("pop3",), limits=Limits(auth_failure_delay=0.05))
root = lab.store.user_root(user)
shutil.rmtree(root, ignore_errors=True)
shutil.move(maildir, root)
lab.start()
print(*lab.address("pop3"), flush=True)
sys.stdin.read()  # serve until the benchmark closes our stdin
print(lab.loop.lag_summary() or "lab loop: never lagged over 100 ms", flush=True)  # its own watch
lab.stop()
"""


class Maillab:
    """A Lab serving POP3 in a child process, on ``maildir`` (moved into its store)."""

    def __init__(self, maildir: Path, work: Path) -> None:
        env = {**os.environ, "PYTHONPATH": f"{ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
        self.proc = subprocess.Popen([sys.executable, "-c", SERVE, str(work), str(maildir), USER, PASSWORD],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, env=env)
        assert self.proc.stdout is not None
        out = self.proc.stdout.readline().decode().split()
        if len(out) != 2:
            raise RuntimeError(f"the maillab server did not start (exit {self.proc.poll()})")
        self.host, self.port = out[0], int(out[1])

    def stop(self) -> str:
        """Stop the lab; returns what it measured of its own loop lag."""
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.close()
        out = self.proc.stdout.read().decode().strip()
        try:
            self.proc.wait(60)
        except subprocess.TimeoutExpired:
            self.proc.kill()
        return out or "lab loop: ?"


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


# -- the download benchmark ---------------------------------------------------------------

def download(args: argparse.Namespace, tmp: Path) -> None:
    t0 = time.perf_counter()
    size = build_maildir(tmp / "corpus", args.messages)
    print(f"Maildir: {args.messages} messages, {size / 1e6:.1f} MB (built in {time.perf_counter() - t0:.1f} s);"
          f" load average {os.getloadavg()[0]:.1f}")
    shutil.copytree(tmp / "corpus", tmp / "dovecot-maildir")
    lab = Maillab(tmp / "corpus", tmp / "lab")
    proc = None
    lag = ""
    try:
        servers: dict[str, tuple[str, int, str]] = {"maillab": (lab.host, lab.port, USER)}
        pids = {"maillab": lab.proc.pid}
        if Path(DOVECOT).exists():
            proc, port, login = start_dovecot(tmp / "dovecot-maildir", tmp / "dovecot")
            servers["dovecot"] = ("127.0.0.1", port, login)
            pids["dovecot"] = proc.pid
        else:
            print(f"Dovecot not installed ({DOVECOT} missing): measuring maillab only")

        # a first session each (Dovecot builds its index, maillab marks all \Seen and
        # remembers what dot-stuffing changes in each message), timed on its own
        first = {name: measured(pids[name], download_all, *where, args.pipelined)
                 for name, where in servers.items()}
        results: dict[str, list[tuple[float, int, int, float]]] = {n: [] for n in servers}
        for _ in range(args.rounds):
            for name, where in servers.items():
                results[name].append(measured(pids[name], download_all, *where, args.pipelined))
    finally:
        if proc is not None:
            stop_dovecot(proc)
        lag = lab.stop()

    how = "pipelined" if args.pipelined else "one command at a time"
    print(f"\n{'server':10} {'median s':>9} {'messages/s':>11} {'MB/s':>8} {'CPU s':>7} {'first session':>14}"
          f"   (rounds: {args.rounds}, {how}; CPU: the server's, per session)")
    medians: dict[str, tuple[float, float]] = {}
    for name, runs in results.items():
        secs = statistics.median(r[0] for r in runs)
        cpu = statistics.median(r[3] for r in runs)
        count, total = runs[0][1], runs[0][2]
        assert all(r[1] == count and r[2] == total for r in runs), "sessions disagree"
        medians[name] = (count / secs, cpu)
        print(f"{name:10} {secs:9.3f} {count / secs:11.0f} {total / secs / 1e6:8.1f} {cpu:7.2f}"
              f" {count / first[name][0]:8.0f} msg/s")
    if "dovecot" in medians:
        a, b = results["maillab"][0], results["dovecot"][0]
        assert a[1:3] == b[1:3], f"maillab served {a[1:3]}, dovecot {b[1:3]}"
        ml, dc = medians["maillab"], medians["dovecot"]
        print(f"\nratio maillab/dovecot (messages/s, medians): {ml[0] / dc[0]:.2f}  (goal >= 0.8);"
              f" first session {first['dovecot'][0] / first['maillab'][0]:.2f};"
              f" server CPU per session {ml[1] / max(dc[1], 0.01):.1f}x Dovecot's")
    print(lag)


# -- the login benchmark (a large maildrop) ------------------------------------------------

class Prober(threading.Thread):
    """Another client of the same server: CAPA round trips, one after the other, on a
    connection that never logs in, while the measured sessions run; keeps the longest."""

    def __init__(self, host: str, port: int) -> None:
        super().__init__(daemon=True)
        self.client = Client(host, port)
        self.longest = 0.0
        self.count = 0
        self.stopping = threading.Event()

    def run(self) -> None:
        while not self.stopping.is_set():
            t0 = time.perf_counter()
            self.client.cmd("CAPA", True)
            self.longest = max(self.longest, time.perf_counter() - t0)
            self.count += 1
            time.sleep(0.002)

    def stop(self) -> None:
        self.stopping.set()
        self.join(10)
        self.client.close()


def login_stat(host: str, port: int, login: str) -> tuple[float, int]:
    """USER, PASS, STAT, QUIT on a new connection: (seconds, messages)."""
    start = time.perf_counter()
    c = Client(host, port)
    c.cmd(f"USER {login}")
    c.cmd(f"PASS {PASSWORD}")
    count = int(c.cmd("STAT")[0].split()[1])
    c.cmd("QUIT")
    c.close()
    return time.perf_counter() - start, count


def login_scale(args: argparse.Namespace, tmp: Path) -> None:
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from scale import build_corpus

    t0 = time.perf_counter()
    total = build_corpus(tmp / "corpus", args.login_messages)
    print(f"corpus: {args.login_messages:,} messages, {total / 1e6:.1f} MB, built in"
          f" {time.perf_counter() - t0:.0f} s; load average {os.getloadavg()[0]:.1f}", flush=True)
    rows: dict[str, dict[str, list[float]]] = {}
    for name in ("maillab", "dovecot"):
        if name == "dovecot" and not Path(DOVECOT).exists():
            print(f"Dovecot not installed ({DOVECOT} missing): measuring maillab only")
            continue
        got = rows[name] = {}
        for run in range(args.rounds):
            base = tmp / f"{name}-{run}"
            shutil.copytree(tmp / "corpus", base / "maildir")
            if name == "maillab":
                server = Maillab(base / "maildir", base / "lab")
                host, port, login = server.host, server.port, USER
            else:
                proc, port, login = start_dovecot(base / "maildir", base / "dovecot")
                host = "127.0.0.1"
            prober = Prober(host, port)
            prober.start()
            try:
                secs, count = login_stat(host, port, login)
                assert count == args.login_messages, (name, count)
                got.setdefault("LOGIN+STAT, first time (indexing)", []).append(secs)
                for _ in range(3):
                    got.setdefault("LOGIN+STAT, warm", []).append(login_stat(host, port, login)[0])
            finally:
                prober.stop()
                if name == "maillab":
                    print(f"  maillab run {run + 1}: {server.stop()}")
                else:
                    stop_dovecot(proc)
            got.setdefault("another session's CAPA meanwhile, longest", []).append(prober.longest)
            shutil.rmtree(base, ignore_errors=True)
    print(f"\n{'median ms (' + str(args.rounds) + ' runs)':44} {'maillab':>9} {'dovecot':>9} {'ratio':>7}")
    for row in rows["maillab"]:
        a = statistics.median(rows["maillab"][row]) * 1000
        b = statistics.median(rows["dovecot"][row]) * 1000 if "dovecot" in rows else None
        ratio = f"{a / b:7.1f}" if b else ""
        print(f"{row:44} {a:9.1f} {b if b is None else f'{b:9.1f}'} {ratio}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--messages", type=int, default=2000)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--pipelined", action="store_true",
                    help=f"send the RETR commands {WINDOW} at a time (RFC 2449 PIPELINING)")
    ap.add_argument("--login-messages", type=int, default=0, metavar="N",
                    help="measure login+STAT on a maildrop of N small messages instead")
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="maillab-bench-pop3-"))
    tmp.chmod(0o755)  # Dovecot's auth process (another user when run as root) reads its passwd file
    try:
        if args.login_messages:
            login_scale(args, tmp)
        else:
            download(args, tmp)
    finally:
        if not os.environ.get("KEEP"):
            shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
