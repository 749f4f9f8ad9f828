"""IMAP fetch benchmark: maillab's IMAP server against Dovecot and pymap, same run, same client.

One command::

    python benchmarks/imap_fetch.py                 # 2,000 messages (~52 MB), 5 runs
    python benchmarks/imap_fetch.py --messages 300 --runs 3 --pymap-runs 1

A Maildir of realistic messages (plain text, multipart/alternative, multipart/mixed
with base64 attachments, RFC 2047 subjects; 2-100 KB, ~26 KB on average) is built
once and copied for every server, so each serves the same bytes. The client is a lean
raw IMAP client (below): it sends one command and reads until the tagged reply,
skipping literals without parsing them, so the client costs as little as possible
and costs the same for every server.

Phases (each on an already logged-in, SELECTed connection unless named otherwise):
LOGIN+SELECT on a fresh connection; FETCH 1:* (UID FLAGS RFC822.SIZE ENVELOPE);
FETCH 1:* BODYSTRUCTURE; UID FETCH 1:* BODY.PEEK[]; UID SEARCH on a header;
STORE 1:* +FLAGS (\\Flagged) (undone, untimed, after each run); and 8 concurrent
clients each fetching all bodies. A warm-up run comes first (servers build their
indexes and caches), then the medians of ``--runs`` runs are printed with ratios.

Goals (issue 4): >= 10x pymap on every phase; >= 0.5 of Dovecot's throughput on
body fetches; within 5x Dovecot's time on the metadata phases once warm.
"""

from __future__ import annotations

import argparse
import os
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
from dataclasses import dataclass, field
from email.message import EmailMessage
from email.utils import format_datetime, make_msgid
from pathlib import Path

USER, PASSWORD = "bench", "bench-pw"
TIMEOUT = 300.0

# -- the corpus -------------------------------------------------------------------

FIRST = ["Alice", "Bob", "Carol", "Dave", "Erin", "Frank", "Grace", "Heidi", "Ivan", "Judy",
         "Mallory", "Niaj", "Olivia", "Peggy", "Rupert", "Sybil", "Trent", "Victor", "Walter"]
DOMAINS = ["alpha.test", "beta.test", "gamma.test", "example.org", "lists.example.net"]
SUBJECTS = ["Quarterly report {n}", "Re: lunch on {d}?", "Minutes of the {d} meeting",
            "Invoice #{n}", "Fwd: photos from the trip", "Build {n} failed", "你好，周报 {n}",
            "Grüße aus Köln ({n})", "[list] digest no. {n}", "Re: Re: the migration plan"]
WORDS = ("the of and to in is for on that with as mail server client protocol message "
         "header body folder flag index cache envelope structure literal fetch search "
         "store quarterly report meeting minutes plan budget review deadline").split()


def _text(rng: random.Random, size: int) -> str:
    lines, total = [], 0
    while total < size:
        line = " ".join(rng.choice(WORDS) for _ in range(rng.randint(8, 13)))
        lines.append(line)
        total += len(line) + 2
    return "\n".join(lines) + "\n"


def make_message(rng: random.Random, n: int) -> bytes:
    """One message of a realistic shape; sizes spread over 2-100 KB (mean ~26 KB)."""
    msg = EmailMessage()
    sender = rng.choice(FIRST)
    msg["From"] = f"{sender} <{sender.lower()}@{rng.choice(DOMAINS)}>"
    msg["To"] = ", ".join(f"{p} <{p.lower()}@{rng.choice(DOMAINS)}>"
                          for p in rng.sample(FIRST, rng.randint(1, 3)))
    if rng.random() < 0.3:
        msg["Cc"] = f"{rng.choice(FIRST).lower()}@{rng.choice(DOMAINS)}"
    day = time.gmtime(1_700_000_000 + n * 3600)
    msg["Subject"] = rng.choice(SUBJECTS).format(n=n, d=time.strftime("%d %b", day))
    msg["Date"] = format_datetime(
        __import__("datetime").datetime(*day[:6], tzinfo=__import__("datetime").timezone.utc))
    msg["Message-ID"] = make_msgid(idstring=str(n), domain="bench.test")
    if rng.random() < 0.4:
        msg["In-Reply-To"] = make_msgid(idstring=str(n - 1), domain="bench.test")
    msg["X-Mailer"] = rng.choice(["Thunderbird 115", "mutt 2.2", "Apple Mail", "maillab-bench"])
    shape = rng.random()
    if shape < 0.45:  # plain text, 2-12 KB
        msg.set_content(_text(rng, rng.randint(2_000, 12_000)))
    elif shape < 0.75:  # multipart/alternative text + html, 6-30 KB
        body = _text(rng, rng.randint(3_000, 15_000))
        msg.set_content(body)
        html = "<html><body>" + "".join(f"<p>{ln}</p>\n" for ln in body.splitlines()) + "</body></html>\n"
        msg.add_alternative(html, subtype="html")
    else:  # multipart/mixed: text (+ html) + a base64 attachment, 30-100 KB
        msg.set_content(_text(rng, rng.randint(1_000, 4_000)))
        if rng.random() < 0.5:
            msg.add_alternative("<html><body><p>see attachment</p></body></html>\n", subtype="html")
        blob = rng.randbytes(rng.randint(20_000, 68_000))
        kind = rng.choice([("application", "pdf", "report.pdf"), ("image", "png", "photo.png"),
                           ("application", "octet-stream", "Übersicht 2024.bin")])
        msg.add_attachment(blob, maintype=kind[0], subtype=kind[1], filename=kind[2])
    return msg.as_bytes(policy=msg.policy.clone(linesep="\r\n"))


def build_corpus(directory: Path, count: int, seed: int = 4) -> tuple[int, int]:
    """A Maildir at ``directory`` with ``count`` messages; returns (count, total bytes)."""
    rng = random.Random(seed)
    for sub in ("cur", "new", "tmp"):
        (directory / sub).mkdir(parents=True, exist_ok=True)
    total = 0
    base = 1_700_000_000
    for n in range(1, count + 1):
        data = make_message(rng, n)
        total += len(data)
        flags = "".join(sorted(rng.choice(["", "", "S", "S", "RS", "FS"])))
        name = f"{base + n}.M{n}P1.bench,S={len(data)},W={len(data)}:2,{flags}"
        path = directory / "cur" / name
        path.write_bytes(data)
        os.utime(path, (base + n, base + n))
    return count, total


# -- a lean IMAP client -----------------------------------------------------------

class IMAPFailed(RuntimeError):
    pass


class LeanClient:
    """Just enough IMAP to time a server: send a command, read to its tagged reply.

    Literals ({n}) are skipped by count, never copied or parsed, so body fetches
    measure the server, not this client.
    """

    def __init__(self, host: str, port: int) -> None:
        self.sock = socket.create_connection((host, port), timeout=TIMEOUT)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.buf = bytearray()
        self.chunk = bytearray(1 << 20)
        self.tagn = 0
        self.greeting = self._line()

    def _fill(self) -> None:
        n = self.sock.recv_into(self.chunk)
        if not n:
            raise IMAPFailed("server closed the connection")
        self.buf += memoryview(self.chunk)[:n]

    def _line(self) -> bytes:
        while True:
            i = self.buf.find(b"\r\n")
            if i >= 0:
                line = bytes(self.buf[:i])
                del self.buf[:i + 2]
                return line
            self._fill()

    def _skip(self, n: int) -> None:
        if len(self.buf) >= n:
            del self.buf[:n]
            return
        n -= len(self.buf)
        self.buf.clear()
        view = memoryview(self.chunk)
        while n > 0:
            got = self.sock.recv_into(view, min(n, len(self.chunk)))
            if not got:
                raise IMAPFailed("server closed the connection inside a literal")
            n -= got

    def command(self, text: str) -> Reply:
        """Send ``text`` with a fresh tag; read everything up to the tagged reply."""
        self.tagn += 1
        tag = f"b{self.tagn}".encode()
        self.sock.sendall(tag + b" " + text.encode() + b"\r\n")
        reply = Reply()
        prefix = tag + b" "
        while True:
            line = self._line()
            reply.bytes += len(line) + 2
            if line.startswith(b"* "):
                reply.untagged += 1
            while line.endswith(b"}") and b"{" in line:
                size = int(line[line.rindex(b"{") + 1:-1].rstrip(b"+"))
                self._skip(size)
                reply.literals += 1
                reply.literal_bytes += size
                reply.bytes += size
                rest = self._line()
                reply.bytes += len(rest) + 2
                line = rest
            if line.startswith(prefix):
                reply.tagged = line.decode("utf-8", "replace")
                if not line[len(prefix):].startswith(b"OK"):
                    raise IMAPFailed(f"{text[:60]!r}: {reply.tagged}")
                return reply
            if line.startswith(b"* SEARCH"):
                reply.search = [int(x) for x in line[8:].split()]

    def login_select(self) -> None:
        self.command(f'LOGIN {USER} "{PASSWORD}"')
        self.command("SELECT INBOX")

    def close(self) -> None:
        try:
            self.command("LOGOUT")
        except (OSError, IMAPFailed):
            pass
        self.sock.close()


@dataclass
class Reply:
    tagged: str = ""
    untagged: int = 0
    literals: int = 0
    literal_bytes: int = 0
    bytes: int = 0
    search: list[int] = field(default_factory=list)


# -- the servers --------------------------------------------------------------------

def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_listening(port: int, proc: subprocess.Popen | None, log: Path | None, timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode}: "
                               + (log.read_text()[-2000:] if log and log.exists() else ""))
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1) as s:
                s.settimeout(5)
                if s.recv(100).startswith(b"* OK"):
                    return
        except OSError:
            time.sleep(0.1)
    raise RuntimeError(f"nothing answered on port {port} within {timeout} s")


class Server:
    name = "?"
    host = "127.0.0.1"
    port = 0

    proc: subprocess.Popen | None = None

    def start(self, corpus: Path, work: Path) -> None: ...

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()


class Dovecot(Server):
    """/usr/sbin/dovecot in the foreground, with a config written into a temp dir."""

    name = "dovecot"
    BINARY = "/usr/sbin/dovecot"

    @classmethod
    def available(cls) -> bool:
        return os.path.exists(cls.BINARY)

    def start(self, corpus: Path, work: Path) -> None:
        root = work / "dovecot"
        maildir = root / "Maildir"
        shutil.copytree(corpus, maildir)
        for d in ("run", "home"):
            (root / d).mkdir(parents=True, exist_ok=True)
        (root / "passwd").write_text(f"{USER}:{{PLAIN}}{PASSWORD}::::::\n")
        self.port = free_port()
        self.log = root / "dovecot.log"
        uid, gid = os.getuid(), os.getgid()
        extra = ""
        if uid == 0:
            # Dovecot refuses to run mail processes as root: serve as nobody.
            import pwd
            nobody = pwd.getpwnam("nobody")
            uid, gid = nobody.pw_uid, nobody.pw_gid
            for path in [root, *root.rglob("*")]:
                os.chown(path, uid, gid)
            os.chmod(work, 0o755)
            extra = "default_login_user = dovenull\ndefault_internal_user = dovecot\n"
        else:
            import grp
            import pwd
            me = pwd.getpwuid(uid).pw_name
            extra = (f"default_login_user = {me}\ndefault_internal_user = {me}\n"
                     f"default_internal_group = {grp.getgrgid(gid).gr_name}\n")
        conf = root / "dovecot.conf"
        conf.write_text(f"""
{extra}
base_dir = {root}/run
state_dir = {root}/run
log_path = {self.log}
protocols = imap
listen = 127.0.0.1
ssl = no
disable_plaintext_auth = no
auth_mechanisms = plain login
mail_location = maildir:{maildir}
first_valid_uid = 1
mail_max_userip_connections = 64
passdb {{
  driver = passwd-file
  args = scheme=PLAIN {root}/passwd
}}
userdb {{
  driver = static
  args = uid={uid} gid={gid} home={root}/home
}}
service imap-login {{
  inet_listener imap {{
    address = 127.0.0.1
    port = {self.port}
  }}
  inet_listener imaps {{
    port = 0
  }}
}}
service anvil {{
  unix_listener anvil-auth-penalty {{
    mode = 0
  }}
}}
""")
        self.proc = subprocess.Popen([self.BINARY, "-F", "-c", str(conf)],
                                     stdout=subprocess.DEVNULL, stderr=open(root / "stderr", "wb"))
        try:
            wait_listening(self.port, self.proc, root / "stderr")
        except RuntimeError as exc:
            raise RuntimeError(f"{exc}\n{self.log.read_text()[-2000:] if self.log.exists() else ''}") from None


class Pymap(Server):
    """pymap's maildir backend, serving a copy of the same Maildir."""

    name = "pymap"

    @classmethod
    def available(cls) -> bool:
        try:
            import pymap  # noqa: F401
        except ImportError:
            return False
        return True

    def start(self, corpus: Path, work: Path) -> None:
        from pymap.config import IMAPConfig

        base = work / "pymap"
        base.mkdir(parents=True)
        shutil.copytree(corpus, base / USER)
        hashed = IMAPConfig._get_hash_context(None).hash(PASSWORD)
        # passwd(5) and shadow(5) shaped files; the home directory is the Maildir
        (base / "pymap-etc-passwd").write_text(":".join([USER, "", "", "", "", USER, ""]) + "\n")
        (base / "pymap-etc-shadow").write_text(":".join([USER, hashed, *[""] * 7]) + "\n")
        self.port = free_port()
        log = base / "stderr"
        self.proc = subprocess.Popen(
            [sys.executable, "-c", "from pymap.main import main; main()", "--no-tls", "--host", "127.0.0.1", "--port", str(self.port),
             "maildir", str(base)],
            stdout=subprocess.DEVNULL, stderr=open(log, "wb"))
        wait_listening(self.port, self.proc, log, timeout=60)



class Maillab(Server):
    """maillab's own IMAP server: a Lab in a child process.

    A separate process like Dovecot's and pymap's, so the benchmark's client
    threads do not compete with the server for this interpreter's GIL.
    """

    name = "maillab"
    SCRIPT = """
import shutil, sys
from pathlib import Path
from maillab import Lab
from maillab.limits import Limits
work, corpus, user, password = sys.argv[1:5]
lab = Lab(Path(work), ports="auto", domains=["alpha.test"], users={user: password},
          services=("imap",), limits=Limits(auth_failure_delay=0.05))
shutil.copytree(corpus, lab.store.user_root(user))
lab.start()
print(*lab.address("imap"), flush=True)
sys.stdin.read()  # serve until the benchmark closes our stdin
lab.stop()
"""

    @classmethod
    def available(cls) -> bool:
        try:
            import maillab.imap.server  # noqa: F401
        except ImportError:
            return False
        return True

    def start(self, corpus: Path, work: Path) -> None:
        root = Path(__file__).resolve().parent.parent
        env = {**os.environ, "PYTHONPATH": f"{root}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
        self.proc = subprocess.Popen(
            [sys.executable, "-c", self.SCRIPT, str(work / "maillab"), str(corpus), f"{USER}@alpha.test",
             PASSWORD], stdin=subprocess.PIPE, stdout=subprocess.PIPE, env=env)
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline().decode().split()
        if len(line) != 2:
            raise RuntimeError(f"the maillab server did not start (exit {self.proc.poll()})")
        self.host, self.port = line[0], int(line[1])

    def stop(self) -> None:
        if self.proc.poll() is None:
            assert self.proc.stdin is not None
            self.proc.stdin.close()
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()


# -- the phases ----------------------------------------------------------------------

SEARCH = 'UID SEARCH HEADER Subject "quarterly"'


def phase_login_select(server: Server, _: LeanClient) -> Reply:
    c = LeanClient(server.host, server.port)
    c.command(f'LOGIN {USER} "{PASSWORD}"')
    reply = c.command("SELECT INBOX")
    c.close()
    return reply


def fetch_command(cmd: str) -> Callable[[Server, LeanClient], Reply]:
    def phase(_: Server, client: LeanClient) -> Reply:
        return client.command(cmd)
    return phase


def phase_store(_: Server, client: LeanClient) -> Reply:
    reply = client.command("STORE 1:* +FLAGS (\\Flagged)")
    return reply


def undo_store(client: LeanClient) -> None:
    client.command("STORE 1:* -FLAGS.SILENT (\\Flagged)")


PHASES: list[tuple[str, Callable[[Server, LeanClient], Reply]]] = [
    ("LOGIN+SELECT", phase_login_select),
    ("FETCH ENVELOPE", fetch_command("FETCH 1:* (UID FLAGS RFC822.SIZE ENVELOPE)")),
    ("FETCH BODYSTRUCTURE", fetch_command("FETCH 1:* BODYSTRUCTURE")),
    ("UID FETCH BODY.PEEK[]", fetch_command("UID FETCH 1:* BODY.PEEK[]")),
    ("UID SEARCH header", fetch_command(SEARCH)),
    ("STORE +FLAGS", phase_store),
]
CONCURRENT = "8 clients x BODY.PEEK[]"
BODY_PHASES = ("UID FETCH BODY.PEEK[]", CONCURRENT)
METADATA = ("FETCH ENVELOPE", "FETCH BODYSTRUCTURE", "UID SEARCH header", "STORE +FLAGS")


def concurrent_bodies(server: Server, clients: int = 8) -> tuple[float, int]:
    """Wall time for ``clients`` connections each fetching every body at once."""
    conns = [LeanClient(server.host, server.port) for _ in range(clients)]
    for c in conns:
        c.login_select()
    barrier = threading.Barrier(clients + 1)
    results: list[Reply | BaseException] = [Reply()] * clients

    def work(i: int) -> None:
        barrier.wait()
        try:
            results[i] = conns[i].command("UID FETCH 1:* BODY.PEEK[]")
        except BaseException as exc:  # reported below
            results[i] = exc

    threads = [threading.Thread(target=work, args=(i,)) for i in range(clients)]
    for t in threads:
        t.start()
    barrier.wait()
    t0 = time.perf_counter()
    for t in threads:
        t.join()
    elapsed = time.perf_counter() - t0
    for c in conns:
        c.close()
    for r in results:
        if isinstance(r, BaseException):
            raise r
    return elapsed, sum(r.literal_bytes for r in results if isinstance(r, Reply))


@dataclass
class Measurements:
    times: dict[str, list[float]] = field(default_factory=dict)
    check: dict[str, tuple[int, int, int]] = field(default_factory=dict)  # phase -> (untagged, literal bytes, hits)
    bytes: dict[str, int] = field(default_factory=dict)
    lower_bounds: set[str] = field(default_factory=set)  # phases that timed out: times are minimums

    def median(self, phase: str) -> float:
        return statistics.median(self.times[phase])


def _timed(fn: Callable[[], Reply]) -> tuple[float, Reply | None]:
    """Elapsed seconds and the reply; None when the server timed out or failed (the
    elapsed time is then a lower bound, reported with ">")."""
    t = time.perf_counter()
    try:
        reply = fn()
    except (TimeoutError, IMAPFailed, OSError) as exc:
        print(f"    failed after {time.perf_counter() - t:.1f} s: {exc!r}", flush=True)
        return time.perf_counter() - t, None
    return time.perf_counter() - t, reply


def run_server(server: Server, corpus: Path, work: Path, runs: int, warmup: bool) -> Measurements:
    m = Measurements()
    t0 = time.perf_counter()
    server.start(corpus, work)
    print(f"  {server.name}: listening on {server.host}:{server.port} (start {time.perf_counter() - t0:.2f} s)",
          flush=True)
    try:
        client = LeanClient(server.host, server.port)
        client.login_select()
        for i in range(runs + (1 if warmup else 0)):
            timed = not warmup or i > 0
            for name, phase in PHASES:
                elapsed, reply = _timed(lambda phase=phase, c=client: phase(server, c))
                if reply is None:  # the connection's state is unknown now: start afresh
                    m.lower_bounds.add(name)
                    client = LeanClient(server.host, server.port)
                    client.login_select()
                elif name == "STORE +FLAGS":
                    undo_store(client)
                if timed:
                    m.times.setdefault(name, []).append(elapsed)
                    if reply is not None:
                        m.check[name] = (reply.untagged, reply.literal_bytes, len(reply.search))
                        m.bytes[name] = reply.literal_bytes or reply.bytes
            try:
                elapsed, body_bytes = concurrent_bodies(server)
            except (TimeoutError, IMAPFailed, OSError) as exc:
                print(f"    8 clients failed: {exc!r}", flush=True)
                elapsed, body_bytes = TIMEOUT, 0
                m.lower_bounds.add(CONCURRENT)
            if timed:
                m.times.setdefault(CONCURRENT, []).append(elapsed)
                m.check[CONCURRENT] = (0, body_bytes, 0)
                m.bytes[CONCURRENT] = body_bytes or m.bytes.get("UID FETCH BODY.PEEK[]", 0) * 8
            print(f"    {'warm-up' if not timed else f'run {i if warmup else i + 1}'} done", flush=True)
        client.close()
    finally:
        server.stop()
    return m


def report(results: dict[str, Measurements], messages: int, total: int) -> list[str]:
    names = list(results)
    rows = [f"\n{messages} messages, {total / 1e6:.1f} MB; medians in ms (MB/s for body phases)\n"]
    head = f"{'phase':26}" + "".join(f"{n:>16}" for n in names)
    if "maillab" in results:
        head += "".join(f"{'maillab/' + n[:7] + ' speed':>22}" for n in names if n != "maillab")
    rows.append(head)
    for phase, _ in [*PHASES, (CONCURRENT, None)]:
        line = f"{phase:26}"
        for n in names:
            if phase not in results[n].times:
                line += f"{'-':>16}"
                continue
            ms = results[n].median(phase) * 1000
            cell = (">" if phase in results[n].lower_bounds else "") + f"{ms:.1f}"
            if phase in BODY_PHASES:
                mbs = results[n].bytes[phase] / 1e6 / (ms / 1000)
                cell += f" ({mbs:.0f})"
            line += f"{cell:>16}"
        if "maillab" in results and phase in results["maillab"].times:
            ours = results["maillab"].median(phase)
            for n in names:
                if n == "maillab":
                    continue
                if phase in results[n].times:
                    line += f"{results[n].median(phase) / ours:>21.2f}x"
                else:
                    line += f"{'-':>22}"
        rows.append(line)
    rows.append("(speed ratio = their time / our time: >1 means maillab is faster)")
    # same answers from every server: FETCH counts, literal bytes, search hits
    for phase in ("FETCH ENVELOPE", "UID FETCH BODY.PEEK[]", "UID SEARCH header"):
        seen = {n: results[n].check.get(phase) for n in names}
        if len({v for v in seen.values() if v}) > 1:
            rows.append(f"WARNING: servers disagree on {phase}: {seen}")
    if "maillab" in results:
        ours = results["maillab"]
        goals = []
        if "pymap" in results:
            worst = min(results["pymap"].median(p) / ours.median(p) for p in results["pymap"].times)
            goals.append(f">= 10x pymap on every phase: worst {worst:.1f}x "
                         f"{'MET' if worst >= 10 else 'MISSED'}")
        if "dovecot" in results:
            dv = results["dovecot"]
            body = min(dv.median(p) / ours.median(p) for p in ("UID FETCH BODY.PEEK[]", CONCURRENT))
            goals.append(f">= 0.5 of Dovecot's body throughput: {body:.2f} "
                         f"{'MET' if body >= 0.5 else 'MISSED'}")
            meta = max(ours.median(p) / dv.median(p) for p in METADATA)
            goals.append(f"metadata within 5x Dovecot's time: worst {meta:.1f}x "
                         f"{'MET' if meta <= 5 else 'MISSED'}")
        rows += ["", "Goals:", *("  " + g for g in goals)]
    return rows


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--messages", type=int, default=2000)
    ap.add_argument("--runs", type=int, default=5, help="timed runs per server (after a warm-up)")
    ap.add_argument("--pymap-runs", type=int, default=1, help="pymap is slow: fewer runs, no warm-up")
    ap.add_argument("--servers", default="maillab,dovecot,pymap")
    ap.add_argument("--keep", action="store_true", help="keep the temp directory")
    args = ap.parse_args(argv)

    work = Path(tempfile.mkdtemp(prefix="maillab-imap-bench-"))
    try:
        corpus = work / "corpus"
        t = time.perf_counter()
        count, total = build_corpus(corpus, args.messages)
        print(f"corpus: {count} messages, {total / 1e6:.1f} MB in {time.perf_counter() - t:.1f} s", flush=True)
        available = {"maillab": Maillab, "dovecot": Dovecot, "pymap": Pymap}
        results: dict[str, Measurements] = {}
        for name in args.servers.split(","):
            cls = available[name]
            if not cls.available():
                print(f"  {name}: not available, skipped")
                continue
            pymap = name == "pymap"
            results[name] = m = run_server(cls(), corpus, work, args.pymap_runs if pymap else args.runs,
                                           warmup=not pymap)
            # printed now too, so a long run shows its figures before the last server ends
            print("    medians (ms): " + "; ".join(f"{p} {m.median(p) * 1000:.1f}" for p in m.times),
                  flush=True)
        print("\n".join(report(results, count, total)))
    finally:
        if args.keep:
            print(f"kept {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
